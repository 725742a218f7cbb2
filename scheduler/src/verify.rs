//! `sluice verify`: compare the metadata store with what the vector store really holds (the
//! rules and both passes live in `sluice_shared::verify`), print a summary and the drift found,
//! and with `--repair` fix it: stray versions and orphans are deleted by exact (document,
//! version); missing, short and unpublished documents get index jobs, run in-process on one
//! machine and published to the work queue in the fleet.
//!
//! Exit status: 0 clean; 3 drift found (also when it was repaired, so a scheduled run still
//! alerts); 1 error. With `SLUICE_METRICS_PUSHGATEWAY` set, the `sluice_verify_*` metrics are
//! pushed at the end, also after an error.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use async_trait::async_trait;
use futures::StreamExt;
use serde::Serialize;
use sluice_shared::config::{Settings, validate_collection_name};
use sluice_shared::job::{Job, JobSpec};
use sluice_shared::metadata::{DocStatus, MetadataStore};
use sluice_shared::pipeline::Pipeline;
use sluice_shared::queue::{Broker, QueueSettings};
use sluice_shared::reindex::publish_jobs;
use sluice_shared::source::{AllowList, ReadLimits, Source};
use sluice_shared::store::{StoreError, VectorStore};
use sluice_shared::verify::{
    self, JobRunner, MAX_FINDINGS, Observer, Report, Scope, Verifier, VerifyError,
};
use sluice_shared::wiring;

use crate::progress::{Counters, Progress, Units};

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Only this collection (default: every collection the metadata store names).
    #[arg(long)]
    pub collection: Option<String>,
    /// Only documents of this tenant (points of unknown documents are then not checked).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Delete stray versions and orphans, re-index documents whose points are missing or short,
    /// publish unpublished ones (fleet: publishes the index jobs to the work queue).
    #[arg(long)]
    pub repair: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

const LEDGER_UNITS: Units = Units {
    item: "docs",
    chunks: None,
    failed: "drift",
};
const INDEX_UNITS: Units = Units {
    item: "points",
    chunks: None,
    failed: "drift",
};

pub async fn run(settings: Settings, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    if let Some(collection) = &args.collection {
        validate_collection_name("--collection", collection)?;
    }
    let gateway = settings.scheduler.metrics_pushgateway.clone();
    let recorder = match &gateway {
        Some(_) => Some(
            sluice_shared::metrics::install_prometheus()
                .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?,
        ),
        None => None,
    };
    let started = Instant::now();
    let result = verify_all(&settings, &args).await;
    let elapsed = started.elapsed();
    verify::record_metrics(result.as_ref().ok().map(|(r, _)| r), elapsed);
    let pushed = match (&gateway, &recorder) {
        (Some(url), Some(recorder)) => {
            sluice_shared::metrics::push_to_gateway(url, "sluice_verify", recorder.render()).await
        }
        _ => Ok(()),
    };
    let (report, mode) = result?;
    print_report(
        &report,
        &mode,
        args.repair,
        elapsed.as_secs_f64(),
        args.json,
    )?;
    if report.drift_total > 0 {
        if let Err(e) = pushed {
            eprintln!("warning: {e}");
        }
        return Ok(ExitCode::from(crate::EXIT_SOME_FAILED));
    }
    // A clean run whose metrics never arrive would look like a run that never happened.
    pushed.map_err(anyhow::Error::msg)?;
    Ok(ExitCode::SUCCESS)
}

/// How repairs were carried out, for the summary.
#[derive(Serialize)]
struct Mode {
    /// `embedded` or `fleet`.
    store: &'static str,
    /// Fleet: where index jobs went.
    #[serde(skip_serializing_if = "Option::is_none")]
    work_queue: Option<String>,
}

