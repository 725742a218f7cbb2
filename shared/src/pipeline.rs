//! The per-document pipeline: read bytes → hash → lease & version (metadata) → extract → chunk →
//! embed → upsert new version (wait) → delete older versions → commit (metadata).
//!
//! Idempotency rules, in one place:
//! - A document whose content hash and pipeline fingerprint match its indexed row is `Unchanged`
//!   and costs one metadata read.
//! - Otherwise [`MetadataStore::begin`] grants an exclusive lease and a new version number. The new
//!   version's points (IDs derived from the version) are written first and waited for; only then are
//!   the other versions' points deleted, so searches always see a complete version. A crash at any
//!   step leaves either the old version, or both (cleaned by the next run of the document).
//! - A second run of the same document while the lease is live gets `Busy` and either waits for it
//!   (the CLI) or retries later (the fleet), then finds the document unchanged.
//! - The lease is short (`SLUICE_LEASE_SECS`) and renewed every third of it while the document is
//!   processed, so a crashed run blocks its documents for at most one lease, and a run that loses
//!   its lease (paused past expiry) stops writing at once; commit checks the lease as a fence.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use self::lease::Lease;

use crate::chunk::{ChunkError, Chunker};
use crate::embed::{EmbedError, Embedder, InputKind, SparseEncoder};
use crate::extract::{self, ExtractError, ExtractSettings};
use crate::ids;
use crate::metadata::{
    BeginOutcome, BeginRequest, CommitOutcome, CommitRequest, Labels, MetadataError, MetadataStore,
};
use crate::metrics as m;
use crate::model::{Chunk, ChunkPayload, ExtractedDoc, Point, SearchHit, Vectors};
use crate::source::SourceError;
use crate::store::{CollectionSpec, SearchQuery, StoreError, VectorStore};

mod lease;

/// Chunks embedded and upserted together (see `embed_and_upsert`): a few provider requests'
/// worth, so windows add no round trips for ordinary documents.
const EMBED_WINDOW: usize = 256;

/// One document to index.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentJob {
    pub collection: String,
    /// Stable identity; defaults to the source URI.
    pub doc_id: String,
    pub source: String,
    /// Stored on every chunk; `None` keeps the document's.
    pub tenant: Option<String>,
    /// Attached to every chunk's payload; `None` keeps the document's.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Re-index even if unchanged.
    pub force: bool,
}

impl DocumentJob {
    pub fn for_uri(collection: &str, uri: &str, tenant: Option<String>) -> Self {
        DocumentJob {
            collection: collection.to_string(),
            doc_id: uri.to_string(),
            source: uri.to_string(),
            tenant,
            metadata: None,
            force: false,
        }
    }
}

/// What happened to a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Indexed {
        version: i64,
        chunks: u64,
        tokens: u64,
    },
    Unchanged {
        version: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Extract(#[from] ExtractError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("{doc_id}: being processed elsewhere until {until}")]
    Busy {
        doc_id: String,
        until: chrono::DateTime<Utc>,
    },
    #[error("{doc_id}: lease lost to another run before commit")]
    LeaseLost { doc_id: String },
    #[error("{doc_id}: processing took longer than {timeout:?}")]
    Timeout { doc_id: String, timeout: Duration },
    #[error("{doc_id}: internal error: {detail}")]
    Internal { doc_id: String, detail: String },
    /// The process is shutting down and abandoned the run (its own version was removed).
    #[error("{doc_id}: abandoned at shutdown")]
    Abandoned { doc_id: String },
}

/// A dependency whose unavailability fails every document alike: while it is down the worker
/// pauses instead of spending the jobs' retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dependency {
    MetadataStore,
    VectorStore,
    EmbeddingProvider,
}

impl Dependency {
    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::MetadataStore => "metadata_store",
            Dependency::VectorStore => "vector_store",
            Dependency::EmbeddingProvider => "embedding_provider",
        }
    }
}

