//! Record stage: the metadata store. Per document: source, content hash, pipeline fingerprint,
//! current version, status, counts, attempts, last error and timestamps. SQLite for one machine,
//! PostgreSQL for the fleet: one implementation ([`SqlStore`]) over a small SQL-dialect layer
//! (`sql`), one contract suite.
//!
//! The store also arbitrates who may write a document: [`MetadataStore::begin`] grants an exclusive,
//! expiring lease and a fresh version number, and [`MetadataStore::commit`] only succeeds for the
//! lease holder. That is what makes two concurrent runs of one document converge to one version.

pub mod postgres;
pub mod reindex_cursor;
mod sql;
pub mod sqlite;
mod store;
pub mod watch_state;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use store::SqlStore;

/// Lifecycle of a document row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DocStatus {
    Processing,
    Indexed,
    Failed,
    Deleted,
}

impl DocStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DocStatus::Processing => "processing",
            DocStatus::Indexed => "indexed",
            DocStatus::Failed => "failed",
            DocStatus::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "processing" => DocStatus::Processing,
            "indexed" => DocStatus::Indexed,
            "failed" => DocStatus::Failed,
            "deleted" => DocStatus::Deleted,
            _ => return None,
        })
    }
}

/// A document row as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DocumentRecord {
    pub collection: String,
    pub doc_id: String,
    pub source: String,
    pub tenant: Option<String>,
    pub content_hash: Option<String>,
    pub fingerprint: Option<String>,
    /// The version whose chunks are in the vector store (0 = none yet).
    pub current_version: i64,
    /// The highest version ever handed out; a live lease is writing this one.
    pub next_version: i64,
    /// The version whose points were made visible to searchers; behind `current_version` only
    /// after a crash between the commit and the publication (the next run catches up).
    pub published_version: i64,
    pub status: DocStatus,
    pub chunk_count: i64,
    pub tokens: i64,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub indexed_at: Option<DateTime<Utc>>,
    /// End of the current lease, if a run holds one (it may have run out).
    pub lease_until: Option<DateTime<Utc>>,
    /// The job metadata the document's points carry.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl DocumentRecord {
    /// Whether a run holds a lease on the document at `now`.
    pub fn leased_at(&self, now: DateTime<Utc>) -> bool {
        self.lease_until.is_some_and(|until| until > now)
    }
}

/// What a document's points carry besides their content: its tenant and the job's metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Labels {
    pub tenant: Option<String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// Identifies a document and what we are about to index for it.
#[derive(Debug, Clone, PartialEq)]
pub struct BeginRequest {
    pub collection: String,
    pub doc_id: String,
    pub source: String,
    /// The tenant the job names; `None` keeps the document's.
    pub tenant: Option<String>,
    /// The metadata the job carries; `None` keeps the document's.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub content_hash: String,
    pub fingerprint: String,
    /// Re-index even when hash and fingerprint match.
    pub force: bool,
    /// How long the lease is valid; the holder must commit or fail before it runs out.
    pub lease: std::time::Duration,
}

/// The answer to [`MetadataStore::begin`].
#[derive(Debug, Clone, PartialEq)]
pub enum BeginOutcome {
    /// Already indexed and published with this content, pipeline and labels: nothing to do.
    Unchanged { version: i64 },
    /// The caller holds the lease and must write `version`, with these labels (the job's, or the
    /// document's where the job names none).
    Claimed {
        version: i64,
        lease_token: uuid::Uuid,
        labels: Labels,
    },
    /// The content is indexed, but its points need `labels` (which differ from what they carry)
    /// or their publication was never finished: the caller holds the lease, relabels and
    /// publishes `version`, then calls [`MetadataStore::release`]. Nothing is re-embedded.
    Refresh {
        version: i64,
        lease_token: uuid::Uuid,
        labels: Labels,
    },
    /// Another run holds a live lease on this document; try again later.
    Busy { until: DateTime<Utc> },
}

/// What [`MetadataStore::commit`] records.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitRequest<'a> {
    pub collection: &'a str,
    pub doc_id: &'a str,
    pub lease_token: uuid::Uuid,
    pub version: i64,
    pub content_hash: &'a str,
    pub fingerprint: &'a str,
    pub chunk_count: i64,
    pub tokens: i64,
    pub labels: &'a Labels,
}

/// The answer to [`MetadataStore::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    /// The lease expired and someone else took the document over; the caller's version lost.
    LeaseLost,
}

