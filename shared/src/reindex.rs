//! # Re-indexing: a filter over the metadata store, turned into index jobs
//!
//! Where it sits in the fleet:
//!
//! ```text
//!  sluice reindex ──┐  list_documents (keyset pages)        ┌─► work queue ─► workers
//!  reindex job ─────┴─► index_job per document ─► publish_jobs (confirmed)
//!   (worker fan-out)
//! ```
//!
//! Both producers share the selection ([`filter_of`]), the job built per document
//! ([`index_job`]) and the confirmed publishing ([`publish_jobs`]). `sluice reindex` adds what a
//! long run needs on top: [`admit`] holds batches back while the work queue is deep, and
//! [`crate::metadata::reindex_cursor`] persists where the run got to, keyed by [`run_key`].

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::config::Settings;
use crate::job::{IndexJob, Job, JobError, JobSpec, ReindexJob};
use crate::metadata::reindex_cursor::ReindexCursors;
use crate::metadata::{
    DocumentFilter, DocumentRecord, MetadataError, MetadataStore, PostgresStore, SqliteStore,
};
use crate::queue::{self, Broker, Publisher, QueueError, job_headers};

/// Publishes awaiting their confirm at once, per batch. Confirms arrive asynchronously, so a few
/// dozen in flight hide the round trip without holding much unconfirmed work.
const PUBLISH_CONCURRENCY: usize = 32;

/// The documents a `reindex` job selects.
pub fn filter_of(job: &ReindexJob) -> DocumentFilter {
    DocumentFilter {
        collection: job.collection.clone(),
        tenant: job.tenant.clone(),
        source_prefix: job.source_prefix.clone(),
        since: job.since,
    }
}

/// The index job that re-indexes `doc` where it is: same source, doc_id, tenant, metadata and
/// collection. Fails only for a row that no valid job can express (e.g. a source URI the job
/// contract does not accept).
pub fn index_job(doc: &DocumentRecord, force: bool) -> Result<Job, JobError> {
    Job::new(JobSpec::Index(IndexJob {
        source: doc.source.clone(),
        doc_id: Some(doc.doc_id.clone()),
        tenant: doc.tenant.clone(),
        collection: Some(doc.collection.clone()),
        metadata: doc.metadata.clone(),
        force,
        ..Default::default()
    }))
}

/// Publishes `jobs` to the work exchange and returns once the broker confirmed every one (each
/// retried as [`Publisher::publish_with_retry`] does). On error some jobs may have been
/// published: publishing the batch again is safe, since an index job for an unchanged document
/// is skipped and a forced one converges to a single version.
pub async fn publish_jobs(publisher: &Publisher, jobs: &[Job]) -> Result<(), QueueError> {
    let routing_key = publisher.settings().routing_key.as_str();
    // By index rather than over `&Job`: a closure taking a reference would make the future
    // not `Send` for every lifetime (a known rustc limitation), and workers spawn it.
    futures::stream::iter(0..jobs.len())
        .map(|i| publish_one(publisher, routing_key, &jobs[i]))
        .buffer_unordered(PUBLISH_CONCURRENCY)
        .try_collect()
        .await
}

async fn publish_one(
    publisher: &Publisher,
    routing_key: &str,
    job: &Job,
) -> Result<(), QueueError> {
    publisher
        .publish_with_retry(routing_key, job.to_json().as_bytes(), job_headers(0))
        .await?;
    crate::metrics::jobs_published_total("index", "reindex").increment(1);
    Ok(())
}

/// Whether the next batch may be published now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Publish,
    /// The queue holds `depth` ready messages; the batch fits once it is at most `limit`.
    Wait {
        depth: u32,
        limit: u32,
    },
}

/// Admit a batch of `batch` jobs only if the work queue, now `depth` ready messages deep, stays
/// at or below `max_depth` with it: so re-indexing alone never pushes the queue past its bound,
/// and live traffic never waits behind more than `max_depth` re-index jobs.
pub fn admit(depth: u32, batch: usize, max_depth: u32) -> Admission {
    let batch = u32::try_from(batch).unwrap_or(u32::MAX);
    let limit = max_depth.saturating_sub(batch);
    if depth <= limit {
        Admission::Publish
    } else {
        Admission::Wait { depth, limit }
    }
}

/// Reads how many ready messages wait in the work queue (a passive declare; deliveries held
/// unacked by workers are not counted), on a channel of its own.
pub struct QueueDepth {
    channel: lapin::Channel,
    queue: String,
}

impl QueueDepth {
    /// Reads on `broker`'s connection. The broker declared the topology, so the work queue
    /// exists: a passive declare of a missing queue would close the channel.
    pub async fn open(broker: &Broker) -> Result<Self, QueueError> {
        let channel = broker
            .channel("opening a channel for queue depth checks")
            .await?;
        Ok(QueueDepth {
            channel,
            queue: broker.settings().work_queue.clone(),
        })
    }

    /// Ready messages in the work queue now.
    pub async fn get(&self) -> Result<u32, QueueError> {
        queue::queue_depth(&self.channel, &self.queue).await
    }
}

/// What identifies a reindex run: the same arguments resume the same run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunKey<'a> {
    pub collection: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub source_prefix: Option<&'a str>,
    /// As typed, not resolved: `--since 24h` an hour later is still the same run.
    pub since: Option<&'a str>,
    pub force: bool,
}

