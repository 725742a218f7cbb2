//! Record stage, fleet flavour: the metadata store in PostgreSQL, shared by the scheduler and every
//! worker.
//!
//! `begin` and `fail` run as read-decide-write transactions that lock the document's row with
//! `SELECT … FOR UPDATE`; a new row is created with `INSERT … ON CONFLICT DO NOTHING`, which waits
//! for a concurrent inserter and then yields to it. So however many processes race on one document,
//! exactly one gets `Claimed`. All lease times come from the database clock (`clock_timestamp()`),
//! so workers with skewed clocks still agree on when a lease ends.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};

use super::{
    BeginDecision, BeginOutcome, BeginRequest, CommitOutcome, CommitRequest, DocStatus,
    DocumentCursor, DocumentFilter, DocumentRecord, DocumentStats, FailureReason, Labels,
    LeaseView, MetadataError, MetadataStore, StatusReport, db_error, decide_begin,
    effective_labels, lease_deadline, live_lease, metadata_from_text, metadata_text,
};
use crate::secret::redact_url;

/// The schema, compiled into the binary. The migrator takes an advisory lock, so processes that
/// start together migrate one at a time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per process. Each document holds one only for a few short statements (begin, commit),
/// so a handful serves a worker's whole concurrency; the fleet total must stay under the server's
/// `max_connections` (100 by default).
const MAX_CONNECTIONS: u32 = 8;

/// How long to wait for a connection before reporting the store unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The metadata store backed by PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/db`), verifies a connection can be
    /// made and applies migrations. Errors name the URL with its password masked.
    pub async fn connect(url: &str) -> Result<Self, MetadataError> {
        let shown = redact_url(url);
        // The driver's messages could quote the URL; never let the password through.
        let scrub = |msg: String| scrub_password(url, msg);
        let options: PgConnectOptions = url
            .parse::<PgConnectOptions>()
            .map_err(|e: sqlx::Error| MetadataError::Config(scrub(format!("{shown}: {e}"))))?
            // Plan every statement for its parameters and the table's current statistics: the
            // driver prepares each statement once per connection, and PostgreSQL soon fixes a
            // prepared statement to one generic plan for the connection's life, made from
            // whatever statistics the table had then (listings with optional filters suffer
            // most). Planning these short statements costs microseconds.
            .options([("plan_cache_mode", "force_custom_plan")]);
        // One plain connection first: the pool would retry a refused connection until its acquire
        // timeout and then report only "pool timed out", hiding the cause (refused, bad password,
        // no such database). The same connection applies the migrations.
        let mut conn = PgConnection::connect_with(&options).await.map_err(|e| {
            MetadataError::Unavailable(scrub(format!("connecting to {shown}: {e}")))
        })?;
        // `run_direct` is what `run` calls after acquiring; `run(&mut conn)` would make every
        // future awaiting `connect` fail rustc's higher-ranked `Send` check (no `tokio::spawn`).
        MIGRATOR
            .run_direct(None, &mut conn, false)
            .await
            .map_err(|e| MetadataError::Migration(scrub(format!("{shown}: {e}"))))?;
        // Closing politely is a courtesy to the server; the store does not depend on it.
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| {
                MetadataError::Unavailable(scrub(format!("connecting to {shown}: {e}")))
            })?;
        Ok(PostgresStore { pool })
    }

    /// The connection pool, for callers that need to close it deliberately.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Replaces the URL's password (raw and percent-decoded) wherever it appears in `msg`.
fn scrub_password(url: &str, msg: String) -> String {
    let Some(password) = url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
    else {
        return msg;
    };
    let mut msg = msg;
    let decoded = url::form_urlencoded::parse(format!("p={password}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned());
    for secret in std::iter::once(password).chain(decoded) {
        if !secret.is_empty() {
            msg = msg.replace(&secret, "***");
        }
    }
    msg
}

fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, MetadataError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column).map_err(|e| db_error("reading row", e))
}

fn status_of(row: &PgRow) -> Result<DocStatus, MetadataError> {
    let s: String = get(row, "status")?;
    DocStatus::parse(&s)
        .ok_or_else(|| MetadataError::Query(format!("unknown document status {s:?}")))
}

