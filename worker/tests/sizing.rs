//! A worker left at its defaults sizes itself (worker/src/sizing.rs): behind a slow provider with
//! room it takes more jobs at once than the starting 16 — more in flight than the old fixed
//! prefetch allowed, so the prefetch grew with it — and indexes everything exactly once; held by
//! the provider's limit it stays where it started.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sluice_shared::metadata::DocStatus;

/// A value of the worker's `/metrics` (first series with that name).
async fn metric(fleet: &Fleet, name: &str) -> Option<f64> {
    let url = format!("http://{}/metrics", fleet.env["SLUICE_HTTP_LISTEN"]);
    let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series == name || series.starts_with(&format!("{name}{{"))).then_some(value)
        })
        .and_then(|v| v.parse().ok())
}

async fn publish_docs(fleet: &Fleet, n: usize) {
    let publisher = fleet.publisher().await;
    for i in 0..n {
        let uri = fleet.write(
            &format!("doc-{i}.md"),
            format!("# Doc {i}\n\n{}", paragraphs(&format!("topic {i}"), 3)),
        );
        fleet.publish_index(&publisher, &uri).await;
    }
}

/// Samples the worker's concurrency and jobs in flight until `n` documents are indexed.
async fn run_until_indexed(fleet: &Fleet, n: usize, within: Duration) -> (f64, f64) {
    let metadata = fleet.metadata().await;
    let deadline = Instant::now() + within;
    let (mut concurrency, mut in_flight) = (0f64, 0f64);
    loop {
        concurrency = concurrency.max(
            metric(fleet, "sluice_worker_concurrency")
                .await
                .unwrap_or(0.0),
        );
        in_flight = in_flight.max(metric(fleet, "sluice_jobs_in_flight").await.unwrap_or(0.0));
        let report = sluice_shared::metadata::MetadataStore::status(&metadata, None, 0)
            .await
            .unwrap();
        let indexed: i64 = report
            .counts
            .iter()
            .filter(|(s, _)| *s == DocStatus::Indexed)
            .map(|(_, c)| c)
            .sum();
        if indexed as usize == n {
            return (concurrency, in_flight);
        }
        assert!(
            Instant::now() < deadline,
            "{indexed} of {n} indexed after {within:?} (concurrency up to {concurrency})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_a_slow_provider_with_room_the_worker_takes_more_jobs_at_once() {
    let mut fleet = Fleet::new().await;
    let _emulator = fleet.use_emulator(Duration::from_millis(400)).await;
    let n = 400;
    publish_docs(&fleet, n).await;
    let worker = fleet.worker();
    let (concurrency, in_flight) = run_until_indexed(&fleet, n, Duration::from_secs(180)).await;
    assert!(
        concurrency >= 36.0,
        "concurrency grew only to {concurrency}"
    );
    assert!(
        in_flight > 16.0,
        "at most {in_flight} jobs in flight: the prefetch did not follow"
    );
    assert_exact(&fleet, n).await;
    assert!(fleet.drain_dlq().await.is_empty());
    let (code, stderr) = stop(worker, Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("worker concurrency resized"), "{stderr}");
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_by_the_provider_limit_the_worker_keeps_its_starting_size() {
    let mut fleet = Fleet::new().await;
    let _emulator = fleet.use_emulator(Duration::from_millis(50)).await;
    // Two requests a second: every pack waits in the limiter, however many jobs are in flight.
    fleet.env.insert("SLUICE_EMBED_RPM".into(), "120".into());
    fleet
        .env
        .insert("SLUICE_EMBED_LINGER_MS".into(), "0".into());
    let n = 150;
    publish_docs(&fleet, n).await;
    let worker = fleet.worker();
    let (concurrency, _) = run_until_indexed(&fleet, n, Duration::from_secs(240)).await;
    assert_eq!(
        concurrency, 16.0,
        "grew although the provider's limit set the pace"
    );
    assert_exact(&fleet, n).await;
    let (code, stderr) = stop(worker, Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    fleet.finish().await;
}
