//! Watch mode: `sluice watch` and the watcher inside `sluice serve`. Polls object-storage
//! locations (local folders, `file://`, `s3://`, `gs://`, `az://`) and turns what changed into
//! jobs for the fleet's workers.
//!
//! ```text
//!  every SLUICE_WATCH_INTERVAL_SECS, per location:
//!  Source::list ─► diff::plan (vs. watch state) ─► publish (confirmed) ─► record in watch state
//!                   new / changed ─► index job (force=false)
//!                   removed       ─► delete job (doc_id = the object's URI)
//! ```
//!
//! - The state (`watch_objects`: ETag, size, mtime per object) lives in the metadata store:
//!   PostgreSQL with `SLUICE_DATABASE_URL`, else SQLite in the data directory. A restarted
//!   watcher compares against it, so unchanged objects are not enqueued again.
//! - A change is recorded only after the broker confirmed its job: a crash in between publishes it
//!   again (the worker's content hash makes a duplicate cheap), it is never forgotten.
//! - A listing that fails (bucket unreachable, folder missing) publishes nothing, deletes
//!   included: only a successful listing can say an object is gone. The next poll tries again.
//!
//! Metrics: `sluice_watch_objects_total{change="new|changed|removed"}` (confirmed jobs),
//! `sluice_watch_listing_errors_total`, `sluice_watch_publish_errors_total`,
//! `sluice_watch_poll_seconds`.

mod diff;
mod poll;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_shared::config::{Settings, validate_collection_name};
use sluice_shared::metadata::watch_state::open_watch_state;
use sluice_shared::queue::{Broker, Publisher};
use tokio_util::sync::CancellationToken;

use poll::{Location, PollReport, Watcher};

#[derive(clap::Args)]
pub struct WatchArgs {
    /// Locations to watch: local folders or URLs (file://, s3://, gs://, az://). Default: the
    /// comma-separated SLUICE_WATCH.
    pub locations: Vec<String>,
    /// Poll every location once, print the jobs enqueued, and exit (for cron and scripts).
    #[arg(long)]
    pub once: bool,
    /// Collection the jobs target (default: the worker's SLUICE_COLLECTION).
    #[arg(long)]
    pub collection: Option<String>,
    /// Tenant recorded on the indexed documents (default: the worker's SLUICE_TENANT).
    #[arg(long)]
    pub tenant: Option<String>,
}

/// `sluice watch`: prints one line per confirmed job on stdout (`<job id> <new|changed|removed>
/// <uri>`) and a summary per poll on stderr. `--once` exits with 0 when every location was polled
/// completely, else with the partial-failure status; without it, runs until SIGINT/SIGTERM.
pub async fn run(settings: Settings, args: WatchArgs) -> anyhow::Result<ExitCode> {
    if let Some(collection) = &args.collection {
        validate_collection_name("--collection", collection)?;
    }
    let inputs = if args.locations.is_empty() {
        settings.scheduler.watch.clone()
    } else {
        args.locations.clone()
    };
    // Before touching the broker: a usage mistake should not declare queues first.
    check_watch_settings(&settings, &inputs)?;
    let queue_settings = &settings.fleet.queue;
    let broker = Broker::connect(queue_settings).await?;
    let publisher = broker.publisher();
    let mut watch = Watch::open(
        &settings,
        &inputs,
        args.collection,
        args.tenant,
        publisher.clone(),
    )
    .await?;
    watch.watcher.print_jobs = true;

    let code = if args.once {
        let reports = watch.poll_all(&CancellationToken::new()).await;
        let mut failed = false;
        for report in &reports {
            eprintln!("{}", report.summary());
            failed |= report.error.is_some();
        }
        let enqueued: usize = reports.iter().map(PollReport::enqueued).sum();
        eprintln!(
            "enqueued {enqueued} job(s) on {}",
            queue_settings.work_queue
        );
        if failed {
            ExitCode::from(crate::EXIT_SOME_FAILED)
        } else {
            ExitCode::SUCCESS
        }
    } else {
        let shutdown = CancellationToken::new();
        sluice_shared::shutdown::cancel_on_signal(shutdown.clone(), "stopping the watcher");
        eprintln!(
            "watching {} location(s) every {:?}; Ctrl-C to stop",
            watch.locations.len(),
            watch.interval
        );
        watch
            .run(&shutdown, |report| {
                if report.enqueued() > 0 || report.error.is_some() {
                    eprintln!("{}", report.summary());
                }
            })
            .await;
        ExitCode::SUCCESS
    };
    broker.close().await;
    Ok(code)
}

