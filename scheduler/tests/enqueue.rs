//! `sluice enqueue` against the real RabbitMQ: confirmed, schema-valid index jobs on the work queue.

mod common;

use std::collections::HashMap;

use common::*;
use sluice_shared::config::{Loader, Settings};
use sluice_shared::job::JobSpec;

#[test]
fn enqueue_publishes_one_index_job_per_source() {
    let mut ws = Workspace::new();
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    ws.set("SLUICE_QUEUE_PREFIX", prefix.clone());
    let env: HashMap<String, String> = ws.env.iter().cloned().collect();
    let settings = Settings::from_loader(&Loader::from_parts(env, None).unwrap()).unwrap();
    let _cleanup = Topology(settings.fleet.queue.clone());
    let file = ws.write("notes.md", "# Notes");

    let out = ws
        .sluice()
        .arg("enqueue")
        .arg(&file)
        .args(["s3://bucket/a b.pdf", "--tenant", "acme", "--force"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).to_string();

    let jobs = drain_work_queue(&settings.fleet.queue);
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    let sources: Vec<String> = jobs
        .iter()
        .map(|j| match &j.spec {
            JobSpec::Index(index) => {
                assert_eq!((index.tenant.as_deref(), index.force), (Some("acme"), true));
                index.source.clone()
            }
            other => panic!("expected an index job, got {other:?}"),
        })
        .collect();
    assert_eq!(
        sources,
        vec![file_uri(&file), "s3://bucket/a b.pdf".to_string()]
    );
    for job in &jobs {
        assert!(
            printed.contains(&job.job_id),
            "job id {} not reported: {printed}",
            job.job_id
        );
        assert!(job.enqueued_at.is_some());
    }
}

#[test]
fn enqueue_refuses_a_missing_local_file() {
    let ws = Workspace::new();
    let out = ws
        .sluice()
        .args(["enqueue", "/no/such/file.md"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/file.md"));
}
