//! Store stage, embedded flavour: one qdrant-edge 0.7.2 [`EdgeShard`] per collection on local disk,
//! for single-machine runs that need no Qdrant server. It passes the same contract suite as
//! [`super::qdrant::QdrantStore`] (`loadtests/tests/vector_store_contract.rs`).
//!
//! Layout: `<data_dir>/LOCK` (exclusive `flock`, held for the store's lifetime: the shards are not
//! safe to open from two processes) and `<data_dir>/collections/<name>/` (one shard; its
//! `edge_config.json` records the vectors the collection was created with, which is how an
//! incompatible [`CollectionSpec`] is detected after a restart).
//!
//! Durability: `EdgeShard::update` appends the operation to the shard's WAL (an mmap, not synced)
//! and applies it to the in-memory segments; in 0.7.2 `EdgeShard::load` never replays that WAL, so
//! nothing is durable until `EdgeShard::flush`, which syncs the WAL and every segment to disk. Every
//! write here therefore ends with a flush before it returns, so "returns once applied" holds across
//! a crash. Known 0.7.2 limitations: the WAL is never truncated (it grows with every byte written),
//! and deleted points keep their space until [`EdgeStore::optimize`] runs.
//!
//! Every shard call blocks, so each runs in `spawn_blocking`. [`EdgeShards`] and [`EdgeCollection`]
//! are public because the Qdrant-protocol stand-in in `loadtests` serves gRPC from the same shards.

mod shards;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    Condition, Distance, EdgeConfig, EdgeOptimizersConfig, EdgeShard, EdgeSparseVectorParams,
    EdgeVectorParams, FieldCondition, Filter, Fusion, HnswIndexConfig, Match, Modifier, NamedQuery,
    OperationError, Payload, PayloadOps, PayloadSchemaType, PointId, PointInsertOperations,
    PointOperations, PointStructPersisted, Prefetch, QueryEnum, QueryRequest, Range, ScoredPoint,
    ScoringQuery, ScrollRequest, SetPayloadOp, SparseVector as EdgeSparse, UpdateOperation,
    ValueVariants, VectorInternal, VectorPersisted, VectorStructPersisted, WithPayloadInterface,
    WithVector,
};

use self::shards::json_path;
pub use self::shards::{EdgeCollection, EdgeShards, edge_error, run_blocking};
use super::{
    CollectionSpec, DENSE_VECTOR, PointInfo, PointPage, SPARSE_VECTOR, STAGED_FIELD, SearchQuery,
    StoreError, VectorStore,
};
use crate::model::{ChunkPayload, Point, SearchHit, SparseVector};

/// Points written to a collection between optimizer runs, as the Qdrant server runs them in the
/// background: each run turns the appendable segment (whose in-memory sparse index costs more per
/// insert the larger it grows) into an indexed one, and merges small segments, so the cost of a
/// write stays flat as a collection grows to hundreds of thousands of points.
pub const OPTIMIZE_AFTER_POINTS: u64 = 4096;

/// Points per shard update: keeps each WAL record a few MB even with 1,024-dim vectors and
/// full chunk texts (the WAL segment is 32 MiB).
const UPDATE_BATCH: usize = 128;
/// Qdrant's default RRF constant (`DEFAULT_RRF_K` in the server and in qdrant-edge), so both
/// stores rank hybrid results identically.
pub const QDRANT_DEFAULT_RRF_K: usize = 2;
/// Payload indexes every sluice collection gets when it is created, before any data.
pub const PAYLOAD_INDEXES: [(&str, PayloadSchemaType); 4] = [
    ("doc_id", PayloadSchemaType::Keyword),
    ("tenant", PayloadSchemaType::Keyword),
    // Publishing and the reconciler filter on `version`, every search on `staged`.
    ("version", PayloadSchemaType::Integer),
    (STAGED_FIELD, PayloadSchemaType::Bool),
];

/// The embedded [`VectorStore`]: qdrant-edge shards under one data directory.
#[derive(Clone)]
pub struct EdgeStore {
    shards: Arc<EdgeShards>,
}

impl std::fmt::Debug for EdgeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeStore")
            .field("dir", &self.shards.dir())
            .finish()
    }
}

impl EdgeStore {
    async fn delete_by_filter(&self, collection: &str, filter: Filter) -> Result<(), StoreError> {
        self.apply(
            collection,
            vec![UpdateOperation::PointOperation(
                PointOperations::DeletePointsByFilter(filter),
            )],
        )
        .await
    }

