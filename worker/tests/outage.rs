//! Outages pause, they do not poison: with the embedding provider answering nothing but 503s, the
//! real worker stops taking jobs, says why on `/readyz`, spends no job's retries and dead-letters
//! nothing; when the provider comes back it resumes by itself and indexes everything.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sluice_loadtests::emulator::{FaultKind, FaultSpec};
use sluice_shared::metadata::DocStatus;

const DOCS: usize = 6;

async fn readyz(port: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_outage_pauses_intake_and_dead_letters_nothing() {
    let mut fleet = Fleet::new().await;
    let emulator = fleet.use_emulator(Duration::ZERO).await;
    // Every job would be dead-lettered after one failed attempt if outages spent attempts.
    for (key, value) in [
        ("SLUICE_MAX_ATTEMPTS", "1"),
        ("SLUICE_EMBED_MAX_RETRIES", "1"),
    ] {
        fleet.env.insert(key.into(), value.into());
    }
    let port = fleet.env["SLUICE_HTTP_LISTEN"]
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    emulator.inject(FaultSpec {
        count: u32::MAX,
        kind: FaultKind::Status { status: 503 },
    });

    let publisher = fleet.publisher().await;
    let worker = fleet.worker();
    for i in 0..DOCS {
        let uri = fleet.write(
            &format!("doc-{i}.md"),
            format!("# Doc {i}\n\n{}", paragraphs(&format!("topic{i}"), 10)),
        );
        fleet
            .publish_raw(
                &publisher,
                &format!(r#"{{"schema_version":1,"kind":"index","source":"{uri}"}}"#),
            )
            .await;
    }

    // The worker finds the provider down, pauses and says so.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some((503, body)) = readyz(&port).await
            && body.contains("embedding_provider")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never reported the outage: {:?}",
            readyz(&port).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Paused for a while: nothing is dead-lettered, however long it lasts.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(fleet.drain_dlq().await, Vec::<(String, String)>::new());

    // The provider recovers: the worker resumes by itself and indexes every document.
    reqwest::Client::new()
        .delete(format!("{}/admin/faults", emulator.base_url()))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    fleet
        .wait_for(Duration::from_secs(120), "every document indexed", |c| {
            c.get(&DocStatus::Indexed).copied().unwrap_or(0) == DOCS as i64
        })
        .await;
    assert_eq!(readyz(&port).await.map(|r| r.0), Some(200));
    assert_eq!(fleet.drain_dlq().await, Vec::<(String, String)>::new());
    let (code, stderr) = stop(worker, Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("pausing intake"), "{stderr}");
    fleet.finish().await;
}
