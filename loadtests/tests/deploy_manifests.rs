//! Consistency of `deploy/` with the code: the compose file, the Kubernetes/KEDA manifests, the alert
//! rules and the dashboard must name metrics the binaries emit and settings they read, and the
//! shutdown timings must let a worker stopped by scale-down hand its jobs back before it is killed.
//! Nothing here needs a broker or a cluster: it parses every YAML/JSON file under `deploy/` and the
//! Rust sources of `shared/`, `worker/` and `scheduler/`.

#[path = "deploy_manifests/cluster.rs"]
mod cluster;
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
    let catalog = MetricCatalog::from_sources(&rust_sources());
    assert!(
        catalog.histograms.contains("sluice_stage_duration_seconds")
            && catalog
                .histograms
                .contains("sluice_job_publish_to_ack_seconds")
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
    assert!(
        used.len() >= 12,
        "alerts and dashboard reference only {used:?}"
    );
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
    let known = known_settings(&rust_sources());
    for must in [
        "SLUICE_AMQP_URL_FILE",
        "SLUICE_SHUTDOWN_DEADLINE_SECS",
        "SLUICE_API_KEY_FILE",
        "SLUICE_LOG",
    ] {
        assert!(
            known.contains(must),
            "the settings scan missed {must}: {known:?}"
        );
    }
    assert!(!known.contains("SLUICE_NOT_A_SETTING"));
    let mut errors = Vec::new();
    for path in files_under(&repo().join("deploy")) {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for name in sluice_env_names(&text) {
            if !known.contains(&name) {
                errors.push(format!(
                    "{}: {name} is not a setting Sluice reads",
                    path.display()
                ));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert_eq!(
        sluice_env_names("SLUICE_QUEUE_* SLUICE_<NAME>_FILE `SLUICE_PREFETCH`"),
        BTreeSet::from(["SLUICE_PREFETCH".to_string()])
    );
}

#[test]
fn kubernetes_workers_drain_before_they_are_killed_and_probe_the_right_port() {
    let cluster = Cluster::load();
    let workers = cluster.containers_running("sluice-worker");
    let schedulers = cluster.containers_running("serve");
    assert!(
        !workers.is_empty() && !schedulers.is_empty(),
        "no worker or scheduler Deployment in deploy/k8s"
    );
    let mut errors = Vec::new();
    for (name, pod, c) in &workers {
        let env = cluster.env(c);
        let grace = pod["terminationGracePeriodSeconds"]
            .as_f64()
            .unwrap_or(30.0);
        check_grace(&format!("Deployment {name}"), grace, &env, &mut errors);
        let port = listen_port(&env, "SLUICE_HTTP_LISTEN", 9090);
        check_container(
            &format!("Deployment {name}"),
            pod,
            c,
            &env,
            port,
            &mut errors,
        );
    }
    for (name, pod, c) in &schedulers {
        let env = cluster.env(c);
        let port = listen_port(&env, "SLUICE_API_LISTEN", 8080);
        check_container(
            &format!("Deployment {name}"),
            pod,
            c,
            &env,
            port,
            &mut errors,
        );
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn keda_scales_workers_on_the_work_queue_through_the_management_api() {
    let cluster = Cluster::load();
    let workers = cluster.containers_running("sluice-worker");
    let worker_names: BTreeSet<_> = workers.iter().map(|(n, _, _)| n.clone()).collect();
    let env = cluster.env(workers.first().expect("a worker Deployment").2);
    let prefix = env
        .get("SLUICE_QUEUE_PREFIX")
        .map_or("sluice", String::as_str);
    let prefetch = num(&env, "SLUICE_PREFETCH", 16.0);
    let auths = cluster.names("TriggerAuthentication");
    let scaled: Vec<_> = cluster.of_kind("ScaledObject").collect();
    assert!(!scaled.is_empty(), "deploy/k8s has no KEDA ScaledObject");
    for so in scaled {
        let spec = &so["spec"];
        let target = spec["scaleTargetRef"]["name"].as_str().unwrap_or_default();
        assert!(
            worker_names.contains(target),
            "ScaledObject targets {target}, not a worker Deployment"
        );
        let (min, max) = (
            spec["minReplicaCount"].as_u64(),
            spec["maxReplicaCount"].as_u64(),
        );
        assert!(
            matches!((min, max), (Some(lo), Some(hi)) if hi >= 1 && lo <= hi),
            "min/max replicas: {min:?}/{max:?}"
        );
        let triggers = spec["triggers"]
            .as_sequence()
            .expect("ScaledObject triggers");
        let t = triggers
            .iter()
            .find(|t| t["type"].as_str() == Some("rabbitmq"))
            .expect("a rabbitmq trigger");
        let m = &t["metadata"];
        assert_eq!(
            m["protocol"].as_str(),
            Some("http"),
            "only the management API counts unacked (in-flight) messages; AMQP would scale busy workers away"
        );
        assert_eq!(m["mode"].as_str(), Some("QueueLength"));
        assert_eq!(
            m["queueName"].as_str(),
            Some(format!("{prefix}.jobs").as_str()),
            "queueName vs SLUICE_QUEUE_PREFIX"
        );
        let value: f64 = m["value"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("trigger value as a string");
        assert!(
            value >= prefetch,
            "value {value} per replica is below SLUICE_PREFETCH={prefetch}"
        );
        assert!(
            m["activationValue"].as_str().is_some(),
            "activationValue missing"
        );
        let auth = t["authenticationRef"]["name"].as_str().unwrap_or_default();
        assert!(
            auths.contains(auth),
            "authenticationRef {auth} is not a TriggerAuthentication in deploy/k8s"
        );
    }
}

#[test]
fn kustomization_lists_every_manifest_and_the_operator_rules_match_the_plain_ones() {
    let k8s = repo().join("deploy/k8s");
    let kustomization: Value =
        serde_yaml::from_str(&read(&k8s.join("kustomization.yaml"))).expect("kustomization");
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
    assert_eq!(
        listed, present,
        "kustomization.yaml resources vs files in deploy/k8s"
    );

    let operator = Cluster::load();
    let rule = operator
        .of_kind("PrometheusRule")
        .next()
        .expect("a PrometheusRule");
    let plain: Value =
        serde_yaml::from_str(&read(&repo().join("deploy/monitoring/alerts.rules.yaml"))).unwrap();
    let rules = |groups: &Value| -> Vec<Value> {
        let groups = groups.as_sequence().expect("rule groups");
        groups
            .iter()
            .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
            .collect()
    };
    let (operator_rules, plain_rules) = (rules(&rule["spec"]["groups"]), rules(&plain["groups"]));
    for (a, b) in operator_rules.iter().zip(&plain_rules) {
        assert_eq!(
            a, b,
            "k8s/prometheusrule.yaml differs from monitoring/alerts.rules.yaml"
        );
    }
    assert_eq!(
        rule["spec"]["groups"], plain["groups"],
        "k8s/prometheusrule.yaml and monitoring/alerts.rules.yaml have different groups or rule counts"
    );
}

#[test]
fn compose_workers_drain_before_they_are_killed_and_secrets_are_files() {
    let path = repo().join("deploy/compose.yaml");
    let (_, compose) = yaml_docs(&repo().join("deploy"))
        .into_iter()
        .find(|(p, _)| *p == path)
        .expect("deploy/compose.yaml");
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
