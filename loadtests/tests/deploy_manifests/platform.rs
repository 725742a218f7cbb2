//! What a platform team checks before applying an overlay: custom resources valid against their
//! operators' CRD schemas (vendored in deploy/schemas), pods isolated (own ServiceAccount without a
//! token, Pod Security `restricted`, bounded scratch space, default-deny network), an API that
//! survives rollouts and drains with watchers running exactly once, monitoring that Prometheus
//! and Grafana pick up, and backups of everything the index depends on. Built-in kinds are checked
//! against the vendored strict schemas of Kubernetes 1.28 and 1.37 here, and of every version from
//! 1.28 to 1.37 by scripts/deploy-checks.sh (kubernetes-validate).

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml::Value;

use super::cluster::{Cluster, mounts, secret_files, selects};
use super::scan::{files_under, has_ext, read, repo};

/// API groups whose schemas Kubernetes itself defines.
const BUILTIN: &[&str] = &[
    "v1",
    "apps/v1",
    "batch/v1",
    "policy/v1",
    "networking.k8s.io/v1",
];

/// The vendored CRD schemas by the `kind` they accept.
fn crd_schemas() -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for path in files_under(&repo().join("deploy/schemas")) {
        if !has_ext(&path, &["json"]) {
            continue;
        }
        let schema: serde_json::Value = serde_json::from_str(&read(&path)).expect("schema JSON");
        for kind in schema["properties"]["kind"]["enum"]
            .as_array()
            .into_iter()
            .flatten()
        {
            out.insert(
                kind.as_str().unwrap_or_default().to_string(),
                schema.clone(),
            );
        }
    }
    out
}

