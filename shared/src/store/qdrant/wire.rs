//! Conversions between sluice's types and Qdrant's gRPC messages, and the classification of
//! client errors. The JSON ↔ payload conversions are public: the loadtests stand-in reuses them.

use std::collections::HashMap;

use qdrant_client::QdrantError;
use qdrant_client::qdrant::{
    self, Condition, Filter, PointId, PointStruct, VectorParams, r#match::MatchValue,
};
use tonic::Code;

use crate::model::{ChunkPayload, Point};
use crate::store::{CollectionSpec, DENSE_VECTOR, SPARSE_VECTOR, StoreError};

/// `Incompatible` unless the collection has exactly the vectors `spec` asks for.
pub(super) fn check_compatible(
    spec: &CollectionSpec,
    info: &qdrant::CollectionInfo,
) -> Result<(), StoreError> {
    let params = info.config.as_ref().and_then(|c| c.params.as_ref());
    let dense: HashMap<String, VectorParams> = match params
        .and_then(|p| p.vectors_config.as_ref())
        .and_then(|v| v.config.clone())
    {
        Some(qdrant::vectors_config::Config::ParamsMap(m)) => m.map,
        // An unnamed single vector: sluice never creates one, so it is a mismatch by name.
        Some(qdrant::vectors_config::Config::Params(p)) => HashMap::from([(String::new(), p)]),
        None => HashMap::new(),
    };
    let sparse = params
        .and_then(|p| p.sparse_vectors_config.as_ref())
        .map(|s| s.map.clone())
        .unwrap_or_default();
    let cosine = i32::from(qdrant::Distance::Cosine);
    let idf = i32::from(qdrant::Modifier::Idf);
    let dense_ok = match (spec.dense_dim, dense.get(DENSE_VECTOR)) {
        (Some(dim), Some(v)) => v.size == dim && v.distance == cosine,
        (None, None) => true,
        (Some(_), None) | (None, Some(_)) => false,
    };
    let sparse_ok = sparse
        .get(SPARSE_VECTOR)
        .is_some_and(|s| s.modifier == Some(idf));
    let extra = dense.len() > usize::from(spec.dense_dim.is_some()) || sparse.len() > 1;
    if dense_ok && sparse_ok && !extra {
        return Ok(());
    }
    let mut have: Vec<String> = dense
        .iter()
        .map(|(n, v)| {
            format!(
                "{n:?} dense {} {:?}",
                v.size,
                qdrant::Distance::try_from(v.distance).unwrap_or(qdrant::Distance::UnknownDistance)
            )
        })
        .collect();
    have.extend(sparse.iter().map(|(n, s)| {
        let modifier = s.modifier.and_then(|m| qdrant::Modifier::try_from(m).ok());
        format!("{n:?} sparse modifier {modifier:?}")
    }));
    have.sort();
    let want = match spec.dense_dim {
        Some(dim) => format!(
            "\"{DENSE_VECTOR}\" dense {dim} Cosine, \"{SPARSE_VECTOR}\" sparse modifier Some(Idf)"
        ),
        None => format!("no dense vector, \"{SPARSE_VECTOR}\" sparse modifier Some(Idf)"),
    };
    Err(StoreError::Incompatible {
        name: spec.name.clone(),
        detail: format!(
            "it has [{}], this configuration needs [{want}]",
            have.join(", ")
        ),
    })
}

/// `doc_id == X`. The keyword is built explicitly: qdrant-client's `From<String>` turns a string
/// containing whitespace into a full-text match, and document IDs are often paths with spaces.
pub(super) fn doc_filter(doc_id: &str) -> Filter {
    Filter::must([Condition::matches(
        "doc_id",
        MatchValue::Keyword(doc_id.to_string()),
    )])
}

pub(super) fn to_point_struct(point: Point) -> Result<PointStruct, StoreError> {
    let mut vectors = HashMap::new();
    if let Some(dense) = point.vectors.dense {
        vectors.insert(DENSE_VECTOR.to_string(), qdrant::Vector::new_dense(dense));
    }
    let sparse = point.vectors.sparse;
    if sparse.indices.len() != sparse.values.len() {
        return Err(StoreError::Rejected(format!(
            "point {}: sparse vector has {} indices but {} values",
            point.id,
            sparse.indices.len(),
            sparse.values.len()
        )));
    }
    vectors.insert(
        SPARSE_VECTOR.to_string(),
        qdrant::Vector::new_sparse(sparse.indices, sparse.values),
    );
    let payload = match serde_json::to_value(&point.payload) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
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
    Ok(PointStruct {
        id: Some(PointId::from(point.id.to_string())),
        payload,
        vectors: Some(qdrant::Vectors::from(vectors)),
    })
}

pub(super) fn from_payload(
    id: uuid::Uuid,
    payload: HashMap<String, qdrant::Value>,
) -> Result<ChunkPayload, StoreError> {
    let map = payload
        .into_iter()
        .map(|(k, v)| (k, value_to_json(v)))
        .collect();
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| StoreError::Internal(format!("point {id} payload is not a sluice chunk: {e}")))
}

