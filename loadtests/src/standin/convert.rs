//! Translation between Qdrant's gRPC messages (the prost types qdrant-client ships) and
//! qdrant-edge's shard operations. Only what `QdrantStore` and ordinary clients of the same calls
//! send is translated; anything else is refused with `unimplemented`, never silently ignored —
//! except performance knobs (HNSW, quantization, datatypes, consistency, timeouts), which change
//! speed, not results.

use std::collections::HashMap;

use qdrant_client::qdrant::{self as grpc, r#match::MatchValue};
use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    Condition, Distance, EdgeConfig, EdgeSparseVectorParams, EdgeVectorParams, FieldCondition,
    Filter, Fusion, JsonPath, Match, MinShould, Modifier, NamedQuery, Payload, PayloadSchemaType,
    PointId, PointStructPersisted, Prefetch, QueryEnum, QueryRequest, ScoringQuery, SparseVector,
    ValueVariants, VectorInternal, VectorPersisted, VectorStructPersisted, WithPayloadInterface,
    WithVector,
};
use sluice_shared::store::edge::{QDRANT_DEFAULT_RRF_K, exact_search, segments_for_exact_search};
use sluice_shared::store::qdrant::{json_to_value, value_to_json};
use tonic::Status;

/// Qdrant's default `limit` for queries and scrolls.
pub const DEFAULT_LIMIT: usize = 10;

pub fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("qdrant-standin does not implement {what}"))
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

// ---- collections -------------------------------------------------------------------------------

pub fn edge_config(req: &grpc::CreateCollection) -> Result<EdgeConfig, Status> {
    use grpc::vectors_config::Config;
    let mut builder = EdgeConfig::builder();
    let dense: Vec<(String, &grpc::VectorParams)> =
        match req.vectors_config.as_ref().and_then(|v| v.config.as_ref()) {
            Some(Config::Params(p)) => vec![(String::new(), p)],
            Some(Config::ParamsMap(m)) => m.map.iter().map(|(k, v)| (k.clone(), v)).collect(),
            None => Vec::new(),
        };
    for (name, params) in dense {
        if params.multivector_config.is_some() {
            return Err(unimplemented("multivectors"));
        }
        let distance = match grpc::Distance::try_from(params.distance) {
            Ok(grpc::Distance::Cosine) => Distance::Cosine,
            Ok(grpc::Distance::Euclid) => Distance::Euclid,
            Ok(grpc::Distance::Dot) => Distance::Dot,
            Ok(grpc::Distance::Manhattan) => Distance::Manhattan,
            Ok(grpc::Distance::UnknownDistance) | Err(_) => {
                return Err(invalid(format!("vector {name:?}: unknown distance")));
            }
        };
        if params.size == 0 {
            return Err(invalid(format!("vector {name:?}: size must be positive")));
        }
        builder = builder.vector(
            name,
            EdgeVectorParams::builder(params.size as usize, distance).build(),
        );
    }
    for (name, params) in req.sparse_vectors_config.iter().flat_map(|s| s.map.iter()) {
        let mut sparse = EdgeSparseVectorParams::builder();
        match params.modifier.map(grpc::Modifier::try_from) {
            Some(Ok(grpc::Modifier::Idf)) => sparse = sparse.modifier(Modifier::Idf),
            Some(Ok(grpc::Modifier::None)) | None => {}
            Some(Err(_)) => {
                return Err(invalid(format!("sparse vector {name:?}: unknown modifier")));
            }
        }
        builder = builder.sparse_vector(name.clone(), sparse.build());
    }
    // No HNSW graphs and every non-empty segment indexed when the optimizers run: see the
    // module docs of `standin`.
    let config = builder
        .hnsw_config(exact_search())
        .optimizers(segments_for_exact_search())
        .build();
    if config.vectors.is_empty() && config.sparse_vectors.is_empty() {
        return Err(invalid(
            "a collection needs at least one dense or sparse vector",
        ));
    }
    Ok(config)
}