fn lease_view(row: &PgRow) -> Result<LeaseView, MetadataError> {
    Ok(LeaseView {
        status: status_of(row)?,
        content_hash: get(row, "content_hash")?,
        fingerprint: get(row, "fingerprint")?,
        current_version: get(row, "current_version")?,
        next_version: get(row, "next_version")?,
        published_version: get(row, "published_version")?,
        lease_token: get(row, "lease_token")?,
        lease_until: get(row, "lease_until")?,
        labels: labels_of(row)?,
    })
}

fn labels_of(row: &PgRow) -> Result<Labels, MetadataError> {
    let metadata: Option<String> = get(row, "metadata")?;
    Ok(Labels {
        tenant: get(row, "tenant")?,
        metadata: metadata_from_text(metadata.as_deref()),
    })
}

fn record(row: &PgRow) -> Result<DocumentRecord, MetadataError> {
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
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
        indexed_at: get(row, "indexed_at")?,
        lease_until: get(row, "lease_until")?,
        metadata: labels_of(row)?.metadata,
    })
}

impl PostgresStore {
    /// Locks the document's row (waiting for other transactions on it) and reads it with the
    /// database clock. The clock is read after the lock, in its own statement, so a long wait does
    /// not make an expired lease look live.
    async fn lock_row(
        tx: &mut sqlx::PgConnection,
        collection: &str,
        doc_id: &str,
    ) -> Result<(Option<PgRow>, DateTime<Utc>), sqlx::Error> {
        let row = sqlx::query(select_records!(
            "WHERE collection = $1 AND doc_id = $2 FOR UPDATE"
        ))
        .bind(collection)
        .bind(doc_id)
        .fetch_optional(&mut *tx)
        .await?;
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&mut *tx)
            .await?;
        Ok((row, now))
    }
}

