//! Store stage, server flavour: a Qdrant server over gRPC (qdrant-client 1.20). Writes are split
//! into batches of [`UPSERT_BATCH`] points with up to [`UPSERT_IN_FLIGHT`] requests in flight, all
//! with `wait=true`: a request returns once the points are applied, not merely logged, because the
//! caller acknowledges the job right after.
//!
//! Collections get a cosine `dense` vector (unless BM25-only), a `bm25` sparse vector with the IDF
//! modifier, and keyword indexes on `doc_id` and `tenant` plus an integer index on `version`,
//! created before any data. Hybrid search is one Query API call: a dense and a sparse prefetch fused
//! with reciprocal rank fusion.

mod wire;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use qdrant_client::qdrant::{
    self, Condition, CountPoints, CreateCollection, CreateFieldIndexCollection, DeletePoints,
    FieldType, Filter, GetCollectionInfoRequest, PointsSelector, PrefetchQuery, Query, QueryPoints,
    Range, ScrollPoints, SetPayloadPoints, SparseVectorConfig, SparseVectorParams, UpsertPoints,
    VectorInput, VectorParams, VectorParamsMap, VectorsConfig, WithPayloadSelector,
    r#match::MatchValue,
};
use qdrant_client::{Qdrant, QdrantError};
use tonic::Code;

use self::wire::{
    check_compatible, doc_filter, from_payload, map_error, point_uuid, status_code, to_point_struct,
};
pub use self::wire::{json_to_value, value_to_json};
use super::{CollectionSpec, DENSE_VECTOR, SPARSE_VECTOR, SearchQuery, StoreError, VectorStore};
use super::{PointInfo, PointPage, STAGED_FIELD};
use crate::model::{Point, SearchHit};
use crate::secret::{Secret, redact_url};

/// Points per upsert request (Qdrant's guidance: ~64–256).
pub const UPSERT_BATCH: usize = 128;
/// Upsert requests in flight per `upsert` call: enough to overlap network and indexing, few
/// enough that many workers together do not swamp the server.
pub const UPSERT_IN_FLIGHT: usize = 4;
/// Per-request deadline: a waited upsert of a full batch into a busy collection can take seconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Payload indexes every sluice collection gets on creation.
const PAYLOAD_INDEXES: [(&str, FieldType); 4] = [
    ("doc_id", FieldType::Keyword),
    ("tenant", FieldType::Keyword),
    ("version", FieldType::Integer),
    (STAGED_FIELD, FieldType::Bool),
];

/// The Qdrant server [`VectorStore`].
#[derive(Clone)]
pub struct QdrantStore {
    client: Qdrant,
    /// For messages; never holds the API key (that travels as a header).
    url: String,
}

impl std::fmt::Debug for QdrantStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantStore")
            .field("url", &self.url)
            .finish()
    }
}

impl QdrantStore {
    /// Build a client for the gRPC endpoint `url` (e.g. `http://localhost:6334`). Connects lazily:
    /// an unreachable server surfaces as [`StoreError::Unavailable`] on the first call (or from
    /// [`Self::health_check`]).
    pub fn connect(url: &str, api_key: Option<Secret>) -> Result<Self, StoreError> {
        let shown = redact_url(url);
        let client = Qdrant::from_url(url)
            .api_key(api_key.as_ref().map(|k| k.expose().to_string()))
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            // The built-in check prints to stdout from a throwaway runtime; health_check() instead.
            .skip_compatibility_check()
            .build()
            .map_err(|e| match e {
                QdrantError::InvalidUri(e) => {
                    StoreError::Rejected(format!("invalid Qdrant URL {shown}: {e}"))
                }
                other => map_error("connect", &shown, other),
            })?;
        Ok(QdrantStore { client, url: shown })
    }

    /// Ask the server for its version; fails with [`StoreError::Unavailable`] if it is down.
    pub async fn health_check(&self) -> Result<String, StoreError> {
        let reply = self
            .client
            .health_check()
            .await
            .map_err(|e| map_error("health check", &self.url, e))?;
        Ok(reply.version)
    }

