//! The README's settings table against the loader: every name it lists is a setting, and every
//! default it states is the one the code falls back to, so the two cannot drift apart.

use std::collections::HashMap;

use super::{Loader, Settings};

/// Rows whose default column describes where the value comes from rather than stating it: the
/// model and key depend on the provider, the key header is the HTTP scheme used without one.
const DESCRIBED_NOT_STATED: &[&str] = &[
    "SLUICE_EMBED_MODEL",
    "SLUICE_EMBED_API_KEY",
    "SLUICE_EMBED_API_KEY_HEADER",
];

/// Read before the settings are (logging, `--strict`), not through the loader.
const READ_BEFORE_SETTINGS: &[&str] = &["SLUICE_LOG", "SLUICE_STRICT"];

/// One row of the table: its setting names and its default column.
struct Row {
    names: Vec<String>,
    default: String,
}

/// The README's table rows whose first cell starts with `` `prefix ``: the names in backticks
/// in that cell (those starting with `prefix`) and the second cell.
pub(crate) fn readme_rows(prefix: &str) -> Vec<(Vec<String>, String)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    readme
        .lines()
        .filter(|line| line.starts_with(&format!("| `{prefix}")))
        .map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            let names = cells[0]
                .split('`')
                .filter(|part| part.starts_with(prefix))
                .map(str::to_string)
                .collect();
            (names, cells.get(1).map_or("", |c| c.trim()).to_string())
        })
        .collect()
}

fn table() -> Vec<Row> {
    let rows: Vec<Row> = readme_rows("SLUICE_")
        .into_iter()
        .map(|(names, default)| Row { names, default })
        .collect();
    assert!(rows.len() > 40, "the settings table was not found");
    rows
}

/// The loader after reading every setting from an empty environment.
fn loaded(env: &[(&str, &str)]) -> (Loader, Settings) {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let loader = Loader::from_parts(env, None).unwrap();
    let settings = Settings::from_loader(&loader).unwrap();
    (loader, settings)
}

#[test]
fn every_name_in_the_readme_settings_table_is_known() {
    let names: Vec<String> = table().into_iter().flat_map(|row| row.names).collect();
    let env: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "")).collect();
    let (_, settings) = loaded(&env);
    assert!(
        settings.unknown_settings.is_empty(),
        "in the README but read by nothing: {:?}",
        settings.unknown_settings
    );
}

#[test]
fn the_readme_states_the_defaults_the_code_uses() {
    let (loader, _) = loaded(&[]);
    let defaults = loader.defaults();
    assert!(
        defaults.get("SLUICE_LEASE_SECS").map(String::as_str) == Some("30"),
        "the loader did not record defaults: {defaults:?}"
    );
    let mut wrong = Vec::new();
    for row in table() {
        // `30`, or `16`, then sized: the stated value is the leading code span.
        let stated = row
            .default
            .strip_prefix('`')
            .and_then(|rest| rest.split('`').next());
        let none = row.default.starts_with('—');
        for name in &row.names {
            if DESCRIBED_NOT_STATED.contains(&name.as_str())
                || READ_BEFORE_SETTINGS.contains(&name.as_str())
            {
                continue;
            }
            let code = defaults.get(name);
            match (stated, code) {
                (Some(stated), Some(code)) if stated == code => {}
                (Some(stated), code) => wrong.push(format!(
                    "{name}: README says `{stated}`, the code {}",
                    code.map_or("has no default".to_string(), |c| format!("uses `{c}`"))
                )),
                (None, Some(code)) if none => wrong.push(format!(
                    "{name}: README says there is none, the code uses `{code}`"
                )),
                (None, _) => {}
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "README settings table out of step:\n{}",
        wrong.join("\n")
    );
}
