//! The real `sluice-worker` binary against the real RabbitMQ and PostgreSQL and the Qdrant stand-in
//! (gRPC): indexing, poison messages, graceful shutdown and a killed worker.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use sluice_shared::metadata::{DocStatus, MetadataStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_indexes_jobs_and_dead_letters_poison_with_reasons() {
    let fleet = Fleet::new().await;
    let publisher = fleet.publisher().await;
    let worker = fleet.worker();

    let mut good = Vec::new();
    for i in 0..12 {
        good.push(fleet.write(
            &format!("doc-{i}.md"),
            format!("# Doc {i}\n\n{}", paragraphs(&format!("topic{i}"), 20)),
        ));
    }
    for (i, uri) in good.iter().enumerate() {
        // Half as raw JSON exactly as documented, half through the library's job type.
        if i % 2 == 0 {
            fleet.publish_index(&publisher, uri).await;
        } else {
            let job = sluice_shared::job::Job::new(sluice_shared::job::JobSpec::Index(
                sluice_shared::job::IndexJob::new(uri.clone()),
            ))
            .unwrap();
            fleet.publish_raw(&publisher, &job.to_json()).await;
        }
    }
    let corrupt = fleet.write(
        "corrupt.pdf",
        b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage",
    );
    let missing = format!("file://{}/does-not-exist.md", fleet.docs.path().display());
    fleet.publish_raw(&publisher, "{this is not json").await;
    fleet
        .publish_raw(
            &publisher,
            r#"{"schema_version":99,"kind":"index","source":"file:///x.md"}"#,
        )
        .await;
    fleet.publish_index(&publisher, &corrupt).await;
    fleet.publish_index(&publisher, &missing).await;

    fleet
        .wait_for(Duration::from_secs(60), "12 indexed and 2 failed", |c| {
            c.get(&DocStatus::Indexed) == Some(&12) && c.get(&DocStatus::Failed) == Some(&2)
        })
        .await;
    let points = fleet.points().await;
    let mut versions: HashMap<&str, std::collections::HashSet<i64>> = HashMap::new();
    for (_, doc, v) in &points {
        versions.entry(doc).or_default().insert(*v);
    }
    assert_eq!(versions.len(), 12);
    assert!(
        versions.values().all(|v| v.len() == 1),
        "one version per document"
    );

    // The four poison messages are in the DLQ with their reasons, recorded on documents too.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut dead = Vec::new();
    while dead.len() < 4 && Instant::now() < deadline {
        dead.extend(fleet.drain_dlq().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kinds: Vec<&str> = dead.iter().map(|(k, _)| k.as_str()).collect();
    for expected in [
        "malformed_json",
        "unsupported_schema_version",
        "corrupt",
        "not_found",
    ] {
        assert!(
            kinds.contains(&expected),
            "{expected} not dead-lettered: {dead:?}"
        );
    }
    let metadata = fleet.metadata().await;
    let failed = metadata
        .get("fleet", &missing)
        .await
        .unwrap()
        .expect("missing object recorded");
    assert!(failed.last_error.unwrap().contains("does-not-exist.md"));

    // The operations endpoints: ready (broker, database and Qdrant answer) and counting jobs.
    let base = format!("http://{}", fleet.env["SLUICE_HTTP_LISTEN"]);
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"sluice_jobs_total{kind="index",outcome="acked"} 12"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"outcome="dead_lettered""#), "{metrics}");

    let (code, stderr) = stop(worker, Duration::from_secs(15));
    assert_eq!(code, 0, "{stderr}");
    fleet.finish().await;
}

/// Runs 40 documents through a worker that is stopped with SIGTERM mid-run (each embedding
/// request takes `latency`, so jobs are in flight), then through a second worker.
async fn sigterm_mid_run(latency: Duration, deadline_secs: &str) -> Vec<i64> {
    let (mut fleet, emulator) = slow_fleet(40, latency).await;
    fleet
        .env
        .insert("SLUICE_SHUTDOWN_DEADLINE_SECS".into(), deadline_secs.into());
    let first = fleet.worker();
    fleet
        .wait_for(Duration::from_secs(60), "some progress", |c| {
            c.get(&DocStatus::Indexed).is_some_and(|n| *n >= 4)
        })
        .await;
    let started = Instant::now();
    let (code, stderr) = stop(first, Duration::from_secs(30));
    assert_eq!(code, 0, "graceful exit: {stderr}");
    let limit = Duration::from_secs_f64(deadline_secs.parse::<f64>().unwrap() + 5.0);
    assert!(
        started.elapsed() < limit,
        "exit within the deadline: {:?}",
        started.elapsed()
    );

    // A second worker finishes the rest: nothing lost, nothing dead-lettered.
    let second = fleet.worker();
    fleet
        .wait_for(Duration::from_secs(120), "all 40 indexed", |c| {
            c.get(&DocStatus::Indexed) == Some(&40)
        })
        .await;
    assert!(fleet.drain_dlq().await.is_empty(), "nothing dead-lettered");
    let points = fleet.points().await;
    let docs: std::collections::HashSet<&str> = points.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(docs.len(), 40);
    let (code, stderr) = stop(second, Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    drop(emulator);
    let metadata = fleet.metadata().await;
    let report = metadata
        .list_documents(&Default::default(), None, 100)
        .await
        .unwrap();
    fleet.finish().await;
    report.iter().map(|d| d.attempts).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_finishes_in_flight_jobs_and_hands_back_the_rest() {
    let attempts = sigterm_mid_run(Duration::from_millis(700), "20").await;
    // Every document was processed exactly once: in-flight ones finished, prefetched ones were
    // handed back untouched.
    assert!(
        attempts.iter().all(|a| *a == 1),
        "attempts per document: {attempts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_past_the_deadline_hands_unfinished_jobs_back() {
    // Each job takes longer than the deadline, so in-flight jobs are abandoned and handed back.
    let attempts = sigterm_mid_run(Duration::from_secs(4), "1").await;
    assert!(
        attempts.iter().any(|a| *a > 1),
        "some job was abandoned and redone: {attempts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_batch_leaves_an_exact_index() {
    let (fleet, _emulator) = slow_fleet(30, Duration::from_millis(600)).await;
    let mut first = fleet.worker();
    fleet
        .wait_for(Duration::from_secs(60), "some progress", |c| {
            c.get(&DocStatus::Indexed).is_some_and(|n| *n >= 4)
        })
        .await;
    first.kill().unwrap(); // SIGKILL: no shutdown, deliveries return when the connection drops
    first.wait().unwrap();
    let second = fleet.worker();
    fleet
        .wait_for(Duration::from_secs(120), "all 30 indexed", |c| {
            c.get(&DocStatus::Indexed) == Some(&30)
        })
        .await;
    assert_exact(&fleet, 30).await;
    assert!(fleet.drain_dlq().await.is_empty(), "nothing dead-lettered");
    let (code, stderr) = stop(second, Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_publishes_of_a_document_converge_to_one_version() {
    let fleet = Fleet::new().await;
    let publisher = fleet.publisher().await;
    let workers = [fleet.worker(), fleet.worker()];
    let uris: Vec<String> = (0..3)
        .map(|i| {
            fleet.write(
                &format!("dup-{i}.md"),
                format!("# Dup {i}\n\n{}", paragraphs(&format!("dup{i}"), 25)),
            )
        })
        .collect();
    // Every copy forces a re-index, so each one really writes a version while its twins, on the
    // other worker or the same one, find the document leased and come back later.
    const COPIES: i64 = 6;
    for _ in 0..COPIES {
        for uri in &uris {
            fleet
                .publish_raw(
                    &publisher,
                    &format!(
                        r#"{{"schema_version":1,"kind":"index","source":"{uri}","force":true}}"#
                    ),
                )
                .await;
        }
    }

    let metadata = fleet.metadata().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let records = loop {
        let records = metadata
            .list_documents(&Default::default(), None, 10)
            .await
            .unwrap();
        let settled = records.len() == uris.len()
            && records
                .iter()
                .all(|r| r.attempts == COPIES && r.status == DocStatus::Indexed);
        if settled {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "every copy processed once: {:?}",
            records
                .iter()
                .map(|r| (&r.doc_id, r.attempts, r.status))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_exact(&fleet, uris.len()).await;
    let points = fleet.points().await;
    for record in &records {
        assert_eq!(record.current_version, COPIES, "{}", record.doc_id);
        let chunks: Vec<_> = points.iter().filter(|p| p.1 == record.doc_id).collect();
        assert_eq!(chunks.len() as i64, record.chunk_count, "{}", record.doc_id);
        assert!(chunks.iter().all(|p| p.2 == record.current_version));
    }
    assert!(fleet.drain_dlq().await.is_empty(), "no copy dead-lettered");
    for worker in workers {
        let (code, stderr) = stop(worker, Duration::from_secs(30));
        assert_eq!(code, 0, "{stderr}");
    }
    fleet.finish().await;
}