/// The canonical text of `key`, stored as the cursor's `run_key`.
pub fn run_key(key: &RunKey<'_>) -> String {
    serde_json::to_string(key).expect("a struct of strings and a bool serializes")
}

/// `--since`: an RFC 3339 instant (`2025-03-01T12:00:00Z`), a date (`2025-03-01`, midnight UTC),
/// or a duration before now: a whole number followed by `s`, `m`, `h`, `d` or `w` (`24h`, `7d`).
/// The error says which forms are accepted.
pub fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    parse_since_at(text, Utc::now())
}

fn parse_since_at(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(instant) = DateTime::parse_from_rfc3339(text) {
        return Ok(instant.with_timezone(&Utc));
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc());
    }
    let expected = || {
        format!(
            "{text:?} is neither an RFC 3339 time (2025-03-01T12:00:00Z), a date (2025-03-01) \
             nor a duration such as 90m, 24h or 7d"
        )
    };
    let (unit_at, _) = text.char_indices().last().ok_or_else(expected)?;
    let (number, unit) = text.split_at(unit_at);
    let n: i64 = number.parse().map_err(|_| expected())?;
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(expected()),
    };
    n.checked_mul(seconds_per_unit)
        .and_then(chrono::Duration::try_seconds)
        .and_then(|d| now.checked_sub_signed(d))
        .filter(|_| n >= 0)
        .ok_or_else(|| format!("{text:?} is out of range"))
}

/// Opens the configured metadata store (PostgreSQL when `SLUICE_DATABASE_URL` is set, else the
/// SQLite file) together with its reindex cursor table.
pub async fn open_store(
    settings: &Settings,
) -> Result<(Arc<dyn MetadataStore>, ReindexCursors), MetadataError> {
    Ok(match &settings.database_url {
        Some(url) => {
            let store = PostgresStore::connect(url.expose()).await?;
            let cursors = ReindexCursors::new(&store);
            (Arc::new(store), cursors)
        }
        None => {
            let store = SqliteStore::open(&settings.sqlite_path()).await?;
            let cursors = ReindexCursors::new(&store);
            (Arc::new(store), cursors)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_admitted_only_if_the_queue_stays_within_its_bound() {
        assert_eq!(admit(0, 5, 10), Admission::Publish);
        assert_eq!(admit(5, 5, 10), Admission::Publish);
        assert_eq!(admit(6, 5, 10), Admission::Wait { depth: 6, limit: 5 });
        assert_eq!(
            admit(10, 10, 10),
            Admission::Wait {
                depth: 10,
                limit: 0
            }
        );
        assert_eq!(admit(0, 10, 10), Admission::Publish);
        // A short last page needs less room.
        assert_eq!(admit(8, 2, 10), Admission::Publish);
    }

    #[test]
    fn since_takes_instants_dates_and_durations() {
        let now = DateTime::parse_from_rfc3339("2025-03-10T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: &str| parse_since_at(s, now).map(|t| t.to_rfc3339());
        assert_eq!(
            at("2025-03-01T12:00:00+01:00").unwrap(),
            "2025-03-01T11:00:00+00:00"
        );
        assert_eq!(at("2025-03-01").unwrap(), "2025-03-01T00:00:00+00:00");
        assert_eq!(at("24h").unwrap(), "2025-03-09T12:00:00+00:00");
        assert_eq!(at("7d").unwrap(), "2025-03-03T12:00:00+00:00");
        assert_eq!(at("90m").unwrap(), "2025-03-10T10:30:00+00:00");
        for bad in [
            "",
            "h",
            "24",
            "24x",
            "5ä",
            "-1d",
            "yesterday",
            "99999999999999999w",
        ] {
            assert!(at(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn reindex_jobs_keep_each_documents_tenant_and_metadata() {
        let now = chrono::Utc::now();
        let record = DocumentRecord {
            collection: "kb".into(),
            doc_id: "hr/leave".into(),
            source: "s3://handbook/hr/leave.md".into(),
            tenant: Some("acme".into()),
            content_hash: Some("h".into()),
            fingerprint: Some("f".into()),
            current_version: 3,
            next_version: 4,
            published_version: 3,
            status: crate::metadata::DocStatus::Indexed,
            chunk_count: 2,
            tokens: 20,
            attempts: 1,
            last_error: None,
            created_at: now,
            updated_at: now,
            indexed_at: Some(now),
            lease_until: None,
            metadata: serde_json::Map::from_iter([("team".to_string(), "hr".into())]),
        };
        let job = index_job(&record, false).unwrap();
        let JobSpec::Index(index) = &job.spec else {
            panic!("{job:?}")
        };
        assert_eq!(index.tenant.as_deref(), Some("acme"));
        assert_eq!(index.metadata["team"], "hr");
        let document = index.to_document_job("default", None);
        assert_eq!(document.metadata, Some(record.metadata.clone()));
        assert_eq!(document.collection, "kb");
    }

    #[test]
    fn run_keys_differ_exactly_when_the_arguments_do() {
        let a = RunKey {
            tenant: Some("acme"),
            since: Some("24h"),
            force: true,
            ..RunKey::default()
        };
        assert_eq!(run_key(&a), run_key(&a.clone()));
        let b = RunKey {
            force: false,
            ..a.clone()
        };
        let c = RunKey {
            collection: Some("acme"),
            tenant: None,
            ..a.clone()
        };
        assert_ne!(run_key(&a), run_key(&b));
        assert_ne!(run_key(&a), run_key(&c));
    }
}
