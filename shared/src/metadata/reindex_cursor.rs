//! Record stage, scheduler side: where each `sluice reindex` run got to (table `reindex_cursors`,
//! migration 0003), so that an interrupted run resumes after its last confirmed batch instead of
//! publishing every document again.
//!
//! A run is identified by its arguments (`run_key`, built by the caller) and owned by a `run_id`
//! that changes on every fresh start: the cursor only moves for the run that owns it, so of two
//! runs started with the same arguments the older one notices it was replaced and stops.
//!
//! Kept beside the documents table in the same database (PostgreSQL for the fleet, SQLite on one
//! machine), but outside the [`MetadataStore`](super::MetadataStore) trait: only the scheduler
//! uses it.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use uuid::Uuid;

use super::{DocumentCursor, DocumentFilter, MetadataError, PostgresStore, SqliteStore, db_error};

/// One reindex run as persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct ReindexRun {
    /// The arguments the run was started with, in canonical form.
    pub run_key: String,
    /// Owner of the cursor; a new one for every fresh start.
    pub run_id: Uuid,
    /// The selection as resolved at the start (a relative `--since` fixed to an instant), so a
    /// resumed run covers exactly what the interrupted one meant to.
    pub filter: DocumentFilter,
    pub force: bool,
    /// The last document whose index job the broker confirmed; `None` before the first batch.
    pub after: Option<DocumentCursor>,
    /// Index jobs published (and confirmed) by this run so far, across resumptions.
    pub published: u64,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the last matching document was published. A completed run is never resumed.
    pub completed_at: Option<DateTime<Utc>>,
}

/// The `reindex_cursors` table of a metadata database.
#[derive(Debug, Clone)]
pub enum ReindexCursors {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

const SELECT_RUN: &str = "SELECT run_key, run_id, collection, tenant, source_prefix, since, force, \
     after_collection, after_doc_id, published, started_at, updated_at, completed_at \
     FROM reindex_cursors WHERE run_key = $1";

const UPSERT_RUN: &str = "INSERT INTO reindex_cursors (run_key, run_id, collection, tenant, \
     source_prefix, since, force, after_collection, after_doc_id, published, started_at, \
     updated_at, completed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, 0, $8, $8, NULL) \
     ON CONFLICT (run_key) DO UPDATE SET run_id = excluded.run_id, \
     collection = excluded.collection, tenant = excluded.tenant, \
     source_prefix = excluded.source_prefix, since = excluded.since, force = excluded.force, \
     after_collection = NULL, after_doc_id = NULL, published = 0, \
     started_at = excluded.started_at, updated_at = excluded.updated_at, completed_at = NULL";

const ADVANCE_RUN: &str = "UPDATE reindex_cursors SET after_collection = $3, after_doc_id = $4, \
     published = $5, updated_at = $6 \
     WHERE run_key = $1 AND run_id = $2 AND completed_at IS NULL";

const COMPLETE_RUN: &str = "UPDATE reindex_cursors SET published = $3, updated_at = $4, \
     completed_at = $4 WHERE run_key = $1 AND run_id = $2 AND completed_at IS NULL";

/// The same selection as `list_documents` (both stores), counted.
const COUNT_POSTGRES: &str = "SELECT COUNT(*) AS n FROM documents \
     WHERE status <> 'deleted' AND ($1::TEXT IS NULL OR collection = $1) \
     AND ($2::TEXT IS NULL OR tenant = $2) AND ($3::TEXT IS NULL OR starts_with(source, $3)) \
     AND ($4::TIMESTAMPTZ IS NULL OR updated_at >= $4) \
     AND ($5::TEXT IS NULL OR collection > $5 OR (collection = $5 AND doc_id > $6))";

const COUNT_SQLITE: &str = "SELECT COUNT(*) AS n FROM documents \
     WHERE status <> 'deleted' AND ($1 IS NULL OR collection = $1) \
     AND ($2 IS NULL OR tenant = $2) AND ($3 IS NULL OR substr(source, 1, length($3)) = $3) \
     AND ($4 IS NULL OR updated_at >= $4) \
     AND ($5 IS NULL OR collection > $5 OR (collection = $5 AND doc_id > $6))";

impl ReindexCursors {
    /// The cursor table of a PostgreSQL metadata store (same pool, already migrated).
    pub fn postgres(store: &PostgresStore) -> Self {
        ReindexCursors::Postgres(store.pool().clone())
    }