    /// Open (creating if needed) the store in `data_dir`. Waits, without blocking the async
    /// threads, while another process holds the directory. Collections are optimized as they
    /// grow (see [`OPTIMIZE_AFTER_POINTS`]).
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let shards = EdgeShards::open(data_dir)
            .await?
            .optimize_after(OPTIMIZE_AFTER_POINTS);
        Ok(EdgeStore {
            shards: Arc::new(shards),
        })
    }

    /// Run qdrant-edge's optimizers on a collection (vacuum deleted points, merge segments, build
    /// HNSW once large enough). Blocking work off the async threads; call after a bulk load.
    pub async fn optimize(&self, collection: &str) -> Result<(), StoreError> {
        let shards = self.shards.clone();
        let name = collection.to_string();
        run_blocking(move || shards.require(&name)?.optimize()).await
    }
}

#[async_trait]
impl VectorStore for EdgeStore {
    async fn ensure_collection(&self, spec: &CollectionSpec) -> Result<(), StoreError> {
        let shards = self.shards.clone();
        let spec = spec.clone();
        run_blocking(move || {
            let (coll, created) = shards.create(&spec.name, spec_config(&spec), &PAYLOAD_INDEXES)?;
            if created {
                tracing::info!(collection = %spec.name, dense_dim = ?spec.dense_dim, "created edge collection");
                return Ok(());
            }
            check_compatible(&spec, &coll.config())?;
            // A collection created by an older build (or by the stand-in) may lack an index.
            coll.ensure_indexes(&PAYLOAD_INDEXES)
        })
        .await
    }

    async fn upsert(&self, collection: &str, points: Vec<Point>) -> Result<(), StoreError> {
        if points.is_empty() {
            return Ok(());
        }
        let mut ops = Vec::with_capacity(points.len().div_ceil(UPDATE_BATCH));
        let mut points = points.into_iter().peekable();
        while points.peek().is_some() {
            let batch = points
                .by_ref()
                .take(UPDATE_BATCH)
                .map(to_edge_point)
                .collect::<Result<Vec<_>, _>>()?;
            ops.push(UpdateOperation::PointOperation(
                PointOperations::UpsertPoints(PointInsertOperations::PointsList(batch)),
            ));
        }
        self.apply(collection, ops).await
    }

    async fn publish_version(
        &self,
        collection: &str,
        doc_id: &str,
        version: i64,
    ) -> Result<(), StoreError> {
        // One shard update: the flag and the older versions change under one write lock, so an
        // embedded search sees either the old version or the new one.
        let published = set_payload_op(
            version_filter(doc_id, version)?,
            serde_json::Map::from_iter([(STAGED_FIELD.to_string(), false.into())]),
        );
        let older = versions_filter(
            doc_id,
            Range {
                lt: Some(OrderedFloat(version as f64)),
                ..Default::default()
            },
        )?;
        self.apply(
            collection,
            vec![
                published,
                UpdateOperation::PointOperation(PointOperations::DeletePointsByFilter(older)),
            ],
        )
        .await
    }

    async fn set_labels(
        &self,
        collection: &str,
        doc_id: &str,
        version: i64,
        tenant: Option<&str>,
        metadata: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), StoreError> {
        let labels = super::labels_payload(tenant, metadata);
        let op = set_payload_op(version_filter(doc_id, version)?, labels);
        self.apply(collection, vec![op]).await
    }

    async fn delete_version(
        &self,
        collection: &str,
        doc_id: &str,
        version: i64,
    ) -> Result<(), StoreError> {
        self.delete_by_filter(collection, version_filter(doc_id, version)?)
            .await
    }

    async fn delete_document(
        &self,
        collection: &str,
        doc_id: &str,
        up_to_version: i64,
    ) -> Result<(), StoreError> {
        let filter = versions_filter(
            doc_id,
            Range {
                lte: Some(OrderedFloat(up_to_version as f64)),
                ..Default::default()
            },
        )?;
        self.delete_by_filter(collection, filter).await
    }

    async fn count(&self, collection: &str, doc_id: Option<&str>) -> Result<u64, StoreError> {
        self.count_where(collection, doc_id.map(doc_filter).transpose()?)
            .await
    }

    async fn count_version(
        &self,
        collection: &str,
        doc_id: &str,
        version: i64,
    ) -> Result<u64, StoreError> {
        self.count_where(collection, Some(version_filter(doc_id, version)?))
            .await
    }