    async fn info(&self, name: &str) -> Result<qdrant::CollectionInfo, StoreError> {
        let resp = self
            .client
            .collection_info(GetCollectionInfoRequest {
                collection_name: name.to_string(),
            })
            .await
            .map_err(|e| map_error("get collection", name, e))?;
        resp.result.ok_or_else(|| {
            StoreError::Internal(format!("collection {name:?}: empty info response"))
        })
    }

    async fn create(&self, spec: &CollectionSpec) -> Result<(), QdrantError> {
        let mut vectors = HashMap::new();
        if let Some(size) = spec.dense_dim {
            vectors.insert(
                DENSE_VECTOR.to_string(),
                VectorParams {
                    size,
                    distance: qdrant::Distance::Cosine.into(),
                    ..Default::default()
                },
            );
        }
        let sparse = SparseVectorParams {
            index: None,
            modifier: Some(qdrant::Modifier::Idf.into()),
        };
        let request = CreateCollection {
            collection_name: spec.name.clone(),
            // A BM25-only collection has no dense vectors: no vectors config at all, as in
            // Qdrant's sparse-only examples.
            vectors_config: (!vectors.is_empty()).then_some(VectorsConfig {
                config: Some(qdrant::vectors_config::Config::ParamsMap(VectorParamsMap {
                    map: vectors,
                })),
            }),
            sparse_vectors_config: Some(SparseVectorConfig {
                map: HashMap::from([(SPARSE_VECTOR.to_string(), sparse)]),
            }),
            ..Default::default()
        };
        self.client.create_collection(request).await.map(|_| ())
    }

    async fn ensure_indexes(
        &self,
        name: &str,
        existing: &HashMap<String, qdrant::PayloadSchemaInfo>,
    ) -> Result<(), StoreError> {
        for (field, kind) in PAYLOAD_INDEXES {
            if existing.contains_key(field) {
                continue;
            }
            let request = CreateFieldIndexCollection {
                collection_name: name.to_string(),
                wait: Some(true),
                field_name: field.to_string(),
                field_type: Some(kind.into()),
                ..Default::default()
            };
            self.client
                .create_field_index(request)
                .await
                .map_err(|e| map_error("create payload index", name, e))?;
        }
        Ok(())
    }

    async fn set_payload_where(
        &self,
        collection: &str,
        filter: Filter,
        payload: HashMap<String, qdrant::Value>,
    ) -> Result<(), StoreError> {
        let request = SetPayloadPoints {
            collection_name: collection.to_string(),
            wait: Some(true),
            payload,
            points_selector: Some(PointsSelector {
                points_selector_one_of: Some(qdrant::points_selector::PointsSelectorOneOf::Filter(
                    filter,
                )),
            }),
            ..Default::default()
        };
        self.client
            .set_payload(request)
            .await
            .map_err(|e| map_error("set payload", collection, e))?;
        Ok(())
    }

    async fn delete_by_filter(&self, collection: &str, filter: Filter) -> Result<(), StoreError> {
        let request = DeletePoints {
            collection_name: collection.to_string(),
            wait: Some(true),
            points: Some(PointsSelector {
                points_selector_one_of: Some(qdrant::points_selector::PointsSelectorOneOf::Filter(
                    filter,
                )),
            }),
            ..Default::default()
        };
        self.client
            .delete_points(request)
            .await
            .map_err(|e| map_error("delete", collection, e))?;
        Ok(())
    }
}

#[async_trait]
impl VectorStore for QdrantStore {
    async fn ensure_collection(&self, spec: &CollectionSpec) -> Result<(), StoreError> {
        let info = match self.info(&spec.name).await {
            Ok(info) => info,
            Err(StoreError::MissingCollection(_)) => match self.create(spec).await {
                Ok(()) => {
                    tracing::info!(collection = %spec.name, dense_dim = ?spec.dense_dim, "created qdrant collection");
                    return self.ensure_indexes(&spec.name, &HashMap::new()).await;
                }
                // Another worker created it first (Qdrant reports that as AlreadyExists or as bad
                // input depending on version): whatever it made must still match our spec.
                Err(e)
                    if matches!(
                        status_code(&e),
                        Some(Code::AlreadyExists | Code::InvalidArgument)
                    ) =>
                {
                    match self.info(&spec.name).await {
                        Ok(info) => info,
                        Err(StoreError::MissingCollection(_)) => {
                            return Err(map_error("create collection", &spec.name, e));
                        }
                        Err(other) => return Err(other),
                    }
                }
                Err(e) => return Err(map_error("create collection", &spec.name, e)),
            },
            Err(other) => return Err(other),
        };
        check_compatible(spec, &info)?;
        // Also repairs a collection whose creator died before making its indexes.
        self.ensure_indexes(&spec.name, &info.payload_schema).await
    }

