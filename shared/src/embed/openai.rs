//! OpenAI-compatible dense embeddings (`POST /v1/embeddings`): OpenAI itself, Azure OpenAI (via
//! the `api-key` header), and servers that speak the same format (vLLM, Ollama, TEI).
//!
//! Requests are planned within OpenAI's documented limits: 2,048 inputs, 8,192 tokens per input
//! and 300,000 tokens summed per request. OpenAI has no `input_type`, so documents and queries are
//! embedded alike.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::batch::{BatchLimits, send_splitting};
use super::http::{HttpSender, SenderSettings, embed_all, order_vectors};
use super::retry::RetryPolicy;
use super::{DenseEmbeddings, EmbedError, Embedder, InputKind};
use crate::secret::Secret;

/// The `provider` label in metrics and errors.
pub const PROVIDER: &str = "openai";
/// OpenAI's API host; `/v1/embeddings` is appended.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com";
/// The model used when none is configured.
pub const DEFAULT_MODEL: &str = "text-embedding-3-small";
/// Documented maximum number of inputs in one request.
pub const MAX_INPUTS_PER_REQUEST: usize = 2048;
/// Documented maximum of tokens summed over one request's inputs.
pub const MAX_TOKENS_PER_REQUEST: usize = 300_000;
/// Documented maximum of tokens in one input.
pub const MAX_TOKENS_PER_INPUT: usize = 8192;

/// What the public documentation says about one OpenAI embedding model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenAiModel {
    pub name: &'static str,
    /// Dimension returned without `dimensions`; also the largest accepted value.
    pub default_dimension: u32,
    /// Whether the `dimensions` parameter is accepted (text-embedding-3 and later).
    pub flexible_dimensions: bool,
}

/// The models Sluice knows. Other names (compatible servers' models) are passed through.
pub const MODELS: &[OpenAiModel] = &[
    OpenAiModel {
        name: "text-embedding-3-small",
        default_dimension: 1536,
        flexible_dimensions: true,
    },
    OpenAiModel {
        name: "text-embedding-3-large",
        default_dimension: 3072,
        flexible_dimensions: true,
    },
    OpenAiModel {
        name: "text-embedding-ada-002",
        default_dimension: 1536,
        flexible_dimensions: false,
    },
];

/// Looks a model up in [`MODELS`].
pub fn openai_model(name: &str) -> Option<&'static OpenAiModel> {
    MODELS.iter().find(|m| m.name == name)
}

/// The `encoding_format` requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    /// JSON arrays of numbers.
    Float,
    /// Little-endian f32 bytes in base64: half the response size of `float`, and decoding it
    /// costs a fraction of parsing thousands of decimal numbers per vector (which was the
    /// worker's largest CPU cost after tokenising). OpenAI's own SDK asks for it by default, so
    /// compatible servers accept it; one that ignores the field and answers with numbers is
    /// understood too.
    #[default]
    Base64,
}

/// Settings of the OpenAI-compatible client.
#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    /// API base URL; `/v1/embeddings` is appended, or `/embeddings` when it already ends in `/v1`
    /// (Azure: `https://<resource>.openai.azure.com/openai/v1`).
    pub base_url: String,
    /// The API key; `None` sends no credentials (local servers).
    pub api_key: Option<Secret>,
    /// Header carrying the key: `None` = `Authorization: Bearer <key>`; Azure uses `api-key`.
    pub api_key_header: Option<String>,
    /// Model (or Azure deployment) name.
    pub model: String,
    /// `dimensions` (text-embedding-3 and later); `None` takes the model's default.
    pub dimensions: Option<u32>,
    /// `encoding_format` of the response vectors.
    pub encoding_format: EncodingFormat,
    /// Time allowed for one request, connection to last byte; a timeout is retried.
    pub request_timeout: Duration,
    /// Attempts after the first for 429/5xx/timeouts/connection errors.
    pub max_retries: u32,
    /// First backoff delay (doubling, jittered); a longer `Retry-After` wins.
    pub retry_min_delay: Duration,
    /// Ceiling of the backoff delay.
    pub retry_max_delay: Duration,
    /// Inputs per request; `None` = the documented 2,048.
    pub max_inputs_per_request: Option<usize>,
    /// Estimated tokens per request; `None` = the documented 300,000.
    pub max_tokens_per_request: Option<usize>,
    /// Requests of one `embed` call in flight at once (shared TPM limit: keep it small).
    pub max_concurrent_requests: usize,
    /// Process-wide admission control (AIMD concurrency, TPM/RPM) shared by every request of
    /// this embedder; `None` sends requests as soon as `max_concurrent_requests` allows.
    pub limiter: Option<std::sync::Arc<super::EmbedLimiter>>,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        OpenAiSettings {
            base_url: DEFAULT_BASE_URL.to_string(),
            api_key: None,
            api_key_header: None,
            model: DEFAULT_MODEL.to_string(),
            dimensions: None,
            encoding_format: EncodingFormat::default(),
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

/// OpenAI-compatible embedding client.
pub struct OpenAiEmbedder {
    settings: OpenAiSettings,
    sender: HttpSender,
    limits: BatchLimits,
}

#[derive(Serialize)]
struct EmbeddingsRequest<'a> {
    input: &'a [String],
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
    encoding_format: EncodingFormat,
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingItem>,
    #[serde(default)]
    usage: Usage,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    embedding: EmbeddingData,
    index: usize,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbeddingData {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Deserialize, Default)]