    async fn scroll_points(
        &self,
        collection: &str,
        after: Option<uuid::Uuid>,
        limit: usize,
    ) -> Result<PointPage, StoreError> {
        let fields = vec![
            json_path("doc_id")?,
            json_path("version")?,
            json_path(STAGED_FIELD)?,
        ];
        let request = ScrollRequest {
            offset: after.map(PointId::Uuid),
            limit: Some(limit),
            filter: None,
            with_payload: Some(WithPayloadInterface::Fields(fields)),
            with_vector: WithVector::Bool(false),
            order_by: None,
        };
        let (records, next) = self
            .read(collection, move |shard| shard.scroll(request))
            .await?;
        let points = records
            .into_iter()
            .map(|r| {
                let id = point_uuid(r.id)?;
                let map = r.payload.map(|p| p.0).unwrap_or_default();
                let doc_id = map.get("doc_id").and_then(|v| v.as_str());
                let version = map.get("version").and_then(|v| v.as_i64());
                let staged = map.get(STAGED_FIELD).and_then(|v| v.as_bool()) == Some(true);
                match (doc_id, version) {
                    (Some(doc_id), Some(version)) => Ok(PointInfo {
                        id,
                        doc_id: doc_id.to_string(),
                        version,
                        staged,
                    }),
                    _ => Err(StoreError::Internal(format!(
                        "point {id} has no doc_id/version payload"
                    ))),
                }
            })
            .collect::<Result<_, _>>()?;
        let next = next.map(point_uuid).transpose()?;
        Ok(PointPage { points, next })
    }

    async fn search(
        &self,
        collection: &str,
        query: &SearchQuery,
    ) -> Result<Vec<SearchHit>, StoreError> {
        if query.top_k == 0 {
            return Ok(Vec::new());
        }
        let query = query.clone();
        let filter = Some(search_filter(query.tenant.as_deref())?);
        let shards = self.shards.clone();
        let name = collection.to_string();
        let points = run_blocking(move || {
            let coll = shards.require(&name)?;
            let has_dense = coll.config().vectors.contains_key(DENSE_VECTOR);
            let request = build_query(&name, has_dense, &query, filter)?;
            coll.read(|shard| shard.query(request))
        })
        .await?;
        points.into_iter().map(to_hit).collect()
    }
}

impl EdgeStore {
    async fn count_where(
        &self,
        collection: &str,
        filter: Option<Filter>,
    ) -> Result<u64, StoreError> {
        let request = qdrant_edge::CountRequest {
            filter,
            exact: true,
        };
        let n = self
            .read(collection, move |shard| shard.count(request))
            .await?;
        Ok(n as u64)
    }

    async fn apply(&self, collection: &str, ops: Vec<UpdateOperation>) -> Result<(), StoreError> {
        let shards = self.shards.clone();
        let name = collection.to_string();
        run_blocking(move || shards.require(&name)?.apply(ops)).await
    }

    async fn read<R: Send + 'static>(
        &self,
        collection: &str,
        f: impl FnOnce(&EdgeShard) -> Result<R, OperationError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let shards = self.shards.clone();
        let name = collection.to_string();
        run_blocking(move || shards.require(&name)?.read(f)).await
    }
}

/// The edge configuration for a sluice collection: `dense` (cosine) when `dense_dim` is set, and
/// `bm25` sparse with the IDF modifier.
pub fn spec_config(spec: &CollectionSpec) -> EdgeConfig {
    let mut builder = EdgeConfig::builder()
        .hnsw_config(exact_search())
        .optimizers(segments_for_exact_search())
        .sparse_vector(
            SPARSE_VECTOR,
            EdgeSparseVectorParams::builder()
                .modifier(Modifier::Idf)
                .build(),
        );
    if let Some(dim) = spec.dense_dim {
        builder = builder.vector(
            DENSE_VECTOR,
            EdgeVectorParams::builder(dim as usize, Distance::Cosine).build(),
        );
    }
    builder.build()
}

/// Dense search without an HNSW graph (`m = 0`): exact, so recall is perfect, and nothing is
/// built at write time. A graph over 1,536-dim vectors cost more CPU than the rest of `sluice
/// ingest` together (half of it, on a corpus of 8,500 chunks), while an exact search over
/// 100,000 chunks takes tens of milliseconds (README "Performance"). Collections that need a
/// graph belong on a Qdrant server (`SLUICE_QDRANT_URL`).
pub fn exact_search() -> HnswIndexConfig {
    HnswIndexConfig {
        m: 0,
        ..Default::default()
    }
}

/// Optimizer settings for [`exact_search`] collections: every non-empty segment is indexed
/// (frozen, its sparse postings compacted) when the optimizers run, and up to 16 segments are
/// kept before merging, because a merge rewrites the segments whole — a pause that grows with
/// the collection — while searching a few more segments costs little.
pub fn segments_for_exact_search() -> EdgeOptimizersConfig {
    EdgeOptimizersConfig {
        indexing_threshold: Some(1),
        default_segment_number: Some(16),
        ..Default::default()
    }
}

