//! Which given setting names no part of Sluice reads. The loader records every name it is asked
//! for; a name given in the environment or the file that is neither asked for nor read outside
//! the loader is a typo or left over from an older version, and is reported instead of ignored.

use std::collections::BTreeSet;
use std::path::Path;

/// `SLUICE_*` names read outside [`super::Loader`]: the config file's own name, logging (read
/// before settings load), `--strict`, and the variables the PDF child, the test rigs and the
/// deploy checks read for themselves.
const READ_ELSEWHERE: &[&str] = &["config", "log", "strict", "kubectl", "deploy_tools"];
/// Families of names read outside the loader (by prefix, lower case, without `SLUICE_`).
const READ_ELSEWHERE_PREFIXES: &[&str] = &["pdf_child_", "test_"];

/// The given names (environment variables as given, file keys as `key in <path>`) that are not
/// in `asked` nor read elsewhere, sorted.
pub(super) fn unknown_names<'a>(
    env: impl Iterator<Item = &'a String>,
    file_keys: impl Iterator<Item = &'a String>,
    file_path: Option<&Path>,
    asked: &BTreeSet<String>,
) -> Vec<String> {
    let known = |name: &str| {
        let name = name.to_ascii_lowercase();
        asked.contains(&name)
            || READ_ELSEWHERE.contains(&name.as_str())
            || READ_ELSEWHERE_PREFIXES.iter().any(|p| name.starts_with(p))
    };
    let mut unknown: Vec<String> = env
        .filter(|var| var.strip_prefix("SLUICE_").is_some_and(|name| !known(name)))
        .cloned()
        .collect();
    unknown.sort();
    let file = file_path.map_or_else(
        || "the config file".to_string(),
        |p| p.display().to_string(),
    );
    let mut keys: Vec<String> = file_keys
        .filter(|key| !known(key))
        .map(|key| format!("{key} in {file}"))
        .collect();
    keys.sort();
    unknown.extend(keys);
    unknown
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::{Loader, Settings};

    fn loader(env: &[(&str, &str)], file: Option<&str>) -> (Loader, Option<tempfile::TempDir>) {
        let dir = file.map(|_| tempfile::tempdir().unwrap());
        let path = dir.as_ref().map(|d| d.path().join("sluice.toml"));
        if let (Some(path), Some(text)) = (&path, file) {
            std::fs::write(path, text).unwrap();
        }
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (Loader::from_parts(env, path.as_deref()).unwrap(), dir)
    }

    #[test]
    fn misspelt_variables_and_keys_are_reported_and_known_ones_are_not() {
        let (l, _dir) = loader(
            &[
                ("SLUICE_CHUNK_MAX_TOKENS", "300"),
                ("SLUICE_CHUNK_MAX_TOKEN", "300"),
                ("SLUICE_API_KEY", "k-1"),
                ("SLUICE_LOG", "debug"),
                ("SLUICE_TEST_DATABASE_URL", "postgres://x"),
                ("SLUICE_WORKER_CONCURENCY", "8"),
                ("HOME", "/root"),
            ],
            Some("collection = \"docs\"\nlease_sec = 40\n"),
        );
        let settings = Settings::from_loader(&l).unwrap();
        assert_eq!(settings.chunk_max_tokens, 300);
        assert_eq!(settings.collection, "docs");
        let unknown = &settings.unknown_settings;
        assert_eq!(unknown.len(), 3, "{unknown:?}");
        assert_eq!(unknown[0], "SLUICE_CHUNK_MAX_TOKEN");
        assert_eq!(unknown[1], "SLUICE_WORKER_CONCURENCY");
        assert!(unknown[2].starts_with("lease_sec in "), "{unknown:?}");
        let err = settings.report_unknown(true).unwrap_err().to_string();
        assert!(
            err.contains("SLUICE_CHUNK_MAX_TOKEN,") && err.contains("lease_sec"),
            "{err}"
        );
        assert!(settings.report_unknown(false).is_ok());
    }
}