impl PipelineError {
    /// Whether a later attempt may succeed. Exhaustive on purpose.
    pub fn is_retryable(&self) -> bool {
        match self {
            PipelineError::Source(e) => e.is_retryable(),
            PipelineError::Extract(e) => e.is_retryable(),
            PipelineError::Embed(e) => e.is_retryable(),
            PipelineError::Store(e) => e.is_retryable(),
            PipelineError::Metadata(e) => e.is_retryable(),
            PipelineError::Busy { .. }
            | PipelineError::LeaseLost { .. }
            | PipelineError::Timeout { .. }
            | PipelineError::Abandoned { .. } => true,
            PipelineError::Internal { .. } => false,
        }
    }

    /// The dependency this failure suggests is down, if it is one that fails every document
    /// alike. Only a suspicion: the worker probes the dependency before it pauses.
    pub fn suspected_outage(&self) -> Option<Dependency> {
        match self {
            PipelineError::Metadata(e) => e.is_retryable().then_some(Dependency::MetadataStore),
            PipelineError::Store(e) => e.is_retryable().then_some(Dependency::VectorStore),
            PipelineError::Embed(e) => e.is_retryable().then_some(Dependency::EmbeddingProvider),
            PipelineError::Source(_)
            | PipelineError::Extract(_)
            | PipelineError::Busy { .. }
            | PipelineError::LeaseLost { .. }
            | PipelineError::Timeout { .. }
            | PipelineError::Internal { .. }
            | PipelineError::Abandoned { .. } => None,
        }
    }

    /// Stable label for `sluice_documents_failed_total{reason}` and summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            PipelineError::Source(e) => e.kind(),
            PipelineError::Extract(e) => e.kind(),
            PipelineError::Embed(e) => e.kind(),
            PipelineError::Store(_) => "vector_store",
            PipelineError::Metadata(_) => "metadata_store",
            PipelineError::Busy { .. } => "busy",
            PipelineError::LeaseLost { .. } => "lease_lost",
            PipelineError::Timeout { .. } => "timeout",
            PipelineError::Internal { .. } => "internal",
            PipelineError::Abandoned { .. } => "abandoned",
        }
    }
}

/// Tunables of [`Pipeline`] that are not stages.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Limit for processing one document after it is claimed.
    pub document_timeout: Duration,
    /// Lease length; renewed every third of it while processing.
    pub lease: Duration,
    /// When another run holds a document's lease: wait for it (true; one-machine mode) or return
    /// [`PipelineError::Busy`] (false; the fleet retries later).
    pub wait_if_busy: bool,
}

/// The stages, composed. Cheap to share: wrap in an `Arc` and call from many tasks.
pub struct Pipeline {
    pub extract: ExtractSettings,
    pub chunker: Arc<Chunker>,
    pub embedder: Option<Arc<dyn Embedder>>,
    pub sparse: Arc<dyn SparseEncoder>,
    pub store: Arc<dyn VectorStore>,
    pub metadata: Arc<dyn MetadataStore>,
    pub options: PipelineOptions,
    fingerprint: String,
    /// Collections already ensured by this process, with their spec.
    ready: Mutex<HashMap<String, CollectionSpec>>,
    /// Cancelled by [`Pipeline::abandon`]: every run stops, removes its own version and returns
    /// [`PipelineError::Abandoned`].
    abandon: CancellationToken,
    /// Lets tests pause a run at a chosen step (see [`Step`]).
    hook: Option<TestHook>,
}

/// Points in a run where a test can pause it deterministically — the moments a frozen process
/// (SIGSTOP, a VM pause) is most dangerous.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Before the `window`-th window of staged points (from 0) is written; renewals keep running.
    BeforeUpsert { window: usize },
    /// All points written, lease checked, renewals stopped: right before the commit.
    BeforeCommit,
    /// Committed, right before the points are published.
    BeforePublish,
}

/// Called at every [`Step`] of every run with the document id; the run waits for the future.
#[doc(hidden)]
pub type TestHook =
    Arc<dyn Fn(Step, &str) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

