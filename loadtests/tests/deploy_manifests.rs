//! Consistency of `deploy/` with the code: the compose file, the Kubernetes/KEDA manifests, the alert
//! rules and the dashboard must name metrics the binaries emit and settings they read, and the
//! shutdown timings must let a worker stopped by scale-down hand its jobs back before it is killed.
//! Nothing here needs a broker or a cluster: it parses every YAML/JSON file under `deploy/`, the
//! objects every Kustomize overlay renders to (`kubectl kustomize`; scripts/deploy-checks.sh
//! installs kubectl) and the Rust sources of `shared/`, `worker/` and `scheduler/`.

#[path = "deploy_manifests/cluster.rs"]
mod cluster;
#[path = "deploy_manifests/platform.rs"]
mod platform;
#[path = "deploy_manifests/scan.rs"]
mod scan;

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml::Value;

use cluster::{Cluster, check_container};
use scan::*;

fn num(env: &BTreeMap<String, String>, name: &str, default: f64) -> f64 {
    env.get(name)
        .filter(|v| !v.is_empty())
        .map_or(default, |v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}"))
        })
}

fn listen_port(env: &BTreeMap<String, String>, name: &str, default: u16) -> u16 {
    env.get(name).map_or(default, |addr| {
        let port = addr.rsplit(':').next().unwrap_or_default();
        port.parse()
            .unwrap_or_else(|e| panic!("{name}={addr:?}: bad port: {e}"))
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
        total += digits
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad duration {text:?}"))
            * unit;
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
    assert!(
        files.len() >= 10 && !json.is_empty(),
        "deploy/ lost its manifests: {files:?}"
    );
}

#[test]
fn monitoring_uses_only_metrics_the_code_emits() {
    let catalog = MetricCatalog::declared();
    assert!(
        catalog.histograms.contains("sluice_stage_duration_seconds")
            && catalog
                .histograms
                .contains("sluice_job_publish_to_ack_seconds")
            && catalog.names.contains("sluice_jobs_total"),
        "the declared metrics lack the ones the checks rely on: {:?}",
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
    assert!(
        used.len() >= 12,
        "alerts and dashboard reference only {used:?}"
    );
}

#[test]
fn the_metric_check_rejects_what_prometheus_would_not_find() {
    let catalog = MetricCatalog::declared();
    let bad = [
        "rate(sluice_jobs_acked_total[5m])",
        "rate(sluice_jobs_total_bucket[5m])",
        "histogram_quantile(0.9, rate(sluice_stage_duration_seconds[5m]))",
    ];
    for expr in bad {
        let problems: Vec<_> = sluice_series(expr)
            .iter()
            .filter_map(|s| catalog.problem(s))
            .collect();
        assert_eq!(problems.len(), 1, "{expr} should be rejected: {problems:?}");
    }
    let good =
        "histogram_quantile(0.9, sum by (le) (rate(sluice_stage_duration_seconds_bucket[5m])))";
    assert!(
        sluice_series(good)
            .iter()
            .all(|s| catalog.problem(s).is_none())
    );
}

#[test]
fn deploy_sets_only_settings_the_binaries_read() {
    // The binaries' own loader decides, as it does at start-up; it knows settings whose names a
    // scan of the source would miss (a lookup spanning lines, a secret's `_FILE` spelling).
    let probe = [
        "SLUICE_AMQP_URL_FILE",
        "SLUICE_SHUTDOWN_DEADLINE_SECS",
        "SLUICE_API_KEY_FILE",
        "SLUICE_LOG",
        "SLUICE_PDF_MAX_CHILDREN",
        "SLUICE_NOT_A_SETTING",
    ];
    assert_eq!(
        unknown_settings(&probe.iter().map(|n| n.to_string()).collect()),
        BTreeSet::from(["SLUICE_NOT_A_SETTING".to_string()])
    );
    let mut mentions = Vec::new();
    for path in files_under(&repo().join("deploy")) {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        mentions.extend(
            sluice_env_names(&text)
                .into_iter()
                .map(|n| (path.clone(), n)),
        );
    }
    assert!(
        mentions.len() > 20,
        "too few settings found in deploy/: {mentions:?}"
    );
    let unknown = unknown_settings(&mentions.iter().map(|(_, n)| n.clone()).collect());
    let errors: Vec<String> = mentions
        .iter()
        .filter(|(_, name)| unknown.contains(name))
        .map(|(path, name)| format!("{}: {name} is not a setting Sluice reads", path.display()))
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert_eq!(
        sluice_env_names("SLUICE_QUEUE_* SLUICE_<NAME>_FILE `SLUICE_PREFETCH`"),
        BTreeSet::from(["SLUICE_PREFETCH".to_string()])
    );
}

#[test]
fn kubernetes_workers_drain_before_they_are_killed_and_probe_the_right_port() {
    let mut errors = Vec::new();
    for cluster in Cluster::all() {
        let workers = cluster.containers_running("sluice-worker");
        let schedulers = cluster.containers_running("serve");
        assert!(
            !workers.is_empty() && !schedulers.is_empty(),
            "no worker or scheduler Deployment in overlay {}",
            cluster.overlay
        );
        for (name, pod, c) in &workers {
            let what = format!("{}: Deployment {name}", cluster.overlay);
            let env = cluster.env(c);
            let grace = pod["terminationGracePeriodSeconds"]
                .as_f64()
                .unwrap_or(30.0);
            check_grace(&what, grace, &env, &mut errors);
            let port = listen_port(&env, "SLUICE_HTTP_LISTEN", 9090);
            check_container(&what, pod, c, &env, port, &mut errors);
        }
        for (name, pod, c) in &schedulers {
            let env = cluster.env(c);
            let port = listen_port(&env, "SLUICE_API_LISTEN", 8080);
            let what = format!("{}: Deployment {name}", cluster.overlay);
            check_container(&what, pod, c, &env, port, &mut errors);
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// The number in a KEDA string parameter.
fn keda_number(metadata: &Value, key: &str) -> f64 {
    metadata[key]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("trigger {key} as a numeric string: {metadata:?}"))
}

#[test]
fn keda_targets_one_prefetch_per_worker_with_a_fallback() {
    let mut saw_prometheus = false;
    for cluster in Cluster::all() {
        let overlay = &cluster.overlay;
        let workers = cluster.containers_running("sluice-worker");
        let worker_names: BTreeSet<_> = workers.iter().map(|(n, _, _)| n.clone()).collect();
        let env = cluster.env(workers.first().expect("a worker Deployment").2);
        let prefix = env
            .get("SLUICE_QUEUE_PREFIX")
            .map_or("sluice", String::as_str);
        let queue = format!("{prefix}.jobs");
        let prefetch = num(&env, "SLUICE_PREFETCH", 16.0);
        let scaled: Vec<_> = cluster.of_kind("ScaledObject").collect();
        assert!(!scaled.is_empty(), "{overlay}: no KEDA ScaledObject");
        for so in scaled {
            let spec = &so["spec"];
            let target = spec["scaleTargetRef"]["name"].as_str().unwrap_or_default();
            assert!(
                worker_names.contains(target),
                "{overlay}: ScaledObject targets {target}, not a worker Deployment"
            );
            let (min, max) = (
                spec["minReplicaCount"].as_u64(),
                spec["maxReplicaCount"].as_u64(),
            );
            assert!(
                matches!((min, max), (Some(lo), Some(hi)) if hi >= 1 && lo <= hi),
                "{overlay}: min/max replicas: {min:?}/{max:?}"
            );
            // At zero replicas an unreadable queue length would otherwise never wake the fleet.
            let fallback = &spec["fallback"];
            assert!(
                fallback["failureThreshold"].as_u64() >= Some(1)
                    && fallback["replicas"].as_u64() >= Some(1),
                "{overlay}: ScaledObject needs a fallback with at least one replica: {fallback:?}"
            );
            let triggers = spec["triggers"]
                .as_sequence()
                .expect("ScaledObject triggers");
            assert_eq!(
                triggers.len(),
                1,
                "{overlay}: one trigger on the work queue"
            );
            let t = &triggers[0];
            let m = &t["metadata"];
            match t["type"].as_str() {
                Some("rabbitmq") => {
                    assert_eq!(
                        m["protocol"].as_str(),
                        Some("http"),
                        "{overlay}: only the management API counts unacked (in-flight) messages; \
                         AMQP would scale busy workers away"
                    );
                    assert_eq!(m["mode"].as_str(), Some("QueueLength"));
                    assert_eq!(m["queueName"].as_str(), Some(queue.as_str()), "{overlay}");
                    assert_eq!(
                        keda_number(m, "value"),
                        prefetch,
                        "{overlay}: messages per replica must equal SLUICE_PREFETCH: more keeps \
                         only part of a busy fleet, less starves workers"
                    );
                    assert!(m["activationValue"].as_str().is_some(), "{overlay}");
                    let auth = t["authenticationRef"]["name"].as_str().unwrap_or_default();
                    let ta = cluster
                        .of_kind("TriggerAuthentication")
                        .find(|a| a["metadata"]["name"].as_str() == Some(auth))
                        .unwrap_or_else(|| panic!("{overlay}: no TriggerAuthentication {auth}"));
                    let params: BTreeSet<_> = ta["spec"]["secretTargetRef"]
                        .as_sequence()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r["parameter"].as_str())
                        .collect();
                    assert!(
                        params.contains("username") && params.contains("password"),
                        "{overlay}: credentials as separate parameters, not inside the URL: {params:?}"
                    );
                }
                Some("prometheus") => {
                    saw_prometheus = true;
                    let query = m["query"].as_str().unwrap_or_default();
                    assert!(
                        query.contains("rabbitmq_queue_messages{")
                            && query.contains(&format!("queue=\"{queue}\"")),
                        "{overlay}: the Prometheus trigger must read rabbitmq_queue_messages \
                         (ready + unacked) of {queue}: {query}"
                    );
                    assert_eq!(keda_number(m, "threshold"), prefetch, "{overlay}");
                    assert!(m["activationThreshold"].as_str().is_some(), "{overlay}");
                }
                other => panic!("{overlay}: unexpected trigger {other:?}"),
            }
        }
    }
    assert!(
        saw_prometheus,
        "no overlay uses the Prometheus trigger (components/keda-prometheus), the RabbitMQ 4 choice"
    );
}

/// The YAML files directly in `dir`, except the kustomization itself.
fn manifests_in(dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect()
}

fn listed(kustomization: &std::path::Path, key: &str) -> BTreeSet<String> {
    let k: Value = serde_yaml::from_str(&read(kustomization)).expect("kustomization");
    k[key]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect()
}

#[test]
fn kustomizations_list_every_manifest_and_the_operator_rules_match_the_plain_ones() {
    let k8s = repo().join("deploy/k8s");
    let base = listed(&k8s.join("base/kustomization.yaml"), "resources");
    let files = manifests_in(&k8s.join("base"));
    assert_eq!(
        base.iter()
            .filter(|r| r.ends_with(".yaml"))
            .cloned()
            .collect::<BTreeSet<_>>(),
        files,
        "base/kustomization.yaml resources vs files in deploy/k8s/base"
    );
    let mut used_components = BTreeSet::new();
    for overlay in cluster::overlay_dirs() {
        for c in listed(&overlay.join("kustomization.yaml"), "components") {
            used_components.insert(c.rsplit('/').next().unwrap_or_default().to_string());
        }
    }
    for entry in std::fs::read_dir(k8s.join("components")).expect("components/") {
        let dir = entry.expect("entry").path();
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        let resources = listed(&dir.join("kustomization.yaml"), "resources");
        assert_eq!(
            resources,
            manifests_in(&dir),
            "components/{name}/kustomization.yaml resources vs its files"
        );
        assert!(
            used_components.contains(&name),
            "components/{name} is used by no overlay, so nothing renders or validates it"
        );
    }

    let plain: Value =
        serde_yaml::from_str(&read(&repo().join("deploy/monitoring/alerts.rules.yaml"))).unwrap();
    for cluster in Cluster::all() {
        let rule = cluster
            .of_kind("PrometheusRule")
            .next()
            .expect("a PrometheusRule");
        assert_eq!(
            rule["spec"]["groups"], plain["groups"],
            "{}: base/prometheusrule.yaml differs from monitoring/alerts.rules.yaml",
            cluster.overlay
        );
    }
}

/// deploy/compose.yaml with its `<<` merge keys applied.
fn compose() -> Value {
    let path = repo().join("deploy/compose.yaml");
    yaml_docs(&repo().join("deploy"))
        .into_iter()
        .find(|(p, _)| *p == path)
        .expect("deploy/compose.yaml")
        .1
}

#[test]
fn compose_workers_drain_before_they_are_killed_and_secrets_are_files() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let declared: BTreeSet<_> = compose["secrets"]
        .as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.as_str())
        .collect();
    let mut errors = Vec::new();
    let mut saw_worker = false;
    for (name, svc) in services {
        let name = name.as_str().unwrap_or("?");
        let env: BTreeMap<String, String> = match &svc["environment"] {
            Value::Mapping(m) => m
                .iter()
                .filter_map(|(k, v)| Some((str_of(k)?, str_of(v)?)))
                .collect(),
            Value::Sequence(s) => s
                .iter()
                .filter_map(|kv| {
                    kv.as_str()?
                        .split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        let mut mounted = BTreeSet::new();
        for s in svc["secrets"].as_sequence().into_iter().flatten() {
            let source = s
                .as_str()
                .or_else(|| s["source"].as_str())
                .unwrap_or_default();
            if !declared.contains(source) {
                errors.push(format!("service {name} uses undeclared secret {source}"));
            }
            let target = s["target"]
                .as_str()
                .map_or(format!("/run/secrets/{source}"), str::to_string);
            mounted.insert(target);
        }
        for (k, v) in env.iter().filter(|(k, _)| k.ends_with("_FILE")) {
            if !mounted.contains(v) {
                errors.push(format!(
                    "service {name}: {k}={v} is not one of its secrets {mounted:?}"
                ));
            }
        }
        let runs_worker = svc["entrypoint"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|w| w.as_str() == Some("sluice-worker"));
        if runs_worker {
            saw_worker = true;
            let grace = svc["stop_grace_period"]
                .as_str()
                .map_or(10.0, compose_duration);
            check_grace(&format!("compose service {name}"), grace, &env, &mut errors);
        }
    }
    for (name, s) in compose["secrets"].as_mapping().into_iter().flatten() {
        let file = s["file"].as_str().unwrap_or_default();
        if !repo().join("deploy").join(file).is_file() {
            errors.push(format!("secret {name:?}: file {file} missing"));
        }
    }
    assert!(
        saw_worker,
        "no service runs sluice-worker in deploy/compose.yaml"
    );
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert_eq!(compose_duration("5m30s"), 330.0);
}

#[test]
fn compose_indexes_a_file_dropped_into_the_bucket_within_limits_and_without_plain_passwords() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let mut errors = Vec::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap_or("?");
        if svc["deploy"]["resources"]["limits"]["memory"].is_null() {
            errors.push(format!("service {name} has no memory limit"));
        }
        for (k, v) in svc["environment"].as_mapping().into_iter().flatten() {
            let k = k.as_str().unwrap_or_default();
            let secretish = ["PASSWORD", "SECRET", "_KEY", "_PASS"]
                .iter()
                .any(|w| k.contains(w));
            if secretish && !k.ends_with("_FILE") && !k.ends_with("_ID") && !v.is_null() {
                errors.push(format!("service {name}: {k} is a secret in plain text"));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    // The bucket notification path: MinIO's AMQP target publishes to an exchange that RabbitMQ's
    // definitions bind to the queue the scheduler consumes.
    let setup = services
        .iter()
        .find(|(k, _)| k.as_str() == Some("minio-setup"))
        .map(|(_, v)| v)
        .expect("a minio-setup service");
    let script = setup["command"][0].as_str().unwrap_or_default();
    let exchange = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("exchange="))
        .expect("MinIO's AMQP target names an exchange");
    assert!(
        script.contains("mc event add") && script.contains("arn:minio:sqs::sluice:amqp"),
        "minio-setup must subscribe the bucket to the AMQP target"
    );
    let scheduler = &compose["services"]["scheduler"];
    let queue = scheduler["environment"]["SLUICE_S3_EVENTS_QUEUE"]
        .as_str()
        .expect("the scheduler consumes S3 events");
    let definitions: serde_json::Value = serde_json::from_str(&read(
        &repo().join("deploy/secrets/rabbitmq-definitions.json"),
    ))
    .expect("definitions JSON");
    let bound = definitions["bindings"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|b| b["source"] == exchange && b["destination"] == queue);
    assert!(
        bound,
        "no binding from {exchange} to {queue} in the RabbitMQ definitions"
    );
    let allowed = scheduler["environment"]["SLUICE_ALLOWED_SOURCES"]
        .as_str()
        .unwrap_or_default();
    assert!(
        allowed.contains("s3://docs/"),
        "SLUICE_ALLOWED_SOURCES must allow the bucket: {allowed}"
    );
}