pub fn collection_params(config: &EdgeConfig) -> grpc::CollectionParams {
    let distance = |d: Distance| match d {
        Distance::Cosine => grpc::Distance::Cosine,
        Distance::Euclid => grpc::Distance::Euclid,
        Distance::Dot => grpc::Distance::Dot,
        Distance::Manhattan => grpc::Distance::Manhattan,
    };
    let map = config
        .vectors
        .iter()
        .map(|(name, v)| {
            let params = grpc::VectorParams {
                size: v.size as u64,
                distance: distance(v.distance).into(),
                ..Default::default()
            };
            (name.clone(), params)
        })
        .collect();
    let sparse = config
        .sparse_vectors
        .iter()
        .map(|(name, s)| {
            let modifier = s.modifier.map(|m| match m {
                Modifier::None => grpc::Modifier::None.into(),
                Modifier::Idf => grpc::Modifier::Idf.into(),
            });
            (
                name.clone(),
                grpc::SparseVectorParams {
                    index: None,
                    modifier,
                },
            )
        })
        .collect();
    grpc::CollectionParams {
        shard_number: 1,
        vectors_config: Some(grpc::VectorsConfig {
            config: Some(grpc::vectors_config::Config::ParamsMap(
                grpc::VectorParamsMap { map },
            )),
        }),
        sparse_vectors_config: Some(grpc::SparseVectorConfig { map: sparse }),
        ..Default::default()
    }
}

/// `FieldType` of `CreateFieldIndexCollection` → edge schema type.
pub fn field_schema(field_type: Option<i32>) -> Result<PayloadSchemaType, Status> {
    match field_type.map(grpc::FieldType::try_from) {
        Some(Ok(grpc::FieldType::Keyword)) => Ok(PayloadSchemaType::Keyword),
        Some(Ok(grpc::FieldType::Integer)) => Ok(PayloadSchemaType::Integer),
        Some(Ok(grpc::FieldType::Float)) => Ok(PayloadSchemaType::Float),
        Some(Ok(grpc::FieldType::Geo)) => Ok(PayloadSchemaType::Geo),
        Some(Ok(grpc::FieldType::Text)) => Ok(PayloadSchemaType::Text),
        Some(Ok(grpc::FieldType::Bool)) => Ok(PayloadSchemaType::Bool),
        Some(Ok(grpc::FieldType::Datetime)) => Ok(PayloadSchemaType::Datetime),
        Some(Ok(grpc::FieldType::Uuid)) => Ok(PayloadSchemaType::Uuid),
        Some(Err(_)) | None => Err(invalid("field_type is required")),
    }
}

/// Edge schema type → the `PayloadSchemaType` reported in collection info (numbered differently).
pub fn schema_info_type(t: PayloadSchemaType) -> grpc::PayloadSchemaType {
    match t {
        PayloadSchemaType::Keyword => grpc::PayloadSchemaType::Keyword,
        PayloadSchemaType::Integer => grpc::PayloadSchemaType::Integer,
        PayloadSchemaType::Float => grpc::PayloadSchemaType::Float,
        PayloadSchemaType::Geo => grpc::PayloadSchemaType::Geo,
        PayloadSchemaType::Text => grpc::PayloadSchemaType::Text,
        PayloadSchemaType::Bool => grpc::PayloadSchemaType::Bool,
        PayloadSchemaType::Datetime => grpc::PayloadSchemaType::Datetime,
        PayloadSchemaType::Uuid => grpc::PayloadSchemaType::Uuid,
    }
}

// ---- points ------------------------------------------------------------------------------------

pub fn json_path(field: &str) -> Result<JsonPath, Status> {
    field
        .parse()
        .map_err(|()| invalid(format!("invalid payload key {field:?}")))
}

