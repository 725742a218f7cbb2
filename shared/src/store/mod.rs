//! Store stage: points → Qdrant. One [`VectorStore`] trait with two implementations that pass the
//! same contract suite: the Qdrant server over gRPC ([`qdrant`]) and an embedded qdrant-edge shard on
//! disk ([`edge`]). Every write returns only once it is applied (`wait=true`), because the caller
//! acknowledges the job right after.

pub mod edge;
pub mod qdrant;

use async_trait::async_trait;

use crate::model::{Point, SearchHit, SparseVector};

/// Name of the dense vector in every collection.
pub const DENSE_VECTOR: &str = "dense";
/// Name of the BM25 sparse vector (IDF modifier) in every collection.
pub const SPARSE_VECTOR: &str = "bm25";

/// What a collection holds; used to create it, and checked against an existing one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionSpec {
    pub name: String,
    /// Dense vector size, or `None` for a BM25-only collection.
    pub dense_dim: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("vector store unavailable: {0}")]
    Unavailable(String),
    #[error("collection {0:?} does not exist (ingest something into it first)")]
    MissingCollection(String),
    #[error("collection {name:?} exists with different vectors: {detail}")]
    Incompatible { name: String, detail: String },
    #[error("vector store rejected the request: {0}")]
    Rejected(String),
    #[error("vector store internal error: {0}")]
    Internal(String),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) | StoreError::Internal(_) => true,
            StoreError::MissingCollection(_)
            | StoreError::Incompatible { .. }
            | StoreError::Rejected(_) => false,
        }
    }
}

/// A query: dense vector (if the collection has one) and BM25 sparse vector. With both, results are
/// fused with reciprocal rank fusion.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    pub dense: Option<Vec<f32>>,
    pub sparse: SparseVector,
    pub top_k: usize,
    /// Restrict to one tenant.
    pub tenant: Option<String>,
}

impl SearchQuery {
    /// Candidates each side (dense, sparse) contributes to a hybrid query before fusion: enough
    /// headroom that a document ranked moderately by both sides still reaches the fused top-k.
    /// Both stores use it so they rank identically.
    pub fn prefetch_limit(&self) -> usize {
        (self.top_k * 4).max(20)
    }
}

#[async_trait]
pub trait VectorStore: Send + Sync {
    /// Create the collection with its vectors and keyword payload indexes on `doc_id` and `tenant`
    /// if it does not exist; fail with [`StoreError::Incompatible`] if it exists with other vectors.
    async fn ensure_collection(&self, spec: &CollectionSpec) -> Result<(), StoreError>;

    /// Upsert points (batched internally), returning once they are applied.
    async fn upsert(&self, collection: &str, points: Vec<Point>) -> Result<(), StoreError>;

    /// Delete every point of `doc_id` whose version is not `keep_version`.
    async fn delete_other_versions(
        &self,
        collection: &str,
        doc_id: &str,
        keep_version: i64,
    ) -> Result<(), StoreError>;

    /// Delete the points of `doc_id` at `version` (a version whose writing failed part-way).
    async fn delete_version(
        &self,
        collection: &str,
        doc_id: &str,
        version: i64,
    ) -> Result<(), StoreError>;

    /// Delete every point of `doc_id`.
    async fn delete_document(&self, collection: &str, doc_id: &str) -> Result<(), StoreError>;

    /// Number of points of `doc_id` (all versions), or of the whole collection when `None`.
    async fn count(&self, collection: &str, doc_id: Option<&str>) -> Result<u64, StoreError>;

    /// Every point's (id, doc_id, version) — for tests and audits; pages internally.
    async fn list_points(
        &self,
        collection: &str,
    ) -> Result<Vec<(uuid::Uuid, String, i64)>, StoreError>;

    async fn search(
        &self,
        collection: &str,
        query: &SearchQuery,
    ) -> Result<Vec<SearchHit>, StoreError>;
}
