//! The scheduler's HTTP API (`/v1/...`): accept jobs, show a document, show fleet statistics.
//!
//! ```text
//!  POST /v1/jobs ──► Job::parse_limited ──► allow-list ──► publish (confirmed) ──► 202 {job_id, kind}
//!                        └─ invalid / too large ─► 400 {error, error_kind}
//!                                          └─ outside SLUICE_ALLOWED_SOURCES ─► 403 {error, error_kind: forbidden_source}
//!                                                               └─ not confirmed ─► 503 {error}
//!  GET /v1/documents/{id}?collection= ──► metadata store ──► 200 | 404
//!  GET /v1/stats?collection=          ──► queue depths (probe) + metadata stats
//! ```
//!
//! Answers are JSON, errors as `{"error": "..."}` (except axum's own plain-text refusals of an
//! oversized body or an unparsable query string). When an API key is configured, every `/v1`
//! route requires it; the ops routes (`/healthz`, `/readyz`, `/metrics`) are merged in by the
//! caller and stay open.
//!
//! Every request (probes included) runs under `SLUICE_API_TIMEOUT_SECS` and at most
//! `SLUICE_API_MAX_CONCURRENT_REQUESTS` run at once ([`with_limits`]). A 503 names the
//! dependency that failed (`{"error": .., "dependency": "broker"}`); its internal message goes to
//! the log, not to the client.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use sluice_shared::job::{Job, JobLimits, JobSpec};
use sluice_shared::metadata::MetadataStore;
use sluice_shared::queue::{Publisher, QueueSettings, job_headers};
use sluice_shared::secret::{Secret, redact};
use sluice_shared::source::AllowList;
use tokio::sync::Semaphore;

use super::stats::{self, BrokerProbe};

/// Publishes waiting for a confirm at once. Each holds a request open (for up to the publisher's
/// retries while the broker is away); past this, new requests wait for a slot instead of piling
/// more unconfirmed messages onto a struggling broker.
const MAX_PUBLISHES_IN_FLIGHT: usize = 256;

/// Everything the handlers need.
pub struct ApiState {
    pub publisher: Arc<Publisher>,
    pub metadata: Arc<dyn MetadataStore>,
    pub probe: Arc<BrokerProbe>,
    pub queue: QueueSettings,
    pub s3_events_queue: Option<String>,
    /// Collection of `GET /v1/documents/{id}` when the query names none.
    pub default_collection: String,
    pub api_key: Option<Secret>,
    /// `SLUICE_ALLOWED_SOURCES` plus `SLUICE_WATCH`: index jobs for anything else are refused
    /// here already (the workers check again, after resolving symlinks on their own disks).
    pub allowed_sources: AllowList,
    /// `SLUICE_MAX_JOB_BYTES`, `SLUICE_MAX_METADATA_BYTES`.
    pub job_limits: JobLimits,
    publish_slots: Semaphore,
}

impl ApiState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        publisher: Arc<Publisher>,
        metadata: Arc<dyn MetadataStore>,
        probe: Arc<BrokerProbe>,
        queue: QueueSettings,
        s3_events_queue: Option<String>,
        default_collection: String,
        api_key: Option<Secret>,
        allowed_sources: AllowList,
        job_limits: JobLimits,
    ) -> Self {
        ApiState {
            publisher,
            metadata,
            probe,
            queue,
            s3_events_queue,
            default_collection,
            api_key,
            allowed_sources,
            job_limits,
            publish_slots: Semaphore::new(MAX_PUBLISHES_IN_FLIGHT),
        }
    }
}

type Shared = Arc<ApiState>;

/// The `/v1` routes with authentication and request metrics.
pub fn router(state: Shared) -> Router {
    let max_body = state.job_limits.max_job_bytes;
    Router::new()
        .route(
            "/v1/jobs",
            post(post_job).layer(DefaultBodyLimit::max(max_body)),
        )
        // A wildcard: document ids are often URIs, and clients do not always encode their slashes.
        .route("/v1/documents/{*id}", get(get_document))
        .route("/v1/stats", get(get_stats))
        // route_layer: runs only for matched routes, so unknown paths stay plain 404s. The layer
        // added last runs first: requests are counted even when authentication refuses them.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
        .route_layer(middleware::from_fn(count_requests))
        .with_state(state)
}

/// Bounds every request (the `/v1` routes and the probes alike): a time limit, body included,
/// and a cap on requests handled at once, past which requests are refused with a 503 at once
/// rather than queued (a client retries; a queue would only grow).
pub fn with_limits(app: Router, timeout: Duration, max_concurrent: usize) -> Router {
    let slots = Arc::new(Semaphore::new(max_concurrent));
    app.layer(middleware::from_fn(move |request: Request, next: Next| {
        let slots = slots.clone();
        async move {
            let Ok(_slot) = slots.try_acquire() else {
                let mut response = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many requests in flight (SLUICE_API_MAX_CONCURRENT_REQUESTS); retry shortly",
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            };
            match tokio::time::timeout(timeout, next.run(request)).await {
                Ok(response) => response,
                Err(_) => error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request took longer than {} s (SLUICE_API_TIMEOUT_SECS)",
                        timeout.as_secs_f64()
                    ),
                ),
            }
        }
    }))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// A refused job: `{error, error_kind}`.
fn refused(status: StatusCode, message: String, kind: &'static str) -> Response {
    (
        status,
        axum::Json(json!({ "error": message, "error_kind": kind })),
    )
        .into_response()
}