/// `Incompatible` unless `config` has exactly the vectors `spec` asks for.
fn check_compatible(spec: &CollectionSpec, config: &EdgeConfig) -> Result<(), StoreError> {
    let dense_ok = match (spec.dense_dim, config.vectors.get(DENSE_VECTOR)) {
        (Some(dim), Some(v)) => v.size as u64 == dim && v.distance == Distance::Cosine,
        (None, None) => true,
        (Some(_), None) | (None, Some(_)) => false,
    };
    let sparse_ok = config
        .sparse_vectors
        .get(SPARSE_VECTOR)
        .is_some_and(|s| s.modifier == Some(Modifier::Idf));
    let extra = config.vectors.len() > usize::from(spec.dense_dim.is_some())
        || config.sparse_vectors.len() > 1;
    if dense_ok && sparse_ok && !extra {
        return Ok(());
    }
    let mut have: Vec<String> = config
        .vectors
        .iter()
        .map(|(n, v)| format!("{n:?} dense {} {:?}", v.size, v.distance))
        .collect();
    have.extend(
        config
            .sparse_vectors
            .iter()
            .map(|(n, s)| format!("{n:?} sparse modifier {:?}", s.modifier)),
    );
    have.sort();
    let want = match spec.dense_dim {
        Some(dim) => format!(
            "\"{DENSE_VECTOR}\" dense {dim} Cosine, \"{SPARSE_VECTOR}\" sparse modifier Idf"
        ),
        None => format!("no dense vector, \"{SPARSE_VECTOR}\" sparse modifier Idf"),
    };
    Err(StoreError::Incompatible {
        name: spec.name.clone(),
        detail: format!(
            "it has [{}], this configuration needs [{want}]",
            have.join(", ")
        ),
    })
}

fn match_condition(field: &str, value: ValueVariants) -> Result<Condition, StoreError> {
    Ok(Condition::Field(FieldCondition::new_match(
        json_path(field)?,
        Match::new_value(value),
    )))
}

/// The points of one version of a document.
fn version_filter(doc_id: &str, version: i64) -> Result<Filter, StoreError> {
    let mut filter = doc_filter(doc_id)?;
    filter
        .must
        .get_or_insert_with(Vec::new)
        .push(match_condition("version", ValueVariants::Integer(version))?);
    Ok(filter)
}

/// The points of a document whose version lies in `range`.
fn versions_filter(doc_id: &str, range: Range<OrderedFloat<f64>>) -> Result<Filter, StoreError> {
    let mut filter = doc_filter(doc_id)?;
    filter
        .must
        .get_or_insert_with(Vec::new)
        .push(Condition::Field(FieldCondition::new_range(
            json_path("version")?,
            range,
        )));
    Ok(filter)
}

/// What a search may return: published points, of one tenant if given.
fn search_filter(tenant: Option<&str>) -> Result<Filter, StoreError> {
    let mut filter =
        Filter::new_must_not(match_condition(STAGED_FIELD, ValueVariants::Bool(true))?);
    if let Some(t) = tenant {
        filter.must = Some(vec![match_condition(
            "tenant",
            ValueVariants::String(t.to_string()),
        )?]);
    }
    Ok(filter)
}

fn set_payload_op(
    filter: Filter,
    payload: serde_json::Map<String, serde_json::Value>,
) -> UpdateOperation {
    UpdateOperation::PayloadOperation(PayloadOps::SetPayload(SetPayloadOp {
        payload: Payload(payload),
        points: None,
        filter: Some(filter),
        key: None,
    }))
}

fn doc_filter(doc_id: &str) -> Result<Filter, StoreError> {
    Ok(Filter::new_must(match_condition(
        "doc_id",
        ValueVariants::String(doc_id.to_string()),
    )?))
}

fn edge_sparse(sparse: &SparseVector) -> Result<EdgeSparse, StoreError> {
    let mut v = EdgeSparse::new(sparse.indices.clone(), sparse.values.clone())
        .map_err(|e| StoreError::Rejected(format!("invalid sparse vector: {e}")))?;
    v.sort_by_indices();
    Ok(v)
}