impl Pipeline {
    pub fn new(
        extract: ExtractSettings,
        chunker: Arc<Chunker>,
        embedder: Option<Arc<dyn Embedder>>,
        sparse: Arc<dyn SparseEncoder>,
        store: Arc<dyn VectorStore>,
        metadata: Arc<dyn MetadataStore>,
        options: PipelineOptions,
    ) -> Self {
        let mut parts = vec![chunker.fingerprint(), sparse.fingerprint()];
        parts.push(
            embedder
                .as_ref()
                .map(|e| e.fingerprint())
                .unwrap_or_else(|| "dense=none".into()),
        );
        let fingerprint = ids::pipeline_fingerprint(&parts);
        Pipeline {
            extract,
            chunker,
            embedder,
            sparse,
            store,
            metadata,
            options,
            fingerprint,
            ready: Mutex::new(HashMap::new()),
            abandon: CancellationToken::new(),
            hook: None,
        }
    }

    /// Pause runs at chosen steps (tests only).
    #[doc(hidden)]
    pub fn with_test_hook(mut self, hook: TestHook) -> Self {
        self.hook = Some(hook);
        self
    }

    async fn step(&self, step: Step, doc_id: &str) {
        if let Some(hook) = &self.hook {
            hook(step, doc_id).await;
        }
    }

    /// Stop every run in flight (shutdown past its deadline): each removes its own partly written
    /// version, releases its lease and returns [`PipelineError::Abandoned`] within moments.
    pub fn abandon(&self) {
        self.abandon.cancel();
    }

    /// Identifies chunker + embedder settings; stored per document.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Index one document from the result of reading it. Any failure is recorded on the document
    /// (status `failed`, reason) before it is returned.
    pub async fn index(
        &self,
        job: &DocumentJob,
        fetched: Result<Bytes, SourceError>,
    ) -> Result<Outcome, PipelineError> {
        let started = Instant::now();
        let _in_flight = m::InFlight::documents();
        let result = self.index_inner(job, fetched).await;
        m::document_duration_seconds().record(started.elapsed().as_secs_f64());
        match &result {
            Ok(Outcome::Indexed { chunks, tokens, .. }) => {
                m::documents_total("indexed").increment(1);
                m::chunks_total().increment(*chunks);
                m::embedded_tokens_total().increment(*tokens);
            }
            Ok(Outcome::Unchanged { .. }) => {
                m::documents_total("unchanged").increment(1);
            }
            Err(e) => {
                m::documents_total("failed").increment(1);
                m::documents_failed_total(e.kind()).increment(1);
            }
        }
        result
    }

    async fn index_inner(
        &self,
        job: &DocumentJob,
        fetched: Result<Bytes, SourceError>,
    ) -> Result<Outcome, PipelineError> {
        let bytes = match fetched {
            Ok(bytes) => bytes,
            Err(e) => {
                let e = PipelineError::from(e);
                self.record_failure(job, None, &e).await;
                return Err(e);
            }
        };
        m::bytes_read_total().increment(bytes.len() as u64);
        let hash = {
            let bytes = bytes.clone();
            tokio::task::spawn_blocking(move || ids::content_hash(&bytes))
                .await
                .map_err(|e| internal(job, e))?
        };
        let (claimed, requested) = self.claim(job, &hash).await?;
        match claimed {
            BeginOutcome::Unchanged { version } => Ok(Outcome::Unchanged { version }),
            BeginOutcome::Busy { until } => Err(PipelineError::Busy {
                doc_id: job.doc_id.clone(),
                until,
            }),
            BeginOutcome::Refresh {
                version,
                lease_token,
                labels,
            } => {
                let lease = self.lease(job, lease_token, requested);
                let result = self
                    .fenced(&lease, None, self.refresh(job, version, &lease, &labels))
                    .await;
                if let Err(e) = &result {
                    self.record_failure(job, Some(lease_token), e).await;
                }
                result
            }
            BeginOutcome::Claimed {
                version,
                lease_token,
                labels,
            } => {
                let lease = self.lease(job, lease_token, requested);
                let version = Claim {
                    version,
                    hash: &hash,
                    labels: &labels,
                };
                self.write_and_commit(job, bytes, &version, &lease).await
            }
        }
    }

