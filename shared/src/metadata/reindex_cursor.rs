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
use uuid::Uuid;

use super::sql::{self, Db, Query, Row};
use super::store::{bind_filter, documents_matching};
use super::{DocumentCursor, DocumentFilter, MetadataError, SqlStore, db_error};

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
pub struct ReindexCursors {
    db: Db,
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

impl ReindexCursors {
    /// The cursor table of a metadata store (same pool, already migrated).
    pub fn new<P>(store: &SqlStore<P>) -> Self {
        ReindexCursors {
            db: store.db().clone(),
        }
    }

    /// The run last started with `run_key`, finished or not.
    pub async fn find(&self, run_key: &str) -> Result<Option<ReindexRun>, MetadataError> {
        let err = |e| db_error("reading the reindex cursor", e);
        let row = Query::new(SELECT_RUN)
            .bind(run_key)
            .fetch_optional(&self.db)
            .await
            .map_err(err)?;
        row.as_ref().map(run_of).transpose().map_err(err)
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
        Query::new(UPSERT_RUN)
            .bind(run_key)
            .bind(run.run_id.to_string())
            .bind(&filter.collection)
            .bind(&filter.tenant)
            .bind(&filter.source_prefix)
            .bind(filter.since)
            .bind(force)
            .bind(now)
            .execute(&self.db)
            .await
            .map_err(|e| db_error("saving the reindex cursor", e))?;
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
        let rows = Query::new(ADVANCE_RUN)
            .bind(run_key)
            .bind(run_id.to_string())
            .bind(&after.collection)
            .bind(&after.doc_id)
            .bind(i64::try_from(published).unwrap_or(i64::MAX))
            .bind(Utc::now())
            .execute(&self.db)
            .await
            .map_err(|e| db_error("saving the reindex cursor", e))?;
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
        let rows = Query::new(COMPLETE_RUN)
            .bind(run_key)
            .bind(run_id.to_string())
            .bind(i64::try_from(published).unwrap_or(i64::MAX))
            .bind(Utc::now())
            .execute(&self.db)
            .await
            .map_err(|e| db_error("saving the reindex cursor", e))?;
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
        let sql = format!(
            "SELECT COUNT(*) AS n FROM documents WHERE {}",
            documents_matching(self.db.dialect())
        );
        let n: i64 = bind_filter(Query::new(sql), filter, after)
            .fetch_one(&self.db)
            .await
            .and_then(|row| row.get("n"))
            .map_err(err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

fn run_of(row: &Row) -> Result<ReindexRun, sqlx::Error> {
    let run_id: String = row.get("run_id")?;
    let run_id = Uuid::parse_str(&run_id)
        .map_err(|e| sql::decode_error("run_id", format!("bad run_id {run_id:?}: {e}")))?;
    let after = match (row.get("after_collection")?, row.get("after_doc_id")?) {
        (Some(collection), Some(doc_id)) => Some(DocumentCursor { collection, doc_id }),
        _ => None,
    };
    let published: i64 = row.get("published")?;
    Ok(ReindexRun {
        run_key: row.get("run_key")?,
        run_id,
        filter: DocumentFilter {
            collection: row.get("collection")?,
            tenant: row.get("tenant")?,
            source_prefix: row.get("source_prefix")?,
            since: row.opt_time("since")?,
        },
        force: row.get("force")?,
        after,
        published: u64::try_from(published).unwrap_or(0),
        started_at: row.time("started_at")?,
        updated_at: row.time("updated_at")?,
        completed_at: row.opt_time("completed_at")?,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metadata::{BeginOutcome, BeginRequest, MetadataStore, PostgresStore, SqliteStore};
    use crate::testing::TestDatabase;

    async fn indexed(store: &dyn MetadataStore, doc_id: &str, tenant: Option<&str>) {
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

    /// Both databases, the same rules: the tests below run each body against each.
    async fn on_both<F>(body: impl Fn(ReindexCursors, Arc<dyn MetadataStore>) -> F)
    where
        F: std::future::Future<Output = ()>,
    {
        let store = SqliteStore::open_in_memory().await.unwrap();
        body(ReindexCursors::new(&store), Arc::new(store)).await;
        let db = TestDatabase::create().await;
        let store = PostgresStore::connect(&db.url).await.unwrap();
        let pool = store.pool().clone();
        body(ReindexCursors::new(&store), Arc::new(store)).await;
        pool.close().await;
    }

    #[tokio::test]
    async fn a_cursor_moves_only_for_its_own_run_and_completes_once() {
        on_both(|cursors, _| a_cursor_moves(cursors)).await;
    }

    async fn a_cursor_moves(cursors: ReindexCursors) {
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
        on_both(count_matches).await;
    }

    async fn count_matches(cursors: ReindexCursors, store: Arc<dyn MetadataStore>) {
        for (doc, tenant) in [
            ("a", Some("t")),
            ("b", None),
            ("c", Some("t")),
            ("d", Some("t")),
        ] {
            indexed(&*store, doc, tenant).await;
        }
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
