//! Voyage AI dense embeddings (`POST /v1/embeddings`), the embed stage's default provider.
//!
//! Sluice always sends `truncation: false`, so an over-long chunk is an error rather than a
//! silently shortened vector, and sets `input_type` so Voyage adds its document/query prompt.
//! Requests are planned within the model's documented limits (1,000 inputs; 1M/320K/120K tokens).

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::batch::{BatchLimits, send_splitting};
use super::http::{HttpSender, SenderSettings, embed_all, order_vectors};
use super::retry::RetryPolicy;
use super::{DenseEmbeddings, EmbedError, Embedder, InputKind};
use crate::secret::Secret;

/// The `provider` label in metrics and errors.
pub const PROVIDER: &str = "voyage";
/// Voyage's API host; `/v1/embeddings` is appended.
pub const DEFAULT_BASE_URL: &str = "https://api.voyageai.com";
/// The model used when none is configured.
pub const DEFAULT_MODEL: &str = "voyage-3.5";
/// Documented maximum number of inputs in one request.
pub const MAX_INPUTS_PER_REQUEST: usize = 1000;
/// Per-request token limit assumed for models missing from [`MODELS`] (the smallest documented).
pub const FALLBACK_TOKENS_PER_REQUEST: usize = 120_000;
/// Context length assumed for models missing from [`MODELS`].
pub const FALLBACK_CONTEXT_TOKENS: usize = 32_000;

/// What the public documentation says about one Voyage embedding model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoyageModel {
    pub name: &'static str,
    /// Dimension returned when `output_dimension` is not sent.
    pub default_dimension: u32,
    /// Accepted `output_dimension` values; empty when the model does not take the parameter.
    pub dimensions: &'static [u32],
    /// Summed tokens allowed in one request.
    pub max_tokens_per_request: usize,
    /// Tokens allowed in one input (context length).
    pub context_tokens: usize,
    /// Whether `output_dtype` other than `float` (int8, uint8, binary, ubinary) is supported.
    pub quantized_output: bool,
}

const FLEXIBLE: &[u32] = &[256, 512, 1024, 2048];

/// The models Sluice knows the limits of. Others are still usable with the fallback limits.
pub const MODELS: &[VoyageModel] = &[
    VoyageModel {
        name: "voyage-3.5",
        default_dimension: 1024,
        dimensions: FLEXIBLE,
        max_tokens_per_request: 320_000,
        context_tokens: 32_000,
        quantized_output: true,
    },
    VoyageModel {
        name: "voyage-3.5-lite",
        default_dimension: 1024,
        dimensions: FLEXIBLE,
        max_tokens_per_request: 1_000_000,
        context_tokens: 32_000,
        quantized_output: true,
    },
    VoyageModel {
        name: "voyage-3-large",
        default_dimension: 1024,
        dimensions: FLEXIBLE,
        max_tokens_per_request: 120_000,
        context_tokens: 32_000,
        quantized_output: true,
    },
    VoyageModel {
        name: "voyage-code-3",
        default_dimension: 1024,
        dimensions: FLEXIBLE,
        max_tokens_per_request: 120_000,
        context_tokens: 32_000,
        quantized_output: true,
    },
    VoyageModel {
        name: "voyage-3",
        default_dimension: 1024,
        dimensions: &[],
        max_tokens_per_request: 320_000,
        context_tokens: 32_000,
        quantized_output: false,
    },
    VoyageModel {
        name: "voyage-3-lite",
        default_dimension: 512,
        dimensions: &[],
        max_tokens_per_request: 1_000_000,
        context_tokens: 32_000,
        quantized_output: false,
    },
    VoyageModel {
        name: "voyage-finance-2",
        default_dimension: 1024,
        dimensions: &[],
        max_tokens_per_request: 120_000,
        context_tokens: 32_000,
        quantized_output: false,
    },
    VoyageModel {
        name: "voyage-multilingual-2",
        default_dimension: 1024,
        dimensions: &[],
        max_tokens_per_request: 120_000,
        context_tokens: 32_000,
        quantized_output: false,
    },
    VoyageModel {
        name: "voyage-law-2",
        default_dimension: 1024,
        dimensions: &[],
        max_tokens_per_request: 120_000,
        context_tokens: 16_000,
        quantized_output: false,
    },
    VoyageModel {
        name: "voyage-code-2",
        default_dimension: 1536,
        dimensions: &[],
        max_tokens_per_request: 120_000,
        context_tokens: 16_000,
        quantized_output: false,
    },
    VoyageModel {
        name: "voyage-2",
        default_dimension: 1024,
        dimensions: &[],
        max_tokens_per_request: 320_000,
        context_tokens: 4_000,
        quantized_output: false,
    },
];