    fn lease<'a>(
        &'a self,
        job: &'a DocumentJob,
        token: uuid::Uuid,
        requested: Instant,
    ) -> Lease<'a> {
        Lease::new(
            &*self.metadata,
            &job.collection,
            &job.doc_id,
            token,
            self.options.lease,
            requested,
        )
    }

    /// Runs `work` while renewing `lease`, under the document timeout: whichever ends first
    /// decides. On a timeout or a lost lease `work` is dropped at its current await and `cancel`
    /// (if any) stops its blocking parts (extraction, chunking) within moments.
    async fn fenced<T>(
        &self,
        lease: &Lease<'_>,
        cancel: Option<&CancellationToken>,
        work: impl std::future::Future<Output = Result<T, PipelineError>>,
    ) -> Result<T, PipelineError> {
        let timeout = self.options.document_timeout;
        let doc_id = || lease_doc(lease);
        let result = tokio::select! {
            finished = tokio::time::timeout(timeout, work) => {
                finished.unwrap_or_else(|_| Err(PipelineError::Timeout { doc_id: doc_id(), timeout }))
            }
            () = lease.keep() => Err(PipelineError::LeaseLost { doc_id: doc_id() }),
            () = self.abandon.cancelled() => Err(PipelineError::Abandoned { doc_id: doc_id() }),
        };
        if let Some(cancel) = cancel {
            cancel.cancel();
        }
        result
    }

    /// Writes a claimed version as staged points, commits it, then publishes it. Every exit
    /// before the commit removes the version's own points again (best effort: a leftover is
    /// staged, so no searcher sees it, and the next run of the document or `sluice verify`
    /// removes it); nothing ever touches another version except the publication of a committed
    /// one, which deletes only older versions.
    async fn write_and_commit(
        &self,
        job: &DocumentJob,
        bytes: Bytes,
        claim: &Claim<'_>,
        lease: &Lease<'_>,
    ) -> Result<Outcome, PipelineError> {
        let cancel = CancellationToken::new();
        let written = self
            .fenced(
                lease,
                Some(&cancel),
                self.write_staged(job, bytes, claim, lease, &cancel),
            )
            .await
            .and_then(|written| match written {
                Written { chunks: 0, .. } => Err(ExtractError::NoText {
                    name: job.source.clone(),
                }
                .into()),
                written if lease.held() => Ok(written),
                _ => Err(PipelineError::LeaseLost {
                    doc_id: job.doc_id.clone(),
                }),
            });
        let written = match written {
            Ok(written) => written,
            Err(e) => {
                self.remove_own_version(job, claim.version).await;
                self.record_failure(job, Some(lease.token()), &e).await;
                return Err(e);
            }
        };

        self.step(Step::BeforeCommit, &job.doc_id).await;
        let t = Instant::now();
        let committed = self
            .metadata
            .commit(&CommitRequest {
                collection: &job.collection,
                doc_id: &job.doc_id,
                lease_token: lease.token(),
                version: claim.version,
                content_hash: claim.hash,
                fingerprint: &self.fingerprint,
                chunk_count: written.chunks as i64,
                tokens: written.tokens as i64,
                labels: claim.labels,
            })
            .await;
        stage_done("commit", t);
        match committed {
            Ok(CommitOutcome::Committed) => {}
            Ok(CommitOutcome::LeaseLost) => {
                self.remove_own_version(job, claim.version).await;
                return Err(PipelineError::LeaseLost {
                    doc_id: job.doc_id.clone(),
                });
            }
            // Whether the commit landed is unknown: the staged points must stay. If it did, the
            // next run publishes them (`Refresh`); if not, the next run's version replaces them.
            Err(e) => return Err(e.into()),
        }
        self.step(Step::BeforePublish, &job.doc_id).await;
        self.publish(job, claim.version).await?;
        Ok(Outcome::Indexed {
            version: claim.version,
            chunks: written.chunks,
            tokens: written.tokens,
        })
    }

    /// Makes a committed version visible and drops the older ones, then records it. Needs no
    /// lease: publishing a committed version is monotone (see `VectorStore::publish_version`).
    async fn publish(&self, job: &DocumentJob, version: i64) -> Result<(), PipelineError> {
        let t = Instant::now();
        self.store
            .publish_version(&job.collection, &job.doc_id, version)
            .await?;
        stage_done("publish", t);
        self.metadata
            .mark_published(&job.collection, &job.doc_id, version)
            .await?;
        Ok(())
    }

    /// Content unchanged: give the committed version's points the job's labels and finish its
    /// publication, without re-embedding anything.
    async fn refresh(
        &self,
        job: &DocumentJob,
        version: i64,
        lease: &Lease<'_>,
        labels: &Labels,
    ) -> Result<Outcome, PipelineError> {
        let lost = || PipelineError::LeaseLost {
            doc_id: job.doc_id.clone(),
        };
        if !lease.held() {
            return Err(lost());
        }
        self.store
            .set_labels(
                &job.collection,
                &job.doc_id,
                version,
                labels.tenant.as_deref(),
                &labels.metadata,
            )
            .await?;
        self.store
            .publish_version(&job.collection, &job.doc_id, version)
            .await?;
        if !self
            .metadata
            .release(&job.collection, &job.doc_id, lease.token(), labels)
            .await?
        {
            return Err(lost());
        }
        tracing::debug!(doc_id = %job.doc_id, version, "relabelled and published an unchanged document");
        Ok(Outcome::Unchanged { version })
    }

    /// Best-effort removal of this run's own, never committed, version.
    async fn remove_own_version(&self, job: &DocumentJob, version: i64) {
        match self
            .store
            .delete_version(&job.collection, &job.doc_id, version)
            .await
        {
            Ok(()) | Err(StoreError::MissingCollection(_)) => {}
            Err(e) => {
                tracing::warn!(error = %e, doc_id = %job.doc_id, version, "could not remove a partly written version; it stays staged (invisible) until the next run or `sluice verify --repair`")
            }
        }
    }

    /// `begin`, waiting out other runs' leases when configured to. Also returns when the
    /// deciding request was sent: a lease it granted runs from no earlier than that.
    async fn claim(
        &self,
        job: &DocumentJob,
        hash: &str,
    ) -> Result<(BeginOutcome, Instant), PipelineError> {
        let request = BeginRequest {
            collection: job.collection.clone(),
            doc_id: job.doc_id.clone(),
            source: job.source.clone(),
            tenant: job.tenant.clone(),
            metadata: job.metadata.clone(),
            content_hash: hash.to_string(),
            fingerprint: self.fingerprint.clone(),
            force: job.force,
            lease: self.options.lease,
        };
        // A live holder renews its lease until it finishes, which takes at most the document
        // timeout; waiting longer than that means something is wrong, so report busy.
        let deadline = Instant::now() + self.options.document_timeout + self.options.lease;
        let mut pause = Duration::from_millis(50);
        loop {
            let sent = Instant::now();
            let outcome = self.metadata.begin(&request).await?;
            match outcome {
                BeginOutcome::Busy { .. }
                    if self.options.wait_if_busy && Instant::now() < deadline =>
                {
                    // The holder usually finishes within seconds; poll gently rather than sleep to
                    // the lease expiry.
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                other => return Ok((other, sent)),
            }
        }
    }

    /// Extract → chunk → embed → upsert, every window written staged and only while the lease
    /// is held.
    async fn write_staged(
        &self,
        job: &DocumentJob,
        bytes: Bytes,
        claim: &Claim<'_>,
        lease: &Lease<'_>,
        cancel: &CancellationToken,
    ) -> Result<Written, PipelineError> {
        let t = Instant::now();
        // Cancelled when the run times out or loses its lease: blocking extraction stops too.
        let doc = extract::extract(&job.source, bytes, &self.extract, cancel).await?;
        stage_done("extract", t);

        // Plain text has no title of its own; the file name is what a reader would call it.
        let title = doc.title.clone().or_else(|| file_name(&job.source));
        let (windows, chunking) = self.chunk_in_windows(doc, cancel.clone());
        let written = self
            .embed_and_upsert(job, title.as_deref(), windows, claim, lease)
            .await?;
        // A chunker that panicked or stopped ended its windows early: the version is incomplete.
        match chunking.await.map_err(|join| internal(job, join))? {
            ChunkingEnd::Complete => Ok(written),
            ChunkingEnd::Stopped => Err(internal(job, "chunking stopped before the end")),
            ChunkingEnd::Failed(ChunkError::TooManyChunks { limit }) => {
                Err(ExtractError::TooManyChunks {
                    name: job.source.clone(),
                    limit,
                }
                .into())
            }
            ChunkingEnd::Failed(e) => Err(internal(job, e)),
        }
    }

    /// Chunks `doc` on a blocking thread into windows of `EMBED_WINDOW` chunks, handed over a
    /// one-slot channel: chunking runs ahead of embedding by at most a window, so a document of
    /// 20,000 chunks never has them all in memory. The thread stops when the receiver is dropped.
    fn chunk_in_windows(
        &self,
        doc: ExtractedDoc,
        cancel: CancellationToken,
    ) -> (
        tokio::sync::mpsc::Receiver<Vec<Chunk>>,
        tokio::task::JoinHandle<ChunkingEnd>,
    ) {
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        let chunker = self.chunker.clone();
        let chunking = tokio::task::spawn_blocking(move || {
            let mut busy = Duration::ZERO;
            let mut resumed = Instant::now();
            let mut window = Vec::with_capacity(EMBED_WINDOW);
            for chunk in chunker.chunks(&doc) {
                // A timed-out or fenced-off run stops here, not after the whole document.
                if cancel.is_cancelled() {
                    return ChunkingEnd::Stopped;
                }
                match chunk {
                    Ok(chunk) => window.push(chunk),
                    Err(e) => return ChunkingEnd::Failed(e),
                }
                if window.len() == EMBED_WINDOW {
                    busy += resumed.elapsed();
                    let full = std::mem::replace(&mut window, Vec::with_capacity(EMBED_WINDOW));
                    if sender.blocking_send(full).is_err() {
                        return ChunkingEnd::Stopped; // the embedding side failed and went away
                    }
                    resumed = Instant::now();
                }
            }
            busy += resumed.elapsed();
            m::stage_duration_seconds("chunk").record(busy.as_secs_f64());
            if !window.is_empty() && sender.blocking_send(window).is_err() {
                return ChunkingEnd::Stopped;
            }
            ChunkingEnd::Complete
        });
        (receiver, chunking)
    }

    /// Embeds and upserts the windows as they arrive, the next window's embedding overlapping
    /// this one's upsert: a document of 20,000 chunks holds a few windows of vectors and points,
    /// not 20,000 of each (hundreds of MB of dense vectors).
    async fn embed_and_upsert(
        &self,
        job: &DocumentJob,
        title: Option<&str>,
        windows: tokio::sync::mpsc::Receiver<Vec<Chunk>>,
        claim: &Claim<'_>,
        lease: &Lease<'_>,
    ) -> Result<Written, PipelineError> {
        let windows = futures::stream::unfold(windows, |mut windows| async move {
            windows.recv().await.map(|window| (window, windows))
        });
        let mut embedded = std::pin::pin!(
            windows
                .map(|window| async move {
                    let t = Instant::now();
                    let vectors = self.embed_chunks(job, &window).await?;
                    stage_done("embed", t);
                    Ok::<_, PipelineError>((window, vectors))
                })
                .buffered(2)
        );
        let mut written = Written::default();
        let mut collection_ready = false;
        let mut windows_written = 0;
        while let Some(next) = embedded.next().await {
            let (window, vectors) = next?;
            self.step(
                Step::BeforeUpsert {
                    window: windows_written,
                },
                &job.doc_id,
            )
            .await;
            windows_written += 1;
            let t = Instant::now();
            if !collection_ready {
                let dense_dim = vectors
                    .first()
                    .and_then(|v| v.dense.as_ref())
                    .map(|d| d.len() as u64);
                self.ensure_collection(&job.collection, dense_dim).await?;
                collection_ready = true;
            }
            written.chunks += window.len() as u64;
            written.tokens += window.iter().map(|c| u64::from(c.tokens)).sum::<u64>();
            let points = build_points(job, title, window, vectors, claim);
            // The fence: a run that can no longer vouch for its lease writes nothing more.
            if !lease.held() {
                return Err(PipelineError::LeaseLost {
                    doc_id: job.doc_id.clone(),
                });
            }
            self.store.upsert(&job.collection, points).await?;
            stage_done("store", t);
        }
        Ok(written)
    }

    async fn embed_chunks(
        &self,
        job: &DocumentJob,
        chunks: &[Chunk],
    ) -> Result<Vec<Vectors>, PipelineError> {
        let texts: Arc<Vec<String>> = Arc::new(chunks.iter().map(|c| c.text.clone()).collect());
        let sparse_encoder = self.sparse.clone();
        let sparse_texts = texts.clone();
        let sparse =
            tokio::task::spawn_blocking(move || sparse_encoder.encode_documents(&sparse_texts));
        let dense = match &self.embedder {
            Some(embedder) => Some(embedder.embed(&texts, InputKind::Document).await?),
            None => None,
        };
        let sparse = sparse.await.map_err(|e| internal(job, e))?;
        if let Some(d) = &dense
            && d.vectors.len() != chunks.len()
        {
            return Err(PipelineError::Internal {
                doc_id: job.doc_id.clone(),
                detail: format!(
                    "embedder returned {} vectors for {} chunks",
                    d.vectors.len(),
                    chunks.len()
                ),
            });
        }
        let mut dense_iter = dense.map(|d| d.vectors.into_iter());
        Ok(sparse
            .into_iter()
            .map(|sparse| Vectors {
                dense: dense_iter.as_mut().and_then(Iterator::next),
                sparse,
            })
            .collect())
    }

    async fn ensure_collection(
        &self,
        collection: &str,
        dense_dim: Option<u64>,
    ) -> Result<(), StoreError> {
        let spec = CollectionSpec {
            name: collection.to_string(),
            dense_dim,
        };
        let mut ready = self.ready.lock().await;
        if ready.get(collection) == Some(&spec) {
            return Ok(());
        }
        self.store.ensure_collection(&spec).await?;
        ready.insert(collection.to_string(), spec);
        Ok(())
    }

    async fn record_failure(
        &self,
        job: &DocumentJob,
        lease: Option<uuid::Uuid>,
        error: &PipelineError,
    ) {
        if matches!(error, PipelineError::Busy { .. }) {
            return; // not this run's failure: the holder is still working on it
        }
        if let Err(e) = self
            .metadata
            .fail(
                &job.collection,
                &job.doc_id,
                &job.source,
                lease,
                &error.to_string(),
            )
            .await
        {
            tracing::warn!(error = %e, doc_id = %job.doc_id, "could not record document failure");
        }
    }

    /// Mark a document deleted, then remove its points. The ledger goes first: it fences off a
    /// run still writing the document (its renewals and commit fail, and it removes its own
    /// version), and names the highest version handed out, so the deletion never reaches the
    /// points of a run that starts after it.
    pub async fn delete(&self, collection: &str, doc_id: &str) -> Result<(), PipelineError> {
        // Unknown to the ledger: no run can be writing it (a run records the document before it
        // writes), so every point of it is stale.
        let up_to = self
            .metadata
            .mark_deleted(collection, doc_id)
            .await?
            .unwrap_or(i64::MAX);
        match self.store.delete_document(collection, doc_id, up_to).await {
            Ok(()) | Err(StoreError::MissingCollection(_)) => {}
            Err(e) => return Err(e.into()),
        }
        m::documents_total("deleted").increment(1);
        Ok(())
    }

    /// Hybrid search: dense (if a provider is configured) and BM25, fused by the store.
    pub async fn search(
        &self,
        collection: &str,
        query: &str,
        top_k: usize,
        tenant: Option<String>,
    ) -> Result<Vec<SearchHit>, PipelineError> {
        let dense = match &self.embedder {
            Some(embedder) => embedder
                .embed(&[query.to_string()], InputKind::Query)
                .await?
                .vectors
                .into_iter()
                .next(),
            None => None,
        };
        let sparse = self.sparse.encode_query(query);
        let query = SearchQuery {
            dense,
            sparse,
            top_k,
            tenant,
        };
        Ok(self.store.search(collection, &query).await?)
    }
}

