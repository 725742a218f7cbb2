//! Reading `deploy/` and the Rust sources: file discovery and parsing, the catalogue of metric
//! names and settings the code defines, and the scanners that find names in manifests and PromQL.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;
use sluice_shared::config::{Loader, Settings};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadtests/ sits in the workspace root")
        .to_path_buf()
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let entries =
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

pub fn has_ext(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.contains(&e))
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every document of every YAML file under `deploy/` (multi-document files split, `<<` merge keys
/// applied as Docker Compose does), with its path.
pub fn yaml_docs(dir: &Path) -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for path in files_under(dir)
        .into_iter()
        .filter(|p| has_ext(p, &["yaml", "yml"]))
    {
        let text = read(&path);
        for de in serde_yaml::Deserializer::from_str(&text) {
            let mut doc = Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
            doc.apply_merge()
                .unwrap_or_else(|e| panic!("{}: bad merge key: {e}", path.display()));
            if !doc.is_null() {
                out.push((path.clone(), doc));
            }
        }
    }
    out
}

pub fn json_docs(dir: &Path) -> Vec<(PathBuf, serde_json::Value)> {
    files_under(dir)
        .into_iter()
        .filter(|p| has_ext(p, &["json"]))
        .map(|path| {
            let doc = serde_json::from_str(&read(&path))
                .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
            (path, doc)
        })
        .collect()
}

pub fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Metric names the binaries can emit, and which of them are histograms (exported as `_bucket`,
/// `_sum` and `_count` series, never under the bare name).
pub struct MetricCatalog {
    pub names: BTreeSet<String>,
    pub histograms: BTreeSet<String>,
}

impl MetricCatalog {
    /// What `sluice_shared::metrics` declares: the only metrics the binaries can emit.
    pub fn declared() -> Self {
        use sluice_shared::metrics::{ALL, Kind};
        MetricCatalog {
            names: ALL.iter().map(|m| m.name.to_string()).collect(),
            histograms: ALL
                .iter()
                .filter(|m| m.kind == Kind::Histogram)
                .map(|m| m.name.to_string())
                .collect(),
        }
    }

    /// Why `series` (a name used in PromQL) is not something the code exports, if it is not.
    pub fn problem(&self, series: &str) -> Option<String> {
        if self.names.contains(series) {
            return self.histograms.contains(series).then(|| {
                format!("{series} is a histogram: query {series}_bucket, _sum or _count")
            });
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = series.strip_suffix(suffix) {
                if self.histograms.contains(base) {
                    return None;
                }
                if self.names.contains(base) {
                    return Some(format!(
                        "{base} is not a histogram, so {series} does not exist"
                    ));
                }
            }
        }
        Some(format!("{series} is not declared in shared/src/metrics.rs"))
    }
}

/// `sluice_*` series names in a PromQL expression.
pub fn sluice_series(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in expr.match_indices("sluice_") {
        if expr[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        out.insert(expr[at..].chars().take_while(|c| is_ident(*c)).collect());
    }
    out
}

/// The names among `names` that no setting reads, as the binaries' own loader reports them at
/// start-up (each given with an empty value, which the loader treats as unset).
pub fn unknown_settings(names: &BTreeSet<String>) -> BTreeSet<String> {
    let env = names
        .iter()
        // The loader would open an empty SLUICE_CONFIG as the config file; it is known anyway.
        .filter(|name| *name != "SLUICE_CONFIG")
        .map(|name| (name.clone(), String::new()))
        .collect();
    let loader = Loader::from_parts(env, None).expect("no config file");
    let settings = Settings::from_loader(&loader).expect("unset settings take their defaults");
    settings.unknown_settings.into_iter().collect()
}

/// `SLUICE_*` names mentioned in `text`, skipping patterns such as `SLUICE_QUEUE_*` or `SLUICE_<NAME>`.
pub fn sluice_env_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("SLUICE_") {
        if text[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let name: String = text[at..].chars().take_while(|c| is_ident(*c)).collect();
        let next = text[at + name.len()..].chars().next();
        if name.ends_with('_') || matches!(next, Some('*' | '<')) {
            continue;
        }
        out.insert(name);
    }
    out
}

pub fn collect_exprs_yaml(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                match (k.as_str(), v.as_str()) {
                    (Some("expr"), Some(expr)) => out.push(expr.to_string()),
                    _ => collect_exprs_yaml(v, out),
                }
            }
        }
        Value::Sequence(s) => s.iter().for_each(|v| collect_exprs_yaml(v, out)),
        _ => {}
    }
}

pub fn collect_exprs_json(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v.as_str()) {
                    ("expr", Some(expr)) => out.push(expr.to_string()),
                    _ => collect_exprs_json(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs_json(v, out)),
        _ => {}
    }
}

pub fn str_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