/// Which documents a re-index covers. Every field narrows the selection; deleted documents are
/// never selected.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocumentFilter {
    pub collection: Option<String>,
    pub tenant: Option<String>,
    /// Only documents whose source starts with this (exact, case-sensitive).
    pub source_prefix: Option<String>,
    /// Only documents updated at or after this time.
    pub since: Option<DateTime<Utc>>,
}

/// Position after the last document of a page, for keyset pagination in (collection, doc_id) order:
/// resumable, and stable while documents are added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DocumentCursor {
    pub collection: String,
    pub doc_id: String,
}

/// Counts by status plus the latest failures, for `sluice status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    pub counts: Vec<(DocStatus, i64)>,
    pub total_chunks: i64,
    pub total_tokens: i64,
    pub recent_failures: Vec<DocumentRecord>,
}

/// Document numbers for the scheduler's `GET /v1/stats`: where documents are in their lifecycle,
/// how many were indexed recently (for rates) and why failed documents failed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DocumentStats {
    /// Documents per status, every status listed in lifecycle order, zeros included.
    pub counts: Vec<(DocStatus, i64)>,
    /// One count per instant passed to [`MetadataStore::stats`], in the same order: documents
    /// whose latest indexing finished at or after it. A document indexed twice in the window
    /// counts once; a document indexed and then deleted still counts.
    pub indexed_since: Vec<i64>,
    /// Failed documents grouped by reason, most frequent first (ties by reason).
    pub failures_by_reason: Vec<FailureReason>,
}

/// One row of [`DocumentStats::failures_by_reason`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureReason {
    /// The recorded error without the leading `<source>: ` or `<doc_id>: ` that most errors start
    /// with, so that documents failing the same way group together. Empty when no error text was
    /// recorded.
    pub reason: String,
    /// Failed documents with this reason.
    pub documents: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    #[error("metadata store migration failed: {0}")]
    Migration(String),
    #[error("metadata store query failed: {0}")]
    Query(String),
    /// The location given for the store cannot be used (unknown scheme, unparseable URL).
    #[error("invalid metadata store location: {0}")]
    Config(String),
}

impl MetadataError {
    pub fn is_retryable(&self) -> bool {
        match self {
            MetadataError::Unavailable(_) | MetadataError::Query(_) => true,
            MetadataError::Migration(_) | MetadataError::Config(_) => false,
        }
    }
}

#[async_trait]
pub trait MetadataStore: Send + Sync {
    /// Decide whether a document needs indexing and, if so, lease it and allocate the next version.
    /// Atomic: two concurrent callers never both get `Claimed` for one live lease.
    async fn begin(&self, req: &BeginRequest) -> Result<BeginOutcome, MetadataError>;

