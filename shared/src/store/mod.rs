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

/// Payload key set to `true` on every point of a version while it is written: searches exclude
/// such points, so readers never see a partly written version. [`VectorStore::publish_version`]
/// clears it once the version is complete and committed.
pub const STAGED_FIELD: &str = "staged";

/// The payload keys a relabel replaces on every point of a version (see
/// [`VectorStore::set_labels`]): the same fields, with the same encoding, as a written point has.
pub fn labels_payload(
    tenant: Option<&str>,
    metadata: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    serde_json::Map::from_iter([
        (
            "tenant".to_string(),
            tenant.map_or(serde_json::Value::Null, |t| t.into()),
        ),
        (
            "metadata".to_string(),
            serde_json::Value::Object(metadata.clone()),
        ),
    ])
}

/// One point as the reconciler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointInfo {
    pub id: uuid::Uuid,
    pub doc_id: String,
    pub version: i64,
    pub staged: bool,
}

/// One page of [`VectorStore::scroll_points`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PointPage {
    pub points: Vec<PointInfo>,
    /// Where the next page starts; `None` after the last page.
    pub next: Option<uuid::Uuid>,
}

/// Points per page when [`VectorStore::list_points`] walks a whole collection.
const LIST_PAGE: usize = 256;

#[async_trait]
pub trait VectorStore: Send + Sync {
    /// Create the collection with its vectors and keyword payload indexes on `doc_id` and `tenant`
    /// if it does not exist; fail with [`StoreError::Incompatible`] if it exists with other vectors.
    async fn ensure_collection(&self, spec: &CollectionSpec) -> Result<(), StoreError>;

    /// Upsert points (batched internally), returning once they are applied. Points of a version
    /// being written carry `staged: true` in their payload (see [`STAGED_FIELD`]).
    async fn upsert(&self, collection: &str, points: Vec<Point>) -> Result<(), StoreError>;

    /// Make `version` of `doc_id` the one searchers see: clear the staged flag of its points, then
    /// delete the document's versions below it. Never touches a newer version. Only the run that
    /// committed `version` calls this (or a later run finishing that commit's publication).
    async fn publish_version(
        &self,
        collection: &str,
        doc_id: &str,
        version: i64,
    ) -> Result<(), StoreError>;

    /// Replace `tenant` and `metadata` on every point of `version` of `doc_id`.
    async fn set_labels(
        &self,
        collection: &str,
        doc_id: &str,
        version: i64,
        tenant: Option<&str>,
        metadata: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), StoreError>;

    /// Delete the points of `doc_id` at `version` (a version whose writing failed part-way, or a
    /// stray one found by the reconciler).
    async fn delete_version(
        &self,
        collection: &str,
        doc_id: &str,
        version: i64,
    ) -> Result<(), StoreError>;

    /// Delete every point of `doc_id` whose version is at most `up_to_version`: a document deletion
    /// removes what existed when it was recorded, never the points of a later re-index.
    async fn delete_document(
        &self,
        collection: &str,
        doc_id: &str,
        up_to_version: i64,
    ) -> Result<(), StoreError>;

    /// Number of points of `doc_id` (all versions, staged or not), or of the whole collection when
    /// `None`.
    async fn count(&self, collection: &str, doc_id: Option<&str>) -> Result<u64, StoreError>;

    /// Number of points of `version` of `doc_id`, staged or not.
    async fn count_version(
        &self,
        collection: &str,
        doc_id: &str,
        version: i64,
    ) -> Result<u64, StoreError>;

    /// One page of the collection's points in id order, starting at `after` (inclusive, as the
    /// `next` of the previous page gives it). Only what the reconciler needs travels.
    async fn scroll_points(
        &self,
        collection: &str,
        after: Option<uuid::Uuid>,
        limit: usize,
    ) -> Result<PointPage, StoreError>;

    /// Every point's (id, doc_id, version) — for tests and audits.
    async fn list_points(
        &self,
        collection: &str,
    ) -> Result<Vec<(uuid::Uuid, String, i64)>, StoreError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.scroll_points(collection, after, LIST_PAGE).await?;
            out.extend(page.points.into_iter().map(|p| (p.id, p.doc_id, p.version)));
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Search published points only (staged ones are never returned).
    async fn search(
        &self,
        collection: &str,
        query: &SearchQuery,
    ) -> Result<Vec<SearchHit>, StoreError>;
}
