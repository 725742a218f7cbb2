//! The stand-in's RPC handlers: translate the request (see [`super::convert`]), run the shard call
//! on the blocking pool, translate the answer.

use std::sync::Arc;
use std::time::Instant;

use qdrant_client::qdrant::collections_server::Collections;
use qdrant_client::qdrant::points_server::Points;
use qdrant_client::qdrant::qdrant_server::Qdrant;
use qdrant_client::qdrant::{self as grpc};
use qdrant_edge::{
    CountRequest, CreateIndex, FieldIndexOperations, PointInsertOperations, PointOperations,
    ScrollRequest, UpdateOperation,
};
use sluice_shared::store::StoreError;
use sluice_shared::store::edge::{EdgeCollection, EdgeShards, run_blocking};
use sluice_shared::store::qdrant::value_to_json;
use tonic::{Request, Response, Status};

use super::convert::{self, DEFAULT_LIMIT, unimplemented};

/// The service state: the shards, shared by every handler.
pub struct Standin {
    shards: Arc<EdgeShards>,
}

impl Standin {
    pub fn new(shards: EdgeShards) -> Self {
        Standin {
            shards: Arc::new(shards),
        }
    }

    /// Run `f` against collection `name` on the blocking pool.
    async fn with_collection<R: Send + 'static>(
        &self,
        name: String,
        f: impl FnOnce(&EdgeCollection) -> Result<R, Status> + Send + 'static,
    ) -> Result<R, Status> {
        let shards = self.shards.clone();
        run_blocking(move || Ok(shards.require(&name).map(|c| f(&c))))
            .await
            .map_err(status)?
            .map_err(status)?
    }

    async fn write(
        &self,
        name: String,
        op: UpdateOperation,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        let start = Instant::now();
        self.with_collection(name, move |c| c.apply(vec![op]).map_err(status))
            .await?;
        Ok(Response::new(grpc::PointsOperationResponse {
            // Applied and flushed: "completed" whatever `wait` asked for.
            result: Some(grpc::UpdateResult {
                operation_id: None,
                status: grpc::UpdateStatus::Completed.into(),
            }),
            time: start.elapsed().as_secs_f64(),
            usage: None,
        }))
    }
}

/// Store errors as the real server reports them (a missing collection is `NOT_FOUND`).
fn status(err: StoreError) -> Status {
    match err {
        StoreError::Unavailable(m) => Status::unavailable(m),
        StoreError::MissingCollection(name) => {
            Status::not_found(format!("Collection `{name}` doesn't exist!"))
        }
        e @ StoreError::Incompatible { .. } => Status::invalid_argument(e.to_string()),
        StoreError::Rejected(m) => Status::invalid_argument(m),
        StoreError::Internal(m) => Status::internal(m),
    }
}

/// Handlers for the RPCs the stand-in does not serve. Written in the shape `#[async_trait]`
/// produces, because that attribute has already run when this macro expands inside the impl.
macro_rules! refuse {
    ($($name:ident: $req:ty => $resp:ty;)*) => {$(
        fn $name<'life0, 'async_trait>(
            &'life0 self,
            _: Request<$req>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Response<$resp>, Status>> + Send + 'async_trait>,
        >
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async { Err(unimplemented(stringify!($name))) })
        }
    )*};
}

#[tonic::async_trait]
impl Collections for Standin {
    async fn get(
        &self,
        request: Request<grpc::GetCollectionInfoRequest>,
    ) -> Result<Response<grpc::GetCollectionInfoResponse>, Status> {
        let start = Instant::now();
        let name = request.into_inner().collection_name;
        let (config, info) = self
            .with_collection(name, |c| {
                Ok((c.config(), c.read(|s| Ok(s.info())).map_err(status)?))
            })
            .await?;
        let payload_schema = info
            .payload_schema
            .into_iter()
            .map(|(key, index)| {
                let data_type = convert::schema_info_type(index.data_type).into();
                (
                    key.to_string(),
                    grpc::PayloadSchemaInfo {
                        data_type,
                        params: None,
                        points: Some(index.points as u64),
                    },
                )
            })
            .collect();
        let result = grpc::CollectionInfo {
            status: grpc::CollectionStatus::Green.into(),
            optimizer_status: Some(grpc::OptimizerStatus {
                ok: true,
                error: String::new(),
            }),
            segments_count: info.segments_count as u64,
            config: Some(grpc::CollectionConfig {
                params: Some(convert::collection_params(&config)),
                ..Default::default()
            }),
            payload_schema,
            points_count: Some(info.points_count as u64),
            indexed_vectors_count: Some(info.indexed_vectors_count as u64),
            ..Default::default()
        };
        Ok(Response::new(grpc::GetCollectionInfoResponse {
            result: Some(result),
            time: start.elapsed().as_secs_f64(),
        }))
    }

