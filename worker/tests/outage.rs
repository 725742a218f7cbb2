//! Outages pause, they do not poison: with the embedding provider answering nothing but 503s, or
//! Qdrant or PostgreSQL cut off behind a fault proxy, the real worker stops taking jobs, says why
//! on `/readyz`, spends no job's retries and dead-letters nothing; when the dependency comes back
//! it resumes by itself and indexes everything.
//!
//! `SLUICE_TEST_OUTAGE_SECS` (default 5) sets how long each outage lasts once the worker paused;
//! the README's figures come from runs with 1200 (20 minutes).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use sluice_loadtests::emulator::{FaultKind, FaultSpec};
use sluice_loadtests::faultproxy::FaultProxy;
use sluice_shared::metadata::DocStatus;

const DOCS: usize = 6;

#[derive(Clone, Copy)]
enum Down {
    Provider,
    Qdrant,
    Postgres,
}

async fn readyz(port: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.unwrap_or_default()))
}

/// The `host:port` of a URL.
fn socket_of(url: &str) -> SocketAddr {
    let url = url::Url::parse(url).unwrap();
    format!("{}:{}", url.host_str().unwrap(), url.port().unwrap())
        .parse()
        .unwrap()
}

fn outage_length() -> Duration {
    Duration::from_secs(
        std::env::var("SLUICE_TEST_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5),
    )
}

async fn an_outage_pauses_intake_and_dead_letters_nothing(down: Down) {
    let mut fleet = Fleet::new().await;
    let emulator = fleet.use_emulator(Duration::ZERO).await;
    // Every job would be dead-lettered after one failed attempt if outages spent attempts.
    for (key, value) in [
        ("SLUICE_MAX_ATTEMPTS", "1"),
        ("SLUICE_EMBED_MAX_RETRIES", "1"),
    ] {
        fleet.env.insert(key.into(), value.into());
    }
    let proxy = match down {
        Down::Provider => None,
        Down::Qdrant => {
            let proxy = FaultProxy::start(socket_of(&fleet.qdrant_url))
                .await
                .unwrap();
            fleet.env.insert(
                "SLUICE_QDRANT_URL".into(),
                format!("http://{}", proxy.addr()),
            );
            Some(proxy)
        }
        Down::Postgres => {
            let direct = fleet.db.url.clone();
            let proxy = FaultProxy::start(socket_of(&direct)).await.unwrap();
            let mut via = url::Url::parse(&direct).unwrap();
            via.set_port(Some(proxy.addr().port())).unwrap();
            fleet
                .env
                .insert("SLUICE_DATABASE_URL".into(), via.to_string());
            Some(proxy)
        }
    };
    let dependency = match down {
        Down::Provider => "embedding_provider",
        Down::Qdrant => "vector_store",
        Down::Postgres => "metadata_store",
    };
    let port = fleet.env["SLUICE_HTTP_LISTEN"]
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();

    let publisher = fleet.publisher().await;
    let worker = fleet.worker();
    // Up and ready first: the outage starts under a running worker.
    let deadline = Instant::now() + Duration::from_secs(60);
    while readyz(&port).await.map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "the worker never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match &proxy {
        Some(proxy) => proxy.cut(),
        None => emulator.inject(FaultSpec {
            count: u32::MAX,
            kind: FaultKind::Status { status: 503 },
        }),
    }
    for i in 0..DOCS {
        let uri = fleet.write(
            &format!("doc-{i}.md"),
            format!("# Doc {i}\n\n{}", paragraphs(&format!("topic{i}"), 10)),
        );
        fleet.publish_index(&publisher, &uri).await;
    }

    // The worker finds the dependency down, pauses and says so.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some((503, body)) = readyz(&port).await
            && body.contains("paused")
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
    // Paused for as long as the outage lasts: nothing is dead-lettered.
    tokio::time::sleep(outage_length()).await;
    assert_eq!(fleet.drain_dlq().await, Vec::<(String, String)>::new());

    // The dependency recovers: the worker resumes by itself and indexes every document.
    match &proxy {
        Some(proxy) => proxy.restore(),
        None => {
            reqwest::Client::new()
                .delete(format!("{}/admin/faults", emulator.base_url()))
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap();
        }
    }
    fleet
        .wait_for(Duration::from_secs(180), "every document indexed", |c| {
            c.get(&DocStatus::Indexed).copied().unwrap_or(0) == DOCS as i64
        })
        .await;
    assert_eq!(readyz(&port).await.map(|r| r.0), Some(200));
    assert_eq!(fleet.drain_dlq().await, Vec::<(String, String)>::new());
    let (code, stderr) = stop(worker, Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("pausing intake") && stderr.contains(dependency),
        "{stderr}"
    );
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_outage_pauses_intake_and_dead_letters_nothing() {
    an_outage_pauses_intake_and_dead_letters_nothing(Down::Provider).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_qdrant_outage_pauses_intake_and_dead_letters_nothing() {
    an_outage_pauses_intake_and_dead_letters_nothing(Down::Qdrant).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_outage_pauses_intake_and_dead_letters_nothing() {
    an_outage_pauses_intake_and_dead_letters_nothing(Down::Postgres).await;
}