fn to_edge_point(point: Point) -> Result<PointStructPersisted, StoreError> {
    let mut vectors = HashMap::new();
    if let Some(dense) = point.vectors.dense {
        vectors.insert(DENSE_VECTOR.to_string(), VectorPersisted::Dense(dense));
    }
    vectors.insert(
        SPARSE_VECTOR.to_string(),
        VectorPersisted::Sparse(edge_sparse(&point.vectors.sparse)?),
    );
    let payload = match serde_json::to_value(&point.payload) {
        Ok(serde_json::Value::Object(map)) => Payload(map),
        Ok(other) => {
            return Err(StoreError::Rejected(format!(
                "payload serialised to {other}, not an object"
            )));
        }
        Err(e) => {
            return Err(StoreError::Rejected(format!(
                "payload of point {}: {e}",
                point.id
            )));
        }
    };
    Ok(PointStructPersisted {
        id: PointId::Uuid(point.id),
        vector: VectorStructPersisted::Named(vectors),
        payload: Some(payload),
    })
}

fn build_query(
    collection: &str,
    has_dense: bool,
    query: &SearchQuery,
    filter: Option<Filter>,
) -> Result<QueryRequest, StoreError> {
    let nearest = |name: &str, v: VectorInternal| {
        ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
            query: v,
            using: Some(name.to_string()),
        }))
    };
    let sparse = nearest(
        SPARSE_VECTOR,
        VectorInternal::Sparse(edge_sparse(&query.sparse)?),
    );
    let dense = match (&query.dense, has_dense) {
        (Some(v), true) => Some(nearest(DENSE_VECTOR, VectorInternal::Dense(v.clone()))),
        (Some(_), false) => {
            return Err(StoreError::Rejected(format!(
                "collection {collection:?} has no dense vector to search"
            )));
        }
        (None, true) | (None, false) => None,
    };
    let (prefetches, scoring) = match dense {
        // An empty sparse query matches nothing; rank by the dense vector alone.
        Some(dense) if query.sparse.indices.is_empty() => (Vec::new(), dense),
        Some(dense) => {
            let prefetch = |q| Prefetch {
                prefetches: Vec::new(),
                query: Some(q),
                limit: query.prefetch_limit(),
                params: None,
                filter: None,
                score_threshold: None,
            };
            (
                vec![prefetch(dense), prefetch(sparse)],
                ScoringQuery::Fusion(Fusion::Rrf {
                    k: QDRANT_DEFAULT_RRF_K,
                    weights: None,
                }),
            )
        }
        None => (Vec::new(), sparse),
    };
    Ok(QueryRequest {
        prefetches,
        query: Some(scoring),
        // Propagated into the prefetches by the query planner, as in the Qdrant server.
        filter,
        score_threshold: None,
        limit: query.top_k,
        offset: 0,
        params: None,
        with_vector: WithVector::Bool(false),
        with_payload: WithPayloadInterface::Bool(true),
    })
}

fn point_uuid(id: PointId) -> Result<uuid::Uuid, StoreError> {
    match id {
        PointId::Uuid(u) => Ok(u),
        PointId::NumId(n) => Err(StoreError::Internal(format!(
            "point id {n} is not a UUID; not written by sluice"
        ))),
    }
}

fn to_hit(point: ScoredPoint) -> Result<SearchHit, StoreError> {
    let id = point_uuid(point.id)?;
    let map = point.payload.map(|p| p.0).unwrap_or_default();
    let payload: ChunkPayload =
        serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| {
            StoreError::Internal(format!("point {id} payload is not a sluice chunk: {e}"))
        })?;
    Ok(SearchHit {
        id,
        score: point.score,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::edge::shards::validate_name;

    #[test]
    fn names_that_escape_the_data_dir_are_rejected() {
        for bad in ["", "..", ".hidden", "a/b", "../x", "a b"] {
            assert!(
                matches!(validate_name(bad), Err(StoreError::Rejected(_))),
                "{bad:?}"
            );
        }
        validate_name("docs-v2_en.1").unwrap();
    }

    #[test]
    fn compatibility_names_both_sides() {
        let spec = CollectionSpec {
            name: "c".into(),
            dense_dim: Some(8),
        };
        check_compatible(&spec, &spec_config(&spec)).unwrap();
        let other = CollectionSpec {
            name: "c".into(),
            dense_dim: Some(16),
        };
        let err = check_compatible(&other, &spec_config(&spec))
            .unwrap_err()
            .to_string();
        assert!(err.contains("dense 8") && err.contains("dense 16"), "{err}");
        let bm25_only = CollectionSpec {
            name: "c".into(),
            dense_dim: None,
        };
        assert!(check_compatible(&bm25_only, &spec_config(&spec)).is_err());
        assert!(check_compatible(&spec, &spec_config(&bm25_only)).is_err());
    }
}