fn stage_done(stage: &'static str, started: Instant) {
    m::stage_duration_seconds(stage).record(started.elapsed().as_secs_f64());
}

fn internal(job: &DocumentJob, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Internal {
        doc_id: job.doc_id.clone(),
        detail: e.to_string(),
    }
}

/// The version a run claimed, and what its points carry.
struct Claim<'a> {
    version: i64,
    hash: &'a str,
    labels: &'a Labels,
}

/// How the chunking thread ended.
#[derive(Debug)]
enum ChunkingEnd {
    Complete,
    /// Cancelled, or the embedding side went away: the windows sent are not the whole document.
    Stopped,
    /// The chunker refused the document (e.g. over `SLUICE_MAX_CHUNKS_PER_DOCUMENT`).
    Failed(ChunkError),
}

fn lease_doc(lease: &Lease<'_>) -> String {
    lease.doc_id().to_string()
}

/// What [`Pipeline::embed_and_upsert`] wrote.
#[derive(Debug, Default)]
struct Written {
    chunks: u64,
    tokens: u64,
}

fn build_points(
    job: &DocumentJob,
    title: Option<&str>,
    chunks: Vec<Chunk>,
    vectors: Vec<Vectors>,
    claim: &Claim<'_>,
) -> Vec<Point> {
    let ingested_at = Utc::now().to_rfc3339();
    chunks
        .into_iter()
        .zip(vectors)
        .map(|(chunk, vectors)| Point {
            id: ids::point_id(&job.collection, &job.doc_id, claim.version, chunk.index),
            vectors,
            payload: ChunkPayload {
                doc_id: job.doc_id.clone(),
                source: job.source.clone(),
                title: title.map(str::to_string),
                chunk_index: chunk.index,
                page: chunk.page,
                char_start: chunk.char_range.start as u64,
                char_end: chunk.char_range.end as u64,
                text: chunk.text,
                content_hash: claim.hash.to_string(),
                version: claim.version,
                tenant: claim.labels.tenant.clone(),
                ingested_at: ingested_at.clone(),
                metadata: claim.labels.metadata.clone(),
                staged: true,
            },
        })
        .collect()
}

/// The last path segment of a source URI (`file://` URIs are percent-decoded).
fn file_name(uri: &str) -> Option<String> {
    if let Ok(path) =
        url::Url::parse(uri).and_then(|u| u.to_file_path().map_err(|_| url::ParseError::EmptyHost))
    {
        return path.file_name().map(|n| n.to_string_lossy().into_owned());
    }
    uri.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::file_name;

    #[test]
    fn file_names_of_source_uris() {
        assert_eq!(
            file_name("file:///docs/release%20notes.txt").as_deref(),
            Some("release notes.txt")
        );
        assert_eq!(
            file_name("s3://bucket/a/b/notes.md").as_deref(),
            Some("notes.md")
        );
        assert_eq!(file_name("s3://bucket/a/").as_deref(), Some("a"));
    }
}
