//! One poll of one watched location: list it, compare with the recorded state, publish index jobs
//! for new and changed objects and delete jobs for removed ones, and record each change only
//! after the broker confirmed its job.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use sluice_shared::job::{DeleteJob, IndexJob, Job, JobSpec};
use sluice_shared::metadata::watch_state::{WatchState, WatchedObject};
use sluice_shared::metrics as m;
use sluice_shared::queue::{Publisher, job_headers};
use sluice_shared::source::{Source, SourceError, SourceObject};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::diff::{Change, plan};

/// Publishes awaiting their confirm at once. Confirms arrive asynchronously, so a few dozen in
/// flight turn a per-message round trip into a stream; the publisher shares one channel.
const PUBLISH_CONCURRENCY: usize = 32;

/// Confirmed changes written to the state per statement or transaction.
const RECORD_BATCH: usize = 256;

/// How stale `last_seen` may get before a poll refreshes it: refreshing every unchanged row on
/// every poll would rewrite a whole large bucket's state each interval.
const LAST_SEEN_RESOLUTION: chrono::Duration = chrono::Duration::hours(1);

/// A location as configured, opened on first use (and again after an open failed: a folder that
/// does not exist yet may appear later).
pub struct Location {
    /// As the user wrote it.
    pub input: String,
    source: Option<Source>,
}

impl Location {
    /// Checks that `input` can ever be opened: a malformed URL or an unknown scheme is a
    /// configuration error; a folder or bucket that is missing now is not.
    pub fn new(input: &str) -> Result<Self, SourceError> {
        let source = match Source::open(input) {
            Ok(source) => Some(source),
            Err(e @ SourceError::InvalidLocation { .. }) => return Err(e),
            Err(e) => {
                warn!(location = input, error = %e, "watched location is not reachable yet");
                None
            }
        };
        Ok(Location {
            input: input.to_string(),
            source,
        })
    }

    /// The root URI, once opened; the key of the location's state.
    pub fn root_uri(&self) -> Option<&str> {
        self.source.as_ref().map(Source::root_uri)
    }

    fn open(&mut self) -> Result<&Source, SourceError> {
        if self.source.is_none() {
            self.source = Some(Source::open(&self.input)?);
        }
        Ok(self.source.as_ref().expect("opened above"))
    }
}

/// Where jobs go and how they are labelled; shared by every location of one watcher.
pub struct Watcher {
    pub state: Arc<dyn WatchState>,
    pub publisher: Arc<Publisher>,
    /// `collection` of the jobs; `None` leaves the worker's default.
    pub job_collection: Option<String>,
    /// `tenant` of the index jobs; `None` leaves the worker's default.
    pub tenant: Option<String>,
    /// The collection the state is kept under: the jobs' collection, else the default one.
    pub state_collection: String,
    /// Print one line per confirmed job on stdout (the CLI); `sluice serve` only logs.
    pub print_jobs: bool,
}

/// What one poll did.
#[derive(Debug, Default)]
pub struct PollReport {
    pub location: String,
    pub new: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Changes found but not published (left for the next poll) because the poll stopped early.
    pub left: usize,
    /// Why the poll stopped early, if it did: listing, state or publishing failure.
    pub error: Option<String>,
    /// The shutdown token fired during the poll.
    pub cancelled: bool,
}

impl PollReport {
    pub fn enqueued(&self) -> usize {
        self.new + self.changed + self.removed
    }

    pub fn summary(&self) -> String {
        let mut line = format!(
            "{}: {} new, {} changed, {} removed, {} unchanged",
            self.location, self.new, self.changed, self.removed, self.unchanged
        );
        if self.left > 0 {
            line.push_str(&format!(", {} left for the next poll", self.left));
        }
        if let Some(error) = &self.error {
            line.push_str(&format!(" — failed: {error}"));
        }
        line
    }

    fn count(&mut self, change: Change) {
        match change {
            Change::New => self.new += 1,
            Change::Changed => self.changed += 1,
            Change::Removed => self.removed += 1,
        }
    }
}

/// One unit of publishing work.
enum Work {
    Index(Change, SourceObject),
    Remove(String),
}

/// A confirmed (or unpublishable) change, waiting to be written to the state.
enum Done {
    Record(WatchedObject),
    Forget(String),
}

impl Watcher {
    /// Polls `location` once. Never publishes a delete unless the listing succeeded.
    pub async fn poll(&self, location: &mut Location, shutdown: &CancellationToken) -> PollReport {
        let started = Instant::now();
        let mut report = PollReport {
            location: location.input.clone(),
            ..PollReport::default()
        };
        self.poll_into(location, shutdown, &mut report).await;
        m::watch_poll_seconds().record(started.elapsed().as_secs_f64());
        if let Some(error) = &report.error {
            warn!(location = %report.location, %error, left = report.left, "watch poll failed");
        } else if report.enqueued() > 0 {
            info!(
                location = %report.location,
                new = report.new,
                changed = report.changed,
                removed = report.removed,
                unchanged = report.unchanged,
                "watch poll enqueued changes"
            );
        }
        report
    }

