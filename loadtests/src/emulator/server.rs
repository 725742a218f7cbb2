//! The emulator's HTTP handlers. One embeddings request goes: authentication → scripted or random
//! fault → validation → rate window → latency → deterministic vectors.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::config::{Api, EmulatorConfig};
use super::limits::{
    FaultKind, FaultQueue, FaultSpec, LimitKind, RateStatus, RateWindow, format_reset,
};
use super::stats::{Outcome, Stats, StatsSnapshot};
use super::wire::{self, ApiError, Parsed};

/// Voyage's largest request (1M tokens at ~4 bytes each, as JSON) must fit.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Shared state of one emulator.
pub(super) struct EmulatorState {
    config: EmulatorConfig,
    faults: Mutex<FaultQueue>,
    /// A storm: every request until the instant gets the fault (a 5xx status rotates through
    /// 500, 502, 503).
    storm: Mutex<Option<(Instant, FaultKind)>>,
    window: Mutex<RateWindow>,
    stats: Mutex<Stats>,
    rng: Mutex<StdRng>,
    shutdown: CancellationToken,
}

/// A poisoned mutex only means a handler panicked mid-update; the counters are still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl EmulatorState {
    pub(super) fn new(config: EmulatorConfig, shutdown: CancellationToken) -> Self {
        let mut faults = FaultQueue::default();
        for spec in &config.initial_faults {
            faults.push(spec.clone());
        }
        let window = RateWindow::new(
            config.rate_window,
            config.requests_per_window,
            config.tokens_per_window,
        );
        let rng = StdRng::seed_from_u64(config.seed);
        EmulatorState {
            config,
            faults: Mutex::new(faults),
            storm: Mutex::new(None),
            window: Mutex::new(window),
            stats: Mutex::new(Stats::new()),
            rng: Mutex::new(rng),
            shutdown,
        }
    }

    pub(super) fn stats_snapshot(&self) -> StatsSnapshot {
        lock(&self.stats).snapshot()
    }

    pub(super) fn inject(&self, spec: FaultSpec) {
        lock(&self.faults).push(spec);
    }

    fn record(&self, outcome: Outcome, inputs: usize, tokens: u64) {
        lock(&self.stats).record(outcome, inputs, tokens);
    }

    pub(super) fn storm(&self, kind: FaultKind, for_: Duration) {
        *lock(&self.storm) = Some((Instant::now() + for_, kind));
    }

    fn next_fault(&self) -> Option<FaultKind> {
        if let Some(kind) = lock(&self.faults).next() {
            return Some(kind);
        }
        let mut rng = lock(&self.rng);
        if let Some((until, kind)) = lock(&self.storm).clone()
            && Instant::now() < until
        {
            return Some(match kind {
                FaultKind::Status { status } if status >= 500 => FaultKind::Status {
                    status: [500, 502, 503][rng.random_range(0..3)],
                },
                other => other,
            });
        }
        if self.config.error_rate > 0.0 && rng.random_bool(self.config.error_rate.min(1.0)) {
            let status = [500, 502, 503][rng.random_range(0..3)];
            return Some(FaultKind::Status { status });
        }
        if self.config.hang_rate > 0.0 && rng.random_bool(self.config.hang_rate.min(1.0)) {
            return Some(FaultKind::Hang { secs: None });
        }
        None
    }

    fn latency(&self, tokens: u64) -> Duration {
        let c = &self.config;
        let jitter = if c.latency_jitter.is_zero() {
            Duration::ZERO
        } else {
            c.latency_jitter.mul_f64(lock(&self.rng).random::<f64>())
        };
        c.latency + jitter + c.latency_per_1k_tokens.mul_f64(tokens as f64 / 1000.0)
    }
}

