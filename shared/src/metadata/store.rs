//! Record stage: the metadata store, written once over the [dialect layer](super::sql) and run on
//! PostgreSQL (for the fleet, [`PostgresStore`](super::PostgresStore)) or SQLite (one machine,
//! [`SqliteStore`](super::SqliteStore)).
//!
//! `begin` and `fail` run as read-decide-write transactions: a new row is created with
//! `INSERT … ON CONFLICT DO NOTHING` (in PostgreSQL it waits for a concurrent inserter and then
//! yields to it), an existing one is read under a lock (PostgreSQL's row lock, SQLite's write
//! lock), and [`decide_begin`] decides. So however many callers race on one document, exactly one gets
//! `Claimed`. Lease times come from the store's clock (PostgreSQL's own, so workers with skewed
//! clocks still agree on when a lease ends).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::sql::{self, Db, Dialect, Query, Row, Tx};
use super::{
    BeginDecision, BeginOutcome, BeginRequest, CommitOutcome, CommitRequest, DocStatus,
    DocumentCursor, DocumentFilter, DocumentRecord, DocumentStats, FailureReason, Labels,
    LeaseView, MetadataError, MetadataStore, StatusReport, db_error, decide_begin,
    effective_labels, lease_deadline, live_lease, metadata_from_text, metadata_text,
};

/// `SELECT <every documents column> FROM documents ` followed by `$rest`, so every statement reads
/// rows the same way.
macro_rules! select_records {
    ($rest:literal) => {
        concat!(
            "SELECT collection, doc_id, source, tenant, content_hash, fingerprint, \
             current_version, next_version, status, chunk_count, tokens, attempts, last_error, \
             lease_token, lease_until, created_at, updated_at, indexed_at, published_version, \
             metadata FROM documents ",
            $rest
        )
    };
}

/// The reason of a failed row for [`MetadataStore::stats`]: `last_error` without a leading
/// `<source>: ` or `<doc_id>: ` (how pipeline errors name their document). `substr` and `length`
/// count characters in both databases.
const FAILURE_REASON: &str = "CASE \
       WHEN substr(last_error, 1, length(source) + 2) = source || ': ' \
         THEN substr(last_error, length(source) + 3) \
       WHEN substr(last_error, 1, length(doc_id) + 2) = doc_id || ': ' \
         THEN substr(last_error, length(doc_id) + 3) \
       ELSE COALESCE(last_error, '') \
     END";

/// The metadata store over the pool `P` (`PgPool` or `SqlitePool`, which the aliases
/// [`PostgresStore`](super::PostgresStore) and [`SqliteStore`](super::SqliteStore) name).
#[derive(Debug, Clone)]
pub struct SqlStore<P> {
    pub(super) pool: P,
    pub(super) db: Db,
}

impl<P> SqlStore<P> {
    /// The database, for the other tables kept beside the documents (watch state, reindex cursors).
    pub(crate) fn db(&self) -> &Db {
        &self.db
    }
}

fn status_of(row: &Row) -> Result<DocStatus, sqlx::Error> {
    let s: String = row.get("status")?;
    DocStatus::parse(&s)
        .ok_or_else(|| sql::decode_error("status", format!("unknown document status {s:?}")))
}

fn labels_of(row: &Row) -> Result<Labels, sqlx::Error> {
    let metadata: Option<String> = row.get("metadata")?;
    Ok(Labels {
        tenant: row.get("tenant")?,
        metadata: metadata_from_text(metadata.as_deref()),
    })
}

fn lease_view(row: &Row) -> Result<LeaseView, sqlx::Error> {
    Ok(LeaseView {
        status: status_of(row)?,
        content_hash: row.get("content_hash")?,
        fingerprint: row.get("fingerprint")?,
        current_version: row.get("current_version")?,
        next_version: row.get("next_version")?,
        published_version: row.get("published_version")?,
        lease_token: row.get("lease_token")?,
        lease_until: row.opt_time("lease_until")?,
        labels: labels_of(row)?,
    })
}