    async fn poll_into(
        &self,
        location: &mut Location,
        shutdown: &CancellationToken,
        report: &mut PollReport,
    ) {
        let listed = async {
            let source = location.open()?;
            let objects = source.list().await?;
            Ok::<_, SourceError>((source.root_uri().to_string(), objects))
        };
        let listed = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                report.cancelled = true;
                return;
            }
            listed = listed => listed,
        };
        let (root, objects) = match listed {
            Ok(listed) => listed,
            Err(e) => {
                // Nothing is compared, so nothing is deleted: an unreachable bucket must never look
                // like an empty one.
                m::watch_listing_errors_total().increment(1);
                report.error = Some(format!("listing failed: {e}"));
                return;
            }
        };
        report.location = root.clone();
        let recorded = match self.state.objects(&self.state_collection, &root).await {
            Ok(recorded) => recorded,
            Err(e) => {
                report.error = Some(format!("loading the watch state: {e}"));
                return;
            }
        };
        let now = Utc::now();
        let plan = plan(objects, recorded, now, LAST_SEEN_RESOLUTION);
        report.unchanged = plan.unchanged;
        let work: Vec<Work> = plan
            .index
            .into_iter()
            .map(|(change, object)| Work::Index(change, object))
            .chain(plan.removed.into_iter().map(Work::Remove))
            .collect();
        report.left = work.len();
        self.publish_all(&root, work, shutdown, report).await;
        if report.error.is_none()
            && !report.cancelled
            && !plan.seen_due.is_empty()
            && let Err(e) = self
                .state
                .mark_seen(&self.state_collection, &root, &plan.seen_due, now)
                .await
        {
            // Only bookkeeping: the changes themselves are recorded.
            warn!(location = %root, error = %e, "could not refresh last_seen of watched objects");
        }
    }

    /// Publishes every change with bounded concurrency and records confirmed ones in batches.
    /// Stops at the first publish that fails after its retries (the broker is down: the rest
    /// would fail the same way) or when `shutdown` fires; what was not confirmed stays unrecorded
    /// and is found again by the next poll.
    async fn publish_all(
        &self,
        root: &str,
        work: Vec<Work>,
        shutdown: &CancellationToken,
        report: &mut PollReport,
    ) {
        // FuturesUnordered filled by hand rather than `stream::iter(..).map(closure)`: a closure
        // in the stream's type makes rustc fail the `Send` check `tokio::spawn` needs.
        let mut work = work.into_iter();
        let mut results = FuturesUnordered::new();
        let mut done: Vec<Done> = Vec::new();
        loop {
            while results.len() < PUBLISH_CONCURRENCY
                && let Some(w) = work.next()
            {
                results.push(self.publish_one(w));
            }
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    report.cancelled = true;
                    break;
                }
                next = results.next() => next,
            };
            let Some((change, outcome)) = next else { break };
            match outcome {
                Ok(item) => {
                    report.left -= 1;
                    report.count(change);
                    m::watch_objects_total(change.as_str()).increment(1);
                    let kind = match change {
                        Change::Removed => "delete",
                        Change::New | Change::Changed => "index",
                    };
                    m::jobs_published_total(kind, "watch").increment(1);
                    done.push(item);
                }
                Err(e) => {
                    m::watch_publish_errors_total().increment(1);
                    report.error = Some(format!("{e:#}"));
                    break;
                }
            }
            if done.len() >= RECORD_BATCH
                && let Err(e) = self.flush(root, &mut done).await
            {
                report.error = Some(e);
                break;
            }
        }
        // Drop the in-flight publishes before recording: their outcome is unknown, so they must
        // stay unrecorded and be published again next time.
        drop(results);
        if let Err(e) = self.flush(root, &mut done).await
            && report.error.is_none()
        {
            report.error = Some(e);
        }
    }

    /// Publishes the job for one change and waits for its confirm.
    async fn publish_one(&self, work: Work) -> (Change, anyhow::Result<Done>) {
        let (change, uri, spec, done) = match work {
            Work::Index(change, object) => {
                let spec = JobSpec::Index(IndexJob {
                    source: object.uri.clone(),
                    collection: self.job_collection.clone(),
                    tenant: self.tenant.clone(),
                    // An unchanged-content touch costs the worker only a hash: no need to force.
                    force: false,
                    ..IndexJob::default()
                });
                let record = Done::Record(WatchedObject::from_listing(&object, Utc::now()));
                (change, object.uri, spec, record)
            }
            Work::Remove(uri) => {
                // The doc id the index job got: the source URI (IndexJob::effective_doc_id).
                let spec = JobSpec::Delete(DeleteJob {
                    collection: self.job_collection.clone(),
                    ..DeleteJob::doc_id(uri.clone())
                });
                (Change::Removed, uri.clone(), spec, Done::Forget(uri))
            }
        };
        let job = match Job::new(spec) {
            Ok(job) => job,
            Err(e) => {
                // No job can ever be built for this URI (e.g. too long): republishing it every
                // poll would only repeat the warning, so it is recorded as handled.
                warn!(%uri, error = %e, "cannot build a job for a watched object; skipping it");
                return (change, Ok(done));
            }
        };
        let routing_key = &self.publisher.settings().routing_key;
        let published = self
            .publisher
            .publish_with_retry(routing_key, job.to_json().as_bytes(), job_headers(0))
            .await;
        match published {
            Ok(()) => {
                if self.print_jobs {
                    println!("{} {} {uri}", job.job_id, change.as_str());
                }
                (change, Ok(done))
            }
            Err(e) => (
                change,
                Err(anyhow::Error::new(e).context(format!("publishing the job for {uri}"))),
            ),
        }
    }

    async fn flush(&self, root: &str, done: &mut Vec<Done>) -> Result<(), String> {
        let mut record = Vec::new();
        let mut forget = Vec::new();
        for item in done.drain(..) {
            match item {
                Done::Record(object) => record.push(object),
                Done::Forget(uri) => forget.push(uri),
            }
        }
        let collection = &self.state_collection;
        if !record.is_empty() {
            self.state
                .record(collection, root, &record)
                .await
                .map_err(|e| format!("recording published changes: {e}"))?;
        }
        if !forget.is_empty() {
            self.state
                .forget(collection, root, &forget)
                .await
                .map_err(|e| format!("recording published deletes: {e}"))?;
        }
        Ok(())
    }
}
