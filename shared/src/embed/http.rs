//! The HTTP half of the dense embedders: sends one JSON request with retries, records metrics,
//! and turns provider answers into [`AttemptError`]s. Voyage and OpenAI-compatible providers differ
//! only in their request/response bodies, which live in `voyage.rs` and `openai.rs`.

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::{StreamExt, TryStreamExt};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::batch::{Batch, BatchLimits, plan_batches};
use super::limiter::{EmbedLimiter, RateHeaders, RequestOutcome};
use super::retry::{AttemptError, RetryPolicy, parse_retry_after, with_retries};
use super::{DenseEmbeddings, EmbedError};
use crate::secret::{Secret, redact_url};

/// How many bytes of an error body are read for the message; error bodies are small, a proxy's
/// HTML error page is not worth more.
const MAX_ERROR_BODY: usize = 4096;

/// Sends embedding requests to one endpoint.
pub(crate) struct HttpSender {
    provider: &'static str,
    client: reqwest::Client,
    url: reqwest::Url,
    auth: Option<(HeaderName, HeaderValue)>,
    key: Option<Secret>,
    policy: RetryPolicy,
    limiter: Option<Arc<EmbedLimiter>>,
}

/// What an answer said that the limiter learns from, besides its status.
#[derive(Default)]
struct Feedback {
    headers: Option<RateHeaders>,
    billed_tokens: Option<u64>,
}

/// Settings shared by every HTTP provider.
pub(crate) struct SenderSettings<'a> {
    pub provider: &'static str,
    pub base_url: &'a str,
    pub api_key: Option<&'a Secret>,
    /// `None`: `Authorization: Bearer <key>`; `Some(name)`: `<name>: <key>` (Azure's `api-key`).
    pub api_key_header: Option<&'a str>,
    pub request_timeout: Duration,
    pub policy: RetryPolicy,
    /// Admission control shared by every request of the embedder; `None` sends at once.
    pub limiter: Option<Arc<EmbedLimiter>>,
}

