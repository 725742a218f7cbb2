//! Every broker connection closed from the server side mid-run (`rabbitmqctl
//! close_all_connections`): the worker recovers and the index ends exact. In a test binary of its
//! own, because the command closes every connection on the broker, other tests' too.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use sluice_shared::metadata::DocStatus;

fn close_all_connections() {
    let out = Command::new("rabbitmqctl")
        .args([
            "close_all_connections",
            "sluice test: simulated connection loss",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run rabbitmqctl ({e}); it ships with rabbitmq-server"));
    assert!(
        out.status.success(),
        "rabbitmqctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_recover_from_server_closed_connections() {
    let (fleet, _emulator) = slow_fleet(30, Duration::from_millis(500)).await;
    let worker = fleet.worker();
    fleet
        .wait_for(Duration::from_secs(60), "some progress", |c| {
            c.get(&DocStatus::Indexed).is_some_and(|n| *n >= 4)
        })
        .await;
    close_all_connections();
    fleet
        .wait_for(
            Duration::from_secs(120),
            "all 30 indexed after the connection loss",
            |c| c.get(&DocStatus::Indexed) == Some(&30),
        )
        .await;
    assert_exact(&fleet, 30).await;
    assert!(fleet.drain_dlq().await.is_empty(), "nothing dead-lettered");
    let (code, stderr) = stop(worker, Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    fleet.finish().await;
}