    /// Record that `version`, with its labels, is the document's version, and release the lease.
    /// Its points are still staged: the caller publishes them next and then calls
    /// [`MetadataStore::mark_published`].
    ///
    /// Succeeds exactly when `lease_token` is still the document's lease — also after the lease ran
    /// out, as long as nobody took the document over (every claim mints a new token, so the version
    /// is then still the newest one handed out). Otherwise, or if `version` is not the one claimed
    /// with this token, returns [`CommitOutcome::LeaseLost`] and changes nothing. Committed
    /// versions therefore only grow.
    async fn commit(&self, req: &CommitRequest<'_>) -> Result<CommitOutcome, MetadataError>;

    /// Record that the points of committed `version` are published. Monotone: never lowers the
    /// recorded published version, so a slow run publishing an older version cannot undo a newer
    /// publication (whose own deletions already removed the older points).
    async fn mark_published(
        &self,
        collection: &str,
        doc_id: &str,
        version: i64,
    ) -> Result<(), MetadataError>;

    /// End a [`BeginOutcome::Refresh`]: record `labels` (now on the points) and the current
    /// version as published, and release the lease. `false` (and no change) when `lease_token`
    /// no longer holds the document.
    async fn release(
        &self,
        collection: &str,
        doc_id: &str,
        lease_token: uuid::Uuid,
        labels: &Labels,
    ) -> Result<bool, MetadataError>;

    /// Extend the lease held by `lease_token` to `lease` from now. `false` when the token no
    /// longer holds the document (taken over after expiry, committed, or deleted): the holder must
    /// stop writing. Processing renews every third of the lease, so a crashed holder blocks the
    /// document for at most one lease.
    async fn renew(
        &self,
        collection: &str,
        doc_id: &str,
        lease_token: uuid::Uuid,
        lease: std::time::Duration,
    ) -> Result<bool, MetadataError>;

    /// Record a failure (releases the lease if `lease_token` holds it). The current version, if any,
    /// stays: its chunks are still served.
    ///
    /// `lease_token: None` means the run failed before claiming (e.g. an unreadable file): it counts
    /// as an attempt, and creates a `failed` row if the document was never seen. A token that no
    /// longer holds the lease is ignored: that run no longer speaks for the document.
    async fn fail(
        &self,
        collection: &str,
        doc_id: &str,
        source: &str,
        lease_token: Option<uuid::Uuid>,
        error: &str,
    ) -> Result<(), MetadataError>;

    /// Mark a document deleted, before its points are removed. Clears the current version and any
    /// lease (an in-flight run's renewals and commit then fail, and it removes its own version);
    /// version numbers keep growing if the document comes back. Returns the highest version ever
    /// handed out — the caller deletes the points up to it, never a later run's — or `None` for
    /// an unknown document.
    async fn mark_deleted(
        &self,
        collection: &str,
        doc_id: &str,
    ) -> Result<Option<i64>, MetadataError>;

    async fn get(
        &self,
        collection: &str,
        doc_id: &str,
    ) -> Result<Option<DocumentRecord>, MetadataError>;

    /// The rows of `doc_ids` in `collection` that exist (deleted ones included), in any order.
    async fn get_many(
        &self,
        collection: &str,
        doc_ids: &[String],
    ) -> Result<Vec<DocumentRecord>, MetadataError>;

    /// Documents (not deleted) whose source starts with `prefix`.
    async fn list_by_source_prefix(
        &self,
        collection: &str,
        prefix: &str,
    ) -> Result<Vec<DocumentRecord>, MetadataError>;

    /// Up to `limit` documents matching `filter` after `after`, in (collection, doc_id) order.
    async fn list_documents(
        &self,
        filter: &DocumentFilter,
        after: Option<&DocumentCursor>,
        limit: usize,
    ) -> Result<Vec<DocumentRecord>, MetadataError>;

    /// Status counts over all collections (or one) and the `recent_failures` latest failures.
    async fn status(
        &self,
        collection: Option<&str>,
        recent_failures: usize,
    ) -> Result<StatusReport, MetadataError>;

    /// Numbers for monitoring, over all collections (or one): counts by status, for each instant
    /// in `indexed_since` the documents indexed at or after it, and the `max_reasons` most
    /// frequent failure reasons (see [`FailureReason`]). Aggregated in the database, so only the
    /// sums travel, however many documents there are.
    async fn stats(
        &self,
        collection: Option<&str>,
        indexed_since: &[DateTime<Utc>],
        max_reasons: usize,
    ) -> Result<DocumentStats, MetadataError>;
}

/// Opens the metadata store named by `url_or_path`: `postgres://…` or `postgresql://…` connects to
/// PostgreSQL; `sqlite://path`, `sqlite:path`, `sqlite::memory:` or a plain file path opens
/// SQLite. Migrations run in both cases, so the returned store is ready to use.
pub async fn connect_any(url_or_path: &str) -> Result<Arc<dyn MetadataStore>, MetadataError> {
    let location = url_or_path.trim();
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::connect(location).await?));
    }
    if location == "sqlite::memory:" {
        return Ok(Arc::new(SqliteStore::open_in_memory().await?));
    }
    // `sqlite:path` is the form sqlx itself accepts; take it too.
    if let Some(path) = location
        .strip_prefix("sqlite://")
        .or_else(|| location.strip_prefix("sqlite:"))
    {
        if path.is_empty() {
            return Err(MetadataError::Config(
                "sqlite: needs a file path".to_string(),
            ));
        }
        return Ok(Arc::new(SqliteStore::open(Path::new(path)).await?));
    }
    if location.is_empty() {
        return Err(MetadataError::Config(
            "empty metadata store location".to_string(),
        ));
    }
    if let Some((scheme, _)) = location.split_once("://") {
        // Only the scheme goes into the message: the rest may carry a password.
        return Err(MetadataError::Config(format!(
            "unsupported scheme {scheme:?} (use postgres://, sqlite:// or a file path)"
        )));
    }
    Ok(Arc::new(SqliteStore::open(Path::new(location)).await?))
}