impl HttpSender {
    pub(crate) fn new(settings: SenderSettings<'_>) -> Result<Self, EmbedError> {
        let provider = settings.provider;
        let invalid = |message: String| EmbedError::InvalidSettings { provider, message };
        let url = embeddings_url(settings.base_url).map_err(invalid)?;
        let auth = match settings.api_key {
            None => None,
            Some(key) => {
                let (name, value) = match settings.api_key_header {
                    None => (AUTHORIZATION, format!("Bearer {}", key.expose())),
                    Some(header) => (
                        HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                            invalid(format!(
                                "api_key_header {header:?} is not a valid header name"
                            ))
                        })?,
                        key.expose().to_string(),
                    ),
                };
                let mut value = HeaderValue::from_str(&value).map_err(|_| {
                    invalid("api_key contains characters not allowed in an HTTP header".to_string())
                })?;
                // Keeps the key out of reqwest/hyper debug output.
                value.set_sensitive(true);
                Some((name, value))
            }
        };
        if settings.request_timeout.is_zero() {
            return Err(invalid(
                "request_timeout must be greater than zero".to_string(),
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(format!("cannot build HTTP client: {e}")))?;
        Ok(HttpSender {
            provider,
            client,
            url,
            auth,
            key: settings.api_key.cloned(),
            policy: settings.policy,
            limiter: settings.limiter,
        })
    }

    /// POSTs `body` (retrying per the policy) and decodes a 2xx answer as `R`.
    pub(crate) async fn post_json<B: Serialize, R: DeserializeOwned>(
        &self,
        body: &B,
    ) -> Result<R, EmbedError> {
        let body = serde_json::to_vec(body).map_err(|e| EmbedError::Protocol {
            provider: self.provider,
            message: format!("cannot encode request: {e}"),
        })?;
        with_retries(self.provider, &self.policy, || self.attempt(&body)).await
    }

    async fn attempt<R: DeserializeOwned>(&self, body: &[u8]) -> Result<R, AttemptError> {
        // Every attempt is a request the provider counts, so each one asks the limiter. The
        // estimate is taken over the whole JSON body (the bytes/3 rule of `estimate_tokens`):
        // the few bytes of framing only make it more conservative, and it is settled against the
        // billed `usage` when the answer comes.
        let permit = match &self.limiter {
            Some(limiter) => {
                let tokens = body.len().div_ceil(3) as u64;
                Some(limiter.acquire(tokens).await)
            }
            None => None,
        };
        let started = Instant::now();
        let mut feedback = Feedback::default();
        let result = self.attempt_inner(body, &mut feedback).await;
        if let Some(permit) = permit {
            permit.finish(match &result {
                Ok(_) => RequestOutcome::Success {
                    headers: feedback.headers,
                    billed_tokens: feedback.billed_tokens,
                },
                Err(AttemptError::Status {
                    status: 429,
                    retry_after,
                    ..
                }) => RequestOutcome::RateLimited {
                    retry_after: *retry_after,
                    headers: feedback.headers,
                },
                Err(_) => RequestOutcome::Failed,
            });
        }
        let outcome = match &result {
            Ok(_) => "ok",
            Err(AttemptError::Status { status: 429, .. }) => "rate_limited",
            Err(AttemptError::Status {
                status: 500..=599, ..
            }) => "server_error",
            Err(AttemptError::Status { .. }) => "rejected",
            Err(AttemptError::Timeout) => "timeout",
            Err(AttemptError::Transport(_)) => "transport",
            Err(AttemptError::Protocol(_)) => "protocol",
        };
        let provider = self.provider;
        crate::metrics::embed_requests_total(provider, outcome).increment(1);
        crate::metrics::embed_request_duration_seconds(provider)
            .record(started.elapsed().as_secs_f64());
        if outcome == "rate_limited" {
            crate::metrics::embed_rate_limited_total(provider).increment(1);
        }
        result
    }

    async fn attempt_inner<R: DeserializeOwned>(
        &self,
        body: &[u8],
        feedback: &mut Feedback,
    ) -> Result<R, AttemptError> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json");
        if let Some((name, value)) = &self.auth {
            request = request.header(name.clone(), value.clone());
        }
        let response = request
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        if self.limiter.is_some() {
            feedback.headers = RateHeaders::from_headers(response.headers());
        }
        if status.is_success() {
            let bytes = response
                .bytes()
                .await
                .map_err(|e| self.transport_error(e))?;
            if self.limiter.is_some() {
                feedback.billed_tokens = billed_tokens(&bytes);
            }
            return serde_json::from_slice(&bytes).map_err(|e| {
                AttemptError::Protocol(format!(
                    "HTTP {} body does not match the embeddings response format: {e}",
                    status.as_u16()
                ))
            });
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // A failure to read the error body still leaves the status to act on.
        let bytes = response.bytes().await.unwrap_or_default();
        let bytes = &bytes[..bytes.len().min(MAX_ERROR_BODY)];
        let message = provider_message(bytes)
            .or_else(|| {
                let text = String::from_utf8_lossy(bytes).trim().to_string();
                (!text.is_empty()).then_some(text)
            })
            .unwrap_or_else(|| {
                status
                    .canonical_reason()
                    .unwrap_or("no message")
                    .to_string()
            });
        Err(AttemptError::Status {
            status: status.as_u16(),
            message: self.scrub(message),
            retry_after,
        })
    }

    fn transport_error(&self, error: reqwest::Error) -> AttemptError {
        if error.is_timeout() {
            return AttemptError::Timeout;
        }
        // reqwest's own message is terse ("error sending request"); the causes explain it. The
        // URL is printed by us, redacted.
        let error = error.without_url();
        let mut message = format!("{error} ({})", redact_url(self.url.as_str()));
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        AttemptError::Transport(self.scrub(message))
    }

    /// Removes the API key from text that came from outside (error bodies, library errors), in
    /// case a proxy or a misbehaving server echoes it.
    fn scrub(&self, text: String) -> String {
        match &self.key {
            Some(key) if !key.expose().is_empty() => text.replace(key.expose(), "[redacted]"),
            Some(_) | None => text,
        }
    }
}

