//! The Kubernetes objects each overlay of `deploy/k8s/overlays` renders to (through `kubectl
//! kustomize`, exactly what `kubectl apply -k` would send), and the per-container checks (probes,
//! secret files).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_yaml::Value;

use super::scan::{repo, str_of};

/// The objects one overlay renders to.
pub struct Cluster {
    pub overlay: String,
    pub objects: Vec<Value>,
}

/// `kubectl` (its built-in kustomize renders the overlays): `$SLUICE_KUBECTL`, else the copy that
/// scripts/deploy-checks.sh installs, else the one on PATH.
fn kubectl() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_KUBECTL") {
        return path.into();
    }
    let tools = std::env::var_os("SLUICE_DEPLOY_TOOLS").map_or_else(
        || {
            Path::new(&std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/sluice-deploy-tools")
        },
        PathBuf::from,
    );
    let installed = tools.join("bin/kubectl");
    if installed.is_file() {
        installed
    } else {
        "kubectl".into()
    }
}

/// Every directory under deploy/k8s/overlays.
pub fn overlay_dirs() -> Vec<PathBuf> {
    let dir = repo().join("deploy/k8s/overlays");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    out.sort();
    out
}

impl Cluster {
    /// `kubectl kustomize <dir>`, parsed. Panics (with the way out) when kubectl is missing.
    pub fn render(dir: &Path) -> Self {
        let kubectl = kubectl();
        let output = Command::new(&kubectl)
            .arg("kustomize")
            .arg(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): run scripts/deploy-checks.sh once (it installs kubectl), \
                     or point SLUICE_KUBECTL at a kubectl",
                    kubectl.display()
                )
            });
        assert!(
            output.status.success(),
            "kubectl kustomize {} failed:\n{}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).expect("kustomize prints UTF-8");
        let objects = serde_yaml::Deserializer::from_str(&text)
            .map(|de| Value::deserialize(de).expect("kustomize prints YAML"))
            .filter(|v| !v.is_null())
            .collect();
        Cluster {
            overlay: dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("?")
                .to_string(),
            objects,
        }
    }

    /// Every overlay, rendered once per test process.
    pub fn all() -> &'static [Cluster] {
        static ALL: OnceLock<Vec<Cluster>> = OnceLock::new();
        ALL.get_or_init(|| {
            let dirs = overlay_dirs();
            assert!(
                dirs.len() >= 2,
                "deploy/k8s/overlays should hold dev and prod: {dirs:?}"
            );
            dirs.iter().map(|d| Cluster::render(d)).collect()
        })
    }

    pub fn get(overlay: &str) -> &'static Cluster {
        Self::all()
            .iter()
            .find(|c| c.overlay == overlay)
            .unwrap_or_else(|| panic!("no overlay {overlay}"))
    }

    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .filter(move |v| v["kind"].as_str() == Some(kind))
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
                    panic!(
                        "envFrom names ConfigMap {name}, which {} lacks",
                        self.overlay
                    )
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

    /// ("Kind/name", pod template) of every Deployment, StatefulSet, Job and CronJob.
    pub fn pod_templates(&self) -> Vec<(String, &Value)> {
        let mut out = Vec::new();
        for o in &self.objects {
            let kind = o["kind"].as_str().unwrap_or_default();
            let template = match kind {
                "Deployment" | "StatefulSet" | "Job" => &o["spec"]["template"],
                "CronJob" => &o["spec"]["jobTemplate"]["spec"]["template"],
                _ => continue,
            };
            let name = o["metadata"]["name"].as_str().unwrap_or("?");
            out.push((format!("{kind}/{name}"), template));
        }
        out
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

/// Whether `selector` (a `matchLabels` mapping) selects a pod with `labels`.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(wanted) = selector.as_mapping() else {
        return false;
    };
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Volume name → mount path of a container.
pub fn mounts(c: &Value) -> BTreeMap<String, String> {
    c["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            Some((
                m["name"].as_str()?.to_string(),
                m["mountPath"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// The files a pod's volumes put at each path: `secret.items` and `projected.sources[].secret.items`.
pub fn secret_files(pod: &Value, mounts: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    for vol in pod["volumes"].as_sequence().into_iter().flatten() {
        let Some(dir) = vol["name"].as_str().and_then(|n| mounts.get(n)) else {
            continue;
        };
        let mut item_lists = vec![&vol["secret"]["items"]];
        for source in vol["projected"]["sources"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            item_lists.push(&source["secret"]["items"]);
        }
        for items in item_lists {
            files.extend(
                items
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["path"].as_str())
                    .map(|p| format!("{dir}/{p}")),
            );
        }
    }
    files
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
    let files = secret_files(pod, &mounts(c));
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