pub(super) fn router(state: Arc<EmulatorState>) -> Router {
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route(
            "/admin/faults",
            post(add_faults).get(list_faults).delete(clear_faults),
        )
        .route("/admin/stats", get(stats))
        .route("/admin/reset", post(reset))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Counts a request as in flight for as long as its handler future lives (a client that gives up
/// on a hung request drops it).
struct InFlight(Arc<EmulatorState>);

impl InFlight {
    fn start(state: &Arc<EmulatorState>) -> Self {
        lock(&state.stats).request_started();
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0.stats).request_finished();
    }
}

fn json_response(status: u16, body: Vec<u8>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn error_response(api: Api, error: &ApiError) -> Response {
    json_response(
        error.status,
        serde_json::to_vec(&error.body(api)).unwrap_or_default(),
    )
}

fn set_header(response: &mut Response, name: &'static str, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(name, value);
    }
}

/// OpenAI sends these on every answer when limits apply; 429s always carry them.
fn set_rate_headers(response: &mut Response, status: &RateStatus) {
    let (limit_requests, limit_tokens) = (
        status.limit_requests.unwrap_or(10_000),
        status.limit_tokens.unwrap_or(10_000_000),
    );
    set_header(
        response,
        "x-ratelimit-limit-requests",
        limit_requests.to_string(),
    );
    set_header(
        response,
        "x-ratelimit-remaining-requests",
        status.remaining_requests.min(limit_requests).to_string(),
    );
    set_header(
        response,
        "x-ratelimit-limit-tokens",
        limit_tokens.to_string(),
    );
    set_header(
        response,
        "x-ratelimit-remaining-tokens",
        status.remaining_tokens.min(limit_tokens).to_string(),
    );
    set_header(
        response,
        "x-ratelimit-reset-requests",
        format_reset(status.reset_requests),
    );
    set_header(
        response,
        "x-ratelimit-reset-tokens",
        format_reset(status.reset_tokens),
    );
}

fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn rate_limited(
    api: Api,
    model: &str,
    message_limit: Option<(LimitKind, u64, u64, u64)>,
    retry_after: Option<Duration>,
    status: RateStatus,
) -> Response {
    let wait = retry_after.map_or("a moment".to_string(), format_reset);
    let (message, kind) = match message_limit {
        Some((LimitKind::Tokens, limit, used, requested)) => match api {
            Api::Openai => (
                format!(
                    "Rate limit reached for {model} in organization org-emulator on tokens per min (TPM): Limit {limit}, Used {used}, Requested {requested}. Please try again in {wait}. Visit https://platform.openai.com/account/rate-limits to learn more."
                ),
                "tokens",
            ),
            Api::Voyage => (
                format!(
                    "You have exceeded your rate limit of {limit} tokens per window (used {used}, requested {requested}). Please retry after {wait}."
                ),
                "tokens",
            ),
        },
        Some((LimitKind::Requests, limit, used, _)) => match api {
            Api::Openai => (
                format!(
                    "Rate limit reached for {model} in organization org-emulator on requests per min (RPM): Limit {limit}, Used {used}, Requested 1. Please try again in {wait}. Visit https://platform.openai.com/account/rate-limits to learn more."
                ),
                "requests",
            ),
            Api::Voyage => (
                format!(
                    "You have exceeded your rate limit of {limit} requests per window. Please retry after {wait}."
                ),
                "requests",
            ),
        },
        None => (
            format!("Rate limit exceeded (injected fault). Please try again in {wait}."),
            "requests",
        ),
    };
    let error = ApiError {
        status: 429,
        message,
        kind,
        code: Some("rate_limit_exceeded"),
        param: None,
    };
    let mut response = error_response(api, &error);
    if let Some(d) = retry_after {
        set_header(
            &mut response,
            "retry-after",
            retry_after_secs(d).to_string(),
        );
    }
    if api == Api::Openai {
        set_rate_headers(&mut response, &status);
    }
    response
}

fn server_error(api: Api, status: u16) -> ApiError {
    let message = match (api, status) {
        (Api::Openai, 500) => {
            "The server had an error while processing your request. Sorry about that!".to_string()
        }
        (Api::Openai, 503) => {
            "The engine is currently overloaded, please try again later.".to_string()
        }
        (Api::Voyage, 500) => "Internal Server Error".to_string(),
        (Api::Voyage, 503) => {
            "The service is temporarily unavailable. Please try again later.".to_string()
        }
        (_, 502) => "Bad gateway.".to_string(),
        (_, 504) => "Gateway timeout.".to_string(),
        (_, other) => format!("Injected fault: HTTP {other}."),
    };
    ApiError::new(status, message)
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").map(str::trim));
    bearer.or_else(|| headers.get("api-key").and_then(|v| v.to_str().ok()))
}

fn unauthorized(api: Api, presented: Option<&str>) -> ApiError {
    match (api, presented) {
        (Api::Voyage, None) => ApiError::new(
            401,
            "No API key provided. Please provide an API key in the Authorization header.",
        ),
        (Api::Voyage, Some(_)) => ApiError::new(401, "Provided API key is invalid."),
        (Api::Openai, None) => ApiError::new(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        ),
        (Api::Openai, Some(key)) => {
            // OpenAI echoes a masked key: the first three and last four characters.
            let chars: Vec<char> = key.chars().collect();
            let masked = if chars.len() > 8 {
                format!(
                    "{}****{}",
                    chars[..3].iter().collect::<String>(),
                    chars[chars.len() - 4..].iter().collect::<String>()
                )
            } else {
                "****".to_string()
            };
            let mut error = ApiError::new(
                401,
                format!(
                    "Incorrect API key provided: {masked}. You can find your API key at https://platform.openai.com/account/api-keys."
                ),
            );
            error.code = Some("invalid_api_key");
            error
        }
    }
}

async fn embeddings(
    State(state): State<Arc<EmulatorState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = InFlight::start(&state);
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let api = wire::detect_api(state.config.api, state.config.auto_default, json.as_ref());
    let model = json
        .as_ref()
        .and_then(|v| v.get("model"))
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();

    if let Some(expected) = &state.config.api_key {
        let presented = presented_key(&headers);
        if presented != Some(expected.as_str()) {
            state.record(Outcome::Rejected, 0, 0);
            return error_response(api, &unauthorized(api, presented));
        }
    }

    match state.next_fault() {
        None => {}
        Some(FaultKind::RateLimit { retry_after_secs }) => {
            state.record(Outcome::RateLimited, 0, 0);
            let retry_after = retry_after_secs.map(Duration::from_secs);
            let status = RateStatus {
                limit_requests: state.config.requests_per_window,
                remaining_requests: 0,
                limit_tokens: state.config.tokens_per_window,
                remaining_tokens: 0,
                reset_requests: retry_after.unwrap_or(Duration::from_secs(1)),
                reset_tokens: retry_after.unwrap_or(Duration::from_secs(1)),
            };
            return rate_limited(api, &model, None, retry_after, status);
        }
        Some(FaultKind::Status { status }) => {
            let outcome = if status >= 500 {
                Outcome::ServerError
            } else {
                Outcome::Rejected
            };
            state.record(outcome, 0, 0);
            return error_response(api, &server_error(api, status));
        }
        Some(FaultKind::Hang { secs }) => {
            lock(&state.stats).hung();
            let hang = secs.map_or(state.config.hang_duration, Duration::from_secs);
            tokio::select! {
                _ = tokio::time::sleep(hang) => {}
                _ = state.shutdown.cancelled() => {}
            }
            state.record(Outcome::ServerError, 0, 0);
            return error_response(api, &server_error(api, 504));
        }
    }

    let parsed = match wire::parse(api, &body, &state.config.model_dimensions) {
        Ok(parsed) => parsed,
        Err(error) => {
            state.record(Outcome::Rejected, 0, 0);
            return error_response(api, &error);
        }
    };

    let admitted = lock(&state.window).admit(Instant::now(), parsed.total_tokens);
    let rate_status = match admitted {
        Ok(status) => {
            lock(&state.stats).admitted(parsed.total_tokens);
            status
        }
        Err(limited) => {
            state.record(Outcome::RateLimited, 0, 0);
            let detail = Some((limited.kind, limited.limit, limited.used, limited.requested));
            return rate_limited(
                api,
                &parsed.model,
                detail,
                Some(limited.retry_after),
                limited.status,
            );
        }
    };

    let latency = state.latency(parsed.total_tokens);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    respond(&state, parsed, rate_status).await
}

async fn respond(state: &Arc<EmulatorState>, parsed: Parsed, rate_status: RateStatus) -> Response {
    let (inputs, tokens, api) = (parsed.inputs.len(), parsed.total_tokens, parsed.api);
    // Hashing a thousand texts into 2,048-dim vectors and printing them is milliseconds of CPU.
    let body = match tokio::task::spawn_blocking(move || wire::render_success(&parsed)).await {
        Ok(body) => body,
        Err(_) => {
            state.record(Outcome::ServerError, 0, 0);
            return error_response(api, &server_error(api, 500));
        }
    };
    state.record(Outcome::Ok, inputs, tokens);
    let mut response = json_response(200, body);
    if api == Api::Openai && lock(&state.window).is_limited() {
        set_rate_headers(&mut response, &rate_status);
    }
    response
}

async fn add_faults(State(state): State<Arc<EmulatorState>>, body: Bytes) -> Response {
    let specs: Vec<FaultSpec> = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(items)) => match items.into_iter().map(serde_json::from_value).collect() {
            Ok(specs) => specs,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("bad fault spec: {e}")).into_response();
            }
        },
        Ok(one) => match serde_json::from_value(one) {
            Ok(spec) => vec![spec],
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("bad fault spec: {e}")).into_response();
            }
        },
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")).into_response();
        }
    };
    let mut faults = lock(&state.faults);
    for spec in specs {
        faults.push(spec);
    }
    Json(faults.pending()).into_response()
}

async fn list_faults(State(state): State<Arc<EmulatorState>>) -> Json<Vec<FaultSpec>> {
    Json(lock(&state.faults).pending())
}

async fn clear_faults(State(state): State<Arc<EmulatorState>>) -> StatusCode {
    lock(&state.faults).clear();
    StatusCode::NO_CONTENT
}

async fn stats(State(state): State<Arc<EmulatorState>>) -> Json<StatsSnapshot> {
    Json(state.stats_snapshot())
}

async fn reset(State(state): State<Arc<EmulatorState>>) -> StatusCode {
    lock(&state.faults).clear();
    lock(&state.stats).reset();
    let c = &state.config;
    *lock(&state.window) =
        RateWindow::new(c.rate_window, c.requests_per_window, c.tokens_per_window);
    StatusCode::NO_CONTENT
}

async fn metrics(State(state): State<Arc<EmulatorState>>) -> Response {
    let text = lock(&state.stats).prometheus();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
