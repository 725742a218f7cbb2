//! The one dense embedding client. A [`Provider`] says only what its API does differently (its
//! request options and body, how a vector is encoded, its model table and limits, which refusals
//! mean "too big"); [`DenseClient`] does the rest for every provider: plans requests within the
//! limits, sends them through the HTTP sender (`http.rs`: retries, rate limiting, metrics),
//! splits a batch the provider refuses as too large, and checks and orders the vectors of the
//! shared response envelope.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::batch::{BatchLimits, plan_batches, send_splitting};
use super::http::{HttpSender, SenderSettings};
use super::limiter::EmbedLimiter;
use super::retry::RetryPolicy;
use super::{DenseEmbeddings, EmbedError, Embedder, InputKind};
use crate::secret::Secret;

/// What one dense embedding API does differently from the others. Implemented by a marker type
/// per provider ([`super::voyage::Voyage`], [`super::openai::OpenAi`]).
pub trait Provider: Debug + Clone + Send + Sync + 'static {
    /// The `provider` label in metrics and errors, and the fingerprint's prefix.
    const NAME: &'static str;
    /// The API host used when none is configured.
    const DEFAULT_BASE_URL: &'static str;
    /// The model used when none is configured.
    const DEFAULT_MODEL: &'static str;
    /// The provider's own request options ([`DenseSettings::options`]).
    type Options: Debug + Clone + Default + Send + Sync;
    /// One vector as the response's `embedding` field carries it.
    type Embedding: DeserializeOwned + Send;

    /// The documented per-request limits for `model` (settings may lower the first two).
    fn limits(model: &str) -> BatchLimits;
    /// The vector size `options` ask for; the answer must match it.
    fn requested_dimension(options: &Self::Options) -> Option<u32>;
    /// The model's own vector size, when the model table knows it.
    fn default_dimension(model: &str) -> Option<u32>;
    /// Refuses options the model does not take (checked once, when the client is built).
    fn check(model: &str, options: &Self::Options) -> Result<(), String>;
    /// The JSON body of one request for `input`.
    fn request<'a>(
        model: &'a str,
        options: &'a Self::Options,
        input: &'a [String],
        kind: InputKind,
    ) -> impl Serialize + 'a;
    /// One vector of the answer, decoded.
    fn decode(embedding: Self::Embedding) -> Result<Vec<f32>, String>;
    /// Whether `error` is the provider refusing a request for its size rather than its content;
    /// such a batch is sent again in halves.
    fn is_batch_too_large(error: &EmbedError) -> bool;
}

/// Settings of a dense embedding client ([`super::VoyageSettings`], [`super::OpenAiSettings`]).
#[derive(Debug, Clone)]
pub struct DenseSettings<P: Provider> {
    /// API base URL; `/v1/embeddings` is appended, or `/embeddings` when it already ends in `/v1`
    /// (Azure: `https://<resource>.openai.azure.com/openai/v1`).
    pub base_url: String,
    /// The API key; `None` sends no credentials (emulators, proxies, local servers).
    pub api_key: Option<Secret>,
    /// Header carrying the key: `None` = `Authorization: Bearer <key>`; Azure uses `api-key`.
    pub api_key_header: Option<String>,
    /// Model (or Azure deployment) name, e.g. `voyage-3.5`.
    pub model: String,
    /// The provider's own request options (Voyage's `output_dimension`, OpenAI's `dimensions`
    /// and `encoding_format`).
    pub options: P::Options,
    /// Time allowed for one request, connection to last byte; a timeout is retried.
    pub request_timeout: Duration,
    /// Attempts after the first for 429/5xx/timeouts/connection errors.
    pub max_retries: u32,
    /// First backoff delay (doubling, jittered); a longer `Retry-After` wins.
    pub retry_min_delay: Duration,
    /// Ceiling of the backoff delay.
    pub retry_max_delay: Duration,
    /// Inputs per request; `None` = the provider's documented limit (Voyage 1,000; OpenAI 2,048).
    pub max_inputs_per_request: Option<usize>,
    /// Estimated tokens per request; `None` = the model's documented limit.
    pub max_tokens_per_request: Option<usize>,
    /// Requests of one `embed` call in flight at once. Each worker multiplies this, and together
    /// they share the organisation's tokens-per-minute limit, so keep it small.
    pub max_concurrent_requests: usize,
    /// Process-wide admission control (AIMD concurrency, TPM/RPM) shared by every request of
    /// this embedder; `None` sends requests as soon as `max_concurrent_requests` allows.
    pub limiter: Option<Arc<EmbedLimiter>>,
}