fn schema_errors(validator: &jsonschema::Validator, object: &Value) -> Vec<String> {
    let json = serde_json::to_value(object).expect("YAML object as JSON");
    validator
        .iter_errors(&json)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn custom_resources_validate_against_the_vendored_crd_schemas() {
    let schemas = crd_schemas();
    let validators: BTreeMap<_, _> = schemas
        .iter()
        .map(|(k, s)| {
            (
                k.clone(),
                jsonschema::validator_for(s).expect("a valid schema"),
            )
        })
        .collect();
    let mut errors = Vec::new();
    let mut kinds = BTreeSet::new();
    for cluster in Cluster::all() {
        for o in &cluster.objects {
            let api = o["apiVersion"].as_str().unwrap_or_default();
            if BUILTIN.contains(&api) {
                continue;
            }
            let kind = o["kind"].as_str().unwrap_or_default();
            let name = o["metadata"]["name"].as_str().unwrap_or("?");
            let Some(validator) = validators.get(kind) else {
                errors.push(format!(
                    "{}: {kind} {name} ({api}) has no schema in deploy/schemas",
                    cluster.overlay
                ));
                continue;
            };
            kinds.insert(kind.to_string());
            for e in schema_errors(validator, o) {
                errors.push(format!("{}: {kind} {name}: {e}", cluster.overlay));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    for kind in [
        "ScaledObject",
        "TriggerAuthentication",
        "PodMonitor",
        "PrometheusRule",
        "RabbitmqCluster",
        "Cluster",
    ] {
        assert!(
            kinds.contains(kind),
            "no overlay renders a {kind}: {kinds:?}"
        );
    }

    // The check itself: a misspelt field and a wrong type are caught.
    let so = Cluster::get("dev")
        .of_kind("ScaledObject")
        .next()
        .expect("a ScaledObject");
    let mut bad = so.clone();
    bad["spec"]["fallbak"] = Value::from(2);
    bad["spec"]["maxReplicaCount"] = Value::from("ten");
    assert_eq!(schema_errors(&validators["ScaledObject"], &bad).len(), 2);
}

#[test]
fn built_in_objects_validate_against_the_oldest_and_newest_kubernetes_schemas() {
    let mut checked = BTreeSet::new();
    let mut errors = Vec::new();
    for version in ["1.28", "1.37"] {
        let path = repo().join(format!("deploy/schemas/kubernetes-v{version}.json"));
        let vendored: serde_json::Value = serde_json::from_str(&read(&path)).expect("schema JSON");
        let mut validators = BTreeMap::new();
        for cluster in Cluster::all() {
            for o in &cluster.objects {
                if !BUILTIN.contains(&o["apiVersion"].as_str().unwrap_or_default()) {
                    continue;
                }
                let kind = o["kind"].as_str().unwrap_or_default().to_string();
                let name = o["metadata"]["name"].as_str().unwrap_or("?");
                let key = format!("kind:{kind}");
                if vendored["$defs"][&key].is_null() {
                    errors.push(format!(
                        "{version}: no schema for {kind}: add it in scripts/deploy-checks.sh \
                         (vendor-schemas)"
                    ));
                    continue;
                }
                let validator = validators.entry(kind.clone()).or_insert_with(|| {
                    let schema = serde_json::json!({
                        "$schema": vendored["$schema"],
                        "$defs": vendored["$defs"],
                        "$ref": format!("#/$defs/{key}"),
                    });
                    jsonschema::validator_for(&schema).expect("a valid schema")
                });
                for e in schema_errors(validator, o) {
                    errors.push(format!(
                        "{} on {version}: {kind} {name}: {e}",
                        cluster.overlay
                    ));
                }
                checked.insert(kind);
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert!(checked.len() >= 9, "built-in kinds checked: {checked:?}");

    // The check itself: strict schemas refuse a misspelt field.
    let path = repo().join("deploy/schemas/kubernetes-v1.37.json");
    let vendored: serde_json::Value = serde_json::from_str(&read(&path)).unwrap();
    let schema = serde_json::json!({
        "$schema": vendored["$schema"],
        "$defs": vendored["$defs"],
        "$ref": "#/$defs/kind:Deployment",
    });
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut bad = Cluster::get("prod")
        .of_kind("Deployment")
        .next()
        .expect("a Deployment")
        .clone();
    bad["spec"]["template"]["spec"]["terminationGracePeriodSecondz"] = Value::from(30);
    assert_eq!(schema_errors(&validator, &bad).len(), 1);
}

#[test]
fn pods_are_isolated_and_meet_pod_security_restricted() {
    let mut errors = Vec::new();
    for cluster in Cluster::all() {
        let o = &cluster.overlay;
        let ns = cluster.of_kind("Namespace").next().expect("a Namespace");
        if ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"].as_str()
            != Some("restricted")
        {
            errors.push(format!(
                "{o}: namespace does not enforce Pod Security `restricted`"
            ));
        }
        let accounts: BTreeMap<_, _> = cluster
            .of_kind("ServiceAccount")
            .map(|sa| (sa["metadata"]["name"].as_str().unwrap_or("?"), sa))
            .collect();
        for (what, template) in cluster.pod_templates() {
            let pod = &template["spec"];
            let sa = pod["serviceAccountName"].as_str().unwrap_or("default");
            match accounts.get(sa) {
                None => errors.push(format!("{o}: {what} uses ServiceAccount {sa}, not its own")),
                Some(account) => {
                    let automount = pod["automountServiceAccountToken"]
                        .as_bool()
                        .or(account["automountServiceAccountToken"].as_bool());
                    if automount != Some(false) {
                        errors.push(format!("{o}: {what} mounts a service account token"));
                    }
                }
            }
            let sc = &pod["securityContext"];
            if sc["runAsNonRoot"].as_bool() != Some(true)
                || sc["seccompProfile"]["type"].as_str() != Some("RuntimeDefault")
            {
                errors.push(format!(
                    "{o}: {what}: runAsNonRoot + RuntimeDefault seccomp"
                ));
            }
            let containers = ["containers", "initContainers"]
                .iter()
                .flat_map(|k| pod[*k].as_sequence().into_iter().flatten());
            for c in containers {
                let name = c["name"].as_str().unwrap_or("?");
                let csc = &c["securityContext"];
                let drops_all = csc["capabilities"]["drop"]
                    .as_sequence()
                    .is_some_and(|d| d.iter().any(|x| x.as_str() == Some("ALL")));
                if csc["allowPrivilegeEscalation"].as_bool() != Some(false) || !drops_all {
                    errors.push(format!(
                        "{o}: {what}/{name}: allowPrivilegeEscalation false and drop ALL"
                    ));
                }
                // CronJobs and dependencies too: every secret file a setting names is mounted.
                let files = secret_files(pod, &mounts(c));
                for (k, v) in cluster.env(c) {
                    if k.starts_with("SLUICE_") && k.ends_with("_FILE") && !files.contains(&v) {
                        errors.push(format!("{o}: {what}/{name}: {k}={v} is not mounted"));
                    }
                }
                for var in c["env"].as_sequence().into_iter().flatten() {
                    let var_name = var["name"].as_str().unwrap_or_default();
                    if var_name.starts_with("AWS_") && var_name.contains("KEY") {
                        errors.push(format!(
                            "{o}: {what}/{name}: {var_name}: static cloud keys; use workload identity"
                        ));
                    }
                }
            }
            for vol in pod["volumes"].as_sequence().into_iter().flatten() {
                if vol.get("emptyDir").is_some() && vol["emptyDir"]["sizeLimit"].is_null() {
                    let v = vol["name"].as_str().unwrap_or("?");
                    errors.push(format!("{o}: {what}: emptyDir {v} has no sizeLimit"));
                }
            }
        }

        let policies: Vec<_> = cluster.of_kind("NetworkPolicy").collect();
        let default_deny = policies.iter().any(|p| {
            let spec = &p["spec"];
            spec["podSelector"]
                .as_mapping()
                .is_some_and(|m| m.is_empty())
                && spec["ingress"].is_null()
                && spec["egress"].is_null()
                && spec["policyTypes"]
                    .as_sequence()
                    .is_some_and(|t| t.len() == 2)
        });
        if !default_deny {
            errors.push(format!("{o}: no default-deny NetworkPolicy"));
        }
        let egress_ports: BTreeSet<u64> = policies
            .iter()
            .flat_map(|p| {
                p["spec"]["egress"]
                    .as_sequence()
                    .cloned()
                    .unwrap_or_default()
            })
            .flat_map(|r| r["ports"].as_sequence().cloned().unwrap_or_default())
            .filter_map(|p| p["port"].as_u64())
            .collect();
        for port in [53, 5672, 5432, 6334, 443] {
            if !egress_ports.contains(&port) {
                errors.push(format!("{o}: no NetworkPolicy lets pods reach port {port}"));
            }
        }
        // Ingress to the API and the metrics ports only from named sources.
        for p in &policies {
            for rule in p["spec"]["ingress"].as_sequence().into_iter().flatten() {
                if rule["from"].as_sequence().is_none_or(|f| f.is_empty()) {
                    let name = p["metadata"]["name"].as_str().unwrap_or("?");
                    errors.push(format!(
                        "{o}: NetworkPolicy {name} admits traffic from anywhere"
                    ));
                }
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// The value of `SLUICE_SERVE_ROLE` in a scheduler container (default `all`).
fn role(cluster: &Cluster, container: &Value) -> String {
    cluster
        .env(container)
        .get("SLUICE_SERVE_ROLE")
        .cloned()
        .unwrap_or_else(|| "all".to_string())
}

#[test]
fn the_api_survives_rollouts_and_drains_and_watchers_run_exactly_once() {
    for cluster in Cluster::all() {
        let o = &cluster.overlay;
        let deployments: BTreeMap<_, _> = cluster
            .of_kind("Deployment")
            .map(|d| (d["metadata"]["name"].as_str().unwrap_or("?").to_string(), d))
            .collect();
        let mut roles: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
        for (name, _, c) in cluster.containers_running("serve") {
            roles
                .entry(role(cluster, c))
                .or_default()
                .push(deployments[&name]);
        }
        assert_eq!(
            roles.keys().map(String::as_str).collect::<Vec<_>>(),
            ["api", "watch"],
            "{o}: the scheduler runs as an `api` and a `watch` Deployment"
        );
        for api in &roles["api"] {
            let spec = &api["spec"];
            assert!(spec["replicas"].as_u64() >= Some(2), "{o}: API replicas");
            assert_eq!(
                spec["strategy"]["type"].as_str(),
                Some("RollingUpdate"),
                "{o}"
            );
            assert_eq!(
                spec["strategy"]["rollingUpdate"]["maxUnavailable"].as_u64(),
                Some(0),
                "{o}: a rollout must never drop below the desired API replicas"
            );
            let labels = &spec["template"]["metadata"]["labels"];
            let pdb = cluster
                .of_kind("PodDisruptionBudget")
                .find(|p| selects(&p["spec"]["selector"]["matchLabels"], labels))
                .unwrap_or_else(|| panic!("{o}: no PodDisruptionBudget for the API pods"));
            assert!(
                pdb["spec"]["minAvailable"].as_u64() >= Some(1)
                    || pdb["spec"]["maxUnavailable"].as_u64() == Some(1),
                "{o}: the API PDB must keep a replica up"
            );
            assert!(
                cluster
                    .of_kind("Service")
                    .any(|s| selects(&s["spec"]["selector"], labels)),
                "{o}: no Service in front of the API"
            );
        }
        let watch = &roles["watch"];
        assert_eq!(watch.len(), 1, "{o}: one watch Deployment");
        let spec = &watch[0]["spec"];
        assert_eq!(
            spec["replicas"].as_u64(),
            Some(1),
            "{o}: exactly one watcher"
        );
        assert_eq!(
            spec["strategy"]["type"].as_str(),
            Some("Recreate"),
            "{o}: a rolling update would run two watchers at once"
        );
    }
}

#[test]
fn prod_pins_the_image_by_digest_and_no_image_floats() {
    for cluster in Cluster::all() {
        for (what, template) in cluster.pod_templates() {
            let pod = &template["spec"];
            for c in ["containers", "initContainers"]
                .iter()
                .flat_map(|k| pod[*k].as_sequence().into_iter().flatten())
            {
                let image = c["image"].as_str().unwrap_or_default();
                let last = image.rsplit('/').next().unwrap_or_default();
                assert!(
                    (last.contains(':') || last.contains('@')) && !last.ends_with(":latest"),
                    "{}: {what}: image {image} has no fixed tag",
                    cluster.overlay
                );
                if cluster.overlay == "prod" && image.contains("sluice") {
                    assert!(
                        image.contains("@sha256:"),
                        "prod: {what}: {image} is not pinned by digest"
                    );
                }
            }
        }
    }
}

#[test]
fn monitoring_is_picked_up_by_a_default_kube_prometheus_stack() {
    for cluster in Cluster::all() {
        let o = &cluster.overlay;
        for kind in ["PodMonitor", "ServiceMonitor", "PrometheusRule"] {
            for m in cluster.of_kind(kind) {
                assert!(
                    m["metadata"]["labels"]["release"].as_str().is_some(),
                    "{o}: {kind} {:?} has no `release` label, so the operator ignores it",
                    m["metadata"]["name"]
                );
            }
        }
        assert!(
            cluster.of_kind("PodMonitor").any(|m| {
                m["spec"]["podMetricsEndpoints"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .any(|e| e["path"].as_str() == Some("/metrics/per-object"))
            }),
            "{o}: nothing scrapes RabbitMQ's per-queue metrics (rabbitmq_queue_messages{{queue}})"
        );
        let dashboard = cluster
            .of_kind("ConfigMap")
            .find(|c| {
                c["metadata"]["labels"]["grafana_dashboard"]
                    .as_str()
                    .is_some()
            })
            .unwrap_or_else(|| panic!("{o}: no dashboard ConfigMap for the Grafana sidecar"));
        let file = read(&repo().join("deploy/monitoring/grafana/dashboards/sluice-fleet.json"));
        assert_eq!(
            dashboard["data"]["sluice-fleet.json"].as_str(),
            Some(file.as_str()),
            "{o}: the dashboard ConfigMap carries the dashboard file"
        );
    }
    let dashboard = read(&repo().join("deploy/monitoring/grafana/dashboards/sluice-fleet.json"));
    for series in [
        "sluice_api_requests_total",
        "sluice_watch_listing_errors_total",
        "sluice_embed_concurrency_limit",
        "sluice_embed_fleet_budget_wait_seconds_bucket",
        "up{job=\\\"sluice-scheduler\\\"}",
    ] {
        assert!(dashboard.contains(series), "no panel shows {series}");
    }
}

#[test]
fn every_alert_has_a_unit_test_and_a_runbook_entry() {
    let monitoring = repo().join("deploy/monitoring");
    let rules: Value = serde_yaml::from_str(&read(&monitoring.join("alerts.rules.yaml"))).unwrap();
    let alerts: BTreeSet<String> = rules["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect();
    let tests: Value = serde_yaml::from_str(&read(&monitoring.join("alerts.test.yaml"))).unwrap();
    let fired: BTreeSet<String> = tests["tests"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|t| {
            t["alert_rule_test"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|t| t["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty()))
        .filter_map(|t| t["alertname"].as_str().map(str::to_string))
        .collect();
    let untested: Vec<_> = alerts.difference(&fired).collect();
    assert!(
        untested.is_empty(),
        "alerts no promtool test shows firing: {untested:?}"
    );
    let runbook = read(&monitoring.join("RUNBOOK.md"));
    let missing: Vec<_> = alerts
        .iter()
        .filter(|a| !runbook.contains(&format!("## {a}\n")))
        .collect();
    assert!(
        missing.is_empty(),
        "RUNBOOK.md has no section for {missing:?}"
    );
    assert!(alerts.len() >= 12, "alerts: {alerts:?}");
}

#[test]
fn backups_cover_the_ledger_the_index_and_the_broker_and_verify_repairs() {
    for cluster in Cluster::all() {
        let scripts: Vec<String> = cluster
            .of_kind("CronJob")
            .flat_map(|cj| {
                let pod = &cj["spec"]["jobTemplate"]["spec"]["template"]["spec"];
                ["containers", "initContainers"]
                    .iter()
                    .flat_map(|k| pod[*k].as_sequence().cloned().unwrap_or_default())
                    .collect::<Vec<_>>()
            })
            .map(|c| {
                ["command", "args"]
                    .iter()
                    .flat_map(|k| c[*k].as_sequence().cloned().unwrap_or_default())
                    .filter_map(|w| w.as_str().map(str::to_string))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        for needle in [
            "pg_dump",
            "/snapshots",
            "/api/definitions",
            "sluice verify --repair",
        ] {
            assert!(
                scripts.iter().any(|s| s.contains(needle)),
                "{}: no CronJob runs {needle}",
                cluster.overlay
            );
        }
    }
    let readme = read(&repo().join("deploy/README.md"));
    assert!(
        readme.contains("pg_restore") && readme.contains("sluice verify --repair"),
        "deploy/README.md needs the restore runbook"
    );
}
