//! Jobs from a producer Sluice does not control, against the real `sluice-worker`, RabbitMQ,
//! PostgreSQL and the Qdrant stand-in: whatever a job names outside `SLUICE_ALLOWED_SOURCES`
//! (the test folder), the worker reads nothing, records nothing, and dead-letters the job with
//! `error_kind=forbidden_source`; oversized messages and non-regular files are dead-lettered with
//! their own kinds; and the worker keeps indexing good jobs afterwards.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sluice_shared::metadata::{DocStatus, MetadataStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_sources_and_oversized_jobs_end_in_the_dlq_with_a_kind() {
    let fleet = Fleet::new().await;
    let publisher = fleet.publisher().await;
    let worker = fleet.worker();

    // A secret outside the allowed folder, and ways to reach it from inside.
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("database_url");
    std::fs::write(&secret, "postgres://app:Hostile-Pw-1@db/sluice").unwrap();
    let escape = fleet.docs.path().join("escape.md");
    std::os::unix::fs::symlink(&secret, &escape).unwrap();
    let escape_uri = url::Url::from_file_path(&escape).unwrap().to_string();
    let docs_uri = url::Url::from_directory_path(fleet.docs.path()).unwrap();
    let traversal = format!(
        "{docs_uri}../{}/database_url",
        outside.path().file_name().unwrap().to_string_lossy()
    );
    let fifo = fleet.docs.path().join("pipe.md");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let fifo_uri = url::Url::from_file_path(&fifo).unwrap().to_string();

    let index =
        |source: &str| format!(r#"{{"schema_version":1,"kind":"index","source":"{source}"}}"#);
    let forbidden = [
        "file:///etc/passwd".to_string(),
        escape_uri.clone(),
        url::Url::from_file_path(&secret).unwrap().to_string(),
        "s3://someone-elses-bucket/payroll.pdf".to_string(),
    ];
    for source in &forbidden {
        fleet.publish_raw(&publisher, &index(source)).await;
    }
    fleet.publish_raw(&publisher, &index(&traversal)).await;
    fleet.publish_raw(&publisher, &index(&fifo_uri)).await;
    let good = fleet.write("good.md", format!("# Good\n\n{}", paragraphs("allowed", 5)));
    let metadata_bomb = format!(
        r#"{{"schema_version":1,"kind":"index","source":"{good}","metadata":{{"x":"{}"}}}}"#,
        "m".repeat(9 << 10)
    );
    fleet.publish_raw(&publisher, &metadata_bomb).await;
    let long_id = format!(
        r#"{{"schema_version":1,"kind":"index","source":"{good}","doc_id":"{}"}}"#,
        "é".repeat(600)
    );
    fleet.publish_raw(&publisher, &long_id).await;
    fleet
        .publish_raw(
            &publisher,
            &format!(r#"{{"pad":"{}"}}"#, "p".repeat(70 << 10)),
        )
        .await;
    // After all that, a good job is still indexed.
    fleet.publish_raw(&publisher, &index(&good)).await;

    fleet
        .wait_for(Duration::from_secs(60), "the good document indexed", |c| {
            c.get(&DocStatus::Indexed) == Some(&1)
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut dead = Vec::new();
    while dead.len() < 9 && Instant::now() < deadline {
        dead.extend(fleet.drain_dlq().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let count = |kind: &str| dead.iter().filter(|(k, _)| k == kind).count();
    assert_eq!(count("forbidden_source"), 5, "{dead:#?}");
    assert_eq!(count("not_regular_file"), 1, "{dead:#?}");
    assert_eq!(count("job_too_large"), 2, "{dead:#?}");
    assert_eq!(count("invalid_job"), 1, "{dead:#?}");
    // Reasons name the source (or the limit and its setting), never the secret's contents.
    for (kind, reason) in &dead {
        assert!(!reason.contains("Hostile-Pw-1"), "{kind}: {reason}");
    }
    assert!(
        dead.iter()
            .any(|(k, r)| k == "forbidden_source" && r.contains("/etc/passwd")),
        "{dead:#?}"
    );
    assert!(
        dead.iter().any(|(k, r)| k == "forbidden_source"
            && r.contains("escape.md")
            && r.contains("symlink")),
        "{dead:#?}"
    );
    assert!(
        dead.iter()
            .any(|(_, r)| r.contains("SLUICE_MAX_METADATA_BYTES")),
        "{dead:#?}"
    );

    // Nothing of the forbidden sources reached the index or the metadata store.
    let points = fleet.points().await;
    assert!(points.iter().all(|(_, doc, _)| *doc == good), "{points:?}");
    let metadata = fleet.metadata().await;
    for source in &forbidden {
        assert!(
            metadata.get("fleet", source).await.unwrap().is_none(),
            "{source}"
        );
    }

    let (code, stderr) = stop(worker, Duration::from_secs(15));
    assert_eq!(code, 0, "{stderr}");
    fleet.finish().await;
}
