//! Record stage, single-machine flavour: the metadata store in one SQLite file.
//!
//! Every read-decide-write sequence (`begin`, `fail`) runs inside `BEGIN IMMEDIATE`, which takes the
//! database's write lock up front: two callers (tasks, or processes sharing the file) can never both
//! read "no live lease" and both claim. The file runs in WAL mode so readers (`status`, `get`) do not
//! wait for writers, and a 10 s busy timeout turns short lock waits into waiting, not errors.
//!
//! Timestamps are stored as microseconds since the Unix epoch, so lease comparisons are integer
//! comparisons.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use super::{
    BeginDecision, BeginOutcome, BeginRequest, CommitOutcome, CommitRequest, DocStatus,
    DocumentCursor, DocumentFilter, DocumentRecord, DocumentStats, FailureReason, Labels,
    LeaseView, MetadataError, MetadataStore, StatusReport, db_error, decide_begin,
    effective_labels, lease_deadline, live_lease, metadata_from_text, metadata_text,
};

/// The schema, compiled into the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Writers serialise on SQLite's single write lock anyway; a few connections let reads (`status`,
/// `get`) proceed beside one writer without holding many file handles.
const MAX_CONNECTIONS: u32 = 4;

/// The metadata store backed by a local SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating file and parent directory if needed) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Self, MetadataError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                MetadataError::Unavailable(format!("creating {}: {e}", parent.display()))
            })?;
        }
        // Creating the file, switching it to WAL and migrating are not safe to race with another
        // process doing the same (two `sluice ingest` started together): hold an exclusive lock on
        // a sidecar file meanwhile. Later opens of a migrated database pass through it quickly.
        let _opening = lock_file(&path.with_extension("open-lock")).await?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across application crashes in WAL mode; only an OS crash can lose
            // the last commits, which re-indexing repairs.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| db_error(&format!("opening {}", path.display()), e))?;
        let store = SqliteStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// A private in-memory database, for tests and dry runs. Lives as long as the store.
    pub async fn open_in_memory() -> Result<Self, MetadataError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(|e| db_error("opening in-memory database", e))?
            .foreign_keys(true);
        // Each connection to `:memory:` is its own database, so exactly one connection, kept open.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(|e| db_error("opening in-memory database", e))?;
        let store = SqliteStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// The connection pool, for the other tables kept in the same file (watch state).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn migrate(&self) -> Result<(), MetadataError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| MetadataError::Migration(e.to_string()))
    }
}

/// An exclusive `flock` on `path` (created if missing), released when the file is dropped. Waits
/// on a blocking-pool thread while another process holds it.
async fn lock_file(path: &Path) -> Result<std::fs::File, MetadataError> {
    use std::os::fd::AsRawFd;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let fail = |e: std::io::Error| {
            MetadataError::Unavailable(format!("locking {}: {e}", path.display()))
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(fail)?;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(file);
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(fail(err));
            }
        }
    })
    .await
    .map_err(|e| MetadataError::Unavailable(format!("locking task failed: {e}")))?
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(column: &str, v: i64) -> Result<DateTime<Utc>, MetadataError> {
    DateTime::from_timestamp_micros(v).ok_or_else(|| {
        MetadataError::Query(format!("column {column} holds an invalid timestamp {v}"))
    })
}

fn opt_from_micros(column: &str, v: Option<i64>) -> Result<Option<DateTime<Utc>>, MetadataError> {
    v.map(|v| from_micros(column, v)).transpose()
}

fn get<'r, T>(row: &'r SqliteRow, column: &str) -> Result<T, MetadataError>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(column).map_err(|e| db_error("reading row", e))
}

fn status_of(row: &SqliteRow) -> Result<DocStatus, MetadataError> {
    let s: String = get(row, "status")?;
    DocStatus::parse(&s)
        .ok_or_else(|| MetadataError::Query(format!("unknown document status {s:?}")))
}

fn lease_view(row: &SqliteRow) -> Result<LeaseView, MetadataError> {
    Ok(LeaseView {
        status: status_of(row)?,
        content_hash: get(row, "content_hash")?,
        fingerprint: get(row, "fingerprint")?,
        current_version: get(row, "current_version")?,
        next_version: get(row, "next_version")?,
        published_version: get(row, "published_version")?,
        lease_token: get(row, "lease_token")?,
        lease_until: opt_from_micros("lease_until", get(row, "lease_until")?)?,
        labels: labels_of(row)?,
    })
}