/// The columns of a row that decide [`MetadataStore::begin`], read under a lock (row lock in
/// PostgreSQL, the write lock in SQLite); the store acts on [`decide_begin`]'s answer.
#[derive(Debug, Clone)]
pub(crate) struct LeaseView {
    pub status: DocStatus,
    pub content_hash: Option<String>,
    pub fingerprint: Option<String>,
    pub current_version: i64,
    pub next_version: i64,
    pub published_version: i64,
    pub lease_token: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub labels: Labels,
}

/// What `begin` must do with an existing row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BeginDecision {
    Busy {
        until: DateTime<Utc>,
    },
    Unchanged {
        version: i64,
    },
    /// Take the lease to relabel and publish the committed `version` (no new version).
    Refresh {
        version: i64,
    },
    /// Allocate `version` (the row's `next_version + 1`) and take the lease.
    Claim {
        version: i64,
    },
}

/// The end of a live lease, if the row has one at `now`.
pub(crate) fn live_lease(
    lease_token: Option<&str>,
    lease_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match (lease_token, lease_until) {
        (Some(_), Some(until)) if until > now => Some(until),
        _ => None,
    }
}

/// The labels a run writes: the job's, or the document's where the job names none.
pub(crate) fn effective_labels(row: &Labels, req: &BeginRequest) -> Labels {
    Labels {
        tenant: req.tenant.clone().or_else(|| row.tenant.clone()),
        metadata: req.metadata.clone().unwrap_or_else(|| row.metadata.clone()),
    }
}

/// The begin rules, as one pure function:
/// a live lease wins (`Busy`); an indexed row with the same content hash and pipeline fingerprint
/// is `Unchanged` unless forced — or `Refresh` when its points still need the request's labels or
/// their publication; anything else (new content, failed, deleted, expired lease) claims the next
/// version. `next_version` only grows, so a version number is never handed out twice, even across
/// deletion.
pub(crate) fn decide_begin(
    row: &LeaseView,
    req: &BeginRequest,
    now: DateTime<Utc>,
) -> BeginDecision {
    if let Some(until) = live_lease(row.lease_token.as_deref(), row.lease_until, now) {
        return BeginDecision::Busy { until };
    }
    let same_content = row.content_hash.as_deref() == Some(req.content_hash.as_str())
        && row.fingerprint.as_deref() == Some(req.fingerprint.as_str());
    if row.status == DocStatus::Indexed && same_content && !req.force {
        let version = row.current_version;
        let settled =
            row.published_version >= version && effective_labels(&row.labels, req) == row.labels;
        return if settled {
            BeginDecision::Unchanged { version }
        } else {
            BeginDecision::Refresh { version }
        };
    }
    BeginDecision::Claim {
        version: row.next_version + 1,
    }
}

/// Metadata as stored: canonical JSON text (keys sorted), `NULL` when empty.
pub(crate) fn metadata_text(
    metadata: &serde_json::Map<String, serde_json::Value>,
) -> Option<String> {
    (!metadata.is_empty()).then(|| serde_json::Value::Object(metadata.clone()).to_string())
}