async fn verify_all(settings: &Settings, args: &VerifyArgs) -> anyhow::Result<(Report, Mode)> {
    let fleet = settings.qdrant_url.is_some();
    let (store, metadata, runner): (_, _, Option<Box<dyn Runner>>) = if fleet {
        let store = wiring::open_vector_store(settings).await?;
        let metadata = wiring::open_metadata(settings).await?;
        let runner: Option<Box<dyn Runner>> = match args.repair {
            true => Some(Box::new(Publish::connect(&settings.fleet.queue).await?)),
            false => None,
        };
        (store, metadata, runner)
    } else {
        // The embedded store admits one process: the pipeline that repairs also reads it.
        let pipeline = Arc::new(wiring::build_pipeline(settings, true).await?);
        let runner: Option<Box<dyn Runner>> = match args.repair {
            true => Some(Box::new(InProcess {
                pipeline: pipeline.clone(),
                settings: settings.clone(),
            })),
            false => None,
        };
        (pipeline.store.clone(), pipeline.metadata.clone(), runner)
    };
    let mode = Mode {
        store: if fleet { "fleet" } else { "embedded" },
        work_queue: (fleet && args.repair).then(|| settings.fleet.queue.work_queue.clone()),
    };
    let verifier = Verifier {
        store: store.as_ref(),
        metadata: metadata.as_ref(),
        scope: Scope {
            collection: args.collection.clone(),
            tenant: args.tenant.clone(),
        },
        repair: runner.as_deref().map(|r| r as &dyn JobRunner),
        grace: settings.lease,
    };
    let result = run_passes(&verifier, metadata.as_ref(), store.as_ref(), args).await;
    if let Some(runner) = runner {
        runner.close().await;
    }
    Ok((result?, mode))
}

async fn run_passes(
    verifier: &Verifier<'_>,
    metadata: &dyn MetadataStore,
    store: &dyn VectorStore,
    args: &VerifyArgs,
) -> anyhow::Result<Report> {
    let mut report = Report::new();

    let status = metadata
        .status(args.collection.as_deref(), 0)
        .await
        .context("counting documents")?;
    // Every tenant's documents: with --tenant the bar may end early, never overflow.
    let documents: i64 = status
        .counts
        .iter()
        .filter(|(s, _)| *s != DocStatus::Deleted)
        .map(|(_, n)| n)
        .sum();
    let tick = Tick::default();
    let progress = Progress::start_with(
        "verify ledger",
        LEDGER_UNITS,
        u64::try_from(documents).unwrap_or(0),
        tick.counters.clone(),
    );
    let pass = verifier
        .check_ledger(&mut report, &tick.with(&progress))
        .await;
    progress.finish();
    pass.context("checking the ledger against the index")?;

    let mut points = 0;
    for collection in &report.collections {
        points += match store.count(collection, None).await {
            Ok(n) => n,
            Err(StoreError::MissingCollection(_)) => 0,
            Err(e) => return Err(e).context("counting points"),
        };
    }
    let tick = Tick::default();
    let progress = Progress::start_with("verify index", INDEX_UNITS, points, tick.counters.clone());
    let observer = tick.with(&progress);
    let mut pass = Ok(());
    for collection in report.collections.clone() {
        pass = verifier
            .check_index(&collection, &mut report, &observer)
            .await
            .with_context(|| format!("checking collection {collection:?} against the ledger"));
        if pass.is_err() {
            break;
        }
    }
    progress.finish();
    pass?;
    Ok(report)
}

/// Feeds a progress bar from the verifier's callbacks.
#[derive(Default)]
struct Tick {
    counters: Arc<Counters>,
}

impl Tick {
    fn with<'a>(&'a self, progress: &'a Progress) -> TickBar<'a> {
        TickBar {
            counters: &self.counters,
            progress,
        }
    }
}

struct TickBar<'a> {
    counters: &'a Counters,
    progress: &'a Progress,
}

impl Observer for TickBar<'_> {
    fn checked(&self, n: u64) {
        self.counters.done.fetch_add(n, Ordering::Relaxed);
        self.progress.update();
    }

    fn drift(&self) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A [`JobRunner`] that also has something to close at the end.
#[async_trait]
trait Runner: JobRunner {
    async fn close(&self);
}

/// Fleet: repair jobs go to the work queue (confirmed), for the workers to run.
struct Publish {
    broker: Broker,
}

impl Publish {
    /// The broker declares the topology first (as `sluice enqueue` does), so the jobs have
    /// somewhere to go even before any worker started.
    async fn connect(settings: &QueueSettings) -> anyhow::Result<Self> {
        let broker = Broker::connect(settings)
            .await
            .context("connecting to the broker for repair jobs")?;
        Ok(Publish { broker })
    }
}

#[async_trait]
impl JobRunner for Publish {
    async fn run(&self, jobs: &[Job]) -> Result<Vec<Result<(), String>>, VerifyError> {
        publish_jobs(&self.broker.publisher(), jobs)
            .await
            .map_err(|e| VerifyError::Jobs(e.to_string()))?;
        Ok(jobs.iter().map(|_| Ok(())).collect())
    }
}