    /// The cursor table of a SQLite metadata store (same pool, already migrated).
    pub fn sqlite(store: &SqliteStore) -> Self {
        ReindexCursors::Sqlite(store.pool().clone())
    }

    /// The run last started with `run_key`, finished or not.
    pub async fn find(&self, run_key: &str) -> Result<Option<ReindexRun>, MetadataError> {
        let err = |e| db_error("reading the reindex cursor", e);
        match self {
            ReindexCursors::Postgres(pool) => {
                let row = sqlx::query(SELECT_RUN)
                    .bind(run_key)
                    .fetch_optional(pool)
                    .await
                    .map_err(err)?;
                row.as_ref().map(pg_run).transpose()
            }
            ReindexCursors::Sqlite(pool) => {
                let row = sqlx::query(SELECT_RUN)
                    .bind(run_key)
                    .fetch_optional(pool)
                    .await
                    .map_err(err)?;
                row.as_ref().map(sqlite_run).transpose()
            }
        }
    }

    /// Starts a fresh run for `run_key` at the beginning of the selection, replacing whatever
    /// cursor that key had (a finished run, or an unfinished one the caller chose to discard).
    pub async fn start(
        &self,
        run_key: &str,
        filter: &DocumentFilter,
        force: bool,
    ) -> Result<ReindexRun, MetadataError> {
        let now = Utc::now();
        let run = ReindexRun {
            run_key: run_key.to_string(),
            run_id: Uuid::new_v4(),
            filter: filter.clone(),
            force,
            after: None,
            published: 0,
            started_at: now,
            updated_at: now,
            completed_at: None,
        };
        let err = |e| db_error("saving the reindex cursor", e);
        let run_id = run.run_id.to_string();
        match self {
            ReindexCursors::Postgres(pool) => sqlx::query(UPSERT_RUN)
                .bind(run_key)
                .bind(run_id)
                .bind(&filter.collection)
                .bind(&filter.tenant)
                .bind(&filter.source_prefix)
                .bind(filter.since)
                .bind(force)
                .bind(now)
                .execute(pool)
                .await
                .map_err(err)?
                .rows_affected(),
            ReindexCursors::Sqlite(pool) => sqlx::query(UPSERT_RUN)
                .bind(run_key)
                .bind(run_id)
                .bind(&filter.collection)
                .bind(&filter.tenant)
                .bind(&filter.source_prefix)
                .bind(filter.since.map(|t| t.timestamp_micros()))
                .bind(force)
                .bind(now.timestamp_micros())
                .execute(pool)
                .await
                .map_err(err)?
                .rows_affected(),
        };
        Ok(run)
    }

    /// Records that every document up to `after` was published (`published` jobs in all).
    /// `false` when `run_id` no longer owns the cursor (a newer run with the same arguments
    /// replaced it, or it was completed): the caller must stop.
    pub async fn advance(
        &self,
        run_key: &str,
        run_id: Uuid,
        after: &DocumentCursor,
        published: u64,
    ) -> Result<bool, MetadataError> {
        let err = |e| db_error("saving the reindex cursor", e);
        let published = i64::try_from(published).unwrap_or(i64::MAX);
        let now = Utc::now();
        let rows = match self {
            ReindexCursors::Postgres(pool) => sqlx::query(ADVANCE_RUN)
                .bind(run_key)
                .bind(run_id.to_string())
                .bind(&after.collection)
                .bind(&after.doc_id)
                .bind(published)
                .bind(now)
                .execute(pool)
                .await
                .map_err(err)?
                .rows_affected(),
            ReindexCursors::Sqlite(pool) => sqlx::query(ADVANCE_RUN)
                .bind(run_key)
                .bind(run_id.to_string())
                .bind(&after.collection)
                .bind(&after.doc_id)
                .bind(published)
                .bind(now.timestamp_micros())
                .execute(pool)
                .await
                .map_err(err)?
                .rows_affected(),
        };
        Ok(rows == 1)
    }