impl<P: Provider> Default for DenseSettings<P> {
    fn default() -> Self {
        DenseSettings {
            base_url: P::DEFAULT_BASE_URL.to_string(),
            api_key: None,
            api_key_header: None,
            model: P::DEFAULT_MODEL.to_string(),
            options: P::Options::default(),
            request_timeout: Duration::from_secs(60),
            max_retries: 5,
            retry_min_delay: Duration::from_millis(500),
            retry_max_delay: Duration::from_secs(30),
            max_inputs_per_request: None,
            max_tokens_per_request: None,
            max_concurrent_requests: 4,
            limiter: None,
        }
    }
}

/// A dense embedding client for one provider ([`super::VoyageEmbedder`],
/// [`super::OpenAiEmbedder`]).
pub struct DenseClient<P: Provider> {
    model: String,
    options: P::Options,
    sender: HttpSender,
    limits: BatchLimits,
    max_concurrent_requests: usize,
}

/// The response envelope Voyage and OpenAI share: `data[].{embedding,index}` and `usage`.
#[derive(Debug, Deserialize)]
pub(crate) struct EmbeddingsResponse<E> {
    pub data: Vec<EmbeddingItem<E>>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct EmbeddingItem<E> {
    pub embedding: E,
    pub index: usize,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Usage {
    #[serde(default)]
    pub total_tokens: Option<u64>,
}

impl<E> EmbeddingsResponse<E> {
    /// The provider's `usage.total_tokens`; `None` when it did not say.
    pub fn billed_tokens(&self) -> Option<u64> {
        self.usage.as_ref()?.total_tokens
    }
}

impl<P: Provider> DenseClient<P> {
    /// Checks the settings against the model's documented options and builds the HTTP client.
    pub fn new(settings: DenseSettings<P>) -> Result<Self, EmbedError> {
        let invalid = |message: String| EmbedError::InvalidSettings {
            provider: P::NAME,
            message,
        };
        if settings.model.trim().is_empty() {
            return Err(invalid("model must not be empty".to_string()));
        }
        P::check(&settings.model, &settings.options).map_err(invalid)?;
        let documented = P::limits(&settings.model);
        let limits = BatchLimits {
            max_inputs: settings
                .max_inputs_per_request
                .unwrap_or(documented.max_inputs),
            max_tokens: settings
                .max_tokens_per_request
                .unwrap_or(documented.max_tokens),
            max_tokens_per_input: documented.max_tokens_per_input,
        };
        if limits.max_inputs == 0 || limits.max_tokens == 0 || settings.max_concurrent_requests == 0
        {
            return Err(invalid(
                "max_inputs_per_request, max_tokens_per_request and max_concurrent_requests must be at least 1".to_string(),
            ));
        }
        let sender = HttpSender::new(
            P::NAME,
            SenderSettings {
                base_url: &settings.base_url,
                api_key: settings.api_key.as_ref(),
                api_key_header: settings.api_key_header.as_deref(),
                request_timeout: settings.request_timeout,
                policy: RetryPolicy {
                    max_retries: settings.max_retries,
                    min_delay: settings.retry_min_delay,
                    max_delay: settings.retry_max_delay,
                    ..RetryPolicy::default()
                },
                limiter: settings.limiter,
            },
        )?;
        Ok(DenseClient {
            model: settings.model,
            options: settings.options,
            sender,
            limits,
            max_concurrent_requests: settings.max_concurrent_requests,
        })
    }

    /// The vector size, when the settings or the model table tell it without a request.
    pub fn dense_dimension_hint(&self) -> Option<u32> {
        P::requested_dimension(&self.options).or_else(|| P::default_dimension(&self.model))
    }

    /// The per-request limits batches are planned within.
    pub fn batch_limits(&self) -> BatchLimits {
        self.limits
    }

    async fn send(&self, input: &[String], kind: InputKind) -> Result<DenseEmbeddings, EmbedError> {
        let protocol = |message: String| EmbedError::Protocol {
            provider: P::NAME,
            message,
        };
        let body = serde_json::to_vec(&P::request(&self.model, &self.options, input, kind))
            .map_err(|e| protocol(format!("cannot encode request: {e}")))?;
        let response = self.sender.post::<P::Embedding>(&body).await?;
        let tokens = response.billed_tokens().unwrap_or(0);
        let items = response
            .data
            .into_iter()
            .map(|item| Ok((item.index, P::decode(item.embedding)?)))
            .collect::<Result<Vec<_>, String>>()
            .map_err(protocol)?;
        let vectors = order_vectors(
            P::NAME,
            items,
            input.len(),
            P::requested_dimension(&self.options),
        )?;
        Ok(DenseEmbeddings { vectors, tokens })
    }
}

#[async_trait]
impl<P: Provider> Embedder for DenseClient<P> {
    fn fingerprint(&self) -> String {
        match self.dense_dimension_hint() {
            Some(dimension) => format!("{}:{}:dim={dimension}", P::NAME, self.model),
            None => format!("{}:{}:dim=default", P::NAME, self.model),
        }
    }

    /// Plans requests within the limits, sends them (at most `max_concurrent_requests` at once;
    /// the first failure cancels the others) and concatenates the vectors in input order.
    async fn embed(
        &self,
        texts: &[String],
        kind: InputKind,
    ) -> Result<DenseEmbeddings, EmbedError> {
        let plan =
            plan_batches(texts, &self.limits).map_err(|oversize| EmbedError::InputTooLong {
                provider: P::NAME,
                index: oversize.index,
                tokens: oversize.tokens,
                limit: oversize.limit,
            })?;
        tracing::debug!(
            provider = P::NAME,
            inputs = texts.len(),
            requests = plan.len(),
            "embedding batch planned"
        );
        let parts: Vec<DenseEmbeddings> = futures::stream::iter(plan)
            .map(|batch| {
                send_splitting(
                    P::NAME,
                    &texts[batch.range],
                    P::is_batch_too_large,
                    move |part| self.send(part, kind),
                )
            })
            .buffered(self.max_concurrent_requests.max(1))
            .try_collect()
            .await?;
        let mut all = DenseEmbeddings {
            vectors: Vec::with_capacity(texts.len()),
            tokens: 0,
        };
        for part in parts {
            all.vectors.extend(part.vectors);
            all.tokens += part.tokens;
        }
        crate::metrics::embed_tokens_total(P::NAME).increment(all.tokens);
        Ok(all)
    }
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

    #[test]
    fn billed_tokens_are_read_from_the_usage() {
        let billed = |body: &str| {
            serde_json::from_str::<EmbeddingsResponse<Vec<f32>>>(body)
                .unwrap()
                .billed_tokens()
        };
        assert_eq!(
            billed(r#"{"data":[],"model":"m","usage":{"prompt_tokens":7,"total_tokens":42}}"#),
            Some(42)
        );
        assert_eq!(
            billed(r#"{"data": [], "usage": {"total_tokens" : 5}}"#),
            Some(5)
        );
        assert_eq!(billed(r#"{"data":[]}"#), None);
    }
}