    async fn upsert(&self, collection: &str, points: Vec<Point>) -> Result<(), StoreError> {
        let mut batches = Vec::with_capacity(points.len().div_ceil(UPSERT_BATCH));
        let mut points = points.into_iter().peekable();
        while points.peek().is_some() {
            let batch = points
                .by_ref()
                .take(UPSERT_BATCH)
                .map(to_point_struct)
                .collect::<Result<Vec<_>, _>>()?;
            batches.push(batch);
        }
        futures::stream::iter(batches)
            .map(|batch| async move {
                let request = UpsertPoints {
                    collection_name: collection.to_string(),
                    wait: Some(true),
                    points: batch,
                    ..Default::default()
                };
                self.client
                    .upsert_points(request)
                    .await
                    .map_err(|e| map_error("upsert", collection, e))
            })
            .buffer_unordered(UPSERT_IN_FLIGHT)
            .try_for_each(|_| async { Ok(()) })
            .await
    }

    async fn publish_version(
        &self,
        collection: &str,
        doc_id: &str,
        version: i64,
    ) -> Result<(), StoreError> {
        // Visible first, then the older versions go: a searcher may see both for the moment
        // between the two requests, never neither.
        self.set_payload_where(
            collection,
            version_filter(doc_id, version),
            HashMap::from([(STAGED_FIELD.to_string(), false.into())]),
        )
        .await?;
        self.delete_by_filter(
            collection,
            versions_filter(
                doc_id,
                Range {
                    lt: Some(version as f64),
                    ..Default::default()
                },
            ),
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
        let payload = super::labels_payload(tenant, metadata)
            .into_iter()
            .map(|(key, value)| (key, json_to_value(value)))
            .collect();
        self.set_payload_where(collection, version_filter(doc_id, version), payload)
            .await
    }

    async fn delete_version(
        &self,
        collection: &str,
        doc_id: &str,
        version: i64,
    ) -> Result<(), StoreError> {
        self.delete_by_filter(collection, version_filter(doc_id, version))
            .await
    }

    async fn delete_document(
        &self,
        collection: &str,
        doc_id: &str,
        up_to_version: i64,
    ) -> Result<(), StoreError> {
        self.delete_by_filter(
            collection,
            versions_filter(
                doc_id,
                Range {
                    lte: Some(up_to_version as f64),
                    ..Default::default()
                },
            ),
        )
        .await
    }

    async fn count(&self, collection: &str, doc_id: Option<&str>) -> Result<u64, StoreError> {
        self.count_where(collection, doc_id.map(doc_filter)).await
    }

    async fn count_version(
        &self,
        collection: &str,
        doc_id: &str,
        version: i64,
    ) -> Result<u64, StoreError> {
        self.count_where(collection, Some(version_filter(doc_id, version)))
            .await
    }

    async fn scroll_points(
        &self,
        collection: &str,
        after: Option<uuid::Uuid>,
        limit: usize,
    ) -> Result<PointPage, StoreError> {
        let request = ScrollPoints {
            collection_name: collection.to_string(),
            offset: after.map(|id| id.to_string().into()),
            limit: Some(u32::try_from(limit).unwrap_or(u32::MAX)),
            with_payload: Some(WithPayloadSelector::from(vec![
                "doc_id",
                "version",
                STAGED_FIELD,
            ])),
            ..Default::default()
        };
        let resp = self
            .client
            .scroll(request)
            .await
            .map_err(|e| map_error("scroll", collection, e))?;
        let mut points = Vec::with_capacity(resp.result.len());
        for mut point in resp.result {
            let id = point_uuid(point.id)?;
            let mut field = |key: &str| point.payload.remove(key).map(value_to_json);
            let doc_id = field("doc_id").and_then(|v| v.as_str().map(str::to_string));
            let version = field("version").and_then(|v| v.as_i64());
            let staged = field(STAGED_FIELD).and_then(|v| v.as_bool()) == Some(true);
            match (doc_id, version) {
                (Some(doc_id), Some(version)) => points.push(PointInfo {
                    id,
                    doc_id,
                    version,
                    staged,
                }),
                _ => {
                    return Err(StoreError::Internal(format!(
                        "point {id} has no doc_id/version payload"
                    )));
                }
            }
        }
        let next = match resp.next_page_offset {
            Some(id) => Some(point_uuid(Some(id))?),
            None => None,
        };
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
        let sparse =
            VectorInput::new_sparse(query.sparse.indices.clone(), query.sparse.values.clone());
        let mut request = QueryPoints {
            collection_name: collection.to_string(),
            filter: Some(search_filter(query.tenant.as_deref())),
            limit: Some(query.top_k as u64),
            with_payload: Some(true.into()),
            ..Default::default()
        };
        match &query.dense {
            // An empty sparse query matches nothing; rank by the dense vector alone.
            Some(dense) if query.sparse.indices.is_empty() => {
                request.query = Some(Query::new_nearest(VectorInput::new_dense(dense.clone())));
                request.using = Some(DENSE_VECTOR.to_string());
            }
            Some(dense) => {
                let prefetch = |input: VectorInput, using: &str| PrefetchQuery {
                    query: Some(Query::new_nearest(input)),
                    using: Some(using.to_string()),
                    limit: Some(query.prefetch_limit() as u64),
                    ..Default::default()
                };
                // The root filter is propagated into the prefetches by the server.
                request.prefetch = vec![
                    prefetch(VectorInput::new_dense(dense.clone()), DENSE_VECTOR),
                    prefetch(sparse, SPARSE_VECTOR),
                ];
                request.query = Some(Query::new_fusion(qdrant::Fusion::Rrf));
            }
            None => {
                request.query = Some(Query::new_nearest(sparse));
                request.using = Some(SPARSE_VECTOR.to_string());
            }
        }
        let resp = self
            .client
            .query(request)
            .await
            .map_err(|e| map_error("query", collection, e))?;
        resp.result
            .into_iter()
            .map(|p| {
                let id = point_uuid(p.id)?;
                Ok(SearchHit {
                    id,
                    score: p.score,
                    payload: from_payload(id, p.payload)?,
                })
            })
            .collect()
    }
}

impl QdrantStore {
    async fn count_where(
        &self,
        collection: &str,
        filter: Option<Filter>,
    ) -> Result<u64, StoreError> {
        let request = CountPoints {
            collection_name: collection.to_string(),
            filter,
            exact: Some(true),
            ..Default::default()
        };
        let resp = self
            .client
            .count(request)
            .await
            .map_err(|e| map_error("count", collection, e))?;
        Ok(resp.result.map(|r| r.count).unwrap_or(0))
    }
}

/// The points of one version of a document.
fn version_filter(doc_id: &str, version: i64) -> Filter {
    let mut filter = doc_filter(doc_id);
    filter
        .must
        .push(Condition::matches("version", MatchValue::Integer(version)));
    filter
}

/// The points of a document whose version lies in `range`.
fn versions_filter(doc_id: &str, range: Range) -> Filter {
    let mut filter = doc_filter(doc_id);
    filter.must.push(Condition::range("version", range));
    filter
}

/// What a search may return: published points, of one tenant if given.
fn search_filter(tenant: Option<&str>) -> Filter {
    let mut filter =
        Filter::must_not([Condition::matches(STAGED_FIELD, MatchValue::Boolean(true))]);
    if let Some(t) = tenant {
        filter.must.push(Condition::matches(
            "tenant",
            MatchValue::Keyword(t.to_string()),
        ));
    }
    filter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_never_contain_the_api_key() {
        let store =
            QdrantStore::connect("http://127.0.0.1:1", Some(Secret::new("sk-secret-123"))).unwrap();
        assert!(!format!("{store:?}").contains("sk-secret-123"));
        let err = map_error(
            "upsert",
            "c",
            QdrantError::ResponseError {
                status: tonic::Status::unauthenticated("bad key"),
            },
        );
        assert!(
            matches!(err, StoreError::Rejected(_)) && !err.to_string().contains("sk-secret-123")
        );
    }
}