    /// Marks the run finished, so the next run with the same arguments starts afresh. `false`
    /// when `run_id` no longer owns the cursor.
    pub async fn complete(
        &self,
        run_key: &str,
        run_id: Uuid,
        published: u64,
    ) -> Result<bool, MetadataError> {
        let err = |e| db_error("saving the reindex cursor", e);
        let published = i64::try_from(published).unwrap_or(i64::MAX);
        let now = Utc::now();
        let rows = match self {
            ReindexCursors::Postgres(pool) => sqlx::query(COMPLETE_RUN)
                .bind(run_key)
                .bind(run_id.to_string())
                .bind(published)
                .bind(now)
                .execute(pool)
                .await
                .map_err(err)?
                .rows_affected(),
            ReindexCursors::Sqlite(pool) => sqlx::query(COMPLETE_RUN)
                .bind(run_key)
                .bind(run_id.to_string())
                .bind(published)
                .bind(now.timestamp_micros())
                .execute(pool)
                .await
                .map_err(err)?
                .rows_affected(),
        };
        Ok(rows == 1)
    }

    /// How many documents `list_documents(filter, after, ..)` would page through: one `COUNT(*)`
    /// over the same conditions, for a progress bar's total.
    pub async fn count_documents(
        &self,
        filter: &DocumentFilter,
        after: Option<&DocumentCursor>,
    ) -> Result<u64, MetadataError> {
        let err = |e| db_error("counting documents", e);
        let n: i64 = match self {
            ReindexCursors::Postgres(pool) => sqlx::query(COUNT_POSTGRES)
                .bind(&filter.collection)
                .bind(&filter.tenant)
                .bind(&filter.source_prefix)
                .bind(filter.since)
                .bind(after.map(|c| c.collection.as_str()))
                .bind(after.map(|c| c.doc_id.as_str()))
                .fetch_one(pool)
                .await
                .and_then(|row| row.try_get("n"))
                .map_err(err)?,
            ReindexCursors::Sqlite(pool) => sqlx::query(COUNT_SQLITE)
                .bind(&filter.collection)
                .bind(&filter.tenant)
                .bind(&filter.source_prefix)
                .bind(filter.since.map(|t| t.timestamp_micros()))
                .bind(after.map(|c| c.collection.as_str()))
                .bind(after.map(|c| c.doc_id.as_str()))
                .fetch_one(pool)
                .await
                .and_then(|row| row.try_get("n"))
                .map_err(err)?,
        };
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// The parts of a row both databases store the same way.
struct RowParts {
    run_key: String,
    run_id: String,
    collection: Option<String>,
    tenant: Option<String>,
    source_prefix: Option<String>,
    force: bool,
    after_collection: Option<String>,
    after_doc_id: Option<String>,
    published: i64,
}

impl RowParts {
    fn into_run(
        self,
        since: Option<DateTime<Utc>>,
        started_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
        completed_at: Option<DateTime<Utc>>,
    ) -> Result<ReindexRun, MetadataError> {
        let run_id = Uuid::parse_str(&self.run_id).map_err(|e| {
            MetadataError::Query(format!(
                "reindex cursor {:?}: bad run_id: {e}",
                self.run_key
            ))
        })?;
        let after = match (self.after_collection, self.after_doc_id) {
            (Some(collection), Some(doc_id)) => Some(DocumentCursor { collection, doc_id }),
            _ => None,
        };
        Ok(ReindexRun {
            run_key: self.run_key,
            run_id,
            filter: DocumentFilter {
                collection: self.collection,
                tenant: self.tenant,
                source_prefix: self.source_prefix,
                since,
            },
            force: self.force,
            after,
            published: u64::try_from(self.published).unwrap_or(0),
            started_at,
            updated_at,
            completed_at,
        })
    }
}

macro_rules! row_parts {
    ($row:expr) => {{
        let row = $row;
        let get = |e| db_error("reading the reindex cursor", e);
        RowParts {
            run_key: row.try_get("run_key").map_err(get)?,
            run_id: row.try_get("run_id").map_err(get)?,
            collection: row.try_get("collection").map_err(get)?,
            tenant: row.try_get("tenant").map_err(get)?,
            source_prefix: row.try_get("source_prefix").map_err(get)?,
            force: row.try_get("force").map_err(get)?,
            after_collection: row.try_get("after_collection").map_err(get)?,
            after_doc_id: row.try_get("after_doc_id").map_err(get)?,
            published: row.try_get("published").map_err(get)?,
        }
    }};
}

fn pg_run(row: &PgRow) -> Result<ReindexRun, MetadataError> {
    let get = |e| db_error("reading the reindex cursor", e);
    let parts = row_parts!(row);
    parts.into_run(
        row.try_get("since").map_err(get)?,
        row.try_get("started_at").map_err(get)?,
        row.try_get("updated_at").map_err(get)?,
        row.try_get("completed_at").map_err(get)?,
    )
}

fn sqlite_run(row: &SqliteRow) -> Result<ReindexRun, MetadataError> {
    let get = |e| db_error("reading the reindex cursor", e);
    let time = |column: &str, v: i64| {
        DateTime::from_timestamp_micros(v).ok_or_else(|| {
            MetadataError::Query(format!("reindex cursor column {column}: bad timestamp {v}"))
        })
    };
    let opt_time = |column: &str, v: Option<i64>| v.map(|v| time(column, v)).transpose();
    let parts = row_parts!(row);
    parts.into_run(
        opt_time("since", row.try_get("since").map_err(get)?)?,
        time("started_at", row.try_get("started_at").map_err(get)?)?,
        time("updated_at", row.try_get("updated_at").map_err(get)?)?,
        opt_time("completed_at", row.try_get("completed_at").map_err(get)?)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{BeginOutcome, BeginRequest, MetadataStore};

    async fn indexed(store: &SqliteStore, doc_id: &str, tenant: Option<&str>) {
        let req = BeginRequest {
            collection: "c".into(),
            doc_id: doc_id.into(),
            source: format!("file:///docs/{doc_id}"),
            tenant: tenant.map(str::to_string),
            metadata: None,
            content_hash: "h".into(),
            fingerprint: "f".into(),
            force: false,
            lease: std::time::Duration::from_secs(60),
        };
        let BeginOutcome::Claimed {
            version,
            lease_token,
            labels,
        } = store.begin(&req).await.unwrap()
        else {
            panic!("claim {doc_id}");
        };
        store
            .commit(&crate::metadata::CommitRequest {
                collection: "c",
                doc_id,
                lease_token,
                version,
                content_hash: "h",
                fingerprint: "f",
                chunk_count: 1,
                tokens: 1,
                labels: &labels,
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_cursor_moves_only_for_its_own_run_and_completes_once() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        let cursors = ReindexCursors::sqlite(&store);
        let filter = DocumentFilter {
            tenant: Some("acme".into()),
            since: DateTime::from_timestamp_micros(1_700_000_000_000_000),
            ..DocumentFilter::default()
        };
        assert_eq!(cursors.find("k").await.unwrap(), None);
        let first = cursors.start("k", &filter, true).await.unwrap();
        let at = DocumentCursor {
            collection: "c".into(),
            doc_id: "d5".into(),
        };
        assert!(cursors.advance("k", first.run_id, &at, 5).await.unwrap());
        let found = cursors.find("k").await.unwrap().unwrap();
        assert_eq!(
            (&found.filter, found.force, &found.after, found.published),
            (&filter, true, &Some(at.clone()), 5)
        );
        assert_eq!(found.completed_at, None);

        // A fresh start with the same key takes the cursor over and resets it.
        let second = cursors.start("k", &filter, true).await.unwrap();
        assert!(!cursors.advance("k", first.run_id, &at, 6).await.unwrap());
        assert!(!cursors.complete("k", first.run_id, 6).await.unwrap());
        let found = cursors.find("k").await.unwrap().unwrap();
        assert_eq!((found.run_id, &found.after), (second.run_id, &None));

        assert!(cursors.complete("k", second.run_id, 9).await.unwrap());
        let done = cursors.find("k").await.unwrap().unwrap();
        assert!(done.completed_at.is_some());
        assert_eq!(done.published, 9);
        assert!(!cursors.advance("k", second.run_id, &at, 10).await.unwrap());
    }

    #[tokio::test]
    async fn count_matches_what_list_documents_pages_through() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        for (doc, tenant) in [
            ("a", Some("t")),
            ("b", None),
            ("c", Some("t")),
            ("d", Some("t")),
        ] {
            indexed(&store, doc, tenant).await;
        }
        let cursors = ReindexCursors::sqlite(&store);
        let filter = DocumentFilter {
            tenant: Some("t".into()),
            ..DocumentFilter::default()
        };
        let after = DocumentCursor {
            collection: "c".into(),
            doc_id: "a".into(),
        };
        assert_eq!(cursors.count_documents(&filter, None).await.unwrap(), 3);
        assert_eq!(
            cursors
                .count_documents(&filter, Some(&after))
                .await
                .unwrap(),
            store
                .list_documents(&filter, Some(&after), 100)
                .await
                .unwrap()
                .len() as u64
        );
        store.mark_deleted("c", "d").await.unwrap();
        assert_eq!(
            cursors
                .count_documents(&filter, Some(&after))
                .await
                .unwrap(),
            1
        );
    }
}