/// Looks a model up in [`MODELS`].
pub fn voyage_model(name: &str) -> Option<&'static VoyageModel> {
    MODELS.iter().find(|m| m.name == name)
}

/// Settings of the Voyage client.
#[derive(Debug, Clone)]
pub struct VoyageSettings {
    /// API base URL; `/v1/embeddings` is appended (a base already ending in `/v1` gets `/embeddings`).
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>`; `None` sends no credentials (emulators, proxies).
    pub api_key: Option<Secret>,
    /// Model name, e.g. `voyage-3.5`.
    pub model: String,
    /// `output_dimension`; `None` takes the model's default.
    pub output_dimension: Option<u32>,
    /// Time allowed for one request, connection to last byte; a timeout is retried.
    pub request_timeout: Duration,
    /// Attempts after the first for 429/5xx/timeouts/connection errors.
    pub max_retries: u32,
    /// First backoff delay (doubling, jittered); a longer `Retry-After` wins.
    pub retry_min_delay: Duration,
    /// Ceiling of the backoff delay.
    pub retry_max_delay: Duration,
    /// Inputs per request; `None` = the documented 1,000.
    pub max_inputs_per_request: Option<usize>,
    /// Estimated tokens per request; `None` = the model's documented limit.
    pub max_tokens_per_request: Option<usize>,
    /// Requests of one `embed` call in flight at once. Each worker multiplies this, and together
    /// they share the organisation's tokens-per-minute limit, so keep it small.
    pub max_concurrent_requests: usize,
    /// Process-wide admission control (AIMD concurrency, TPM/RPM) shared by every request of
    /// this embedder; `None` sends requests as soon as `max_concurrent_requests` allows.
    pub limiter: Option<std::sync::Arc<super::EmbedLimiter>>,
}

impl Default for VoyageSettings {
    fn default() -> Self {
        VoyageSettings {
            base_url: DEFAULT_BASE_URL.to_string(),
            api_key: None,
            model: DEFAULT_MODEL.to_string(),
            output_dimension: None,
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

/// Voyage AI embedding client.
pub struct VoyageEmbedder {
    settings: VoyageSettings,
    sender: HttpSender,
    limits: BatchLimits,
}

#[derive(Serialize)]
struct EmbeddingsRequest<'a> {
    input: &'a [String],
    model: &'a str,
    input_type: &'static str,
    truncation: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimension: Option<u32>,
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingItem>,
    #[serde(default)]
    usage: Usage,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    embedding: Vec<f32>,
    index: usize,
}

#[derive(Deserialize, Default)]
struct Usage {
    #[serde(default)]
    total_tokens: u64,
}

impl VoyageEmbedder {
    /// Checks the settings against the model's documented options and builds the HTTP client.
    pub fn new(settings: VoyageSettings) -> Result<Self, EmbedError> {
        let invalid = |message: String| EmbedError::InvalidSettings {
            provider: PROVIDER,
            message,
        };
        if settings.model.trim().is_empty() {
            return Err(invalid("model must not be empty".to_string()));
        }
        let known = voyage_model(&settings.model);
        if let (Some(model), Some(dimension)) = (known, settings.output_dimension)
            && !model.dimensions.contains(&dimension)
        {
            return Err(invalid(match model.dimensions {
                [] => format!(
                    "model {} does not take output_dimension (it returns {})",
                    model.name, model.default_dimension
                ),
                allowed => format!(
                    "model {} supports output_dimension {allowed:?}, not {dimension}",
                    model.name
                ),
            }));
        }
        let limits = BatchLimits {
            max_inputs: settings
                .max_inputs_per_request
                .unwrap_or(MAX_INPUTS_PER_REQUEST),
            max_tokens: settings
                .max_tokens_per_request
                .unwrap_or(known.map_or(FALLBACK_TOKENS_PER_REQUEST, |m| m.max_tokens_per_request)),
            max_tokens_per_input: known.map_or(FALLBACK_CONTEXT_TOKENS, |m| m.context_tokens),
        };
        if limits.max_inputs == 0 || limits.max_tokens == 0 || settings.max_concurrent_requests == 0
        {
            return Err(invalid(
                "max_inputs_per_request, max_tokens_per_request and max_concurrent_requests must be at least 1".to_string(),
            ));
        }
        let sender = HttpSender::new(SenderSettings {
            provider: PROVIDER,
            base_url: &settings.base_url,
            api_key: settings.api_key.as_ref(),
            api_key_header: None,
            request_timeout: settings.request_timeout,
            policy: RetryPolicy {
                max_retries: settings.max_retries,
                min_delay: settings.retry_min_delay,
                max_delay: settings.retry_max_delay,
                ..RetryPolicy::default()
            },
            limiter: settings.limiter.clone(),
        })?;
        Ok(VoyageEmbedder {
            settings,
            sender,
            limits,
        })
    }

    /// The vector size, when the settings or the model table tell it without a request.
    pub fn dense_dimension_hint(&self) -> Option<u32> {
        self.settings
            .output_dimension
            .or_else(|| voyage_model(&self.settings.model).map(|m| m.default_dimension))
    }

    /// The per-request limits batches are planned within.
    pub fn batch_limits(&self) -> BatchLimits {
        self.limits
    }

    async fn send(&self, input: &[String], kind: InputKind) -> Result<DenseEmbeddings, EmbedError> {
        let request = EmbeddingsRequest {
            input,
            model: &self.settings.model,
            input_type: match kind {
                InputKind::Document => "document",
                InputKind::Query => "query",
            },
            truncation: false,
            output_dimension: self.settings.output_dimension,
        };
        let response: EmbeddingsResponse = self.sender.post_json(&request).await?;
        let items = response
            .data
            .into_iter()
            .map(|item| (item.index, item.embedding))
            .collect();
        let vectors = order_vectors(PROVIDER, items, input.len(), self.settings.output_dimension)?;
        Ok(DenseEmbeddings {
            vectors,
            tokens: response.usage.total_tokens,
        })
    }
}

/// Whether `error` is Voyage refusing a request for its size rather than its content: the total
/// tokens (`"The max allowed tokens per submitted batch is …"`) or the number of inputs (`"The
/// batch size limit is …"`). Voyage sends no error code, so its documented wording is all there is.
pub fn is_batch_too_large(error: &EmbedError) -> bool {
    matches!(error, EmbedError::Rejected { status: 400, message, .. }
        if message.contains("max allowed tokens per submitted batch") || message.contains("batch size limit"))
}

#[async_trait]
impl Embedder for VoyageEmbedder {
    fn fingerprint(&self) -> String {
        match self.dense_dimension_hint() {
            Some(dimension) => format!("{PROVIDER}:{}:dim={dimension}", self.settings.model),
            None => format!("{PROVIDER}:{}:dim=default", self.settings.model),
        }
    }