struct Usage {
    #[serde(default)]
    total_tokens: u64,
}

/// Decodes a base64 `embedding`: little-endian f32s.
pub fn decode_base64_embedding(encoded: &str) -> Result<Vec<f32>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("embedding is not valid base64: {e}"))?;
    if bytes.len() % 4 != 0 {
        return Err(format!(
            "base64 embedding has {} bytes, not a multiple of 4",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

impl OpenAiEmbedder {
    /// Checks the settings against the model's documented options and builds the HTTP client.
    pub fn new(settings: OpenAiSettings) -> Result<Self, EmbedError> {
        let invalid = |message: String| EmbedError::InvalidSettings {
            provider: PROVIDER,
            message,
        };
        if settings.model.trim().is_empty() {
            return Err(invalid("model must not be empty".to_string()));
        }
        if let Some(dimension) = settings.dimensions {
            match openai_model(&settings.model) {
                Some(model) if !model.flexible_dimensions => {
                    return Err(invalid(format!(
                        "model {} does not take dimensions",
                        model.name
                    )));
                }
                Some(model) if dimension == 0 || dimension > model.default_dimension => {
                    return Err(invalid(format!(
                        "dimensions for {} must be between 1 and {}, not {dimension}",
                        model.name, model.default_dimension
                    )));
                }
                Some(_) | None if dimension == 0 => {
                    return Err(invalid("dimensions must be at least 1".to_string()));
                }
                Some(_) | None => {}
            }
        }
        let limits = BatchLimits {
            max_inputs: settings
                .max_inputs_per_request
                .unwrap_or(MAX_INPUTS_PER_REQUEST),
            max_tokens: settings
                .max_tokens_per_request
                .unwrap_or(MAX_TOKENS_PER_REQUEST),
            max_tokens_per_input: MAX_TOKENS_PER_INPUT,
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
            api_key_header: settings.api_key_header.as_deref(),
            request_timeout: settings.request_timeout,
            policy: RetryPolicy {
                max_retries: settings.max_retries,
                min_delay: settings.retry_min_delay,
                max_delay: settings.retry_max_delay,
                ..RetryPolicy::default()
            },
            limiter: settings.limiter.clone(),
        })?;
        Ok(OpenAiEmbedder {
            settings,
            sender,
            limits,
        })
    }

    /// The vector size, when the settings or the model table tell it without a request.
    pub fn dense_dimension_hint(&self) -> Option<u32> {
        self.settings
            .dimensions
            .or_else(|| openai_model(&self.settings.model).map(|m| m.default_dimension))
    }

    /// The per-request limits batches are planned within.
    pub fn batch_limits(&self) -> BatchLimits {
        self.limits
    }

    async fn send(&self, input: &[String]) -> Result<DenseEmbeddings, EmbedError> {
        let request = EmbeddingsRequest {
            input,
            model: &self.settings.model,
            dimensions: self.settings.dimensions,
            encoding_format: self.settings.encoding_format,
        };
        let response: EmbeddingsResponse = self.sender.post_json(&request).await?;
        let mut items = Vec::with_capacity(response.data.len());
        for item in response.data {
            let vector = match item.embedding {
                EmbeddingData::Float(vector) => vector,
                EmbeddingData::Base64(encoded) => {
                    decode_base64_embedding(&encoded).map_err(|message| EmbedError::Protocol {
                        provider: PROVIDER,
                        message,
                    })?
                }
            };
            items.push((item.index, vector));
        }
        let vectors = order_vectors(PROVIDER, items, input.len(), self.settings.dimensions)?;
        Ok(DenseEmbeddings {
            vectors,
            tokens: response.usage.total_tokens,
        })
    }
}

/// Whether `error` is an OpenAI-compatible server refusing a request for its size rather than its
/// content: `"Requested N tokens, max M tokens per request"` or `"Too many inputs"`. The sender
/// keeps only the error's message (not its `code`), so the documented wording is what is matched.
pub fn is_batch_too_large(error: &EmbedError) -> bool {
    matches!(error, EmbedError::Rejected { status: 400, message, .. }
        if message.contains("tokens per request") || message.contains("Too many inputs"))
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn fingerprint(&self) -> String {
        match self.dense_dimension_hint() {
            Some(dimension) => format!("{PROVIDER}:{}:dim={dimension}", self.settings.model),
            None => format!("{PROVIDER}:{}:dim=default", self.settings.model),
        }
    }

    async fn embed(
        &self,
        texts: &[String],
        _kind: InputKind,
    ) -> Result<DenseEmbeddings, EmbedError> {
        embed_all(
            PROVIDER,
            texts,
            &self.limits,
            self.settings.max_concurrent_requests,
            |chunk| {
                send_splitting(PROVIDER, chunk, is_batch_too_large, move |part| {
                    self.send(part)
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
    fn defaults_follow_the_documented_limits() {
        let e = OpenAiEmbedder::new(OpenAiSettings::default()).unwrap();
        assert_eq!(
            e.batch_limits(),
            BatchLimits {
                max_inputs: 2048,
                max_tokens: 300_000,
                max_tokens_per_input: 8192
            }
        );
        assert_eq!(e.fingerprint(), "openai:text-embedding-3-small:dim=1536");
        let short = OpenAiEmbedder::new(OpenAiSettings {
            dimensions: Some(256),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(short.fingerprint(), "openai:text-embedding-3-small:dim=256");
    }

    #[test]
    fn dimensions_are_checked_for_known_models() {
        let ada = OpenAiSettings {
            model: "text-embedding-ada-002".into(),
            dimensions: Some(512),
            ..Default::default()
        };
        assert!(matches!(
            OpenAiEmbedder::new(ada),
            Err(EmbedError::InvalidSettings { .. })
        ));
        let too_big = OpenAiSettings {
            dimensions: Some(2000),
            ..Default::default()
        };
        assert!(matches!(
            OpenAiEmbedder::new(too_big),
            Err(EmbedError::InvalidSettings { .. })
        ));
        let local = OpenAiSettings {
            model: "nomic-embed-text".into(),
            dimensions: Some(768),
            ..Default::default()
        };
        assert_eq!(
            OpenAiEmbedder::new(local).unwrap().dense_dimension_hint(),
            Some(768)
        );
    }

    #[test]
    fn numbers_are_understood_from_a_server_that_ignores_base64() {
        let body = r#"{"data":[{"embedding":[0.5,-1.0],"index":0}],"usage":{"total_tokens":3}}"#;
        let parsed: EmbeddingsResponse = serde_json::from_str(body).unwrap();
        assert!(matches!(
            &parsed.data[0].embedding,
            EmbeddingData::Float(v) if v == &vec![0.5, -1.0]
        ));
        assert_eq!(EncodingFormat::default(), EncodingFormat::Base64);
    }

    #[test]
    fn base64_embeddings_decode_as_little_endian_f32() {
        let bytes: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_eq!(decode_base64_embedding(&encoded).unwrap(), vec![1.5, -2.0]);
        assert!(decode_base64_embedding("AAA=").is_err());
        assert!(decode_base64_embedding("***").is_err());
    }

    #[test]
    fn request_body_matches_the_documented_shape() {
        let input = vec!["a".to_string()];
        let body = serde_json::to_value(EmbeddingsRequest {
            input: &input,
            model: "text-embedding-3-small",
            dimensions: Some(256),
            encoding_format: EncodingFormat::Base64,
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"input": ["a"], "model": "text-embedding-3-small", "dimensions": 256, "encoding_format": "base64"})
        );
    }
}
