//! Watch mode's listing state: what `sluice watch` (and `sluice serve`) last published for every
//! object of a watched location, so that a poll enqueues only what changed since, and a restarted
//! scheduler resumes instead of re-enqueueing everything.
//!
//! ```text
//!  Source::list ─► compare with WatchState::objects ─► publish (confirmed) ─► WatchState::record / forget
//! ```
//!
//! The state lives beside the documents table: PostgreSQL for the fleet, SQLite on one machine,
//! one implementation over the [dialect layer](super::sql) (one contract test below runs against
//! both). Rows are keyed by (collection,
//! location, object URI). Callers write a row only after the broker confirmed the job for it, so
//! a crash between the two re-publishes the job (the worker's content hash makes that cheap)
//! rather than forgetting the change.
//!
//! `last_seen` is refreshed by [`WatchState::mark_seen`] for objects a listing saw unchanged.
//! Callers refresh it coarsely (see `LAST_SEEN_RESOLUTION` in the scheduler's watch module):
//! rewriting every row of a million-object bucket on every poll would only bloat the table.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::sql::{Arg, Dialect, Query};
use super::{MetadataError, PostgresStore, SqlStore, SqliteStore, db_error};
use crate::config::Settings;
use crate::source::SourceObject;

/// Rows per statement when writing many at once: large enough to amortise round trips, small
/// enough that SQLite's write lock is never held for long.
const WRITE_BATCH: usize = 500;

/// What the last recorded listing said about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedObject {
    /// The object's URI (as [`SourceObject::uri`]), which is also its document id.
    pub uri: String,
    pub e_tag: Option<String>,
    pub size: u64,
    /// Modification time, truncated to microseconds (what both databases store).
    pub last_modified: DateTime<Utc>,
    /// When a listing last saw the object with this state.
    pub last_seen: DateTime<Utc>,
}

impl WatchedObject {
    /// The state to record for a listed object, seen at `seen_at`.
    pub fn from_listing(object: &SourceObject, seen_at: DateTime<Utc>) -> Self {
        WatchedObject {
            uri: object.uri.clone(),
            e_tag: object.e_tag.clone(),
            size: object.size,
            last_modified: to_micros(object.last_modified),
            last_seen: to_micros(seen_at),
        }
    }
}

/// `t` without its sub-microsecond part, so a stored time compares equal to a freshly listed one
/// (local file systems report nanoseconds; both databases keep microseconds).
pub fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// Listing state of watched locations. `collection` and `location` (the location's root URI as
/// opened) together name one watched location.
#[async_trait]
pub trait WatchState: Send + Sync {
    /// Every recorded object of the location, in URI order.
    async fn objects(
        &self,
        collection: &str,
        location: &str,
    ) -> Result<Vec<WatchedObject>, MetadataError>;

    /// Inserts or replaces the rows of `objects` (by URI). Call only after their jobs were
    /// confirmed.
    async fn record(
        &self,
        collection: &str,
        location: &str,
        objects: &[WatchedObject],
    ) -> Result<(), MetadataError>;

    /// Drops the rows of `uris` (objects whose delete jobs were confirmed). Unknown URIs are ignored.
    async fn forget(
        &self,
        collection: &str,
        location: &str,
        uris: &[String],
    ) -> Result<(), MetadataError>;

    /// Sets `last_seen` of the rows of `uris` to `at`. Unknown URIs are ignored.
    async fn mark_seen(
        &self,
        collection: &str,
        location: &str,
        uris: &[String],
        at: DateTime<Utc>,
    ) -> Result<(), MetadataError>;
}

/// Opens the watch state where the metadata store lives: PostgreSQL when `SLUICE_DATABASE_URL` is
/// set, else SQLite in the data directory. Migrations run, so the state is ready to use.
pub async fn open_watch_state(settings: &Settings) -> Result<Arc<dyn WatchState>, MetadataError> {
    Ok(match &settings.database_url {
        Some(url) => Arc::new(PostgresStore::connect(url.expose()).await?),
        None => Arc::new(SqliteStore::open(&settings.sqlite_path()).await?),
    })
}