pub fn point_id(id: Option<grpc::PointId>) -> Result<PointId, Status> {
    use grpc::point_id::PointIdOptions;
    match id.and_then(|id| id.point_id_options) {
        Some(PointIdOptions::Num(n)) => Ok(PointId::NumId(n)),
        Some(PointIdOptions::Uuid(s)) => uuid::Uuid::parse_str(&s)
            .map(PointId::Uuid)
            .map_err(|e| invalid(format!("point id {s:?}: {e}"))),
        None => Err(invalid("point id is required")),
    }
}

pub fn grpc_point_id(id: PointId) -> grpc::PointId {
    match id {
        PointId::NumId(n) => grpc::PointId::from(n),
        PointId::Uuid(u) => grpc::PointId::from(u.to_string()),
    }
}

fn sparse(indices: Vec<u32>, values: Vec<f32>) -> Result<SparseVector, Status> {
    let mut v =
        SparseVector::new(indices, values).map_err(|e| invalid(format!("sparse vector: {e}")))?;
    v.sort_by_indices();
    Ok(v)
}

#[allow(deprecated)] // the pre-1.16 `data`/`indices` fields are still what older clients send
fn vector(v: grpc::Vector) -> Result<VectorPersisted, Status> {
    use grpc::vector::Vector as V;
    match v.vector {
        Some(V::Dense(d)) => Ok(VectorPersisted::Dense(d.data)),
        Some(V::Sparse(s)) => Ok(VectorPersisted::Sparse(sparse(s.indices, s.values)?)),
        Some(V::MultiDense(_)) => Err(unimplemented("multivectors")),
        Some(V::Document(_) | V::Image(_) | V::Object(_)) => {
            Err(unimplemented("server-side inference"))
        }
        None => match v.indices {
            Some(indices) => Ok(VectorPersisted::Sparse(sparse(indices.data, v.data)?)),
            None => Ok(VectorPersisted::Dense(v.data)),
        },
    }
}

pub fn point(p: grpc::PointStruct) -> Result<PointStructPersisted, Status> {
    use grpc::vectors::VectorsOptions;
    let vector = match p.vectors.and_then(|v| v.vectors_options) {
        Some(VectorsOptions::Vector(v)) => match vector(v)? {
            VectorPersisted::Dense(d) => VectorStructPersisted::Single(d),
            other => VectorStructPersisted::Named(HashMap::from([(String::new(), other)])),
        },
        Some(VectorsOptions::Vectors(named)) => VectorStructPersisted::Named(
            named
                .vectors
                .into_iter()
                .map(|(k, v)| Ok((k, vector(v)?)))
                .collect::<Result<_, Status>>()?,
        ),
        None => VectorStructPersisted::Named(HashMap::new()),
    };
    let payload = p
        .payload
        .into_iter()
        .map(|(k, v)| (k, value_to_json(v)))
        .collect();
    Ok(PointStructPersisted {
        id: point_id(p.id)?,
        vector,
        payload: Some(Payload(payload)),
    })
}

pub fn grpc_payload(payload: Option<Payload>) -> HashMap<String, grpc::Value> {
    payload
        .map(|p| {
            p.0.into_iter()
                .map(|(k, v)| (k, json_to_value(v)))
                .collect()
        })
        .unwrap_or_default()
}

pub fn filter(f: Option<grpc::Filter>) -> Result<Option<Filter>, Status> {
    let Some(f) = f else { return Ok(None) };
    // An empty clause means "no condition" (as in Qdrant), not "match nothing".
    let clause = |conds: Vec<grpc::Condition>| -> Result<Option<Vec<Condition>>, Status> {
        if conds.is_empty() {
            Ok(None)
        } else {
            conds
                .into_iter()
                .map(condition)
                .collect::<Result<_, _>>()
                .map(Some)
        }
    };
    Ok(Some(Filter {
        should: clause(f.should)?,
        must: clause(f.must)?,
        must_not: clause(f.must_not)?,
        min_should: f
            .min_should
            .map(|m| -> Result<MinShould, Status> {
                Ok(MinShould {
                    conditions: clause(m.conditions)?.unwrap_or_default(),
                    min_count: m.min_count as usize,
                })
            })
            .transpose()?,
    }))
}