pub(super) fn point_uuid(id: Option<PointId>) -> Result<uuid::Uuid, StoreError> {
    use qdrant::point_id::PointIdOptions;
    match id.and_then(|id| id.point_id_options) {
        Some(PointIdOptions::Uuid(s)) => uuid::Uuid::parse_str(&s)
            .map_err(|e| StoreError::Internal(format!("server returned point id {s:?}: {e}"))),
        Some(PointIdOptions::Num(n)) => Err(StoreError::Internal(format!(
            "point id {n} is not a UUID; not written by sluice"
        ))),
        None => Err(StoreError::Internal(
            "server returned a point without an id".to_string(),
        )),
    }
}

/// JSON → Qdrant payload value (the client's own conversion needs its `serde` feature).
pub fn json_to_value(v: serde_json::Value) -> qdrant::Value {
    use qdrant::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Kind::IntegerValue(i),
            None => Kind::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(qdrant::ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(qdrant::Struct {
            fields: map
                .into_iter()
                .map(|(k, v)| (k, json_to_value(v)))
                .collect(),
        }),
    };
    qdrant::Value { kind: Some(kind) }
}

/// Qdrant payload value → JSON (a non-finite double becomes `null`, as JSON has no NaN).
pub fn value_to_json(v: qdrant::Value) -> serde_json::Value {
    use qdrant::value::Kind;
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::IntegerValue(i)) => serde_json::Value::from(i),
        Some(Kind::DoubleValue(d)) => serde_json::Number::from_f64(d)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.into_iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .into_iter()
                .map(|(k, v)| (k, value_to_json(v)))
                .collect(),
        ),
    }
}

pub(super) fn status_code(err: &QdrantError) -> Option<Code> {
    match err {
        QdrantError::ResponseError { status }
        | QdrantError::ResourceExhaustedError { status, .. } => Some(status.code()),
        _ => None,
    }
}

/// Classify a client error. Messages carry the gRPC code and the server's message only: the
/// client's own `Display` also prints metadata, and the API key must never reach an error.
pub(super) fn map_error(op: &str, collection: &str, err: QdrantError) -> StoreError {
    let status = match err {
        QdrantError::ResponseError { status } => status,
        QdrantError::ResourceExhaustedError {
            status,
            retry_after_seconds,
        } => {
            return StoreError::Unavailable(format!(
                "{op} on {collection:?}: rate limited ({}), retry after {retry_after_seconds}s",
                status.message()
            ));
        }
        QdrantError::ConversionError(msg) => {
            return StoreError::Rejected(format!("{op} on {collection:?}: {msg}"));
        }
        QdrantError::Io(e) => {
            return StoreError::Unavailable(format!("{op} on {collection:?}: {e}"));
        }
        QdrantError::InvalidUri(e) => {
            return StoreError::Rejected(format!("{op}: invalid Qdrant URL: {e}"));
        }
        QdrantError::NoSnapshotFound(msg) => {
            return StoreError::Internal(format!("{op} on {collection:?}: {msg}"));
        }
        // Variants behind qdrant-client features (reqwest, serde) that another crate in the
        // workspace may switch on; sluice calls nothing that produces them.
        #[allow(unreachable_patterns)]
        other => return StoreError::Internal(format!("{op} on {collection:?}: {other}")),
    };
    let msg = format!(
        "{op} on {collection:?}: {:?}: {}",
        status.code(),
        status.message()
    );
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Aborted
        | Code::ResourceExhausted => StoreError::Unavailable(msg),
        Code::NotFound => StoreError::MissingCollection(collection.to_string()),
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::AlreadyExists
        | Code::Unimplemented => StoreError::Rejected(msg),
        Code::Unauthenticated | Code::PermissionDenied => {
            StoreError::Rejected(format!("{msg} (check the Qdrant API key setting)"))
        }
        // qdrant-client reports a failed TCP/TLS connect as Internal "Failed to connect to ..."
        // (channel_pool.rs `make_channel`); that is the server being unreachable.
        Code::Internal if status.message().starts_with("Failed to connect to") => {
            StoreError::Unavailable(msg)
        }
        Code::Internal | Code::Unknown | Code::DataLoss | Code::Ok => StoreError::Internal(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_qdrant_values() {
        let v =
            serde_json::json!({"a": 1, "b": 2.5, "c": "x y", "d": [true, null], "e": {"f": -3}});
        assert_eq!(value_to_json(json_to_value(v.clone())), v);
    }

    #[test]
    fn doc_filter_is_a_keyword_match_even_with_spaces() {
        let f = doc_filter("reports/annual report.pdf");
        let Some(qdrant::condition::ConditionOneOf::Field(field)) = &f.must[0].condition_one_of
        else {
            panic!("{f:?}")
        };
        assert_eq!(
            field.r#match.as_ref().unwrap().match_value,
            Some(MatchValue::Keyword("reports/annual report.pdf".into()))
        );
    }

    #[test]
    fn connect_failures_are_unavailable() {
        let err = map_error(
            "count",
            "c",
            QdrantError::ResponseError {
                status: tonic::Status::internal("Failed to connect to http://x: refused"),
            },
        );
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        let err = map_error(
            "count",
            "c",
            QdrantError::ResponseError {
                status: tonic::Status::not_found("Collection `c` doesn't exist!"),
            },
        );
        assert!(matches!(err, StoreError::MissingCollection(ref c) if c == "c"));
    }
}
