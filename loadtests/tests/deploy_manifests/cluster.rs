//! The Kubernetes objects of `deploy/k8s` and the per-container checks (probes, secret files).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_yaml::Value;

use super::scan::{repo, str_of, yaml_docs};

/// The Kubernetes objects of deploy/k8s by kind.
pub struct Cluster {
    pub objects: Vec<(PathBuf, Value)>,
}

impl Cluster {
    pub fn load() -> Self {
        Cluster {
            objects: yaml_docs(&repo().join("deploy/k8s")),
        }
    }
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .map(|(_, v)| v)
            .filter(move |v| v["kind"].as_str() == Some(kind))
    }
    pub fn names(&self, kind: &str) -> BTreeSet<String> {
        self.of_kind(kind)
            .filter_map(|v| v["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    }
    /// The environment a container sees: its ConfigMaps (`envFrom`), then its literal `env`.
    pub fn env(&self, container: &Value) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for source in container["envFrom"].as_sequence().into_iter().flatten() {
            let Some(name) = source["configMapRef"]["name"].as_str() else {
                continue;
            };
            let map = self
                .of_kind("ConfigMap")
                .find(|c| c["metadata"]["name"].as_str() == Some(name))
                .unwrap_or_else(|| {
                    panic!("envFrom names ConfigMap {name}, which deploy/k8s lacks")
                });
            for (k, v) in map["data"].as_mapping().into_iter().flatten() {
                env.insert(str_of(k).unwrap_or_default(), str_of(v).unwrap_or_default());
            }
        }
        for var in container["env"].as_sequence().into_iter().flatten() {
            if let (Some(k), Some(v)) = (var["name"].as_str(), str_of(&var["value"])) {
                env.insert(k.to_string(), v);
            }
        }
        env
    }
    /// (Deployment name, pod spec, container) of every container running `program`.
    pub fn containers_running<'a>(
        &'a self,
        program: &'a str,
    ) -> Vec<(String, &'a Value, &'a Value)> {
        let mut out = Vec::new();
        for d in self.of_kind("Deployment") {
            let pod = &d["spec"]["template"]["spec"];
            for c in pod["containers"].as_sequence().into_iter().flatten() {
                let words: Vec<_> = ["command", "args"]
                    .iter()
                    .flat_map(|k| c[*k].as_sequence().into_iter().flatten())
                    .filter_map(Value::as_str)
                    .collect();
                let runs = if program == "sluice-worker" {
                    words.contains(&"sluice-worker")
                } else {
                    !words.contains(&"sluice-worker") && words.contains(&program)
                };
                if runs {
                    out.push((
                        d["metadata"]["name"].as_str().unwrap_or("?").to_string(),
                        pod,
                        c,
                    ));
                }
            }
        }
        out
    }
}

/// Probes hit /readyz and /healthz on the port the binary listens on; secret files are mounted.
pub fn check_container(
    what: &str,
    pod: &Value,
    c: &Value,
    env: &BTreeMap<String, String>,
    port: u16,
    errors: &mut Vec<String>,
) {
    let port_of = |p: &Value| -> Option<u16> {
        if let Some(n) = p.as_u64() {
            return u16::try_from(n).ok();
        }
        let name = p.as_str()?;
        c["ports"]
            .as_sequence()?
            .iter()
            .find(|q| q["name"].as_str() == Some(name))?["containerPort"]
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
    };
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        if get["path"].as_str() != Some(path) || port_of(&get["port"]) != Some(port) {
            errors.push(format!(
                "{what}: {probe} must GET {path} on port {port}, got {get:?}"
            ));
        }
    }
    let mounts: BTreeMap<String, String> = c["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            Some((
                m["name"].as_str()?.to_string(),
                m["mountPath"].as_str()?.to_string(),
            ))
        })
        .collect();
    let mut files = BTreeSet::new();
    for vol in pod["volumes"].as_sequence().into_iter().flatten() {
        let (Some(name), Some(items)) =
            (vol["name"].as_str(), vol["secret"]["items"].as_sequence())
        else {
            continue;
        };
        let Some(dir) = mounts.get(name) else {
            continue;
        };
        files.extend(
            items
                .iter()
                .filter_map(|i| i["path"].as_str())
                .map(|p| format!("{dir}/{p}")),
        );
    }
    for (name, value) in env
        .iter()
        .filter(|(k, _)| k.starts_with("SLUICE_") && k.ends_with("_FILE"))
    {
        if !files.contains(value) {
            errors.push(format!(
                "{what}: {name}={value} is not a mounted secret item ({files:?})"
            ));
        }
    }
}