fn record(row: &Row) -> Result<DocumentRecord, sqlx::Error> {
    Ok(DocumentRecord {
        collection: row.get("collection")?,
        doc_id: row.get("doc_id")?,
        source: row.get("source")?,
        tenant: row.get("tenant")?,
        content_hash: row.get("content_hash")?,
        fingerprint: row.get("fingerprint")?,
        current_version: row.get("current_version")?,
        next_version: row.get("next_version")?,
        published_version: row.get("published_version")?,
        status: status_of(row)?,
        chunk_count: row.get("chunk_count")?,
        tokens: row.get("tokens")?,
        attempts: row.get("attempts")?,
        last_error: row.get("last_error")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        indexed_at: row.opt_time("indexed_at")?,
        lease_until: row.opt_time("lease_until")?,
        metadata: labels_of(row)?.metadata,
    })
}

/// Runs `query` (a `select_records!`) and reads its rows; errors name `action`.
async fn records(
    query: Query,
    db: &Db,
    action: &str,
) -> Result<Vec<DocumentRecord>, MetadataError> {
    let err = |e| db_error(action, e);
    let rows = query.fetch_all(db).await.map_err(err)?;
    rows.iter()
        .map(record)
        .collect::<Result<_, _>>()
        .map_err(err)
}

/// Reads the document's row under the transaction's lock (waiting for other transactions on it)
/// and the clock. The clock is read after the lock, in its own statement, so a long wait does not
/// make an expired lease look live.
async fn lock_row(
    tx: &mut Tx,
    collection: &str,
    doc_id: &str,
) -> Result<(Option<LeaseView>, DateTime<Utc>), sqlx::Error> {
    let sql = format!(
        select_records!("WHERE collection = $1 AND doc_id = $2{}"),
        tx.dialect().for_update()
    );
    let row = Query::new(sql)
        .bind(collection)
        .bind(doc_id)
        .fetch_optional(&mut *tx)
        .await?;
    let now = sql::now(&mut *tx).await?;
    Ok((row.as_ref().map(lease_view).transpose()?, now))
}