/// The stored metadata text back as a map; unreadable text (never written by sluice) reads empty.
pub(crate) fn metadata_from_text(text: Option<&str>) -> serde_json::Map<String, serde_json::Value> {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// When a lease taken at `now` for `lease` runs out. Absurdly long leases saturate instead of
/// overflowing.
pub(crate) fn lease_deadline(now: DateTime<Utc>, lease: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(lease)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Maps a driver error to the store's error type. Connection-level trouble is `Unavailable`;
/// everything the database itself reported is `Query` (both are retried by callers).
pub(crate) fn db_error(action: &str, err: sqlx::Error) -> MetadataError {
    // `sqlx::Error` is `#[non_exhaustive]`, so a catch-all arm is unavoidable here; it maps to
    // `Query`, which callers retry just like `Unavailable`.
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => MetadataError::Unavailable(format!("{action}: {err}")),
        other => MetadataError::Query(format!("{action}: {other}")),
    }
}

/// Builds a [`StatusReport`] from per-status `(status, documents, chunks, tokens)` sums. Every
/// status is listed, in lifecycle order, even at zero, so reports have a stable shape.
pub(crate) fn status_report(
    by_status: Vec<(DocStatus, i64, i64, i64)>,
    recent_failures: Vec<DocumentRecord>,
) -> StatusReport {
    let all = [
        DocStatus::Processing,
        DocStatus::Indexed,
        DocStatus::Failed,
        DocStatus::Deleted,
    ];
    let counts = all
        .iter()
        .map(|&status| {
            let n = by_status
                .iter()
                .filter(|row| row.0 == status)
                .map(|row| row.1)
                .sum();
            (status, n)
        })
        .collect();
    StatusReport {
        counts,
        total_chunks: by_status.iter().map(|row| row.2).sum(),
        total_tokens: by_status.iter().map(|row| row.3).sum(),
        recent_failures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(hash: &str, fingerprint: &str, force: bool) -> BeginRequest {
        BeginRequest {
            collection: "c".into(),
            doc_id: "d".into(),
            source: "s".into(),
            tenant: None,
            metadata: None,
            content_hash: hash.into(),
            fingerprint: fingerprint.into(),
            force,
            lease: std::time::Duration::from_secs(60),
        }
    }

    fn indexed_row() -> LeaseView {
        LeaseView {
            status: DocStatus::Indexed,
            content_hash: Some("h".into()),
            fingerprint: Some("f".into()),
            current_version: 3,
            next_version: 4,
            published_version: 3,
            lease_token: None,
            lease_until: None,
            labels: Labels::default(),
        }
    }

    #[test]
    fn decide_begin_follows_the_contract() {
        let now = Utc::now();
        let row = indexed_row();
        assert_eq!(
            decide_begin(&row, &req("h", "f", false), now),
            BeginDecision::Unchanged { version: 3 }
        );
        // Versions come from next_version (4 was handed out and lost), never from current_version.
        assert_eq!(
            decide_begin(&row, &req("h", "f", true), now),
            BeginDecision::Claim { version: 5 }
        );
        assert_eq!(
            decide_begin(&row, &req("x", "f", false), now),
            BeginDecision::Claim { version: 5 }
        );
        assert_eq!(
            decide_begin(&row, &req("h", "x", false), now),
            BeginDecision::Claim { version: 5 }
        );

        let until = now + chrono::Duration::seconds(5);
        let leased = LeaseView {
            lease_token: Some("t".into()),
            lease_until: Some(until),
            ..row.clone()
        };
        assert_eq!(
            decide_begin(&leased, &req("x", "f", true), now),
            BeginDecision::Busy { until }
        );
        let expired = LeaseView {
            lease_until: Some(now - chrono::Duration::seconds(1)),
            ..leased
        };
        assert_eq!(
            decide_begin(&expired, &req("x", "f", false), now),
            BeginDecision::Claim { version: 5 }
        );

        let failed = LeaseView {
            status: DocStatus::Failed,
            ..row
        };
        assert_eq!(
            decide_begin(&failed, &req("h", "f", false), now),
            BeginDecision::Claim { version: 5 }
        );
    }

    #[test]
    fn unpublished_or_relabelled_content_is_refreshed_not_reembedded() {
        let now = Utc::now();
        let unpublished = LeaseView {
            published_version: 2,
            ..indexed_row()
        };
        assert_eq!(
            decide_begin(&unpublished, &req("h", "f", false), now),
            BeginDecision::Refresh { version: 3 }
        );
        let mut relabel = req("h", "f", false);
        relabel.tenant = Some("acme".into());
        assert_eq!(
            decide_begin(&indexed_row(), &relabel, now),
            BeginDecision::Refresh { version: 3 }
        );
        // A job that names no labels keeps the document's: unchanged.
        let labelled = LeaseView {
            labels: Labels {
                tenant: Some("acme".into()),
                metadata: serde_json::Map::from_iter([("team".to_string(), "hr".into())]),
            },
            ..indexed_row()
        };
        assert_eq!(
            decide_begin(&labelled, &req("h", "f", false), now),
            BeginDecision::Unchanged { version: 3 }
        );
        let mut cleared = req("h", "f", false);
        cleared.metadata = Some(serde_json::Map::new());
        assert_eq!(
            decide_begin(&labelled, &cleared, now),
            BeginDecision::Refresh { version: 3 }
        );
        // New content or force still writes a new version.
        assert_eq!(
            decide_begin(&unpublished, &req("x", "f", false), now),
            BeginDecision::Claim { version: 5 }
        );
    }

    #[test]
    fn lease_deadline_saturates() {
        let now = Utc::now();
        assert_eq!(
            lease_deadline(now, std::time::Duration::MAX),
            DateTime::<Utc>::MAX_UTC
        );
        assert_eq!(
            lease_deadline(now, std::time::Duration::from_secs(2)),
            now + chrono::Duration::seconds(2)
        );
    }
}
