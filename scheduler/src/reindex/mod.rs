//! `sluice reindex`: publish an index job for every document of the metadata store that matches a
//! filter, so the fleet's workers re-index them (`--force`: re-embed even unchanged ones).
//!
//! ```text
//!  metadata store ──list_documents (keyset page of SLUICE_REINDEX_BATCH)──┐
//!       ▲                                                                 ▼
//!       └── cursor saved ◄── publish_jobs (confirmed) ◄── wait while the work queue is too deep
//! ```
//!
//! Bounds: one batch in memory and in flight at a time; a batch is published only once the work
//! queue's ready messages plus the batch fit within `SLUICE_REINDEX_MAX_QUEUE_DEPTH`, so a huge
//! reindex never floods the broker and live jobs never queue behind more than that many.
//!
//! Resumable: after each confirmed batch the position (last document published) is saved in the
//! metadata store, keyed by the command's arguments. Rerunning the same command after an
//! interruption or an error continues after that position; `--restart` starts over. A batch
//! whose cursor was not saved is published again on resume, which is harmless: an index job for
//! an unchanged document is skipped, and a forced one converges to a single version.
//!
//! Exit status: 0 done; 1 error (cursor kept, rerun to resume); 130 stopped by Ctrl-C (SIGINT),
//! 143 by SIGTERM, after finishing the current batch (cursor saved). A second signal exits at
//! once, losing at most the current batch's cursor.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sluice_shared::config::{Settings, validate_collection_name};
use sluice_shared::metadata::reindex_cursor::{ReindexCursors, ReindexRun};
use sluice_shared::metadata::{DocumentCursor, DocumentFilter, MetadataStore};
use sluice_shared::queue::Broker;
use sluice_shared::reindex::{
    Admission, QueueDepth, RunKey, admit, index_job, open_store, parse_since, publish_jobs, run_key,
};
use sluice_shared::shutdown::{Signal, Signals};
use tokio_util::sync::CancellationToken;

use crate::progress::{Counters, Progress, Units};

/// Documents published, documents no valid index job can express.
const DOCUMENTS: Units = Units {
    item: "docs",
    chunks: None,
    failed: "skipped",
};

/// First pause between two looks at the queue depth while held back; it doubles up to
/// [`MAX_POLL`], so a queue that drains quickly is noticed quickly and a slow one costs the
/// broker about one passive declare per second.
const MIN_POLL: Duration = Duration::from_millis(50);
const MAX_POLL: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
pub struct ReindexArgs {
    /// Only documents of this collection (default: every collection).
    #[arg(long)]
    pub collection: Option<String>,
    /// Only documents of this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only documents whose source URI starts with this, e.g. `s3://handbook/policies/`.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Only documents updated at or after this: an RFC 3339 time, a date (UTC), or a duration
    /// ago such as `24h` or `7d`.
    #[arg(long)]
    pub since: Option<String>,
    /// Re-embed every matching document, even if unchanged.
    #[arg(long)]
    pub force: bool,
    /// Start from the first document even if an interrupted run with the same arguments saved
    /// a cursor.
    #[arg(long)]
    pub restart: bool,
}