fn condition(c: grpc::Condition) -> Result<Condition, Status> {
    use grpc::condition::ConditionOneOf as C;
    match c.condition_one_of {
        Some(C::Field(f)) => field_condition(f),
        Some(C::HasId(ids)) => Ok(Condition::HasId(
            ids.has_id
                .into_iter()
                .map(|id| point_id(Some(id)))
                .collect::<Result<_, _>>()?,
        )),
        Some(C::Filter(f)) => Ok(Condition::Filter(filter(Some(f))?.unwrap_or_default())),
        Some(C::IsEmpty(_)) => Err(unimplemented("is_empty conditions")),
        Some(C::IsNull(_)) => Err(unimplemented("is_null conditions")),
        Some(C::Nested(_)) => Err(unimplemented("nested conditions")),
        Some(C::HasVector(_)) => Err(unimplemented("has_vector conditions")),
        Some(C::Slice(_)) => Err(unimplemented("slice conditions")),
        None => Err(invalid("empty condition")),
    }
}

fn field_condition(f: grpc::FieldCondition) -> Result<Condition, Status> {
    if let Some(r) = f.range {
        let bound = |b: Option<f64>| b.map(OrderedFloat);
        return Ok(Condition::Field(FieldCondition::new_range(
            json_path(&f.key)?,
            qdrant_edge::Range {
                lt: bound(r.lt),
                gt: bound(r.gt),
                gte: bound(r.gte),
                lte: bound(r.lte),
            },
        )));
    }
    let other = f.geo_bounding_box.is_some()
        || f.geo_radius.is_some()
        || f.values_count.is_some()
        || f.geo_polygon.is_some()
        || f.datetime_range.is_some()
        || f.is_empty.is_some()
        || f.is_null.is_some();
    if other {
        return Err(unimplemented("field conditions other than match and range"));
    }
    let m = match f.r#match.and_then(|m| m.match_value) {
        Some(MatchValue::Keyword(s)) => Match::new_value(ValueVariants::String(s)),
        Some(MatchValue::Integer(i)) => Match::new_value(ValueVariants::Integer(i)),
        Some(MatchValue::Boolean(b)) => Match::new_value(ValueVariants::Bool(b)),
        Some(MatchValue::Text(t)) => Match::new_text(&t),
        Some(MatchValue::Keywords(k)) => Match::from(k.strings),
        Some(MatchValue::Integers(i)) => Match::from(i.integers),
        Some(
            MatchValue::ExceptIntegers(_)
            | MatchValue::ExceptKeywords(_)
            | MatchValue::Phrase(_)
            | MatchValue::TextAny(_)
            | MatchValue::Prefix(_)
            | MatchValue::Substring(_),
        ) => return Err(unimplemented("this match kind")),
        None => return Err(invalid(format!("condition on {:?} has no match", f.key))),
    };
    Ok(Condition::Field(FieldCondition::new_match(
        json_path(&f.key)?,
        m,
    )))
}

pub fn with_payload(
    sel: Option<grpc::WithPayloadSelector>,
    default: bool,
) -> Result<WithPayloadInterface, Status> {
    use grpc::with_payload_selector::SelectorOptions as S;
    match sel.and_then(|s| s.selector_options) {
        None => Ok(WithPayloadInterface::Bool(default)),
        Some(S::Enable(b)) => Ok(WithPayloadInterface::Bool(b)),
        Some(S::Include(inc)) => Ok(WithPayloadInterface::Fields(
            inc.fields
                .iter()
                .map(|f| json_path(f))
                .collect::<Result<_, _>>()?,
        )),
        Some(S::Exclude(_)) => Err(unimplemented("payload exclusion")),
    }
}

/// Vectors are never returned (sluice does not read them back).
pub fn with_vectors(sel: Option<grpc::WithVectorsSelector>) -> Result<WithVector, Status> {
    use grpc::with_vectors_selector::SelectorOptions as S;
    match sel.and_then(|s| s.selector_options) {
        None | Some(S::Enable(false)) => Ok(WithVector::Bool(false)),
        Some(S::Enable(true) | S::Include(_)) => Err(unimplemented("returning vectors")),
    }
}