    async fn embed(
        &self,
        texts: &[String],
        kind: InputKind,
    ) -> Result<DenseEmbeddings, EmbedError> {
        embed_all(
            PROVIDER,
            texts,
            &self.limits,
            self.settings.max_concurrent_requests,
            |chunk| {
                send_splitting(PROVIDER, chunk, is_batch_too_large, move |part| {
                    self.send(part, kind)
                })
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_documented_model_limits() {
        let e = VoyageEmbedder::new(VoyageSettings::default()).unwrap();
        assert_eq!(
            e.batch_limits(),
            BatchLimits {
                max_inputs: 1000,
                max_tokens: 320_000,
                max_tokens_per_input: 32_000
            }
        );
        assert_eq!(e.fingerprint(), "voyage:voyage-3.5:dim=1024");
        let lite = VoyageEmbedder::new(VoyageSettings {
            model: "voyage-3.5-lite".into(),
            output_dimension: Some(512),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(lite.batch_limits().max_tokens, 1_000_000);
        assert_eq!(lite.fingerprint(), "voyage:voyage-3.5-lite:dim=512");
        assert_eq!(lite.dense_dimension_hint(), Some(512));
    }

    #[test]
    fn settings_outside_the_model_options_are_refused() {
        let bad_dim = VoyageSettings {
            output_dimension: Some(1000),
            ..Default::default()
        };
        assert!(matches!(
            VoyageEmbedder::new(bad_dim),
            Err(EmbedError::InvalidSettings { .. })
        ));
        let fixed = VoyageSettings {
            model: "voyage-3".into(),
            output_dimension: Some(512),
            ..Default::default()
        };
        assert!(matches!(
            VoyageEmbedder::new(fixed),
            Err(EmbedError::InvalidSettings { .. })
        ));
        let url = VoyageSettings {
            base_url: "nope".into(),
            ..Default::default()
        };
        assert!(matches!(
            VoyageEmbedder::new(url),
            Err(EmbedError::InvalidSettings { .. })
        ));
    }

    #[test]
    fn unknown_models_get_conservative_limits() {
        let e = VoyageEmbedder::new(VoyageSettings {
            model: "voyage-9".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(e.batch_limits().max_tokens, FALLBACK_TOKENS_PER_REQUEST);
        assert_eq!(e.dense_dimension_hint(), None);
        assert_eq!(e.fingerprint(), "voyage:voyage-9:dim=default");
    }

    #[test]
    fn request_body_matches_the_documented_shape() {
        let input = vec!["a".to_string()];
        let body = serde_json::to_value(EmbeddingsRequest {
            input: &input,
            model: "voyage-3.5",
            input_type: "document",
            truncation: false,
            output_dimension: None,
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"input": ["a"], "model": "voyage-3.5", "input_type": "document", "truncation": false})
        );
    }
}
