//! The short chaos run (issue 9): three real `sluice-worker` processes on RabbitMQ, PostgreSQL and
//! Qdrant (the real server where it exists), each reached through a fault proxy, index ~120
//! generated documents with bad files and poison messages while workers are SIGKILLed and frozen
//! past their lease, the broker, PostgreSQL and Qdrant are cut, Qdrant is restarted, the provider
//! storms, and documents are changed, deleted and published twice. Afterwards ledger, index and
//! DLQ must agree with the generator document by document: nothing lost, doubled, stale,
//! miscounted or unexpectedly dead-lettered. The seed fixes the schedule; the long version is
//! `sluice-bench --mode chaos` (see the README's Reliability section).
//!
//! Needs RabbitMQ and PostgreSQL (fails loudly without them) and the workspace's binaries
//! (`cargo test --workspace` builds them; alone: `cargo build --bins` first).

use sluice_loadtests::chaos::{ChaosOptions, run};
use sluice_loadtests::fleet::workspace_binary;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chaos_run_loses_doubles_and_staleifies_nothing() {
    let work = tempfile::tempdir().unwrap();
    let options = ChaosOptions::short(workspace_binary("sluice-worker"), work.path().to_path_buf());
    let report = run(&options).await.expect("the chaos rig itself failed");
    eprintln!("{}", report.render());
    // Keep the corpus and the worker logs of a failed run for whoever investigates it.
    let kept = if report.clean() {
        work.path().to_path_buf()
    } else {
        work.keep()
    };
    assert!(
        report.worker_kills > 0 && report.worker_freezes > 0,
        "the faults happened"
    );
    assert!(
        report.drained,
        "the fleet drained within {:?}",
        options.drain_timeout
    );
    let f = &report.findings;
    assert_eq!(
        (
            f.lost.len(),
            f.doubled.len(),
            f.stale.len(),
            f.count_mismatched.len(),
            f.unexpected_dlq.len()
        ),
        (0, 0, 0, 0, 0),
        "lost / doubled / stale / count-mismatched / unexpected DLQ (worker logs in {}):\n{}",
        kept.join("logs").display(),
        report.render()
    );
    assert!(f.indexed_ok > 0 && f.dead_lettered_ok > 0);
}