fn labels_of(row: &SqliteRow) -> Result<Labels, MetadataError> {
    let metadata: Option<String> = get(row, "metadata")?;
    Ok(Labels {
        tenant: get(row, "tenant")?,
        metadata: metadata_from_text(metadata.as_deref()),
    })
}

fn record(row: &SqliteRow) -> Result<DocumentRecord, MetadataError> {
    Ok(DocumentRecord {
        collection: get(row, "collection")?,
        doc_id: get(row, "doc_id")?,
        source: get(row, "source")?,
        tenant: get(row, "tenant")?,
        content_hash: get(row, "content_hash")?,
        fingerprint: get(row, "fingerprint")?,
        current_version: get(row, "current_version")?,
        next_version: get(row, "next_version")?,
        published_version: get(row, "published_version")?,
        status: status_of(row)?,
        chunk_count: get(row, "chunk_count")?,
        tokens: get(row, "tokens")?,
        attempts: get(row, "attempts")?,
        last_error: get(row, "last_error")?,
        created_at: from_micros("created_at", get(row, "created_at")?)?,
        updated_at: from_micros("updated_at", get(row, "updated_at")?)?,
        indexed_at: opt_from_micros("indexed_at", get(row, "indexed_at")?)?,
        lease_until: opt_from_micros("lease_until", get(row, "lease_until")?)?,
        metadata: labels_of(row)?.metadata,
    })
}

#[async_trait]
impl MetadataStore for SqliteStore {
    async fn begin(&self, req: &BeginRequest) -> Result<BeginOutcome, MetadataError> {
        let err = |e| db_error("begin", e);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        // Read the clock only once the write lock is ours: the wait may have been long.
        let now = Utc::now();
        let row = sqlx::query(select_records!("WHERE collection = $1 AND doc_id = $2"))
            .bind(&req.collection)
            .bind(&req.doc_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
        let token = uuid::Uuid::new_v4();
        let until = lease_deadline(now, req.lease);

        let Some(row) = row else {
            sqlx::query(
                "INSERT INTO documents (collection, doc_id, source, tenant, current_version, \
                 next_version, status, attempts, lease_token, lease_until, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, 0, 1, 'processing', 1, $5, $6, $7, $7)",
            )
            .bind(&req.collection)
            .bind(&req.doc_id)
            .bind(&req.source)
            .bind(&req.tenant)
            .bind(token.to_string())
            .bind(micros(until))
            .bind(micros(now))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
            tx.commit().await.map_err(err)?;
            return Ok(BeginOutcome::Claimed {
                version: 1,
                lease_token: token,
                labels: effective_labels(&Labels::default(), req),
            });
        };

        let view = lease_view(&row)?;
        let labels = effective_labels(&view.labels, req);
        let (version, refresh) = match decide_begin(&view, req, now) {
            BeginDecision::Busy { until } => return Ok(BeginOutcome::Busy { until }),
            BeginDecision::Unchanged { version } => {
                // The file may have moved without changing content.
                sqlx::query(
                    "UPDATE documents SET source = $3 \
                     WHERE collection = $1 AND doc_id = $2 AND source IS NOT $3",
                )
                .bind(&req.collection)
                .bind(&req.doc_id)
                .bind(&req.source)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
                tx.commit().await.map_err(err)?;
                return Ok(BeginOutcome::Unchanged { version });
            }
            BeginDecision::Refresh { version } => {
                // A lease without a new version: status and counts stay those of `version`.
                sqlx::query(
                    "UPDATE documents SET source = $3, lease_token = $4, lease_until = $5, \
                     updated_at = $6 WHERE collection = $1 AND doc_id = $2",
                )
                .bind(&req.collection)
                .bind(&req.doc_id)
                .bind(&req.source)
                .bind(token.to_string())
                .bind(micros(until))
                .bind(micros(now))
                .execute(&mut *tx)
                .await
                .map_err(err)?;
                (version, true)
            }
            BeginDecision::Claim { version } => {
                // Labels are recorded by the commit, once the points carry them.
                sqlx::query(
                    "UPDATE documents SET source = $3, next_version = $4, \
                     status = 'processing', attempts = attempts + 1, lease_token = $5, \
                     lease_until = $6, updated_at = $7 WHERE collection = $1 AND doc_id = $2",
                )
                .bind(&req.collection)
                .bind(&req.doc_id)
                .bind(&req.source)
                .bind(version)
                .bind(token.to_string())
                .bind(micros(until))
                .bind(micros(now))
                .execute(&mut *tx)
                .await
                .map_err(err)?;
                (version, false)
            }
        };
        tx.commit().await.map_err(err)?;
        Ok(if refresh {
            BeginOutcome::Refresh {
                version,
                lease_token: token,
                labels,
            }
        } else {
            BeginOutcome::Claimed {
                version,
                lease_token: token,
                labels,
            }
        })
    }

    async fn commit(&self, req: &CommitRequest<'_>) -> Result<CommitOutcome, MetadataError> {
        // The token alone decides: every claim mints a new one, so a match means nobody took the
        // document over, even if the lease has run out meanwhile; `version` is still the newest
        // allocated, so committing it is safe. One statement, so no transaction is needed.
        let now = micros(Utc::now());
        let done = sqlx::query(
            "UPDATE documents SET current_version = $4, content_hash = $5, fingerprint = $6, \
             status = 'indexed', chunk_count = $7, tokens = $8, last_error = NULL, \
             tenant = $10, metadata = $11, \
             indexed_at = $9, updated_at = $9, lease_token = NULL, lease_until = NULL \
             WHERE collection = $1 AND doc_id = $2 AND lease_token = $3 AND next_version = $4",
        )
        .bind(req.collection)
        .bind(req.doc_id)
        .bind(req.lease_token.to_string())
        .bind(req.version)
        .bind(req.content_hash)
        .bind(req.fingerprint)
        .bind(req.chunk_count)
        .bind(req.tokens)
        .bind(now)
        .bind(&req.labels.tenant)
        .bind(metadata_text(&req.labels.metadata))
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("commit", e))?;
        Ok(if done.rows_affected() == 1 {
            CommitOutcome::Committed
        } else {
            CommitOutcome::LeaseLost
        })
    }