/// A dependency failed: say which, log why (the message may name hosts or echo a URL).
fn unavailable(
    dependency: &'static str,
    message: &str,
    detail: &dyn std::fmt::Display,
) -> Response {
    tracing::warn!(dependency, error = %redact(&detail.to_string()), "{message}");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({ "error": message, "dependency": dependency })),
    )
        .into_response()
}

async fn post_job(State(state): State<Shared>, body: Bytes) -> Response {
    let mut job = match Job::parse_limited(&body, &state.job_limits) {
        Ok(job) => job,
        Err(e) => return refused(StatusCode::BAD_REQUEST, e.to_string(), e.kind()),
    };
    if let JobSpec::Index(index) = &job.spec
        && let Err(e) = state.allowed_sources.check_lexical(&index.source)
    {
        let status = match e.kind() {
            "forbidden_source" => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        };
        return refused(status, e.to_string(), e.kind());
    }
    // Publish-to-ack time is measured from here when the client did not stamp the job itself.
    job.enqueued_at.get_or_insert_with(Utc::now);
    let _slot = state
        .publish_slots
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let kind = job.spec.kind();
    match state
        .publisher
        .publish_with_retry(
            &state.queue.routing_key,
            job.to_json().as_bytes(),
            job_headers(0),
        )
        .await
    {
        Ok(()) => {
            sluice_shared::metrics::jobs_published_total(kind, "api").increment(1);
            tracing::info!(job_id = %job.job_id, kind, "job accepted");
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({
                    "job_id": job.job_id,
                    "kind": kind,
                    "enqueued_at": job.enqueued_at,
                })),
            )
                .into_response()
        }
        Err(e) => {
            let mut response = unavailable(
                "broker",
                "the broker did not confirm the job, it was not queued",
                &e,
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            response
        }
    }
}

#[derive(Deserialize)]
struct CollectionQuery {
    collection: Option<String>,
}

async fn get_document(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(query): Query<CollectionQuery>,
) -> Response {
    let collection = query
        .collection
        .unwrap_or_else(|| state.default_collection.clone());
    match state.metadata.get(&collection, &id).await {
        Ok(Some(doc)) => axum::Json(json!({
            "collection": doc.collection,
            "doc_id": doc.doc_id,
            "source": doc.source,
            "tenant": doc.tenant,
            "status": doc.status,
            "version": doc.current_version,
            "chunks": doc.chunk_count,
            "tokens": doc.tokens,
            "attempts": doc.attempts,
            "last_error": doc.last_error,
            "content_hash": doc.content_hash,
            "created_at": doc.created_at,
            "updated_at": doc.updated_at,
            "indexed_at": doc.indexed_at,
        }))
        .into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no document {id:?} in collection {collection:?}"),
        ),
        Err(e) => unavailable("database", "the metadata store is unavailable", &e),
    }
}

async fn get_stats(State(state): State<Shared>, Query(query): Query<CollectionQuery>) -> Response {
    match stats::gather(
        &state.probe,
        &state.queue,
        state.s3_events_queue.as_deref(),
        state.metadata.as_ref(),
        query.collection.as_deref(),
    )
    .await
    {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => unavailable("database", "the metadata store is unavailable", &e),
    }
}

/// Refuses `/v1` requests without the configured key (`Authorization: Bearer <key>` or
/// `x-api-key: <key>`). Never logs what was sent.
async fn require_api_key(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let Some(key) = &state.api_key else {
        return next.run(request).await;
    };
    if presented_keys(request.headers()).any(|k| constant_time_eq(k, key.expose().as_bytes())) {
        return next.run(request).await;
    }
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong API key: send it as `Authorization: Bearer <key>` or `x-api-key: <key>`",
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The keys a request carries, in either accepted header.
fn presented_keys(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .into_iter()
        .filter_map(|v| {
            let v = v.as_bytes();
            // The scheme is case-insensitive (RFC 7235).
            (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| &v[7..])
        });
    let plain = headers
        .get_all("x-api-key")
        .into_iter()
        .map(HeaderValue::as_bytes);
    bearer.chain(plain)
}

/// Compares without stopping at the first difference, so response time does not reveal how much
/// of a guessed key was right. (Only the length check returns early; the length alone does not
/// help guess a key.)
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts every matched `/v1` request by route template (not the raw path: document ids would
/// make the label set unbounded) and status.
async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    sluice_shared::metrics::api_requests_total(route, response.status().as_u16().to_string())
        .increment(1);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slow_requests_time_out_and_excess_ones_are_refused() {
        let slow = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "done"
            }),
        );
        let app = with_limits(slow, Duration::from_millis(300), 1);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/slow", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let first = tokio::spawn(reqwest::get(url.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The only slot is taken: refused at once, with a hint when to retry.
        let second = reqwest::get(&url).await.unwrap();
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(second.headers()[header::RETRY_AFTER], "1");
        let first = first.await.unwrap().unwrap();
        assert_eq!(first.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(
            first
                .text()
                .await
                .unwrap()
                .contains("SLUICE_API_TIMEOUT_SECS")
        );
    }

    #[test]
    fn keys_are_read_from_both_headers_and_compared_exactly() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer s3cret"),
        );
        headers.insert("x-api-key", HeaderValue::from_static("other"));
        let keys: Vec<&[u8]> = presented_keys(&headers).collect();
        assert_eq!(keys, [b"s3cret".as_slice(), b"other".as_slice()]);

        let mut basic = HeaderMap::new();
        basic.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic s3cret"),
        );
        assert_eq!(presented_keys(&basic).count(), 0, "only the Bearer scheme");

        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3cres"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret "));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
