//! Consistency of `deploy/` with the code: the compose file, the Kubernetes/KEDA manifests, the alert
//! rules and the dashboard must name metrics the binaries emit and settings they read, and the
//! shutdown timings must let a worker stopped by scale-down hand its jobs back before it is killed.
//! Nothing here needs a broker or a cluster: it parses every YAML/JSON file under `deploy/` and the
//! Rust sources of `shared/`, `worker/` and `scheduler/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadtests/ sits in the workspace root")
        .to_path_buf()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display()));
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

fn has_ext(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.contains(&e))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every document of every YAML file under `deploy/` (multi-document files split, `<<` merge keys
/// applied as Docker Compose does), with its path.
fn yaml_docs(dir: &Path) -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for path in files_under(dir).into_iter().filter(|p| has_ext(p, &["yaml", "yml"])) {
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

fn json_docs(dir: &Path) -> Vec<(PathBuf, serde_json::Value)> {
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

/// The Rust sources of the binaries and their library: (path, text).
fn rust_sources() -> Vec<(PathBuf, String)> {
    ["shared/src", "worker/src", "scheduler/src"]
        .iter()
        .flat_map(|d| files_under(&repo().join(d)))
        .filter(|p| has_ext(p, &["rs"]))
        .map(|p| {
            let text = read(&p);
            (p, text)
        })
        .collect()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The string literal starting at `text[at]` (which must be `"`), if it is a plain one.
fn literal_at(text: &str, at: usize) -> Option<&str> {
    let rest = text.get(at..)?.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(&rest[..end])
}

/// Metric names the code can emit, and which of them are histograms (exported as `_bucket`,
/// `_sum` and `_count` series, never under the bare name).
struct MetricCatalog {
    names: BTreeSet<String>,
    histograms: BTreeSet<String>,
}

impl MetricCatalog {
    fn from_sources(sources: &[(PathBuf, String)]) -> Self {
        let mut names = BTreeSet::new();
        let mut consts: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (_, text) in sources {
            for (at, _) in text.match_indices("\"sluice_") {
                if let Some(lit) = literal_at(text, at).filter(|l| l.chars().all(is_ident)) {
                    names.insert(lit.to_string());
                }
            }
            // `const NAME: &str = "sluice_...";` — stages refer to names through constants.
            for line in text.lines() {
                let line = line.trim_start();
                let line = line.strip_prefix("pub ").unwrap_or(line);
                let Some(decl) = line.strip_prefix("const ") else { continue };
                let Some((ident, value)) = decl.split_once(": &str = ") else { continue };
                if let Some(lit) = value.find('"').and_then(|i| literal_at(value, i)) {
                    consts.entry(ident.trim().to_string()).or_default().insert(lit.to_string());
                }
            }
        }
        let mut histograms = BTreeSet::new();
        for (_, text) in sources {
            // Matches `histogram!(` and `describe_histogram!(` alike.
            for (at, pat) in text.match_indices("histogram!(") {
                let arg = text[at + pat.len()..].trim_start();
                if arg.starts_with('"') {
                    histograms.extend(literal_at(arg, 0).map(str::to_string));
                } else {
                    let path: String = arg.chars().take_while(|c| is_ident(*c) || *c == ':').collect();
                    let ident = path.rsplit("::").next().unwrap_or_default();
                    histograms.extend(consts.get(ident).into_iter().flatten().cloned());
                }
            }
        }
        histograms.retain(|h| names.contains(h));
        MetricCatalog { names, histograms }
    }

    /// Why `series` (a name used in PromQL) is not something the code exports, if it is not.
    fn problem(&self, series: &str) -> Option<String> {
        if self.names.contains(series) {
            return self
                .histograms
                .contains(series)
                .then(|| format!("{series} is a histogram: query {series}_bucket, _sum or _count"));
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = series.strip_suffix(suffix) {
                if self.histograms.contains(base) {
                    return None;
                }
                if self.names.contains(base) {
                    return Some(format!("{base} is not a histogram, so {series} does not exist"));
                }
            }
        }
        Some(format!("{series} is not emitted anywhere in shared/, worker/ or scheduler/"))
    }
}

/// `sluice_*` series names in a PromQL expression.
fn sluice_series(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in expr.match_indices("sluice_") {
        if expr[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        out.insert(expr[at..].chars().take_while(|c| is_ident(*c)).collect());
    }
    out
}

/// Every `SLUICE_*` environment variable the binaries read: the loader's `get/opt/secs/size/secret`
/// names in shared/src/config (plus `_FILE` for secrets), and full `"SLUICE_..."` literals anywhere
/// (SLUICE_LOG, SLUICE_CONFIG and the names errors report).
fn known_settings(sources: &[(PathBuf, String)]) -> BTreeSet<String> {
    let mut known = BTreeSet::new();
    for (path, text) in sources {
        for (at, _) in text.match_indices("\"SLUICE_") {
            if let Some(lit) = literal_at(text, at).filter(|l| l.chars().all(is_ident)) {
                known.insert(lit.to_string());
            }
        }
        if !path.components().any(|c| c.as_os_str() == "config") {
            continue;
        }
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for method in ["get", "opt", "secs", "size", "secret"] {
            for (at, pat) in code.match_indices(&format!(".{method}")) {
                let mut rest = &code[at + pat.len()..];
                if let Some(generic) = rest.strip_prefix("::<") {
                    rest = generic.split_once('>').map_or("", |(_, r)| r);
                }
                let Some(arg) = rest.strip_prefix('(') else { continue };
                let Some(name) = literal_at(arg, 0).filter(|n| {
                    !n.is_empty() && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                }) else {
                    continue;
                };
                let env = format!("SLUICE_{}", name.to_ascii_uppercase());
                if method == "secret" {
                    known.insert(format!("{env}_FILE"));
                }
                known.insert(env);
            }
        }
    }
    known
}

/// `SLUICE_*` names mentioned in `text`, skipping patterns such as `SLUICE_QUEUE_*` or `SLUICE_<NAME>`.
fn sluice_env_names(text: &str) -> BTreeSet<String> {
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

fn collect_exprs_yaml(v: &Value, out: &mut Vec<String>) {
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

fn collect_exprs_json(v: &serde_json::Value, out: &mut Vec<String>) {
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

fn str_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn num(env: &BTreeMap<String, String>, name: &str, default: f64) -> f64 {
    env.get(name).filter(|v| !v.is_empty()).map_or(default, |v| {
        v.trim().parse().unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}"))
    })
}

fn listen_port(env: &BTreeMap<String, String>, name: &str, default: u16) -> u16 {
    env.get(name).map_or(default, |addr| {
        let port = addr.rsplit(':').next().unwrap_or_default();
        port.parse().unwrap_or_else(|e| panic!("{name}={addr:?}: bad port: {e}"))
    })
}

/// A Compose duration (`330s`, `5m30s`, `1h`) in seconds.
fn compose_duration(text: &str) -> f64 {
    let (mut total, mut digits) = (0.0, String::new());
    for c in text.chars() {
        if c.is_ascii_digit() || c == '.' {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600.0,
            'm' => 60.0,
            's' => 1.0,
            _ => panic!("unsupported duration {text:?}"),
        };
        total += digits.parse::<f64>().unwrap_or_else(|_| panic!("bad duration {text:?}")) * unit;
        digits.clear();
    }
    assert!(digits.is_empty(), "duration {text:?} lacks a unit");
    total
}

/// Shutdown timing of one worker definition: the process must be able to finish (or hand back) its
/// jobs before the platform sends SIGKILL, or every stop counts a delivery toward x-delivery-limit.
fn check_grace(what: &str, grace: f64, env: &BTreeMap<String, String>, errors: &mut Vec<String>) {
    let deadline = num(env, "SLUICE_SHUTDOWN_DEADLINE_SECS", 25.0);
    let longest = num(env, "SLUICE_DOCUMENT_TIMEOUT_SECS", 600.0);
    if grace <= deadline {
        errors.push(format!(
            "{what}: grace period {grace}s is not above SLUICE_SHUTDOWN_DEADLINE_SECS={deadline}: \
             the worker is killed before it hands unfinished jobs back"
        ));
    }
    if grace <= longest {
        errors.push(format!(
            "{what}: grace period {grace}s is not above SLUICE_DOCUMENT_TIMEOUT_SECS={longest}: \
             scale-down cuts the longest documents short"
        ));
    }
}

#[test]
fn every_deploy_file_parses() {
    let deploy = repo().join("deploy");
    let yaml = yaml_docs(&deploy);
    let json = json_docs(&deploy);
    let files: BTreeSet<_> = yaml.iter().map(|(p, _)| p).collect();
    assert!(files.len() >= 10 && !json.is_empty(), "deploy/ lost its manifests: {files:?}");
}

#[test]
fn monitoring_uses_only_metrics_the_code_emits() {
    let catalog = MetricCatalog::from_sources(&rust_sources());
    assert!(
        catalog.histograms.contains("sluice_stage_duration_seconds")
            && catalog.histograms.contains("sluice_job_publish_to_ack_seconds")
            && catalog.names.contains("sluice_jobs_total"),
        "the source scan found too little: {:?}",
        catalog.names
    );
    let deploy = repo().join("deploy");
    let mut exprs = Vec::new();
    for (path, doc) in yaml_docs(&deploy) {
        let mut found = Vec::new();
        collect_exprs_yaml(&doc, &mut found);
        exprs.extend(found.into_iter().map(|e| (path.clone(), e)));
    }
    for (path, doc) in json_docs(&deploy) {
        let mut found = Vec::new();
        collect_exprs_json(&doc, &mut found);
        exprs.extend(found.into_iter().map(|e| (path.clone(), e)));
    }
    let mut used = BTreeSet::new();
    let mut errors = Vec::new();
    for (path, expr) in &exprs {
        for series in sluice_series(expr) {
            if let Some(problem) = catalog.problem(&series) {
                errors.push(format!("{}: {problem}\n    in: {expr}", path.display()));
            }
            used.insert(series);
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert!(used.len() >= 12, "alerts and dashboard reference only {used:?}");
}

#[test]
fn the_metric_check_rejects_what_prometheus_would_not_find() {
    let catalog = MetricCatalog::from_sources(&rust_sources());
    let bad = [
        "rate(sluice_jobs_acked_total[5m])",
        "rate(sluice_jobs_total_bucket[5m])",
        "histogram_quantile(0.9, rate(sluice_stage_duration_seconds[5m]))",
    ];
    for expr in bad {
        let problems: Vec<_> = sluice_series(expr).iter().filter_map(|s| catalog.problem(s)).collect();
        assert_eq!(problems.len(), 1, "{expr} should be rejected: {problems:?}");
    }
    let good = "histogram_quantile(0.9, sum by (le) (rate(sluice_stage_duration_seconds_bucket[5m])))";
    assert!(sluice_series(good).iter().all(|s| catalog.problem(s).is_none()));
}

#[test]
fn deploy_sets_only_settings_the_binaries_read() {
    let known = known_settings(&rust_sources());
    for must in ["SLUICE_AMQP_URL_FILE", "SLUICE_SHUTDOWN_DEADLINE_SECS", "SLUICE_API_KEY_FILE", "SLUICE_LOG"] {
        assert!(known.contains(must), "the settings scan missed {must}: {known:?}");
    }
    assert!(!known.contains("SLUICE_NOT_A_SETTING"));
    let mut errors = Vec::new();
    for path in files_under(&repo().join("deploy")) {
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        for name in sluice_env_names(&text) {
            if !known.contains(&name) {
                errors.push(format!("{}: {name} is not a setting Sluice reads", path.display()));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert_eq!(
        sluice_env_names("SLUICE_QUEUE_* SLUICE_<NAME>_FILE `SLUICE_PREFETCH`"),
        BTreeSet::from(["SLUICE_PREFETCH".to_string()])
    );
}

/// The Kubernetes objects of deploy/k8s by kind.
struct Cluster {
    objects: Vec<(PathBuf, Value)>,
}

impl Cluster {
    fn load() -> Self {
        Cluster { objects: yaml_docs(&repo().join("deploy/k8s")) }
    }
    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.iter().map(|(_, v)| v).filter(move |v| v["kind"].as_str() == Some(kind))
    }
    fn names(&self, kind: &str) -> BTreeSet<String> {
        self.of_kind(kind).filter_map(|v| v["metadata"]["name"].as_str().map(str::to_string)).collect()
    }
    /// The environment a container sees: its ConfigMaps (`envFrom`), then its literal `env`.
    fn env(&self, container: &Value) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for source in container["envFrom"].as_sequence().into_iter().flatten() {
            let Some(name) = source["configMapRef"]["name"].as_str() else { continue };
            let map = self
                .of_kind("ConfigMap")
                .find(|c| c["metadata"]["name"].as_str() == Some(name))
                .unwrap_or_else(|| panic!("envFrom names ConfigMap {name}, which deploy/k8s lacks"));
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
    fn containers_running<'a>(&'a self, program: &'a str) -> Vec<(String, &'a Value, &'a Value)> {
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
                    out.push((d["metadata"]["name"].as_str().unwrap_or("?").to_string(), pod, c));
                }
            }
        }
        out
    }
}

/// Probes hit /readyz and /healthz on the port the binary listens on; secret files are mounted.
fn check_container(what: &str, pod: &Value, c: &Value, env: &BTreeMap<String, String>, port: u16, errors: &mut Vec<String>) {
    let port_of = |p: &Value| -> Option<u16> {
        if let Some(n) = p.as_u64() {
            return u16::try_from(n).ok();
        }
        let name = p.as_str()?;
        c["ports"].as_sequence()?.iter().find(|q| q["name"].as_str() == Some(name))?["containerPort"]
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
    };
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        if get["path"].as_str() != Some(path) || port_of(&get["port"]) != Some(port) {
            errors.push(format!("{what}: {probe} must GET {path} on port {port}, got {get:?}"));
        }
    }
    let mounts: BTreeMap<String, String> = c["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["name"].as_str()?.to_string(), m["mountPath"].as_str()?.to_string())))
        .collect();
    let mut files = BTreeSet::new();
    for vol in pod["volumes"].as_sequence().into_iter().flatten() {
        let (Some(name), Some(items)) = (vol["name"].as_str(), vol["secret"]["items"].as_sequence()) else {
            continue;
        };
        let Some(dir) = mounts.get(name) else { continue };
        files.extend(items.iter().filter_map(|i| i["path"].as_str()).map(|p| format!("{dir}/{p}")));
    }
    for (name, value) in env.iter().filter(|(k, _)| k.starts_with("SLUICE_") && k.ends_with("_FILE")) {
        if !files.contains(value) {
            errors.push(format!("{what}: {name}={value} is not a mounted secret item ({files:?})"));
        }
    }
}

#[test]
fn kubernetes_workers_drain_before_they_are_killed_and_probe_the_right_port() {
    let cluster = Cluster::load();
    let workers = cluster.containers_running("sluice-worker");
    let schedulers = cluster.containers_running("serve");
    assert!(!workers.is_empty() && !schedulers.is_empty(), "no worker or scheduler Deployment in deploy/k8s");
    let mut errors = Vec::new();
    for (name, pod, c) in &workers {
        let env = cluster.env(c);
        let grace = pod["terminationGracePeriodSeconds"].as_f64().unwrap_or(30.0);
        check_grace(&format!("Deployment {name}"), grace, &env, &mut errors);
        let port = listen_port(&env, "SLUICE_HTTP_LISTEN", 9090);
        check_container(&format!("Deployment {name}"), pod, c, &env, port, &mut errors);
    }
    for (name, pod, c) in &schedulers {
        let env = cluster.env(c);
        let port = listen_port(&env, "SLUICE_API_LISTEN", 8080);
        check_container(&format!("Deployment {name}"), pod, c, &env, port, &mut errors);
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn keda_scales_workers_on_the_work_queue_through_the_management_api() {
    let cluster = Cluster::load();
    let workers = cluster.containers_running("sluice-worker");
    let worker_names: BTreeSet<_> = workers.iter().map(|(n, _, _)| n.clone()).collect();
    let env = cluster.env(workers.first().expect("a worker Deployment").2);
    let prefix = env.get("SLUICE_QUEUE_PREFIX").map_or("sluice", String::as_str);
    let prefetch = num(&env, "SLUICE_PREFETCH", 16.0);
    let auths = cluster.names("TriggerAuthentication");
    let scaled: Vec<_> = cluster.of_kind("ScaledObject").collect();
    assert!(!scaled.is_empty(), "deploy/k8s has no KEDA ScaledObject");
    for so in scaled {
        let spec = &so["spec"];
        let target = spec["scaleTargetRef"]["name"].as_str().unwrap_or_default();
        assert!(worker_names.contains(target), "ScaledObject targets {target}, not a worker Deployment");
        let (min, max) = (spec["minReplicaCount"].as_u64(), spec["maxReplicaCount"].as_u64());
        assert!(matches!((min, max), (Some(lo), Some(hi)) if hi >= 1 && lo <= hi), "min/max replicas: {min:?}/{max:?}");
        let triggers = spec["triggers"].as_sequence().expect("ScaledObject triggers");
        let t = triggers.iter().find(|t| t["type"].as_str() == Some("rabbitmq")).expect("a rabbitmq trigger");
        let m = &t["metadata"];
        assert_eq!(
            m["protocol"].as_str(),
            Some("http"),
            "only the management API counts unacked (in-flight) messages; AMQP would scale busy workers away"
        );
        assert_eq!(m["mode"].as_str(), Some("QueueLength"));
        assert_eq!(m["queueName"].as_str(), Some(format!("{prefix}.jobs").as_str()), "queueName vs SLUICE_QUEUE_PREFIX");
        let value: f64 = m["value"].as_str().and_then(|v| v.parse().ok()).expect("trigger value as a string");
        assert!(value >= prefetch, "value {value} per replica is below SLUICE_PREFETCH={prefetch}");
        assert!(m["activationValue"].as_str().is_some(), "activationValue missing");
        let auth = t["authenticationRef"]["name"].as_str().unwrap_or_default();
        assert!(auths.contains(auth), "authenticationRef {auth} is not a TriggerAuthentication in deploy/k8s");
    }
}

#[test]
fn kustomization_lists_every_manifest_and_the_operator_rules_match_the_plain_ones() {
    let k8s = repo().join("deploy/k8s");
    let kustomization: Value = serde_yaml::from_str(&read(&k8s.join("kustomization.yaml"))).expect("kustomization");
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    let present: BTreeSet<String> = files_under(&k8s)
        .iter()
        .filter(|p| has_ext(p, &["yaml"]))
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .filter(|n| n != "kustomization.yaml" && !n.ends_with(".example.yaml"))
        .collect();
    assert_eq!(listed, present, "kustomization.yaml resources vs files in deploy/k8s");

    let operator = Cluster::load();
    let rule = operator.of_kind("PrometheusRule").next().expect("a PrometheusRule");
    let plain: Value = serde_yaml::from_str(&read(&repo().join("deploy/monitoring/alerts.rules.yaml"))).unwrap();
    assert_eq!(rule["spec"]["groups"], plain["groups"], "prometheusrule.yaml and alerts.rules.yaml differ");
}

#[test]
fn compose_workers_drain_before_they_are_killed_and_secrets_are_files() {
    let path = repo().join("deploy/compose.yaml");
    let (_, compose) = yaml_docs(&repo().join("deploy"))
        .into_iter()
        .find(|(p, _)| *p == path)
        .expect("deploy/compose.yaml");
    let services = compose["services"].as_mapping().expect("services");
    let declared: BTreeSet<_> = compose["secrets"].as_mapping().into_iter().flatten().filter_map(|(k, _)| k.as_str()).collect();
    let mut errors = Vec::new();
    let mut saw_worker = false;
    for (name, svc) in services {
        let name = name.as_str().unwrap_or("?");
        let env: BTreeMap<String, String> = match &svc["environment"] {
            Value::Mapping(m) => m.iter().filter_map(|(k, v)| Some((str_of(k)?, str_of(v)?))).collect(),
            Value::Sequence(s) => s
                .iter()
                .filter_map(|kv| kv.as_str()?.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .collect(),
            _ => BTreeMap::new(),
        };
        let mut mounted = BTreeSet::new();
        for s in svc["secrets"].as_sequence().into_iter().flatten() {
            let source = s.as_str().or_else(|| s["source"].as_str()).unwrap_or_default();
            if !declared.contains(source) {
                errors.push(format!("service {name} uses undeclared secret {source}"));
            }
            let target = s["target"].as_str().map_or(format!("/run/secrets/{source}"), str::to_string);
            mounted.insert(target);
        }
        for (k, v) in env.iter().filter(|(k, _)| k.ends_with("_FILE")) {
            if !mounted.contains(v) {
                errors.push(format!("service {name}: {k}={v} is not one of its secrets {mounted:?}"));
            }
        }
        let runs_worker = svc["entrypoint"].as_sequence().into_iter().flatten().any(|w| w.as_str() == Some("sluice-worker"));
        if runs_worker {
            saw_worker = true;
            let grace = svc["stop_grace_period"].as_str().map_or(10.0, compose_duration);
            check_grace(&format!("compose service {name}"), grace, &env, &mut errors);
        }
    }
    for (name, s) in compose["secrets"].as_mapping().into_iter().flatten() {
        let file = s["file"].as_str().unwrap_or_default();
        if !repo().join("deploy").join(file).is_file() {
            errors.push(format!("secret {name:?}: file {file} missing"));
        }
    }
    assert!(saw_worker, "no service runs sluice-worker in deploy/compose.yaml");
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert_eq!(compose_duration("5m30s"), 330.0);
}