/// Watch `locations` until `shutdown` fires, enqueueing jobs through `publisher`; what `sluice
/// serve` runs. Jobs carry no collection or tenant (the workers' defaults apply); the state is
/// kept under `settings.collection`. Errors only when watching cannot start (no locations, an
/// invalid location, the metadata store unreachable); failed polls are logged, counted in
/// `sluice_watch_listing_errors_total` / `sluice_watch_publish_errors_total` and retried on the
/// next interval. Describes the watch metrics, so install the metrics recorder first.
pub async fn watch_locations(
    settings: &Settings,
    locations: Vec<String>,
    publisher: Arc<Publisher>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut watch = Watch::open(settings, &locations, None, None, publisher).await?;
    watch.run(&shutdown, |_| {}).await;
    Ok(())
}

/// The locations of one watcher and how often to poll them.
struct Watch {
    watcher: Watcher,
    locations: Vec<Location>,
    interval: Duration,
}

impl Watch {
    async fn open(
        settings: &Settings,
        inputs: &[String],
        collection: Option<String>,
        tenant: Option<String>,
        publisher: Arc<Publisher>,
    ) -> anyhow::Result<Watch> {
        check_watch_settings(settings, inputs)?;
        let mut locations: Vec<Location> = Vec::new();
        for input in inputs {
            let location =
                Location::new(input).with_context(|| format!("watched location {input}"))?;
            // `./docs` and `/abs/docs` are one location with one state: poll it once.
            let duplicate = location.root_uri().is_some()
                && locations
                    .iter()
                    .any(|l| l.root_uri() == location.root_uri());
            if !duplicate {
                locations.push(location);
            }
        }
        let state = open_watch_state(settings)
            .await
            .context("opening the watch state (metadata store)")?;
        Ok(Watch {
            watcher: Watcher {
                state,
                publisher,
                state_collection: collection
                    .clone()
                    .unwrap_or_else(|| settings.collection.clone()),
                job_collection: collection,
                tenant,
                print_jobs: false,
            },
            locations,
            interval: settings.scheduler.watch_interval,
        })
    }

    /// Polls every location once, in order; stops early when `shutdown` fires.
    async fn poll_all(&mut self, shutdown: &CancellationToken) -> Vec<PollReport> {
        let mut reports = Vec::new();
        for location in &mut self.locations {
            if shutdown.is_cancelled() {
                break;
            }
            reports.push(self.watcher.poll(location, shutdown).await);
        }
        reports
    }

    /// Polls, pauses `interval`, and again, until `shutdown` fires.
    async fn run(&mut self, shutdown: &CancellationToken, mut on_report: impl FnMut(&PollReport)) {
        loop {
            for report in self.poll_all(shutdown).await {
                on_report(&report);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}

fn check_watch_settings(settings: &Settings, inputs: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(
        !inputs.is_empty(),
        "nothing to watch: name locations or set SLUICE_WATCH"
    );
    // Zero would list every location back to back, as fast as the store answers.
    anyhow::ensure!(
        !settings.scheduler.watch_interval.is_zero(),
        "SLUICE_WATCH_INTERVAL_SECS must be at least 1"
    );
    Ok(())
}

/// Compile-time check: `sluice serve` runs the watcher with `tokio::spawn`, which needs a `Send`
/// future, and a higher-ranked closure in the publish stream can silently lose that.
#[allow(dead_code)]
fn watcher_future_is_send(settings: Settings, publisher: Arc<Publisher>) {
    fn assert_send<T: Send + 'static>(_: T) {}
    assert_send(async move {
        watch_locations(&settings, Vec::new(), publisher, CancellationToken::new()).await
    });
}
