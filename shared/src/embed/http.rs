//! The HTTP half of the dense embedders: sends one JSON request to the embeddings endpoint with
//! retries, reads the answer into the envelope both providers share, and accounts for every
//! attempt once — its [`AttemptOutcome`] drives the retry, labels the metrics and tells the
//! limiter. What differs between providers (request bodies, vector encodings, limits) lives in
//! `voyage.rs` and `openai.rs`, and `client.rs` ties the two halves together.

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use serde::de::DeserializeOwned;

use super::EmbedError;
use super::client::EmbeddingsResponse;
use super::limiter::{EmbedLimiter, RateHeaders, RequestOutcome};
use super::retry::{
    AttemptError, AttemptOutcome, Failed, RetryPolicy, parse_retry_after, with_retries,
};
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

/// How to reach a provider: what every HTTP provider's settings say, whatever its wire format.
pub(crate) struct SenderSettings<'a> {
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
    pub(crate) fn new(
        provider: &'static str,
        settings: SenderSettings<'_>,
    ) -> Result<Self, EmbedError> {
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

    /// POSTs the JSON `body` (retrying per the policy) and decodes a 2xx answer.
    pub(crate) async fn post<E: DeserializeOwned>(
        &self,
        body: &[u8],
    ) -> Result<EmbeddingsResponse<E>, EmbedError> {
        with_retries(self.provider, &self.policy, || self.attempt(body)).await
    }

    async fn attempt<E: DeserializeOwned>(
        &self,
        body: &[u8],
    ) -> Result<EmbeddingsResponse<E>, Failed> {
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
        let mut headers = None;
        // The attempt's one classification: everything below reads it.
        let result = self
            .exchange(body, &mut headers)
            .await
            .map_err(Failed::from);
        let outcome = match &result {
            Ok(_) => AttemptOutcome::Ok,
            Err(failed) => failed.outcome(),
        };
        if let Some(permit) = permit {
            permit.finish(limiter_outcome(&result, headers));
        }
        let provider = self.provider;
        crate::metrics::embed_requests_total(provider, outcome.label()).increment(1);
        crate::metrics::embed_request_duration_seconds(provider)
            .record(started.elapsed().as_secs_f64());
        if outcome == AttemptOutcome::RateLimited {
            crate::metrics::embed_rate_limited_total(provider).increment(1);
        }
        result
    }

    /// One request and its answer. The rate-limit headers are kept (in `headers`) whatever the
    /// status, when there is a limiter to learn from them.
    async fn exchange<E: DeserializeOwned>(
        &self,
        body: &[u8],
        headers: &mut Option<RateHeaders>,
    ) -> Result<EmbeddingsResponse<E>, AttemptError> {
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
            *headers = RateHeaders::from_headers(response.headers());
        }
        if status.is_success() {
            let bytes = response
                .bytes()
                .await
                .map_err(|e| self.transport_error(e))?;
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

/// What the limiter learns from an attempt: the provider's headers and billed usage after a
/// success, its `Retry-After` after a 429, nothing after any other failure.
fn limiter_outcome<E>(
    result: &Result<EmbeddingsResponse<E>, Failed>,
    headers: Option<RateHeaders>,
) -> RequestOutcome {
    let failed = match result {
        Ok(response) => {
            return RequestOutcome::Success {
                headers,
                billed_tokens: response.billed_tokens(),
            };
        }
        Err(failed) => failed,
    };
    match failed.outcome() {
        AttemptOutcome::RateLimited => RequestOutcome::RateLimited {
            retry_after: failed.error().retry_after(),
            headers,
        },
        AttemptOutcome::Ok
        | AttemptOutcome::ServerError
        | AttemptOutcome::ServerUnsupported
        | AttemptOutcome::RequestTimeout
        | AttemptOutcome::Rejected
        | AttemptOutcome::UnexpectedStatus
        | AttemptOutcome::Timeout
        | AttemptOutcome::Transport
        | AttemptOutcome::Protocol => RequestOutcome::Failed,
    }
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
        let sender = HttpSender::new(
            "p",
            SenderSettings {
                base_url: "http://127.0.0.1:1",
                api_key: Some(&Secret::new("sk-very-secret")),
                api_key_header: None,
                request_timeout: Duration::from_secs(1),
                policy: RetryPolicy::default(),
                limiter: None,
            },
        )
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
        let sender = HttpSender::new(
            "p",
            SenderSettings {
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
            },
        )
        .unwrap();
        let err = sender.post::<Vec<f32>>(b"{}").await.unwrap_err();
        assert!(
            matches!(err, EmbedError::Transport { attempts: 2, .. }),
            "{err}"
        );
        assert!(!format!("{err} {err:?}").contains("sk-very-secret"));
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
    fn the_limiter_learns_usage_from_successes_and_retry_after_from_429s() {
        let ok: Result<EmbeddingsResponse<Vec<f32>>, Failed> =
            Ok(serde_json::from_str(r#"{"data":[],"usage":{"total_tokens":42}}"#).unwrap());
        assert_eq!(
            limiter_outcome(&ok, None),
            RequestOutcome::Success {
                headers: None,
                billed_tokens: Some(42)
            }
        );
        let wait = Some(Duration::from_secs(2));
        let status = |status| -> Result<EmbeddingsResponse<Vec<f32>>, Failed> {
            Err(Failed::from(AttemptError::Status {
                status,
                message: "m".into(),
                retry_after: wait,
            }))
        };
        assert_eq!(
            limiter_outcome(&status(429), None),
            RequestOutcome::RateLimited {
                retry_after: wait,
                headers: None
            }
        );
        assert_eq!(limiter_outcome(&status(503), None), RequestOutcome::Failed);
        let timeout: Result<EmbeddingsResponse<Vec<f32>>, _> =
            Err(Failed::from(AttemptError::Timeout));
        assert_eq!(limiter_outcome(&timeout, None), RequestOutcome::Failed);
    }
}