    async fn list(
        &self,
        _: Request<grpc::ListCollectionsRequest>,
    ) -> Result<Response<grpc::ListCollectionsResponse>, Status> {
        let start = Instant::now();
        let shards = self.shards.clone();
        let names = run_blocking(move || shards.list()).await.map_err(status)?;
        Ok(Response::new(grpc::ListCollectionsResponse {
            collections: names
                .into_iter()
                .map(|name| grpc::CollectionDescription { name })
                .collect(),
            time: start.elapsed().as_secs_f64(),
        }))
    }

    async fn create(
        &self,
        request: Request<grpc::CreateCollection>,
    ) -> Result<Response<grpc::CollectionOperationResponse>, Status> {
        let start = Instant::now();
        let request = request.into_inner();
        let config = convert::edge_config(&request)?;
        let name = request.collection_name;
        let shards = self.shards.clone();
        let created = run_blocking(move || {
            shards
                .create(&name, config, &[])
                .map(|(_, created)| (name, created))
        })
        .await
        .map_err(status)?;
        match created {
            (_, true) => Ok(Response::new(grpc::CollectionOperationResponse {
                result: true,
                time: start.elapsed().as_secs_f64(),
            })),
            (name, false) => Err(Status::already_exists(format!(
                "Collection `{name}` already exists!"
            ))),
        }
    }

    async fn collection_exists(
        &self,
        request: Request<grpc::CollectionExistsRequest>,
    ) -> Result<Response<grpc::CollectionExistsResponse>, Status> {
        let start = Instant::now();
        let name = request.into_inner().collection_name;
        let shards = self.shards.clone();
        let exists = run_blocking(move || shards.collection(&name).map(|c| c.is_some()))
            .await
            .map_err(status)?;
        Ok(Response::new(grpc::CollectionExistsResponse {
            result: Some(grpc::CollectionExists { exists }),
            time: start.elapsed().as_secs_f64(),
        }))
    }

    refuse! {
        update: grpc::UpdateCollection => grpc::CollectionOperationResponse;
        delete: grpc::DeleteCollection => grpc::CollectionOperationResponse;
        update_aliases: grpc::ChangeAliases => grpc::CollectionOperationResponse;
        list_collection_aliases: grpc::ListCollectionAliasesRequest => grpc::ListAliasesResponse;
        list_aliases: grpc::ListAliasesRequest => grpc::ListAliasesResponse;
        collection_cluster_info: grpc::CollectionClusterInfoRequest => grpc::CollectionClusterInfoResponse;
        update_collection_cluster_setup: grpc::UpdateCollectionClusterSetupRequest => grpc::UpdateCollectionClusterSetupResponse;
        create_shard_key: grpc::CreateShardKeyRequest => grpc::CreateShardKeyResponse;
        delete_shard_key: grpc::DeleteShardKeyRequest => grpc::DeleteShardKeyResponse;
        list_shard_keys: grpc::ListShardKeysRequest => grpc::ListShardKeysResponse;
    }
}

#[tonic::async_trait]
impl Points for Standin {
    async fn upsert(
        &self,
        request: Request<grpc::UpsertPoints>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        let request = request.into_inner();
        if request.update_filter.is_some() {
            return Err(unimplemented("conditional upserts (update_filter)"));
        }
        if request
            .update_mode
            .is_some_and(|m| m != i32::from(grpc::UpdateMode::Upsert))
        {
            return Err(unimplemented("insert-only/update-only modes"));
        }
        let points = request
            .points
            .into_iter()
            .map(convert::point)
            .collect::<Result<Vec<_>, _>>()?;
        let op = UpdateOperation::PointOperation(PointOperations::UpsertPoints(
            PointInsertOperations::PointsList(points),
        ));
        self.write(request.collection_name, op).await
    }