#[async_trait]
impl Runner for Publish {
    async fn close(&self) {
        self.broker.close().await;
    }
}

/// Embedded: repair jobs run here, through the same pipeline `sluice ingest` uses.
struct InProcess {
    pipeline: Arc<Pipeline>,
    settings: Settings,
}

#[async_trait]
impl JobRunner for InProcess {
    async fn run(&self, jobs: &[Job]) -> Result<Vec<Result<(), String>>, VerifyError> {
        let concurrency = self.settings.concurrency.max(1);
        let mut results: Vec<(usize, Result<(), String>)> = futures::stream::iter(0..jobs.len())
            .map(|i| async move { (i, self.run_one(&jobs[i]).await) })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        results.sort_by_key(|(i, _)| *i);
        Ok(results.into_iter().map(|(_, r)| r).collect())
    }
}

impl InProcess {
    async fn run_one(&self, job: &Job) -> Result<(), String> {
        let JobSpec::Index(index) = &job.spec else {
            return Err("not an index job".to_string());
        };
        let doc = index.to_document_job(&self.settings.collection, self.settings.tenant.as_deref());
        // The operator ingested this very source into this machine's ledger (as `sluice ingest`
        // allows its own location): it alone is allowed, checked again at the read.
        let mut allow = AllowList::default();
        allow.allow(&doc.source).map_err(|e| e.to_string())?;
        let limits = ReadLimits {
            max_size: self.settings.max_file_size,
            timeout: self.settings.read_timeout,
        };
        let fetched = Source::read_uri_reserving(&doc.source, &allow, limits, None)
            .await
            .map(|(bytes, _)| bytes);
        self.pipeline
            .index(&doc, fetched)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[async_trait]
impl Runner for InProcess {
    async fn close(&self) {}
}

#[derive(Serialize)]
struct Output<'a> {
    #[serde(flatten)]
    report: &'a Report,
    mode: &'a Mode,
    repair: bool,
    elapsed_secs: f64,
}

fn print_report(
    report: &Report,
    mode: &Mode,
    repair: bool,
    elapsed_secs: f64,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        let out = Output {
            report,
            mode,
            repair,
            elapsed_secs,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "verified {} document(s) and {} point(s) in {} ({}) in {elapsed_secs:.1}s",
        report.documents_checked,
        report.points_scanned,
        match report.collections.len() {
            1 => format!("collection {:?}", report.collections[0]),
            n => format!("{n} collections"),
        },
        mode.store,
    );
    if report.drift_total == 0 {
        println!("  no drift");
    } else {
        let kinds: Vec<String> = report
            .drift
            .iter()
            .map(|(kind, n)| format!("{} {n}", kind.as_str()))
            .collect();
        println!("  drift: {} — {}", report.drift_total, kinds.join(", "));
    }
    if report.skipped_busy > 0 {
        println!(
            "  {} changed while being checked (a worker was busy with them): not judged",
            report.skipped_busy
        );
    }
    if repair {
        let actions: Vec<String> = report
            .repairs
            .iter()
            .map(|(action, n)| format!("{} {n}", action.as_str()))
            .collect();
        let jobs = match &mode.work_queue {
            Some(queue) => format!(" (index jobs published to {queue})"),
            None => String::new(),
        };
        println!(
            "  repairs: {}{jobs}; {} failed",
            actions.join(", "),
            report.repair_failures
        );
    }
    if report.findings.is_empty() {
        return Ok(());
    }
    let shown = report.findings.len() as u64;
    if shown < report.drift_total {
        println!(
            "drift (first {shown} of {}, at most {MAX_FINDINGS} listed):",
            report.drift_total
        );
    } else {
        println!("drift:");
    }
    for f in &report.findings {
        let count = match f.expected_points {
            Some(expected) => format!("{} of {expected} point(s)", f.points),
            None => format!("{} point(s)", f.points),
        };
        let repaired = match (&f.repair, &f.repair_error) {
            (Some(action), None) => format!(" — {}", action.as_str()),
            (Some(action), Some(e)) => format!(" — {} failed: {e}", action.as_str()),
            (None, _) => String::new(),
        };
        println!(
            "  [{}] {}/{} v{}: {count}{repaired}",
            f.kind.as_str(),
            f.collection,
            f.doc_id,
            f.version
        );
    }
    Ok(())
}
