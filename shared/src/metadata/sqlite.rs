//! Record stage, single-machine flavour: the metadata store in one SQLite file. The statements are
//! [`SqlStore`]'s; this is how the file is opened.
//!
//! Read-decide-write sequences take the database's write lock up front (`BEGIN IMMEDIATE`, see
//! [`Db::begin`]). The file runs in WAL mode so readers (`status`, `get`) do not wait for writers,
//! and a 10 s busy timeout turns short lock waits into waiting, not errors.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::sql::Db;
use super::store::SqlStore;
use super::{MetadataError, db_error};

/// The schema, compiled into the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Writers serialise on SQLite's single write lock anyway; a few connections let reads (`status`,
/// `get`) proceed beside one writer without holding many file handles.
const MAX_CONNECTIONS: u32 = 4;

/// The metadata store backed by a local SQLite file.
pub type SqliteStore = SqlStore<SqlitePool>;

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
        Self::migrated(pool).await
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
        Self::migrated(pool).await
    }

    async fn migrated(pool: SqlitePool) -> Result<Self, MetadataError> {
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| MetadataError::Migration(e.to_string()))?;
        Ok(SqlStore {
            db: Db::Sqlite(pool.clone()),
            pool,
        })
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