pub async fn run(settings: Settings, args: ReindexArgs) -> anyhow::Result<ExitCode> {
    let stop = Stop::install()?;
    if let Some(collection) = &args.collection {
        validate_collection_name("--collection", collection)?;
    }
    let since = args
        .since
        .as_deref()
        .map(parse_since)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    let filter = DocumentFilter {
        collection: args.collection.clone(),
        tenant: args.tenant.clone(),
        source_prefix: args.prefix.clone(),
        since,
    };
    let key = run_key(&RunKey {
        collection: args.collection.as_deref(),
        tenant: args.tenant.as_deref(),
        source_prefix: args.prefix.as_deref(),
        since: args.since.as_deref(),
        force: args.force,
    });

    let (metadata, cursors) = open_store(&settings)
        .await
        .context("opening the metadata store")?;
    let run = match cursors.find(&key).await? {
        Some(saved) if saved.completed_at.is_none() && !args.restart => {
            eprintln!("{}", resume_note(&saved));
            saved
        }
        saved => {
            if let Some(saved) = saved.filter(|s| s.completed_at.is_none()) {
                eprintln!(
                    "--restart: discarding the cursor of run {} ({} job(s) published)",
                    saved.run_id, saved.published
                );
            }
            cursors.start(&key, &filter, args.force).await?
        }
    };

    let queue_settings = &settings.fleet.queue;
    let broker = Broker::connect(queue_settings).await?;
    let depth = QueueDepth::open(&broker).await?;

    let total = cursors
        .count_documents(&run.filter, run.after.as_ref())
        .await?;
    let batch = settings.scheduler.reindex_batch;
    let max_depth = settings.scheduler.reindex_max_queue_depth;
    eprintln!(
        "reindex run {}: {total} document(s) to publish to {} in batches of {batch}, \
         holding back while more than {max_depth} job(s) wait",
        run.run_id, queue_settings.work_queue
    );
    let counters = Arc::new(Counters::default());
    let mut reindex = Reindex {
        metadata,
        cursors,
        broker,
        depth,
        work_queue: queue_settings.work_queue.clone(),
        batch,
        max_depth,
        stop,
        progress: Progress::start_with("reindex", DOCUMENTS, total, counters.clone()),
        counters,
        published_before: run.published,
        published: 0,
        after: run.after.clone(),
        run,
    };
    let started = Instant::now();
    let ending = reindex.publish_all().await;
    let Reindex {
        progress,
        broker,
        run,
        published,
        published_before,
        counters,
        after,
        ..
    } = reindex;
    let skipped = counters.failed.load(Ordering::Relaxed);
    progress.finish();
    broker.close().await;
    let elapsed = started.elapsed();
    let skipped_note = match skipped {
        0 => String::new(),
        n => format!(", {n} skipped (see the warnings above)"),
    };
    let summary = format!("published {published} index job(s){skipped_note} in {elapsed:.1?}");
    match ending {
        Ok(Ending::Done) => {
            match published_before {
                0 => println!("{summary}"),
                before => println!(
                    "{summary}; {} in all for run {} started {}",
                    before + published,
                    run.run_id,
                    run.started_at.to_rfc3339()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(Ending::Interrupted(signal)) => {
            eprintln!(
                "stopped by {}: {summary}; cursor saved {}; run the same command again to resume \
                 (or add --restart to start over)",
                signal.name(),
                position(after.as_ref())
            );
            Ok(ExitCode::from(signal.exit_code()))
        }
        Err(e) => Err(e.context(format!(
            "reindex stopped after publishing {published} job(s); the cursor is saved {}: run \
             the same command again to resume",
            position(after.as_ref())
        ))),
    }
}

/// How a run ended, other than with an error.
enum Ending {
    Done,
    Interrupted(Signal),
}

struct Reindex {
    metadata: Arc<dyn MetadataStore>,
    cursors: ReindexCursors,
    broker: Broker,
    depth: QueueDepth,
    work_queue: String,
    batch: usize,
    max_depth: u32,
    stop: Stop,
    progress: Progress,
    run: ReindexRun,
    /// Jobs published by earlier attempts of this run (resumed).
    published_before: u64,
    /// Jobs published by this process.
    published: u64,
    /// Documents published by this process (`done`) and skipped (`failed`: no valid index job
    /// can express them).
    counters: Arc<Counters>,
    /// The last document confirmed and saved.
    after: Option<DocumentCursor>,
}

impl Reindex {
    async fn publish_all(&mut self) -> anyhow::Result<Ending> {
        loop {
            if let Some(signal) = self.stop.requested() {
                return Ok(Ending::Interrupted(signal));
            }
            let page = self
                .metadata
                .list_documents(&self.run.filter, self.after.as_ref(), self.batch)
                .await
                .context("listing documents")?;
            let Some(last) = page.last() else {
                return self.complete().await;
            };
            if let Some(signal) = self.wait_for_room(page.len()).await? {
                return Ok(Ending::Interrupted(signal));
            }
            let mut jobs = Vec::with_capacity(page.len());
            for doc in &page {
                match index_job(doc, self.run.force) {
                    Ok(job) => jobs.push(job),
                    Err(error) => {
                        self.counters.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            %error,
                            collection = doc.collection.as_str(),
                            doc_id = doc.doc_id.as_str(),
                            "document skipped: no valid index job for it"
                        );
                    }
                }
            }
            // Not interruptible: once a batch starts, it is confirmed and saved as a whole.
            publish_jobs(&self.broker.publisher(), &jobs)
                .await
                .context("publishing a batch of index jobs")?;
            self.published += jobs.len() as u64;
            let cursor = DocumentCursor {
                collection: last.collection.clone(),
                doc_id: last.doc_id.clone(),
            };
            let owned = self
                .cursors
                .advance(
                    &self.run.run_key,
                    self.run.run_id,
                    &cursor,
                    self.published_before + self.published,
                )
                .await
                .context("saving the reindex cursor")?;
            if !owned {
                bail!(
                    "another `sluice reindex` with the same arguments replaced run {}; stopping",
                    self.run.run_id
                );
            }
            self.after = Some(cursor);
            self.counters
                .done
                .fetch_add(page.len() as u64, Ordering::Relaxed);
            self.progress.update();
            if page.len() < self.batch {
                return self.complete().await;
            }
        }
    }

    async fn complete(&mut self) -> anyhow::Result<Ending> {
        let owned = self
            .cursors
            .complete(
                &self.run.run_key,
                self.run.run_id,
                self.published_before + self.published,
            )
            .await
            .context("marking the reindex run complete")?;
        if !owned {
            bail!(
                "another `sluice reindex` with the same arguments replaced run {} before it \
                 finished",
                self.run.run_id
            );
        }
        Ok(Ending::Done)
    }

    /// Waits until a batch of `batch` fits under the maximum depth; `Some` if a signal came first.
    async fn wait_for_room(&mut self, batch: usize) -> anyhow::Result<Option<Signal>> {
        let mut pause = MIN_POLL;
        loop {
            let depth = self
                .depth
                .get()
                .await
                .with_context(|| format!("reading the depth of queue {}", self.work_queue))?;
            match admit(depth, batch, self.max_depth) {
                Admission::Publish => {
                    self.progress.set_status(None);
                    return Ok(None);
                }
                Admission::Wait { depth, limit } => self
                    .progress
                    .set_status(Some(format!("waiting: queue depth {depth} > {limit}"))),
            }
            tokio::select! {
                signal = self.stop.wait() => return Ok(Some(signal)),
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(MAX_POLL);
        }
    }
}

fn resume_note(saved: &ReindexRun) -> String {
    format!(
        "resuming reindex run {} (started {}, last saved {}): {} job(s) already published, \
         continuing {}; add --restart to start over",
        saved.run_id,
        saved.started_at.to_rfc3339(),
        saved.updated_at.to_rfc3339(),
        saved.published,
        position(saved.after.as_ref())
    )
}

fn position(after: Option<&DocumentCursor>) -> String {
    match after {
        Some(c) => format!("after {}/{}", c.collection, c.doc_id),
        None => "at the first document".to_string(),
    }
}

/// Ctrl-C / SIGTERM: the first asks the run to stop after its current batch; a second exits at
/// once.
struct Stop {
    token: CancellationToken,
    signal: Arc<OnceLock<Signal>>,
}

impl Stop {
    fn install() -> anyhow::Result<Stop> {
        let mut signals = Signals::install().context("installing the SIGINT/SIGTERM handlers")?;
        let stop = Stop {
            token: CancellationToken::new(),
            signal: Arc::new(OnceLock::new()),
        };
        let (token, slot) = (stop.token.clone(), stop.signal.clone());
        tokio::spawn(async move {
            let first = signals.recv().await;
            let _ = slot.set(first);
            token.cancel();
            eprintln!(
                "{}: stopping after the current batch (signal again to stop at once)",
                first.name()
            );
            signals.recv().await;
            // The cursor of the last confirmed batch is saved; at most this batch is repeated.
            std::process::exit(first.exit_code().into());
        });
        Ok(stop)
    }

    fn requested(&self) -> Option<Signal> {
        self.signal.get().copied()
    }

    async fn wait(&self) -> Signal {
        self.token.cancelled().await;
        self.requested().unwrap_or(Signal::Interrupt)
    }
}