    async fn mark_published(
        &self,
        collection: &str,
        doc_id: &str,
        version: i64,
    ) -> Result<(), MetadataError> {
        sqlx::query(
            "UPDATE documents SET published_version = $3 WHERE collection = $1 AND doc_id = $2 \
             AND published_version < $3 AND current_version >= $3",
        )
        .bind(collection)
        .bind(doc_id)
        .bind(version)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("mark_published", e))?;
        Ok(())
    }

    async fn release(
        &self,
        collection: &str,
        doc_id: &str,
        lease_token: uuid::Uuid,
        labels: &Labels,
    ) -> Result<bool, MetadataError> {
        let done = sqlx::query(
            "UPDATE documents SET tenant = $4, metadata = $5, \
             published_version = MAX(published_version, current_version), updated_at = $6, \
             lease_token = NULL, lease_until = NULL \
             WHERE collection = $1 AND doc_id = $2 AND lease_token = $3",
        )
        .bind(collection)
        .bind(doc_id)
        .bind(lease_token.to_string())
        .bind(&labels.tenant)
        .bind(metadata_text(&labels.metadata))
        .bind(micros(Utc::now()))
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("release", e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn renew(
        &self,
        collection: &str,
        doc_id: &str,
        lease_token: uuid::Uuid,
        lease: std::time::Duration,
    ) -> Result<bool, MetadataError> {
        let until = micros(lease_deadline(Utc::now(), lease));
        let done = sqlx::query(
            "UPDATE documents SET lease_until = $4 \
             WHERE collection = $1 AND doc_id = $2 AND lease_token = $3",
        )
        .bind(collection)
        .bind(doc_id)
        .bind(lease_token.to_string())
        .bind(until)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("renew", e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn fail(
        &self,
        collection: &str,
        doc_id: &str,
        source: &str,
        lease_token: Option<uuid::Uuid>,
        error: &str,
    ) -> Result<(), MetadataError> {
        let err = |e| db_error("fail", e);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        let now = Utc::now();
        let row = sqlx::query(select_records!("WHERE collection = $1 AND doc_id = $2"))
            .bind(collection)
            .bind(doc_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
        let Some(row) = row else {
            // Failed before any claim (e.g. unreadable file): record it so `status` shows it.
            sqlx::query(
                "INSERT INTO documents (collection, doc_id, source, status, attempts, last_error, \
                 created_at, updated_at) VALUES ($1, $2, $3, 'failed', 1, $4, $5, $5)",
            )
            .bind(collection)
            .bind(doc_id)
            .bind(source)
            .bind(error)
            .bind(micros(now))
            .execute(&mut *tx)
            .await
            .map_err(err)?;
            return tx.commit().await.map_err(err);
        };
        let view = lease_view(&row)?;
        match lease_token {
            Some(token) if view.lease_token.as_deref() == Some(token.to_string().as_str()) => {
                // The holder gives up: release the lease, keep the current version.
                sqlx::query(
                    "UPDATE documents SET status = 'failed', last_error = $3, updated_at = $4, \
                     lease_token = NULL, lease_until = NULL WHERE collection = $1 AND doc_id = $2",
                )
                .bind(collection)
                .bind(doc_id)
                .bind(error)
                .bind(micros(now))
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            }
            Some(_) => {
                // A run that lost its lease no longer speaks for the document: its failure must not
                // overwrite the newer run's status.
                tracing::debug!(
                    collection,
                    doc_id,
                    "ignoring failure from a run that lost its lease"
                );
            }
            None => {
                // Failed before claiming: counts as an attempt. If another run holds a live lease,
                // leave its status alone and only note the error.
                let leased =
                    live_lease(view.lease_token.as_deref(), view.lease_until, now).is_some();
                sqlx::query(
                    "UPDATE documents SET status = CASE WHEN $5 THEN status ELSE 'failed' END, \
                     last_error = $3, updated_at = $4, attempts = attempts + 1 \
                     WHERE collection = $1 AND doc_id = $2",
                )
                .bind(collection)
                .bind(doc_id)
                .bind(error)
                .bind(micros(now))
                .bind(leased)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            }
        }
        tx.commit().await.map_err(err)
    }

    async fn mark_deleted(
        &self,
        collection: &str,
        doc_id: &str,
    ) -> Result<Option<i64>, MetadataError> {
        // Clearing the lease makes an in-flight run's renewals and commit fail. `next_version`
        // stays, so a later re-index gets a version above every earlier one.
        let max_version: Option<i64> = sqlx::query_scalar(
            "UPDATE documents SET status = 'deleted', current_version = 0, published_version = 0, \
             content_hash = NULL, fingerprint = NULL, chunk_count = 0, tokens = 0, \
             last_error = NULL, lease_token = NULL, lease_until = NULL, updated_at = $3 \
             WHERE collection = $1 AND doc_id = $2 RETURNING next_version",
        )
        .bind(collection)
        .bind(doc_id)
        .bind(micros(Utc::now()))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("mark_deleted", e))?;
        Ok(max_version)
    }

    async fn get(
        &self,
        collection: &str,
        doc_id: &str,
    ) -> Result<Option<DocumentRecord>, MetadataError> {
        let row = sqlx::query(select_records!("WHERE collection = $1 AND doc_id = $2"))
            .bind(collection)
            .bind(doc_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("get", e))?;
        row.as_ref().map(record).transpose()
    }

    async fn get_many(
        &self,
        collection: &str,
        doc_ids: &[String],
    ) -> Result<Vec<DocumentRecord>, MetadataError> {
        // SQLite has no array parameters: the ids travel as one JSON array.
        let ids = serde_json::to_string(doc_ids)
            .map_err(|e| MetadataError::Query(format!("get_many: {e}")))?;
        let rows = sqlx::query(select_records!(
            "WHERE collection = $1 AND doc_id IN (SELECT value FROM json_each($2))"
        ))
        .bind(collection)
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("get_many", e))?;
        rows.iter().map(record).collect()
    }

    async fn list_by_source_prefix(
        &self,
        collection: &str,
        prefix: &str,
    ) -> Result<Vec<DocumentRecord>, MetadataError> {
        // LIKE is case-insensitive in SQLite and treats % and _ as wildcards, so compare the prefix
        // exactly; `source >= $2` lets the (collection, source) index skip to the first candidate.
        let rows = sqlx::query(select_records!(
            "WHERE collection = $1 AND status <> 'deleted' AND source >= $2 \
             AND substr(source, 1, length($2)) = $2 ORDER BY source, doc_id"
        ))
        .bind(collection)
        .bind(prefix)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("list_by_source_prefix", e))?;
        rows.iter().map(record).collect()
    }

    async fn list_documents(
        &self,
        filter: &DocumentFilter,
        after: Option<&DocumentCursor>,
        limit: usize,
    ) -> Result<Vec<DocumentRecord>, MetadataError> {
        let since = filter.since;
        let rows = sqlx::query(select_records!(
            "WHERE status <> 'deleted' AND ($1 IS NULL OR collection = $1) \
             AND ($2 IS NULL OR tenant = $2) AND ($3 IS NULL OR substr(source, 1, length($3)) = $3) \
             AND ($4 IS NULL OR updated_at >= $4) \
             AND ($5 IS NULL OR collection > $5 OR (collection = $5 AND doc_id > $6)) \
             ORDER BY collection, doc_id LIMIT $7"
        ))
        .bind(&filter.collection)
        .bind(&filter.tenant)
        .bind(&filter.source_prefix)
        .bind(since.map(micros))
        .bind(after.map(|c| c.collection.as_str()))
        .bind(after.map(|c| c.doc_id.as_str()))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("list_documents", e))?;
        rows.iter().map(record).collect()
    }

    async fn status(
        &self,
        collection: Option<&str>,
        recent_failures: usize,
    ) -> Result<StatusReport, MetadataError> {
        let err = |e| db_error("status", e);
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n, COALESCE(SUM(chunk_count), 0) AS chunks, \
             COALESCE(SUM(tokens), 0) AS tokens FROM documents \
             WHERE ($1 IS NULL OR collection = $1) GROUP BY status",
        )
        .bind(collection)
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        let mut by_status = Vec::with_capacity(rows.len());
        for row in &rows {
            by_status.push((
                status_of(row)?,
                get::<i64>(row, "n")?,
                get::<i64>(row, "chunks")?,
                get::<i64>(row, "tokens")?,
            ));
        }
        let limit = i64::try_from(recent_failures).unwrap_or(i64::MAX);
        let failures = sqlx::query(select_records!(
            "WHERE status = 'failed' AND ($1 IS NULL OR collection = $1) \
             ORDER BY updated_at DESC, collection, doc_id LIMIT $2"
        ))
        .bind(collection)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        Ok(super::status_report(
            by_status,
            failures.iter().map(record).collect::<Result<_, _>>()?,
        ))
    }

    async fn stats(
        &self,
        collection: Option<&str>,
        indexed_since: &[DateTime<Utc>],
        max_reasons: usize,
    ) -> Result<DocumentStats, MetadataError> {
        let err = |e| db_error("stats", e);
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n FROM documents \
             WHERE ($1 IS NULL OR collection = $1) GROUP BY status",
        )
        .bind(collection)
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        let mut by_status = Vec::with_capacity(rows.len());
        for row in &rows {
            by_status.push((status_of(row)?, get::<i64>(row, "n")?, 0, 0));
        }
        let mut indexed = Vec::with_capacity(indexed_since.len());
        for since in indexed_since {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n FROM documents \
                 WHERE indexed_at >= $1 AND ($2 IS NULL OR collection = $2)",
            )
            .bind(micros(*since))
            .bind(collection)
            .fetch_one(&self.pool)
            .await
            .map_err(err)?;
            indexed.push(get::<i64>(&row, "n")?);
        }
        let reasons = sqlx::query(concat!(
            "SELECT reason, COUNT(*) AS n FROM (SELECT ",
            failure_reason_sql!(),
            " AS reason FROM documents WHERE status = 'failed' \
             AND ($1 IS NULL OR collection = $1)) AS failed \
             GROUP BY reason ORDER BY n DESC, reason LIMIT $2"
        ))
        .bind(collection)
        .bind(i64::try_from(max_reasons).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        Ok(DocumentStats {
            counts: super::status_report(by_status, Vec::new()).counts,
            indexed_since: indexed,
            failures_by_reason: reasons
                .iter()
                .map(|row| {
                    Ok(FailureReason {
                        reason: get(row, "reason")?,
                        documents: get(row, "n")?,
                    })
                })
                .collect::<Result<_, MetadataError>>()?,
        })
    }
}