/// The `usage.total_tokens` of a success body, read from its tail: both Voyage and OpenAI put
/// `usage` after `data`, and scanning the last bytes is cheaper than decoding megabytes of
/// vectors a second time. `None` when it is not there (then the estimate stands).
pub(crate) fn billed_tokens(body: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"total_tokens\"";
    let tail = &body[body.len().saturating_sub(512)..];
    let at = tail.windows(KEY.len()).rposition(|w| w == KEY)?;
    let rest = &tail[at + KEY.len()..];
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
    let rest = rest.strip_prefix(b":")?;
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let digits = rest[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&rest[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

/// `<base>/v1/embeddings`, or `<base>/embeddings` when the base already ends in `/v1` (the usual
/// form of OpenAI-compatible base URLs). A query string (Azure's `api-version`) is kept.
pub(crate) fn embeddings_url(base_url: &str) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(base_url.trim()).map_err(|e| {
        format!(
            "base_url {:?} is not a valid URL: {e}",
            redact_url(base_url)
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "base_url {:?} must use http or https",
            redact_url(base_url)
        ));
    }
    let path = url.path().trim_end_matches('/').to_string();
    let path = if path.ends_with("/v1") {
        format!("{path}/embeddings")
    } else {
        format!("{path}/v1/embeddings")
    };
    url.set_path(&path);
    Ok(url)
}

/// The human-readable message of a provider error body: OpenAI's `error.message`, Voyage's
/// `detail` (a string, or FastAPI's list of validation errors), or a bare `error`/`message`.
pub(crate) fn provider_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if let Some(message) = value.pointer("/error/message") {
        return Some(text(message));
    }
    ["detail", "error", "message"]
        .iter()
        .find_map(|field| value.get(field).map(text))
}

/// Runs the planned requests, at most `concurrency` at a time, and returns their results in plan
/// order. The first failure cancels the requests still in flight.
pub(crate) async fn run_batches<T, F, Fut>(
    batches: Vec<Batch>,
    concurrency: usize,
    send: F,
) -> Result<Vec<T>, EmbedError>
where
    F: FnMut(Batch) -> Fut,
    Fut: Future<Output = Result<T, EmbedError>>,
{
    futures::stream::iter(batches)
        .map(send)
        .buffered(concurrency.max(1))
        .try_collect()
        .await
}

/// The common body of [`super::Embedder::embed`]: plans requests within `limits`, sends them with
/// `send` (at most `concurrency` at once) and concatenates the vectors in input order.
pub(crate) async fn embed_all<'t, F, Fut>(
    provider: &'static str,
    texts: &'t [String],
    limits: &BatchLimits,
    concurrency: usize,
    mut send: F,
) -> Result<DenseEmbeddings, EmbedError>
where
    F: FnMut(&'t [String]) -> Fut,
    Fut: Future<Output = Result<DenseEmbeddings, EmbedError>>,
{
    let plan = plan_batches(texts, limits).map_err(|oversize| EmbedError::InputTooLong {
        provider,
        index: oversize.index,
        tokens: oversize.tokens,
        limit: oversize.limit,
    })?;
    tracing::debug!(
        provider,
        inputs = texts.len(),
        requests = plan.len(),
        "embedding batch planned"
    );
    let parts = run_batches(plan, concurrency, |batch| send(&texts[batch.range])).await?;
    let mut all = DenseEmbeddings {
        vectors: Vec::with_capacity(texts.len()),
        tokens: 0,
    };
    for part in parts {
        all.vectors.extend(part.vectors);
        all.tokens += part.tokens;
    }
    crate::metrics::embed_tokens_total(provider).increment(all.tokens);
    Ok(all)
}

/// Puts a response's `(index, vector)` pairs in input order and checks them: one vector per input,
/// every index once, one shared length, equal to `dimension` when one was requested.
pub(crate) fn order_vectors(
    provider: &'static str,
    items: Vec<(usize, Vec<f32>)>,
    expected: usize,
    dimension: Option<u32>,
) -> Result<Vec<Vec<f32>>, EmbedError> {
    let protocol = |message: String| EmbedError::Protocol { provider, message };
    if items.len() != expected {
        return Err(protocol(format!(
            "{} embeddings returned for {expected} inputs",
            items.len()
        )));
    }
    let mut slots: Vec<Option<Vec<f32>>> = vec![None; expected];
    for (index, vector) in items {
        let slot = slots
            .get_mut(index)
            .ok_or_else(|| protocol(format!("embedding index {index} out of range")))?;
        if slot.replace(vector).is_some() {
            return Err(protocol(format!("embedding index {index} returned twice")));
        }
    }
    let vectors: Vec<Vec<f32>> = slots.into_iter().map(|v| v.unwrap_or_default()).collect();
    let width = vectors.first().map_or(0, Vec::len);
    if let Some(bad) = vectors
        .iter()
        .position(|v| v.len() != width || v.is_empty())
    {
        return Err(protocol(format!(
            "embedding {bad} has {} dimensions, expected {width}",
            vectors[bad].len()
        )));
    }
    if let Some(dimension) = dimension
        && width != dimension as usize
    {
        return Err(protocol(format!(
            "embeddings have {width} dimensions, requested {dimension}"
        )));
    }
    Ok(vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_appends_v1_embeddings_unless_base_ends_in_v1() {
        let u = |s| embeddings_url(s).unwrap().to_string();
        assert_eq!(
            u("https://api.voyageai.com"),
            "https://api.voyageai.com/v1/embeddings"
        );
        assert_eq!(
            u("https://api.openai.com/"),
            "https://api.openai.com/v1/embeddings"
        );
        assert_eq!(
            u("http://127.0.0.1:8000/v1"),
            "http://127.0.0.1:8000/v1/embeddings"
        );
        assert_eq!(
            u("http://h/openai/v1/?api-version=x"),
            "http://h/openai/v1/embeddings?api-version=x"
        );
        assert!(embeddings_url("ftp://h").is_err());
        assert!(embeddings_url("not a url").is_err());
    }

    #[test]
    fn echoed_keys_are_scrubbed_and_absent_from_debug_output() {
        let sender = HttpSender::new(SenderSettings {
            provider: "p",
            base_url: "http://127.0.0.1:1",
            api_key: Some(&Secret::new("sk-very-secret")),
            api_key_header: None,
            request_timeout: Duration::from_secs(1),
            policy: RetryPolicy::default(),
            limiter: None,
        })
        .unwrap();
        let scrubbed = sender.scrub("Incorrect API key provided: sk-very-secret.".to_string());
        assert_eq!(scrubbed, "Incorrect API key provided: [redacted].");
        let (_, value) = sender.auth.as_ref().unwrap();
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("sk-very-secret"));
    }

    #[tokio::test]
    async fn connection_errors_are_retried_then_reported_without_the_key() {
        // Port 1 on loopback refuses connections.
        let sender = HttpSender::new(SenderSettings {
            provider: "p",
            base_url: "http://127.0.0.1:1",
            api_key: Some(&Secret::new("sk-very-secret")),
            api_key_header: Some("api-key"),
            request_timeout: Duration::from_secs(1),
            policy: RetryPolicy {
                max_retries: 1,
                min_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(1),
                ..RetryPolicy::default()
            },
            limiter: None,
        })
        .unwrap();
        let err = sender
            .post_json::<_, serde_json::Value>(&serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(
            matches!(err, EmbedError::Transport { attempts: 2, .. }),
            "{err}"
        );
        assert!(!format!("{err} {err:?}").contains("sk-very-secret"));
    }

    #[test]
    fn billed_tokens_are_read_from_the_body_tail() {
        assert_eq!(
            billed_tokens(
                br#"{"data":[],"model":"m","usage":{"prompt_tokens":7,"total_tokens":42}}"#
            ),
            Some(42)
        );
        assert_eq!(
            billed_tokens(br#"{"usage": {"total_tokens" : 5}}"#),
            Some(5)
        );
        assert_eq!(billed_tokens(br#"{"data":[]}"#), None);
    }

    #[test]
    fn provider_message_reads_both_error_shapes() {
        let openai = br#"{"error":{"message":"bad input","type":"invalid_request_error","param":null,"code":null}}"#;
        assert_eq!(provider_message(openai).as_deref(), Some("bad input"));
        assert_eq!(
            provider_message(br#"{"detail":"Provided API key is invalid."}"#).as_deref(),
            Some("Provided API key is invalid.")
        );
        let fastapi = br#"{"detail":[{"loc":["body","input"],"msg":"field required"}]}"#;
        assert!(
            provider_message(fastapi)
                .unwrap()
                .contains("field required")
        );
        assert_eq!(provider_message(b"<html>"), None);
    }

    #[test]
    fn vectors_are_ordered_by_index_and_checked() {
        let items = vec![(1, vec![2.0, 2.0]), (0, vec![1.0, 1.0])];
        assert_eq!(
            order_vectors("p", items, 2, Some(2)).unwrap(),
            vec![vec![1.0, 1.0], vec![2.0, 2.0]]
        );
        assert!(order_vectors("p", vec![(0, vec![1.0])], 2, None).is_err());
        assert!(order_vectors("p", vec![(0, vec![1.0]), (0, vec![1.0])], 2, None).is_err());
        assert!(order_vectors("p", vec![(0, vec![1.0]), (1, vec![1.0, 2.0])], 2, None).is_err());
        assert!(order_vectors("p", vec![(0, vec![1.0])], 1, Some(3)).is_err());
    }
}