    async fn delete(
        &self,
        request: Request<grpc::DeletePoints>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        use grpc::points_selector::PointsSelectorOneOf as S;
        let request = request.into_inner();
        let op = match request.points.and_then(|p| p.points_selector_one_of) {
            Some(S::Points(ids)) => PointOperations::DeletePoints {
                ids: ids
                    .ids
                    .into_iter()
                    .map(|id| convert::point_id(Some(id)))
                    .collect::<Result<_, _>>()?,
            },
            Some(S::Filter(f)) => {
                PointOperations::DeletePointsByFilter(convert::filter(Some(f))?.unwrap_or_default())
            }
            None => return Err(Status::invalid_argument("points selector is required")),
        };
        self.write(request.collection_name, UpdateOperation::PointOperation(op))
            .await
    }

    async fn set_payload(
        &self,
        request: Request<grpc::SetPayloadPoints>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        use grpc::points_selector::PointsSelectorOneOf as S;
        let request = request.into_inner();
        if request.key.is_some() {
            return Err(unimplemented("set_payload with a key path"));
        }
        let (points, filter) = match request
            .points_selector
            .and_then(|p| p.points_selector_one_of)
        {
            Some(S::Points(ids)) => (
                Some(
                    ids.ids
                        .into_iter()
                        .map(|id| convert::point_id(Some(id)))
                        .collect::<Result<_, _>>()?,
                ),
                None,
            ),
            Some(S::Filter(f)) => (None, convert::filter(Some(f))?),
            None => return Err(Status::invalid_argument("points selector is required")),
        };
        let payload = qdrant_edge::Payload(
            request
                .payload
                .into_iter()
                .map(|(k, v)| (k, value_to_json(v)))
                .collect(),
        );
        let op = UpdateOperation::PayloadOperation(qdrant_edge::PayloadOps::SetPayload(
            qdrant_edge::SetPayloadOp {
                payload,
                points,
                filter,
                key: None,
            },
        ));
        self.write(request.collection_name, op).await
    }