fn size_to_db(size: u64) -> i64 {
    // No object comes near 8 EiB; saturating keeps a corrupt listing from failing the batch.
    i64::try_from(size).unwrap_or(i64::MAX)
}

fn size_from_db(size: i64) -> u64 {
    u64::try_from(size).unwrap_or(0)
}

/// The rows of a batch as a table `o(uri, e_tag, size, last_modified, last_seen)`, one list
/// parameter per column from `$3` on, so that [`WatchState::record`] writes a batch in one
/// statement.
fn batch_rows(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => {
            "UNNEST($3::text[], $4::text[], $5::bigint[], $6::timestamptz[], $7::timestamptz[]) \
             AS o(uri, e_tag, size, last_modified, last_seen)"
        }
        // The lists are JSON arrays; the other columns are read at each URI's index.
        Dialect::Sqlite => {
            "(SELECT u.value AS uri, $4 ->> u.key AS e_tag, $5 ->> u.key AS size, \
             $6 ->> u.key AS last_modified, $7 ->> u.key AS last_seen FROM json_each($3) AS u) AS o"
        }
    }
}

#[async_trait]
impl<P: Send + Sync> WatchState for SqlStore<P> {
    async fn objects(
        &self,
        collection: &str,
        location: &str,
    ) -> Result<Vec<WatchedObject>, MetadataError> {
        let err = |e| db_error("loading watch state", e);
        let rows = Query::new(
            "SELECT uri, e_tag, size, last_modified, last_seen FROM watch_objects \
             WHERE collection = $1 AND location = $2 ORDER BY uri",
        )
        .bind(collection)
        .bind(location)
        .fetch_all(self.db())
        .await
        .map_err(err)?;
        rows.iter()
            .map(|row| {
                Ok(WatchedObject {
                    uri: row.get("uri")?,
                    e_tag: row.get("e_tag")?,
                    size: size_from_db(row.get("size")?),
                    last_modified: row.time("last_modified")?,
                    last_seen: row.time("last_seen")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(err)
    }

    async fn record(
        &self,
        collection: &str,
        location: &str,
        objects: &[WatchedObject],
    ) -> Result<(), MetadataError> {
        // `WHERE true` tells SQLite's parser that `ON CONFLICT` starts the upsert, not a join.
        let sql = format!(
            "INSERT INTO watch_objects \
             (collection, location, uri, e_tag, size, last_modified, last_seen) \
             SELECT $1, $2, o.uri, o.e_tag, o.size, o.last_modified, o.last_seen FROM {} \
             WHERE true ON CONFLICT (collection, location, uri) DO UPDATE SET \
             e_tag = excluded.e_tag, size = excluded.size, \
             last_modified = excluded.last_modified, last_seen = excluded.last_seen",
            batch_rows(self.db().dialect())
        );
        for batch in objects.chunks(WRITE_BATCH) {
            Query::new(sql.clone())
                .bind(collection)
                .bind(location)
                .bind(Arg::Texts(
                    batch.iter().map(|o| Some(o.uri.clone())).collect(),
                ))
                .bind(Arg::Texts(batch.iter().map(|o| o.e_tag.clone()).collect()))
                .bind(Arg::Ints(
                    batch.iter().map(|o| size_to_db(o.size)).collect(),
                ))
                .bind(Arg::Times(batch.iter().map(|o| o.last_modified).collect()))
                .bind(Arg::Times(batch.iter().map(|o| o.last_seen).collect()))
                .execute(self.db())
                .await
                .map_err(|e| db_error("recording watch state", e))?;
        }
        Ok(())
    }

    async fn forget(
        &self,
        collection: &str,
        location: &str,
        uris: &[String],
    ) -> Result<(), MetadataError> {
        let sql = format!(
            "DELETE FROM watch_objects WHERE collection = $1 AND location = $2 AND {}",
            self.db().dialect().is_any("uri", "$3")
        );
        for batch in uris.chunks(WRITE_BATCH) {
            Query::new(sql.clone())
                .bind(collection)
                .bind(location)
                .bind(batch)
                .execute(self.db())
                .await
                .map_err(|e| db_error("forgetting watch state", e))?;
        }
        Ok(())
    }

    async fn mark_seen(
        &self,
        collection: &str,
        location: &str,
        uris: &[String],
        at: DateTime<Utc>,
    ) -> Result<(), MetadataError> {
        let sql = format!(
            "UPDATE watch_objects SET last_seen = $4 \
             WHERE collection = $1 AND location = $2 AND {}",
            self.db().dialect().is_any("uri", "$3")
        );
        for batch in uris.chunks(WRITE_BATCH) {
            Query::new(sql.clone())
                .bind(collection)
                .bind(location)
                .bind(batch)
                .bind(to_micros(at))
                .execute(self.db())
                .await
                .map_err(|e| db_error("refreshing watch state", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDatabase;

    fn object(uri: &str, e_tag: Option<&str>, size: u64, seconds: i64) -> WatchedObject {
        WatchedObject {
            uri: uri.into(),
            e_tag: e_tag.map(str::to_string),
            size,
            // Sub-second precision that both databases keep.
            last_modified: DateTime::from_timestamp_micros(seconds * 1_000_000 + 123_456).unwrap(),
            last_seen: DateTime::from_timestamp_micros(1_700_000_000_000_001).unwrap(),
        }
    }

    /// The same rules for both stores: rows round-trip exactly, upserts replace, locations and
    /// collections are independent, forgetting and marking ignore unknown URIs.
    async fn contract(state: &dyn WatchState) {
        let (c, loc) = ("docs", "s3://bucket/prefix");
        assert!(state.objects(c, loc).await.unwrap().is_empty());

        let b = object(
            "s3://bucket/prefix/b.md",
            Some("\"etag-b\""),
            20,
            1_700_000_100,
        );
        let a = object("s3://bucket/prefix/a.md", None, 10, 1_700_000_000);
        state.record(c, loc, &[b.clone(), a.clone()]).await.unwrap();
        assert_eq!(
            state.objects(c, loc).await.unwrap(),
            vec![a.clone(), b.clone()],
            "rows come back exactly, in URI order"
        );
        assert!(state.objects("other", loc).await.unwrap().is_empty());
        assert!(
            state
                .objects(c, "s3://bucket/other")
                .await
                .unwrap()
                .is_empty()
        );

        let changed = WatchedObject {
            e_tag: Some("\"etag-b2\"".into()),
            size: 25,
            ..b.clone()
        };
        state
            .record(c, loc, std::slice::from_ref(&changed))
            .await
            .unwrap();
        let later = DateTime::from_timestamp_micros(1_800_000_000_000_000).unwrap();
        state
            .mark_seen(
                c,
                loc,
                &[a.uri.clone(), "s3://bucket/prefix/nope".into()],
                later,
            )
            .await
            .unwrap();
        let seen_a = WatchedObject {
            last_seen: later,
            ..a.clone()
        };
        assert_eq!(
            state.objects(c, loc).await.unwrap(),
            vec![seen_a, changed.clone()]
        );

        state
            .forget(c, loc, &[a.uri.clone(), "s3://bucket/prefix/nope".into()])
            .await
            .unwrap();
        assert_eq!(state.objects(c, loc).await.unwrap(), vec![changed]);

        // Batches larger than one statement or transaction.
        let many: Vec<WatchedObject> = (0..WRITE_BATCH + 7)
            .map(|i| object(&format!("file:///w/{i:04}"), None, i as u64, 1_700_000_000))
            .collect();
        state.record(c, "file:///w", &many).await.unwrap();
        assert_eq!(state.objects(c, "file:///w").await.unwrap(), many);
        let uris: Vec<String> = many.iter().map(|o| o.uri.clone()).collect();
        state.forget(c, "file:///w", &uris).await.unwrap();
        assert!(state.objects(c, "file:///w").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn sqlite_keeps_watch_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("meta.db"))
            .await
            .unwrap();
        contract(&store).await;
    }

    #[tokio::test]
    async fn postgres_keeps_watch_state() {
        let db = TestDatabase::create().await;
        let store = PostgresStore::connect(&db.url).await.unwrap();
        contract(&store).await;
        store.pool().close().await;
    }

    #[test]
    fn listed_times_are_truncated_to_what_the_databases_keep() {
        let t = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        assert_eq!(to_micros(t).timestamp_subsec_nanos(), 123_456_000);
    }
}
