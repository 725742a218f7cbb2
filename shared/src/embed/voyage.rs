//! Voyage AI dense embeddings (`POST /v1/embeddings`), the embed stage's default provider.
//!
//! Sluice always sends `truncation: false`, so an over-long chunk is an error rather than a
//! silently shortened vector, and sets `input_type` so Voyage adds its document/query prompt.
//! Requests are planned within the model's documented limits (1,000 inputs; 1M/320K/120K tokens).

use serde::Serialize;

use super::batch::BatchLimits;
use super::client::{DenseClient, DenseSettings, Provider};
use super::{EmbedError, InputKind};

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

/// Voyage: the [`Provider`] behind [`VoyageEmbedder`].
#[derive(Debug, Clone, Copy)]
pub struct Voyage;

/// Voyage's own request options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VoyageOptions {
    /// `output_dimension`; `None` takes the model's default.
    pub output_dimension: Option<u32>,
}

/// Settings of the Voyage client.
pub type VoyageSettings = DenseSettings<Voyage>;

/// Voyage AI embedding client.
pub type VoyageEmbedder = DenseClient<Voyage>;

#[derive(Serialize)]
struct EmbeddingsRequest<'a> {
    input: &'a [String],
    model: &'a str,
    input_type: &'static str,
    truncation: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimension: Option<u32>,
}

impl Provider for Voyage {
    const NAME: &'static str = PROVIDER;
    const DEFAULT_BASE_URL: &'static str = DEFAULT_BASE_URL;
    const DEFAULT_MODEL: &'static str = DEFAULT_MODEL;
    type Options = VoyageOptions;
    type Embedding = Vec<f32>;

    /// Models missing from [`MODELS`] get the smallest documented limits.
    fn limits(model: &str) -> BatchLimits {
        let known = voyage_model(model);
        BatchLimits {
            max_inputs: MAX_INPUTS_PER_REQUEST,
            max_tokens: known.map_or(FALLBACK_TOKENS_PER_REQUEST, |m| m.max_tokens_per_request),
            max_tokens_per_input: known.map_or(FALLBACK_CONTEXT_TOKENS, |m| m.context_tokens),
        }
    }

    fn requested_dimension(options: &VoyageOptions) -> Option<u32> {
        options.output_dimension
    }

    fn default_dimension(model: &str) -> Option<u32> {
        voyage_model(model).map(|m| m.default_dimension)
    }

    fn check(model: &str, options: &VoyageOptions) -> Result<(), String> {
        match (voyage_model(model), options.output_dimension) {
            (Some(model), Some(dimension)) if !model.dimensions.contains(&dimension) => {
                Err(match model.dimensions {
                    [] => format!(
                        "model {} does not take output_dimension (it returns {})",
                        model.name, model.default_dimension
                    ),
                    allowed => format!(
                        "model {} supports output_dimension {allowed:?}, not {dimension}",
                        model.name
                    ),
                })
            }
            (Some(_) | None, _) => Ok(()),
        }
    }

    fn request<'a>(
        model: &'a str,
        options: &'a VoyageOptions,
        input: &'a [String],
        kind: InputKind,
    ) -> impl Serialize + 'a {
        EmbeddingsRequest {
            input,
            model,
            input_type: match kind {
                InputKind::Document => "document",
                InputKind::Query => "query",
            },
            truncation: false,
            output_dimension: options.output_dimension,
        }
    }

    fn decode(embedding: Vec<f32>) -> Result<Vec<f32>, String> {
        Ok(embedding)
    }

    /// Voyage refusing a request for its size: the total tokens (`"The max allowed tokens per
    /// submitted batch is …"`) or the number of inputs (`"The batch size limit is …"`). Voyage
    /// sends no error code, so its documented wording is all there is.
    fn is_batch_too_large(error: &EmbedError) -> bool {
        matches!(error, EmbedError::Rejected { status: 400, message, .. }
            if message.contains("max allowed tokens per submitted batch") || message.contains("batch size limit"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::Embedder;

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
            options: VoyageOptions {
                output_dimension: Some(512),
            },
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
            options: VoyageOptions {
                output_dimension: Some(1000),
            },
            ..Default::default()
        };
        assert!(matches!(
            VoyageEmbedder::new(bad_dim),
            Err(EmbedError::InvalidSettings { .. })
        ));
        let fixed = VoyageSettings {
            model: "voyage-3".into(),
            options: VoyageOptions {
                output_dimension: Some(512),
            },
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