#[async_trait]
impl MetadataStore for PostgresStore {
    async fn begin(&self, req: &BeginRequest) -> Result<BeginOutcome, MetadataError> {
        let err = |e| db_error("begin", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        let token = uuid::Uuid::new_v4();
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
        // First sight of a document: insert it claimed. On a conflict (it exists, or a concurrent
        // transaction just inserted it) this waits for that transaction and inserts nothing.
        let inserted = sqlx::query(
            "INSERT INTO documents (collection, doc_id, source, tenant, current_version, \
             next_version, status, attempts, lease_token, lease_until, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 0, 1, 'processing', 1, $5, $6, $7, $7) \
             ON CONFLICT (collection, doc_id) DO NOTHING",
        )
        .bind(&req.collection)
        .bind(&req.doc_id)
        .bind(&req.source)
        .bind(&req.tenant)
        .bind(token.to_string())
        .bind(lease_deadline(now, req.lease))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        if inserted.rows_affected() == 1 {
            tx.commit().await.map_err(err)?;
            return Ok(BeginOutcome::Claimed {
                version: 1,
                lease_token: token,
                labels: effective_labels(&Labels::default(), req),
            });
        }

        let (row, now) = Self::lock_row(&mut tx, &req.collection, &req.doc_id)
            .await
            .map_err(err)?;
        let Some(row) = row else {
            // Only a concurrent hard DELETE could get here; the store never deletes rows.
            return Err(MetadataError::Query(format!(
                "begin: document {}/{} vanished during the transaction",
                req.collection, req.doc_id
            )));
        };
        let view = lease_view(&row)?;
        let labels = effective_labels(&view.labels, req);
        let decision = decide_begin(&view, req, now);
        let (version, outcome_refresh) = match decision {
            BeginDecision::Busy { until } => return Ok(BeginOutcome::Busy { until }),
            BeginDecision::Unchanged { version } => {
                // The file may have moved without changing content.
                sqlx::query(
                    "UPDATE documents SET source = $3 WHERE collection = $1 AND doc_id = $2 \
                     AND source IS DISTINCT FROM $3",
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
                .bind(lease_deadline(now, req.lease))
                .bind(now)
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
                .bind(lease_deadline(now, req.lease))
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
                (version, false)
            }
        };
        tx.commit().await.map_err(err)?;
        Ok(if outcome_refresh {
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
        // allocated, so committing it is safe. A single statement is atomic on its own.
        let done = sqlx::query(
            "UPDATE documents SET current_version = $4, content_hash = $5, fingerprint = $6, \
             status = 'indexed', chunk_count = $7, tokens = $8, last_error = NULL, \
             tenant = $9, metadata = $10, \
             indexed_at = clock_timestamp(), updated_at = clock_timestamp(), \
             lease_token = NULL, lease_until = NULL \
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
             published_version = GREATEST(published_version, current_version), \
             updated_at = clock_timestamp(), lease_token = NULL, lease_until = NULL \
             WHERE collection = $1 AND doc_id = $2 AND lease_token = $3",
        )
        .bind(collection)
        .bind(doc_id)
        .bind(lease_token.to_string())
        .bind(&labels.tenant)
        .bind(metadata_text(&labels.metadata))
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
        // The database clock, like every other lease time here.
        let done = sqlx::query(
            "UPDATE documents SET lease_until = clock_timestamp() + make_interval(secs => $4) \
             WHERE collection = $1 AND doc_id = $2 AND lease_token = $3",
        )
        .bind(collection)
        .bind(doc_id)
        .bind(lease_token.to_string())
        .bind(lease.as_secs_f64())
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
        let mut tx = self.pool.begin().await.map_err(err)?;
        // Failed before any claim (e.g. unreadable file) and never seen: record it so `status`
        // shows it. An existing row is left to the locked update below.
        let inserted = sqlx::query(
            "INSERT INTO documents (collection, doc_id, source, status, attempts, last_error, \
             created_at, updated_at) \
             VALUES ($1, $2, $3, 'failed', 1, $4, clock_timestamp(), clock_timestamp()) \
             ON CONFLICT (collection, doc_id) DO NOTHING",
        )
        .bind(collection)
        .bind(doc_id)
        .bind(source)
        .bind(error)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        if inserted.rows_affected() == 1 {
            return tx.commit().await.map_err(err);
        }
        let (row, now) = Self::lock_row(&mut tx, collection, doc_id)
            .await
            .map_err(err)?;
        let Some(row) = row else {
            return Err(MetadataError::Query(format!(
                "fail: document {collection}/{doc_id} vanished during the transaction"
            )));
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
                .bind(now)
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
                .bind(now)
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
             last_error = NULL, lease_token = NULL, lease_until = NULL, \
             updated_at = clock_timestamp() \
             WHERE collection = $1 AND doc_id = $2 RETURNING next_version",
        )
        .bind(collection)
        .bind(doc_id)
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
        let rows = sqlx::query(select_records!(
            "WHERE collection = $1 AND doc_id = ANY($2)"
        ))
        .bind(collection)
        .bind(doc_ids)
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
        // `source` uses the C collation, so `>=` is byte order and lets the `source` index
        // skip to the first candidate; `starts_with` avoids LIKE's % and _ wildcards.
        let rows = sqlx::query(select_records!(
            "WHERE collection = $1 AND status <> 'deleted' AND source >= $2 \
             AND starts_with(source, $2) ORDER BY source, doc_id"
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
             AND ($2 IS NULL OR tenant = $2) AND ($3 IS NULL OR starts_with(source, $3)) \
             AND ($4 IS NULL OR updated_at >= $4) \
             AND ($5 IS NULL OR collection > $5 OR (collection = $5 AND doc_id > $6)) \
             ORDER BY collection, doc_id LIMIT $7"
        ))
        .bind(&filter.collection)
        .bind(&filter.tenant)
        .bind(&filter.source_prefix)
        .bind(since)
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
        // SUM(bigint) is numeric in PostgreSQL; cast back so it decodes as i64.
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n, COALESCE(SUM(chunk_count), 0)::BIGINT AS chunks, \
             COALESCE(SUM(tokens), 0)::BIGINT AS tokens FROM documents \
             WHERE ($1::TEXT IS NULL OR collection = $1) GROUP BY status",
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
            "WHERE status = 'failed' AND ($1::TEXT IS NULL OR collection = $1) \
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
             WHERE ($1::TEXT IS NULL OR collection = $1) GROUP BY status",
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
                 WHERE indexed_at >= $1 AND ($2::TEXT IS NULL OR collection = $2)",
            )
            .bind(*since)
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
             AND ($1::TEXT IS NULL OR collection = $1)) AS failed \
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_password_removes_raw_and_decoded_forms() {
        let url = "postgres://bob:p%40ss@db/x";
        let msg = "failed for postgres://bob:p%40ss@db/x (password p@ss)".to_string();
        let out = scrub_password(url, msg);
        assert!(!out.contains("p%40ss") && !out.contains("p@ss"), "{out}");
        assert_eq!(scrub_password("postgres://db/x", "plain".into()), "plain");
    }
}
