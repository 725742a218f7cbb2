//! The shard registry under [`super::EdgeStore`]: one qdrant-edge shard per collection directory,
//! loaded lazily, created atomically, every write flushed before it returns, and the data
//! directory locked against other processes. Shared with the loadtests Qdrant stand-in, which
//! serves gRPC from the same shards. Every function here blocks: call it via [`run_blocking`].

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::Duration;

use qdrant_edge::{
    CreateIndex, EdgeConfig, EdgeShard, FieldIndexOperations, JsonPath, OperationError,
    PayloadFieldSchema, PayloadSchemaType, PointInsertOperations, PointOperations, UpdateOperation,
};

use crate::store::StoreError;

/// The shard registry behind [`super::EdgeStore`] (and the loadtests Qdrant stand-in): opens shards
/// lazily, creates them atomically, and holds the data directory's lock. All methods block.
pub struct EdgeShards {
    collections_dir: PathBuf,
    open: Mutex<HashMap<String, Arc<EdgeCollection>>>,
    optimize_after: Option<u64>,
    // Declared last so the shards above are dropped (and flushed) before the lock is released.
    _lock: File,
}

impl EdgeShards {
    /// Take the exclusive lock on `<data_dir>/LOCK` (waiting off the async threads if another
    /// process holds it) and prepare `<data_dir>/collections`.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let dir = data_dir.to_path_buf();
        run_blocking(move || {
            let collections_dir = dir.join("collections");
            fs::create_dir_all(&collections_dir).map_err(|e| io_error(&collections_dir, e))?;
            let lock = lock_exclusive(&dir)?;
            Ok(EdgeShards {
                collections_dir,
                open: Mutex::new(HashMap::new()),
                optimize_after: None,
                _lock: lock,
            })
        })
        .await
    }

    /// Run qdrant-edge's optimizers on a collection once `points` points have been written to it
    /// since they last ran, as the Qdrant server does in the background. Without this a shard
    /// keeps one growing appendable segment, whose in-memory sparse index costs more per insert
    /// the larger it gets (each insert walks the term's whole posting list). The writer that
    /// crosses the threshold runs them before its write returns.
    pub fn optimize_after(mut self, points: u64) -> Self {
        self.optimize_after = Some(points.max(1));
        self
    }

    /// The `collections` directory.
    pub fn dir(&self) -> &Path {
        &self.collections_dir
    }

    /// The collection, loading its shard from disk on first use; `None` if it does not exist.
    pub fn collection(&self, name: &str) -> Result<Option<Arc<EdgeCollection>>, StoreError> {
        validate_name(name)?;
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        self.load_locked(&mut open, name)
    }

    fn load_locked(
        &self,
        open: &mut HashMap<String, Arc<EdgeCollection>>,
        name: &str,
    ) -> Result<Option<Arc<EdgeCollection>>, StoreError> {
        if let Some(coll) = open.get(name) {
            return Ok(Some(coll.clone()));
        }
        let path = self.collections_dir.join(name);
        if !path.is_dir() {
            return Ok(None);
        }
        let shard = EdgeShard::load(&path, None).map_err(|e| {
            StoreError::Internal(format!(
                "cannot load collection {name:?} from {}: {e}",
                path.display()
            ))
        })?;
        let coll = Arc::new(EdgeCollection::new(name, shard, self.optimize_after));
        open.insert(name.to_string(), coll.clone());
        Ok(Some(coll))
    }

    /// Like [`Self::collection`], but a missing collection is [`StoreError::MissingCollection`].
    pub fn require(&self, name: &str) -> Result<Arc<EdgeCollection>, StoreError> {
        self.collection(name)?
            .ok_or_else(|| StoreError::MissingCollection(name.to_string()))
    }

    /// Create the collection with `config` and the given payload indexes unless it exists. Returns
    /// the collection and whether it was created. Built in a hidden directory and renamed into
    /// place, so a crash never leaves a half-made collection (e.g. one missing its indexes).
    pub fn create(
        &self,
        name: &str,
        config: EdgeConfig,
        indexes: &[(&str, PayloadSchemaType)],
    ) -> Result<(Arc<EdgeCollection>, bool), StoreError> {
        validate_name(name)?;
        // Holding the registry lock throughout serialises creators within this process; the
        // LOCK file excludes other processes.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(coll) = self.load_locked(&mut open, name)? {
            return Ok((coll, false));
        }
        let path = self.collections_dir.join(name);
        let tmp = self.collections_dir.join(format!(".creating-{name}"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| io_error(&tmp, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| io_error(&tmp, e))?;
        {
            let shard = EdgeShard::new(&tmp, config).map_err(edge_error)?;
            for (field, schema) in indexes {
                shard
                    .update(create_index_op(field, *schema)?)
                    .map_err(edge_error)?;
            }
            flush(name, &shard)?;
        }
        fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))?;
        File::open(&self.collections_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(&self.collections_dir, e))?;
        let shard = EdgeShard::load(&path, None).map_err(edge_error)?;
        let coll = Arc::new(EdgeCollection::new(name, shard, self.optimize_after));
        open.insert(name.to_string(), coll.clone());
        Ok((coll, true))
    }

    /// Names of every collection on disk.
    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        let entries =
            fs::read_dir(&self.collections_dir).map_err(|e| io_error(&self.collections_dir, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&self.collections_dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && validate_name(&name).is_ok() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

/// One open shard. Writes take the lock exclusively: `EdgeShard::flush` `try_lock`s the WAL and
/// panics if an update holds it, so updates and flushes must never overlap.
///
/// Flushes are group commits: a flush syncs every update applied before it, so writers that
/// finished applying while another flush ran share the next one instead of each paying an fsync.
/// The writer that starts a flush first waits (at most [`FLUSH_GATHER`]) for the writers already
/// queued for the shard to apply theirs, so one flush covers them too: with many documents in
/// flight a flush otherwise covered one or two writes (a flush syncs every segment's files, and
/// was half of the embedded store's CPU).
pub struct EdgeCollection {
    name: String,
    shard: RwLock<EdgeShard>,
    optimize_after: Option<u64>,
    written_since_optimize: AtomicU64,
    flushes: Mutex<FlushState>,
    flushed: Condvar,
    /// Wakes a flush that is gathering (only that one waits on it) when a writer has applied.
    applied: Condvar,
}

/// Longest a flush waits for queued writers to apply theirs before it starts.
const FLUSH_GATHER: Duration = Duration::from_millis(5);

/// Sequence numbers of applied writes, and how far the disk has caught up.
#[derive(Default)]
struct FlushState {
    applied: u64,
    durable: u64,
    flushing: bool,
    /// Writers between asking for the shard and having applied their operations.
    applying: usize,
}

impl EdgeCollection {
    fn new(name: &str, shard: EdgeShard, optimize_after: Option<u64>) -> Self {
        EdgeCollection {
            name: name.to_string(),
            shard: RwLock::new(shard),
            optimize_after,
            written_since_optimize: AtomicU64::new(0),
            flushes: Mutex::new(FlushState::default()),
            flushed: Condvar::new(),
            applied: Condvar::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shard's configuration (the vectors it was created with).
    pub fn config(&self) -> EdgeConfig {
        self.shard
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .config()
            .clone()
    }

    /// Run a read-only shard call.
    pub fn read<R>(
        &self,
        f: impl FnOnce(&EdgeShard) -> Result<R, OperationError>,
    ) -> Result<R, StoreError> {
        let shard = self.shard.read().map_err(|_| self.poisoned())?;
        f(&shard).map_err(edge_error)
    }

    /// Apply update operations in order, then flush to disk; returns once they are durable.
    pub fn apply(&self, ops: Vec<UpdateOperation>) -> Result<(), StoreError> {
        let points: u64 = ops.iter().map(points_written).sum();
        self.write(|shard| {
            for op in ops {
                shard.update(op)?;
            }
            Ok(())
        })?;
        self.optimize_if_due(points);
        Ok(())
    }

    /// Run the optimizers on the whole shard (merge and index segments, vacuum deleted points).
    pub fn optimize(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        self.write(|shard| shard.optimize().map(|_| ()))?;
        tracing::debug!(collection = %self.name, elapsed = ?started.elapsed(), "optimized edge collection");
        Ok(())
    }

    /// A failed optimization is logged, not returned: the write it follows is already durable.
    fn optimize_if_due(&self, points: u64) {
        let Some(every) = self.optimize_after else {
            return;
        };
        let total = self
            .written_since_optimize
            .fetch_add(points, Ordering::Relaxed)
            + points;
        // Of concurrent writers past the threshold, the one that resets the count optimizes.
        if total < every || self.written_since_optimize.swap(0, Ordering::Relaxed) < every {
            return;
        }
        if let Err(error) = self.optimize() {
            tracing::warn!(collection = %self.name, %error, "optimizing the collection failed; writes go on");
        }
    }

    /// Create any of `indexes` the shard lacks.
    pub fn ensure_indexes(&self, indexes: &[(&str, PayloadSchemaType)]) -> Result<(), StoreError> {
        let existing = self.read(|shard| Ok(shard.info().payload_schema))?;
        let missing = indexes
            .iter()
            .filter(|(field, _)| !existing.keys().any(|k| k.to_string() == *field))
            .map(|(field, schema)| create_index_op(field, *schema))
            .collect::<Result<Vec<_>, _>>()?;
        if missing.is_empty() {
            Ok(())
        } else {
            self.apply(missing)
        }
    }

    /// Run a mutating shard call under the exclusive lock, then flush (even if it failed
    /// half-way, so whatever was applied is also durable).
    pub fn write(
        &self,
        f: impl FnOnce(&EdgeShard) -> Result<(), OperationError>,
    ) -> Result<(), StoreError> {
        self.flushes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .applying += 1;
        let applied = self
            .shard
            .write()
            .map(|shard| f(&shard).map_err(edge_error));
        let seq = {
            let mut state = self.flushes.lock().unwrap_or_else(PoisonError::into_inner);
            state.applying -= 1;
            state.applied += 1;
            self.applied.notify_all();
            state.applied
        };
        let result = applied.map_err(|_| self.poisoned())?;
        // Even a failed call may have applied some operations: make those durable too.
        self.wait_durable(seq)?;
        result
    }

    /// Returns once write `seq` is on disk, flushing if no flush that covers it is under way.
    fn wait_durable(&self, seq: u64) -> Result<(), StoreError> {
        let mut state = self.flushes.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if state.durable >= seq {
                return Ok(());
            }
            if state.flushing {
                state = self
                    .flushed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.flushing = true;
            state = self
                .applied
                .wait_timeout_while(state, FLUSH_GATHER, |s| s.applying > 0)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            // Every write numbered up to `covers` has been applied, so this flush makes it durable.
            let covers = state.applied;
            drop(state);
            let flushed = match self.shard.write() {
                Ok(shard) => flush(&self.name, &shard),
                Err(_) => Err(self.poisoned()),
            };
            state = self.flushes.lock().unwrap_or_else(PoisonError::into_inner);
            state.flushing = false;
            if flushed.is_ok() {
                state.durable = state.durable.max(covers);
            }
            self.flushed.notify_all();
            flushed?;
        }
    }

    fn poisoned(&self) -> StoreError {
        StoreError::Internal(format!(
            "collection {:?} is unusable after an earlier panic; restart the process",
            self.name
        ))
    }
}

/// `EdgeShard::flush` panics on I/O errors; turn that into an error instead of a dead task.
/// Points an operation inserts or replaces.
fn points_written(op: &UpdateOperation) -> u64 {
    match op {
        UpdateOperation::PointOperation(PointOperations::UpsertPoints(
            PointInsertOperations::PointsList(points),
        )) => points.len() as u64,
        UpdateOperation::PointOperation(PointOperations::UpsertPoints(
            PointInsertOperations::PointsBatch(batch),
        )) => batch.ids.len() as u64,
        _ => 0,
    }
}

fn flush(name: &str, shard: &EdgeShard) -> Result<(), StoreError> {
    std::panic::catch_unwind(AssertUnwindSafe(|| shard.flush())).map_err(|_| {
        StoreError::Internal(format!(
            "flushing collection {name:?} to disk failed (see the panic above)"
        ))
    })
}

/// Run blocking store work on tokio's blocking pool.
pub async fn run_blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Internal(format!("edge store task failed: {e}")))?
}

/// Classify a qdrant-edge error.
pub fn edge_error(err: OperationError) -> StoreError {
    let msg = err.to_string();
    match err {
        OperationError::WrongVectorDimension { .. }
        | OperationError::VectorNameNotExists { .. }
        | OperationError::PointIdError { .. }
        | OperationError::TypeError { .. }
        | OperationError::TypeInferenceError { .. }
        | OperationError::ValidationError { .. }
        | OperationError::WrongSparse
        | OperationError::WrongMulti
        | OperationError::MissingRangeIndexForOrderBy { .. }
        | OperationError::MissingMapIndexForFacet { .. }
        | OperationError::VariableTypeError { .. }
        | OperationError::NonFiniteNumber { .. } => StoreError::Rejected(msg),
        OperationError::OutOfMemory { .. }
        | OperationError::Cancelled { .. }
        | OperationError::Timeout { .. } => StoreError::Unavailable(msg),
        OperationError::ServiceError { .. } | OperationError::InconsistentStorage { .. } => {
            StoreError::Internal(msg)
        }
    }
}

/// Collection names become directory names: keep them to a safe alphabet.
pub(super) fn validate_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Rejected(format!(
            "collection name {name:?} must be 1-255 characters of A-Z, a-z, 0-9, '_', '-', '.' and not start with '.'"
        )))
    }
}

fn lock_exclusive(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(file);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(io_error(&path, err));
    }
    tracing::info!(dir = %dir.display(), "waiting for another sluice process using {}", dir.display());
    loop {
        // SAFETY: as above; this blocks a blocking-pool thread until the other process lets go.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(file);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(io_error(&path, err));
        }
    }
}

fn io_error(path: &Path, err: std::io::Error) -> StoreError {
    StoreError::Internal(format!("{}: {err}", path.display()))
}

pub(super) fn json_path(field: &str) -> Result<JsonPath, StoreError> {
    field
        .parse()
        .map_err(|()| StoreError::Rejected(format!("invalid payload field name {field:?}")))
}

pub(super) fn create_index_op(
    field: &str,
    schema: PayloadSchemaType,
) -> Result<UpdateOperation, StoreError> {
    Ok(UpdateOperation::FieldIndexOperation(
        FieldIndexOperations::CreateIndex(CreateIndex {
            field_name: json_path(field)?,
            field_schema: Some(PayloadFieldSchema::FieldType(schema)),
        }),
    ))
}