// ---- query -------------------------------------------------------------------------------------

fn scoring(
    query: Option<grpc::Query>,
    using: Option<String>,
) -> Result<Option<ScoringQuery>, Status> {
    use grpc::query::Variant as Q;
    use grpc::vector_input::Variant as V;
    let Some(variant) = query.and_then(|q| q.variant) else {
        return Ok(None);
    };
    let scoring = match variant {
        Q::Nearest(input) => {
            let v = match input.variant {
                Some(V::Dense(d)) => VectorInternal::Dense(d.data),
                Some(V::Sparse(s)) => VectorInternal::Sparse(sparse(s.indices, s.values)?),
                Some(V::Id(_)) => return Err(unimplemented("querying by point id")),
                Some(V::MultiDense(_)) => return Err(unimplemented("multivectors")),
                Some(V::Document(_) | V::Image(_) | V::Object(_)) => {
                    return Err(unimplemented("server-side inference"));
                }
                None => return Err(invalid("nearest query without a vector")),
            };
            ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery { query: v, using }))
        }
        Q::Fusion(f) => match grpc::Fusion::try_from(f) {
            Ok(grpc::Fusion::Rrf) => ScoringQuery::Fusion(Fusion::Rrf {
                k: QDRANT_DEFAULT_RRF_K,
                weights: None,
            }),
            Ok(grpc::Fusion::Dbsf) => ScoringQuery::Fusion(Fusion::Dbsf),
            Err(_) => return Err(invalid("unknown fusion")),
        },
        Q::Rrf(rrf) => ScoringQuery::Fusion(Fusion::Rrf {
            k: rrf.k.map_or(QDRANT_DEFAULT_RRF_K, |k| k as usize),
            weights: (!rrf.weights.is_empty())
                .then(|| rrf.weights.into_iter().map(OrderedFloat).collect()),
        }),
        Q::Recommend(_) | Q::Discover(_) | Q::Context(_) | Q::RelevanceFeedback(_) => {
            return Err(unimplemented("recommend/discover/context queries"));
        }
        Q::OrderBy(_) | Q::Sample(_) | Q::Formula(_) | Q::NearestWithMmr(_) | Q::Text(_) => {
            return Err(unimplemented("this query kind"));
        }
    };
    Ok(Some(scoring))
}

fn prefetch(p: grpc::PrefetchQuery) -> Result<Prefetch, Status> {
    if p.lookup_from.is_some() {
        return Err(unimplemented("lookup_from"));
    }
    Ok(Prefetch {
        prefetches: p
            .prefetch
            .into_iter()
            .map(prefetch)
            .collect::<Result<_, _>>()?,
        query: scoring(p.query, p.using)?,
        limit: p.limit.map_or(DEFAULT_LIMIT, |l| l as usize),
        params: None,
        filter: filter(p.filter)?,
        score_threshold: p.score_threshold.map(OrderedFloat),
    })
}

pub fn query(q: grpc::QueryPoints) -> Result<QueryRequest, Status> {
    if q.lookup_from.is_some() {
        return Err(unimplemented("lookup_from"));
    }
    Ok(QueryRequest {
        prefetches: q
            .prefetch
            .into_iter()
            .map(prefetch)
            .collect::<Result<_, _>>()?,
        query: scoring(q.query, q.using)?,
        filter: filter(q.filter)?,
        score_threshold: q.score_threshold.map(OrderedFloat),
        limit: q.limit.map_or(DEFAULT_LIMIT, |l| l as usize),
        offset: q.offset.unwrap_or(0) as usize,
        params: None,
        with_vector: with_vectors(q.with_vectors)?,
        // The gRPC Query API returns no payload unless asked.
        with_payload: with_payload(q.with_payload, false)?,
    })
}