    async fn create_field_index(
        &self,
        request: Request<grpc::CreateFieldIndexCollection>,
    ) -> Result<Response<grpc::PointsOperationResponse>, Status> {
        let request = request.into_inner();
        let schema = convert::field_schema(request.field_type)?;
        let op =
            UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(CreateIndex {
                field_name: convert::json_path(&request.field_name)?,
                field_schema: Some(qdrant_edge::PayloadFieldSchema::FieldType(schema)),
            }));
        self.write(request.collection_name, op).await
    }

    async fn count(
        &self,
        request: Request<grpc::CountPoints>,
    ) -> Result<Response<grpc::CountResponse>, Status> {
        let start = Instant::now();
        let request = request.into_inner();
        let count = CountRequest {
            filter: convert::filter(request.filter)?,
            exact: request.exact.unwrap_or(true),
        };
        let n = self
            .with_collection(request.collection_name, move |c| {
                c.read(|s| s.count(count)).map_err(status)
            })
            .await?;
        Ok(Response::new(grpc::CountResponse {
            result: Some(grpc::CountResult { count: n as u64 }),
            time: start.elapsed().as_secs_f64(),
            usage: None,
        }))
    }

    async fn scroll(
        &self,
        request: Request<grpc::ScrollPoints>,
    ) -> Result<Response<grpc::ScrollResponse>, Status> {
        let start = Instant::now();
        let request = request.into_inner();
        if request.order_by.is_some() {
            return Err(unimplemented("order_by"));
        }
        let scroll = ScrollRequest {
            offset: request
                .offset
                .map(|id| convert::point_id(Some(id)))
                .transpose()?,
            limit: Some(request.limit.map_or(DEFAULT_LIMIT, |l| l as usize)),
            filter: convert::filter(request.filter)?,
            // Qdrant's scroll returns payloads unless told otherwise.
            with_payload: Some(convert::with_payload(request.with_payload, true)?),
            with_vector: convert::with_vectors(request.with_vectors)?,
            order_by: None,
        };
        let (records, next) = self
            .with_collection(request.collection_name, move |c| {
                c.read(|s| s.scroll(scroll)).map_err(status)
            })
            .await?;
        Ok(Response::new(grpc::ScrollResponse {
            next_page_offset: next.map(convert::grpc_point_id),
            result: records
                .into_iter()
                .map(|r| grpc::RetrievedPoint {
                    id: Some(convert::grpc_point_id(r.id)),
                    payload: convert::grpc_payload(r.payload),
                    ..Default::default()
                })
                .collect(),
            time: start.elapsed().as_secs_f64(),
            usage: None,
        }))
    }

    async fn query(
        &self,
        request: Request<grpc::QueryPoints>,
    ) -> Result<Response<grpc::QueryResponse>, Status> {
        let start = Instant::now();
        let request = request.into_inner();
        let name = request.collection_name.clone();
        let query = convert::query(request)?;
        let points = self
            .with_collection(name, move |c| c.read(|s| s.query(query)).map_err(status))
            .await?;
        Ok(Response::new(grpc::QueryResponse {
            result: points
                .into_iter()
                .map(|p| grpc::ScoredPoint {
                    id: Some(convert::grpc_point_id(p.id)),
                    payload: convert::grpc_payload(p.payload),
                    score: p.score,
                    version: p.version,
                    ..Default::default()
                })
                .collect(),
            time: start.elapsed().as_secs_f64(),
            usage: None,
        }))
    }

    refuse! {
        get: grpc::GetPoints => grpc::GetResponse;
        update_vectors: grpc::UpdatePointVectors => grpc::PointsOperationResponse;
        delete_vectors: grpc::DeletePointVectors => grpc::PointsOperationResponse;
        overwrite_payload: grpc::SetPayloadPoints => grpc::PointsOperationResponse;
        delete_payload: grpc::DeletePayloadPoints => grpc::PointsOperationResponse;
        clear_payload: grpc::ClearPayloadPoints => grpc::PointsOperationResponse;
        delete_field_index: grpc::DeleteFieldIndexCollection => grpc::PointsOperationResponse;
        create_vector_name: grpc::CreateVectorNameRequest => grpc::PointsOperationResponse;
        delete_vector_name: grpc::DeleteVectorNameRequest => grpc::PointsOperationResponse;
        search: grpc::SearchPoints => grpc::SearchResponse;
        search_batch: grpc::SearchBatchPoints => grpc::SearchBatchResponse;
        search_groups: grpc::SearchPointGroups => grpc::SearchGroupsResponse;
        recommend: grpc::RecommendPoints => grpc::RecommendResponse;
        recommend_batch: grpc::RecommendBatchPoints => grpc::RecommendBatchResponse;
        recommend_groups: grpc::RecommendPointGroups => grpc::RecommendGroupsResponse;
        discover: grpc::DiscoverPoints => grpc::DiscoverResponse;
        discover_batch: grpc::DiscoverBatchPoints => grpc::DiscoverBatchResponse;
        update_batch: grpc::UpdateBatchPoints => grpc::UpdateBatchResponse;
        query_batch: grpc::QueryBatchPoints => grpc::QueryBatchResponse;
        query_groups: grpc::QueryPointGroups => grpc::QueryGroupsResponse;
        facet: grpc::FacetCounts => grpc::FacetResponse;
        search_matrix_pairs: grpc::SearchMatrixPoints => grpc::SearchMatrixPairsResponse;
        search_matrix_offsets: grpc::SearchMatrixPoints => grpc::SearchMatrixOffsetsResponse;
    }
}

#[tonic::async_trait]
impl Qdrant for Standin {
    async fn health_check(
        &self,
        _: Request<grpc::HealthCheckRequest>,
    ) -> Result<Response<grpc::HealthCheckReply>, Status> {
        Ok(Response::new(grpc::HealthCheckReply {
            title: "qdrant-standin (qdrant-edge 0.7.2; a test stand-in, not Qdrant)".to_string(),
            // The protocol version it speaks: the qdrant-client whose generated types it serves.
            version: "1.20.0".to_string(),
            commit: None,
        }))
    }
}