/// Limits travel as `i64`; absurd ones saturate.
fn as_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl<P: Send + Sync> MetadataStore for SqlStore<P> {
    async fn begin(&self, req: &BeginRequest) -> Result<BeginOutcome, MetadataError> {
        let err = |e| db_error("begin", e);
        let mut tx = self.db.begin().await.map_err(err)?;
        let token = uuid::Uuid::new_v4();
        let now = sql::now(&mut tx).await.map_err(err)?;
        // First sight of a document: insert it claimed. On a conflict (it exists, or a concurrent
        // transaction just inserted it) this waits for that transaction and inserts nothing.
        let inserted = Query::new(
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
        .execute(&mut tx)
        .await
        .map_err(err)?;
        if inserted == 1 {
            tx.commit().await.map_err(err)?;
            return Ok(BeginOutcome::Claimed {
                version: 1,
                lease_token: token,
                labels: effective_labels(&Labels::default(), req),
            });
        }

        let (view, now) = lock_row(&mut tx, &req.collection, &req.doc_id)
            .await
            .map_err(err)?;
        let Some(view) = view else {
            // Only a concurrent hard DELETE could get here; the store never deletes rows.
            return Err(MetadataError::Query(format!(
                "begin: document {}/{} vanished during the transaction",
                req.collection, req.doc_id
            )));
        };
        let labels = effective_labels(&view.labels, req);
        let (version, refresh) = match decide_begin(&view, req, now) {
            BeginDecision::Busy { until } => return Ok(BeginOutcome::Busy { until }),
            BeginDecision::Unchanged { version } => {
                // The file may have moved without changing content.
                Query::new(
                    "UPDATE documents SET source = $3 \
                     WHERE collection = $1 AND doc_id = $2 AND source <> $3",
                )
                .bind(&req.collection)
                .bind(&req.doc_id)
                .bind(&req.source)
                .execute(&mut tx)
                .await
                .map_err(err)?;
                tx.commit().await.map_err(err)?;
                return Ok(BeginOutcome::Unchanged { version });
            }
            BeginDecision::Refresh { version } => {
                // A lease without a new version: status and counts stay those of `version`.
                Query::new(
                    "UPDATE documents SET source = $3, lease_token = $4, lease_until = $5, \
                     updated_at = $6 WHERE collection = $1 AND doc_id = $2",
                )
                .bind(&req.collection)
                .bind(&req.doc_id)
                .bind(&req.source)
                .bind(token.to_string())
                .bind(lease_deadline(now, req.lease))
                .bind(now)
                .execute(&mut tx)
                .await
                .map_err(err)?;
                (version, true)
            }
            BeginDecision::Claim { version } => {
                // Labels are recorded by the commit, once the points carry them.
                Query::new(
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
                .execute(&mut tx)
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
        // allocated, so committing it is safe. A single statement is atomic on its own.
        let done = Query::new(
            "UPDATE documents SET current_version = $4, content_hash = $5, fingerprint = $6, \
             status = 'indexed', chunk_count = $7, tokens = $8, last_error = NULL, \
             tenant = $9, metadata = $10, indexed_at = $now, updated_at = $now, \
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
        .execute(&self.db)
        .await
        .map_err(|e| db_error("commit", e))?;
        Ok(if done == 1 {
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
        Query::new(
            "UPDATE documents SET published_version = $3 WHERE collection = $1 AND doc_id = $2 \
             AND published_version < $3 AND current_version >= $3",
        )
        .bind(collection)
        .bind(doc_id)
        .bind(version)
        .execute(&self.db)
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
        let done = Query::new(
            "UPDATE documents SET tenant = $4, metadata = $5, \
             published_version = CASE WHEN published_version > current_version \
               THEN published_version ELSE current_version END, \
             updated_at = $now, lease_token = NULL, lease_until = NULL \
             WHERE collection = $1 AND doc_id = $2 AND lease_token = $3",
        )
        .bind(collection)
        .bind(doc_id)
        .bind(lease_token.to_string())
        .bind(&labels.tenant)
        .bind(metadata_text(&labels.metadata))
        .execute(&self.db)
        .await
        .map_err(|e| db_error("release", e))?;
        Ok(done == 1)
    }

    async fn renew(
        &self,
        collection: &str,
        doc_id: &str,
        lease_token: uuid::Uuid,
        lease: std::time::Duration,
    ) -> Result<bool, MetadataError> {
        let err = |e| db_error("renew", e);
        let now = sql::now(&self.db).await.map_err(err)?;
        let done = Query::new(
            "UPDATE documents SET lease_until = $4 \
             WHERE collection = $1 AND doc_id = $2 AND lease_token = $3",
        )
        .bind(collection)
        .bind(doc_id)
        .bind(lease_token.to_string())
        .bind(lease_deadline(now, lease))
        .execute(&self.db)
        .await
        .map_err(err)?;
        Ok(done == 1)
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
        let mut tx = self.db.begin().await.map_err(err)?;
        // Failed before any claim (e.g. unreadable file) and never seen: record it so `status`
        // shows it. An existing row is left to the locked update below.
        let inserted = Query::new(
            "INSERT INTO documents (collection, doc_id, source, status, attempts, last_error, \
             created_at, updated_at) VALUES ($1, $2, $3, 'failed', 1, $4, $now, $now) \
             ON CONFLICT (collection, doc_id) DO NOTHING",
        )
        .bind(collection)
        .bind(doc_id)
        .bind(source)
        .bind(error)
        .execute(&mut tx)
        .await
        .map_err(err)?;
        if inserted == 1 {
            return tx.commit().await.map_err(err);
        }
        let (view, now) = lock_row(&mut tx, collection, doc_id).await.map_err(err)?;
        let Some(view) = view else {
            return Err(MetadataError::Query(format!(
                "fail: document {collection}/{doc_id} vanished during the transaction"
            )));
        };
        match lease_token {
            Some(token) if view.lease_token.as_deref() == Some(token.to_string().as_str()) => {
                // The holder gives up: release the lease, keep the current version.
                Query::new(
                    "UPDATE documents SET status = 'failed', last_error = $3, updated_at = $4, \
                     lease_token = NULL, lease_until = NULL WHERE collection = $1 AND doc_id = $2",
                )
                .bind(collection)
                .bind(doc_id)
                .bind(error)
                .bind(now)
                .execute(&mut tx)
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
                Query::new(
                    "UPDATE documents SET status = CASE WHEN $5 THEN status ELSE 'failed' END, \
                     last_error = $3, updated_at = $4, attempts = attempts + 1 \
                     WHERE collection = $1 AND doc_id = $2",
                )
                .bind(collection)
                .bind(doc_id)
                .bind(error)
                .bind(now)
                .bind(leased)
                .execute(&mut tx)
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
        let err = |e| db_error("mark_deleted", e);
        let row = Query::new(
            "UPDATE documents SET status = 'deleted', current_version = 0, published_version = 0, \
             content_hash = NULL, fingerprint = NULL, chunk_count = 0, tokens = 0, \
             last_error = NULL, lease_token = NULL, lease_until = NULL, updated_at = $now \
             WHERE collection = $1 AND doc_id = $2 RETURNING next_version",
        )
        .bind(collection)
        .bind(doc_id)
        .fetch_optional(&self.db)
        .await
        .map_err(err)?;
        row.map(|row| row.get("next_version"))
            .transpose()
            .map_err(err)
    }

    async fn get(
        &self,
        collection: &str,
        doc_id: &str,
    ) -> Result<Option<DocumentRecord>, MetadataError> {
        let err = |e| db_error("get", e);
        let row = Query::new(select_records!("WHERE collection = $1 AND doc_id = $2"))
            .bind(collection)
            .bind(doc_id)
            .fetch_optional(&self.db)
            .await
            .map_err(err)?;
        row.as_ref().map(record).transpose().map_err(err)
    }

    async fn get_many(
        &self,
        collection: &str,
        doc_ids: &[String],
    ) -> Result<Vec<DocumentRecord>, MetadataError> {
        let sql = format!(
            select_records!("WHERE collection = $1 AND {}"),
            self.db.dialect().is_any("doc_id", "$2")
        );
        let query = Query::new(sql).bind(collection).bind(doc_ids);
        records(query, &self.db, "get_many").await
    }

    async fn list_by_source_prefix(
        &self,
        collection: &str,
        prefix: &str,
    ) -> Result<Vec<DocumentRecord>, MetadataError> {
        // `source >= $2` lets the `source` index skip to the first candidate.
        let sql = format!(
            select_records!(
                "WHERE collection = $1 AND status <> 'deleted' AND source >= $2 AND {} \
                 ORDER BY source, doc_id"
            ),
            self.db.dialect().starts_with("source", "$2")
        );
        let query = Query::new(sql).bind(collection).bind(prefix);
        records(query, &self.db, "list_by_source_prefix").await
    }

    async fn list_documents(
        &self,
        filter: &DocumentFilter,
        after: Option<&DocumentCursor>,
        limit: usize,
    ) -> Result<Vec<DocumentRecord>, MetadataError> {
        let sql = format!(
            select_records!("WHERE {} ORDER BY collection, doc_id LIMIT $7"),
            documents_matching(self.db.dialect())
        );
        let query = bind_filter(Query::new(sql), filter, after).bind(as_limit(limit));
        records(query, &self.db, "list_documents").await
    }

    async fn status(
        &self,
        collection: Option<&str>,
        recent_failures: usize,
    ) -> Result<StatusReport, MetadataError> {
        let err = |e| db_error("status", e);
        // SUM(bigint) is numeric in PostgreSQL; cast back so it decodes as i64.
        let rows = Query::new(
            "SELECT status, COUNT(*) AS n, \
             CAST(COALESCE(SUM(chunk_count), 0) AS BIGINT) AS chunks, \
             CAST(COALESCE(SUM(tokens), 0) AS BIGINT) AS tokens FROM documents \
             WHERE ($1 IS NULL OR collection = $1) GROUP BY status",
        )
        .bind(collection)
        .fetch_all(&self.db)
        .await
        .map_err(err)?;
        let by_status = rows
            .iter()
            .map(|row| {
                Ok((
                    status_of(row)?,
                    row.get("n")?,
                    row.get("chunks")?,
                    row.get("tokens")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(err)?;
        let failures = Query::new(select_records!(
            "WHERE status = 'failed' AND ($1 IS NULL OR collection = $1) \
             ORDER BY updated_at DESC, collection, doc_id LIMIT $2"
        ))
        .bind(collection)
        .bind(as_limit(recent_failures));
        Ok(super::status_report(
            by_status,
            records(failures, &self.db, "status").await?,
        ))
    }

    async fn stats(
        &self,
        collection: Option<&str>,
        indexed_since: &[DateTime<Utc>],
        max_reasons: usize,
    ) -> Result<DocumentStats, MetadataError> {
        let err = |e| db_error("stats", e);
        let rows = Query::new(
            "SELECT status, COUNT(*) AS n FROM documents \
             WHERE ($1 IS NULL OR collection = $1) GROUP BY status",
        )
        .bind(collection)
        .fetch_all(&self.db)
        .await
        .map_err(err)?;
        let by_status = rows
            .iter()
            .map(|row| Ok((status_of(row)?, row.get("n")?, 0, 0)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(err)?;
        let mut indexed = Vec::with_capacity(indexed_since.len());
        for since in indexed_since {
            let row = Query::new(
                "SELECT COUNT(*) AS n FROM documents \
                 WHERE indexed_at >= $1 AND ($2 IS NULL OR collection = $2)",
            )
            .bind(*since)
            .bind(collection)
            .fetch_one(&self.db)
            .await
            .map_err(err)?;
            indexed.push(row.get("n").map_err(err)?);
        }
        let reasons = Query::new(format!(
            "SELECT reason, COUNT(*) AS n FROM (SELECT {FAILURE_REASON} AS reason FROM documents \
             WHERE status = 'failed' AND ($1 IS NULL OR collection = $1)) AS failed \
             GROUP BY reason ORDER BY n DESC, reason LIMIT $2"
        ))
        .bind(collection)
        .bind(as_limit(max_reasons))
        .fetch_all(&self.db)
        .await
        .map_err(err)?;
        Ok(DocumentStats {
            counts: super::status_report(by_status, Vec::new()).counts,
            indexed_since: indexed,
            failures_by_reason: reasons
                .iter()
                .map(|row| {
                    Ok(FailureReason {
                        reason: row.get("reason")?,
                        documents: row.get("n")?,
                    })
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(err)?,
        })
    }
}

/// The documents a [`DocumentFilter`] selects after a cursor, as a condition on parameters `$1` to
/// `$6` (bound by [`bind_filter`]): what `list_documents` pages through and the reindex cursors
/// count.
pub(crate) fn documents_matching(dialect: Dialect) -> String {
    format!(
        "status <> 'deleted' AND ($1 IS NULL OR collection = $1) \
         AND ($2 IS NULL OR tenant = $2) AND ($3 IS NULL OR {}) \
         AND ($4 IS NULL OR updated_at >= $4) \
         AND ($5 IS NULL OR collection > $5 OR (collection = $5 AND doc_id > $6))",
        dialect.starts_with("source", "$3")
    )
}

/// Binds `$1` to `$6` of [`documents_matching`].
pub(crate) fn bind_filter(
    query: Query,
    filter: &DocumentFilter,
    after: Option<&DocumentCursor>,
) -> Query {
    query
        .bind(&filter.collection)
        .bind(&filter.tenant)
        .bind(&filter.source_prefix)
        .bind(filter.since)
        .bind(after.map(|c| c.collection.as_str()))
        .bind(after.map(|c| c.doc_id.as_str()))
}
