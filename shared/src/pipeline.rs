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

use crate::chunk::{ChunkError, Chunker};
use crate::embed::{EmbedError, Embedder, InputKind, SparseEncoder};
use crate::extract::{self, ExtractError, ExtractSettings};
use crate::ids;
use crate::metadata::{BeginOutcome, BeginRequest, CommitOutcome, MetadataError, MetadataStore};
use crate::metrics as m;
use crate::model::{Chunk, ChunkPayload, ExtractedDoc, Point, SearchHit, Vectors};
use crate::source::SourceError;
use crate::store::{CollectionSpec, SearchQuery, StoreError, VectorStore};

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
    pub tenant: Option<String>,
    /// Attached to every chunk's payload.
    pub metadata: serde_json::Map<String, serde_json::Value>,
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
            metadata: Default::default(),
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
            | PipelineError::Timeout { .. } => true,
            PipelineError::Internal { .. } => false,
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
}

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
        }
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
        metrics::gauge!(m::IN_FLIGHT).increment(1.0);
        let result = self.index_inner(job, fetched).await;
        metrics::gauge!(m::IN_FLIGHT).decrement(1.0);
        metrics::histogram!(m::DOCUMENT_SECONDS).record(started.elapsed().as_secs_f64());
        match &result {
            Ok(Outcome::Indexed { chunks, tokens, .. }) => {
                metrics::counter!(m::DOCUMENTS_TOTAL, "outcome" => "indexed").increment(1);
                metrics::counter!(m::CHUNKS_TOTAL).increment(*chunks);
                metrics::counter!(m::TOKENS_TOTAL).increment(*tokens);
            }
            Ok(Outcome::Unchanged { .. }) => {
                metrics::counter!(m::DOCUMENTS_TOTAL, "outcome" => "unchanged").increment(1);
            }
            Err(e) => {
                metrics::counter!(m::DOCUMENTS_TOTAL, "outcome" => "failed").increment(1);
                metrics::counter!(m::DOCUMENTS_FAILED_TOTAL, "reason" => e.kind()).increment(1);
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
        metrics::counter!(m::BYTES_READ_TOTAL).increment(bytes.len() as u64);
        let hash = {
            let bytes = bytes.clone();
            tokio::task::spawn_blocking(move || ids::content_hash(&bytes))
                .await
                .map_err(|e| internal(job, e))?
        };
        let (version, lease_token) = match self.claim(job, &hash).await? {
            BeginOutcome::Unchanged { version } => return Ok(Outcome::Unchanged { version }),
            BeginOutcome::Claimed {
                version,
                lease_token,
            } => (version, lease_token),
            BeginOutcome::Busy { until } => {
                return Err(PipelineError::Busy {
                    doc_id: job.doc_id.clone(),
                    until,
                });
            }
        };
        let timeout = self.options.document_timeout;
        let work = tokio::time::timeout(
            timeout,
            self.write_version(job, bytes, &hash, version, lease_token),
        );
        let result = tokio::select! {
            finished = work => finished.unwrap_or_else(|_| Err(PipelineError::Timeout {
                doc_id: job.doc_id.clone(),
                timeout,
            })),
            lost = self.keep_lease(job, lease_token) => Err(lost),
        };
        if let Err(e) = &result {
            self.record_failure(job, Some(lease_token), e).await;
        }
        result
    }

    /// Renews the lease every third of its length; returns only once it is lost.
    async fn keep_lease(&self, job: &DocumentJob, lease_token: uuid::Uuid) -> PipelineError {
        let lease = self.options.lease;
        loop {
            tokio::time::sleep(lease / 3).await;
            match self
                .metadata
                .renew(&job.collection, &job.doc_id, lease_token, lease)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    return PipelineError::LeaseLost {
                        doc_id: job.doc_id.clone(),
                    };
                }
                // A blip in the database: keep working; if it lasts past the lease, the next
                // renewal or the commit finds the lease gone.
                Err(e) => {
                    tracing::warn!(error = %e, doc_id = %job.doc_id, "could not renew document lease")
                }
            }
        }
    }

    /// `begin`, waiting out other runs' leases when configured to.
    async fn claim(&self, job: &DocumentJob, hash: &str) -> Result<BeginOutcome, PipelineError> {
        let request = BeginRequest {
            collection: job.collection.clone(),
            doc_id: job.doc_id.clone(),
            source: job.source.clone(),
            tenant: job.tenant.clone(),
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
                other => return Ok(other),
            }
        }
    }

    async fn write_version(
        &self,
        job: &DocumentJob,
        bytes: Bytes,
        hash: &str,
        version: i64,
        lease_token: uuid::Uuid,
    ) -> Result<Outcome, PipelineError> {
        let t = Instant::now();
        // TODO(lead): pass the document's own token (cancelled on timeout) once the pipeline has one.
        let doc = extract::extract(
            &job.source,
            bytes,
            &self.extract,
            &tokio_util::sync::CancellationToken::new(),
        )
        .await?;
        stage_done("extract", t);

        // Plain text has no title of its own; the file name is what a reader would call it.
        let title = doc.title.clone().or_else(|| file_name(&job.source));
        let (windows, chunking) = self.chunk_in_windows(doc);
        let written = match self
            .embed_and_upsert(job, title.as_deref(), windows, hash, version)
            .await
        {
            // A chunker that panicked or hit the chunk cap ended its windows early: the version
            // is incomplete.
            Ok(written) => match chunking.await {
                Ok(Ok(())) => Ok(written),
                Ok(Err(ChunkError::TooManyChunks { limit })) => Err(ExtractError::TooManyChunks {
                    name: job.source.clone(),
                    limit,
                }
                .into()),
                Ok(Err(e)) => Err(internal(job, e)),
                Err(join) => Err(internal(job, join)),
            },
            Err(e) => Err(e),
        };
        let (chunk_count, tokens) = match written {
            Ok(Written { chunks: 0, .. }) => {
                return Err(ExtractError::NoText {
                    name: job.source.clone(),
                }
                .into());
            }
            Ok(Written { chunks, tokens }) => (chunks, tokens),
            Err(e) => {
                // Points of this version already written would stand beside the previous
                // version's until the next successful run. Best effort: after a crash that run
                // deletes them, as it deletes every version but its own.
                if let Err(cleanup) = self
                    .store
                    .delete_version(&job.collection, &job.doc_id, version)
                    .await
                {
                    tracing::warn!(error = %cleanup, doc_id = %job.doc_id, version, "could not remove a partly written version");
                }
                return Err(e);
            }
        };
        let t = Instant::now();
        self.store
            .delete_other_versions(&job.collection, &job.doc_id, version)
            .await?;
        stage_done("store", t);

        let t = Instant::now();
        let committed = self
            .metadata
            .commit(
                &job.collection,
                &job.doc_id,
                lease_token,
                version,
                hash,
                &self.fingerprint,
                chunk_count as i64,
                tokens as i64,
            )
            .await?;
        stage_done("commit", t);
        match committed {
            CommitOutcome::Committed => Ok(Outcome::Indexed {
                version,
                chunks: chunk_count,
                tokens,
            }),
            CommitOutcome::LeaseLost => Err(PipelineError::LeaseLost {
                doc_id: job.doc_id.clone(),
            }),
        }
    }

    /// Chunks `doc` on a blocking thread into windows of `EMBED_WINDOW` chunks, handed over a
    /// one-slot channel: chunking runs ahead of embedding by at most a window, so a document of
    /// 20,000 chunks never has them all in memory. The thread stops when the receiver is dropped.
    fn chunk_in_windows(
        &self,
        doc: ExtractedDoc,
    ) -> (
        tokio::sync::mpsc::Receiver<Vec<Chunk>>,
        tokio::task::JoinHandle<Result<(), ChunkError>>,
    ) {
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        let chunker = self.chunker.clone();
        let chunking = tokio::task::spawn_blocking(move || {
            let mut busy = Duration::ZERO;
            let mut resumed = Instant::now();
            let mut window = Vec::with_capacity(EMBED_WINDOW);
            for chunk in chunker.chunks(&doc) {
                window.push(chunk?);
                if window.len() == EMBED_WINDOW {
                    busy += resumed.elapsed();
                    let full = std::mem::replace(&mut window, Vec::with_capacity(EMBED_WINDOW));
                    if sender.blocking_send(full).is_err() {
                        return Ok(()); // the embedding side failed and went away
                    }
                    resumed = Instant::now();
                }
            }
            busy += resumed.elapsed();
            metrics::histogram!(m::STAGE_SECONDS, "stage" => "chunk").record(busy.as_secs_f64());
            if !window.is_empty() {
                let _ = sender.blocking_send(window);
            }
            Ok(())
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
        hash: &str,
        version: i64,
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
        while let Some(next) = embedded.next().await {
            let (window, vectors) = next?;
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
            let points = build_points(job, title, window, vectors, hash, version);
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

    /// Remove a document's points and mark it deleted.
    pub async fn delete(&self, collection: &str, doc_id: &str) -> Result<(), PipelineError> {
        match self.store.delete_document(collection, doc_id).await {
            Ok(()) | Err(StoreError::MissingCollection(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.metadata.mark_deleted(collection, doc_id).await?;
        metrics::counter!(m::DOCUMENTS_TOTAL, "outcome" => "deleted").increment(1);
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
    metrics::histogram!(m::STAGE_SECONDS, "stage" => stage).record(started.elapsed().as_secs_f64());
}

fn internal(job: &DocumentJob, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Internal {
        doc_id: job.doc_id.clone(),
        detail: e.to_string(),
    }
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
    hash: &str,
    version: i64,
) -> Vec<Point> {
    let ingested_at = Utc::now().to_rfc3339();
    chunks
        .into_iter()
        .zip(vectors)
        .map(|(chunk, vectors)| Point {
            id: ids::point_id(&job.collection, &job.doc_id, version, chunk.index),
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
                content_hash: hash.to_string(),
                version,
                tenant: job.tenant.clone(),
                ingested_at: ingested_at.clone(),
                metadata: job.metadata.clone(),
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
