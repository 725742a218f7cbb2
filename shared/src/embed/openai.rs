//! OpenAI-compatible dense embeddings (`POST /v1/embeddings`): OpenAI itself, Azure OpenAI (via
//! the `api-key` header), and servers that speak the same format (vLLM, Ollama, TEI).
//!
//! Requests are planned within OpenAI's documented limits: 2,048 inputs, 8,192 tokens per input
//! and 300,000 tokens summed per request. OpenAI has no `input_type`, so documents and queries are
//! embedded alike.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::batch::BatchLimits;
use super::client::{DenseClient, DenseSettings, Provider};
use super::{EmbedError, InputKind};

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

/// OpenAI and compatible servers: the [`Provider`] behind [`OpenAiEmbedder`].
#[derive(Debug, Clone, Copy)]
pub struct OpenAi;

/// OpenAI's own request options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenAiOptions {
    /// `dimensions` (text-embedding-3 and later); `None` takes the model's default.
    pub dimensions: Option<u32>,
    /// `encoding_format` of the response vectors.
    pub encoding_format: EncodingFormat,
}

/// Settings of the OpenAI-compatible client.
pub type OpenAiSettings = DenseSettings<OpenAi>;

/// OpenAI-compatible embedding client.
pub type OpenAiEmbedder = DenseClient<OpenAi>;

#[derive(Serialize)]
struct EmbeddingsRequest<'a> {
    input: &'a [String],
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
    encoding_format: EncodingFormat,
}

/// A vector as `encoding_format` asked for it, or as numbers from a server that ignores it.
#[derive(Debug)]
pub enum EmbeddingData {
    Float(Vec<f32>),
    Base64(String),
}

/// By the JSON type seen, not `#[serde(untagged)]`: that buffers each vector and tries the
/// variants in turn, and the failed try formats an error quoting the whole base64 string (about
/// 40% of the embed client's own CPU).
impl<'de> Deserialize<'de> for EmbeddingData {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = EmbeddingData;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of numbers or a base64 string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EmbeddingData, E> {
                Ok(EmbeddingData::Base64(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<EmbeddingData, E> {
                Ok(EmbeddingData::Base64(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<EmbeddingData, A::Error> {
                let mut vector = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(x) = seq.next_element::<f32>()? {
                    vector.push(x);
                }
                Ok(EmbeddingData::Float(vector))
            }
        }
        deserializer.deserialize_any(Either)
    }
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

impl Provider for OpenAi {
    const NAME: &'static str = PROVIDER;
    const DEFAULT_BASE_URL: &'static str = DEFAULT_BASE_URL;
    const DEFAULT_MODEL: &'static str = DEFAULT_MODEL;
    type Options = OpenAiOptions;
    type Embedding = EmbeddingData;

    fn limits(_model: &str) -> BatchLimits {
        BatchLimits {
            max_inputs: MAX_INPUTS_PER_REQUEST,
            max_tokens: MAX_TOKENS_PER_REQUEST,
            max_tokens_per_input: MAX_TOKENS_PER_INPUT,
        }
    }

    fn requested_dimension(options: &OpenAiOptions) -> Option<u32> {
        options.dimensions
    }

    fn default_dimension(model: &str) -> Option<u32> {
        openai_model(model).map(|m| m.default_dimension)
    }

    /// Models missing from [`MODELS`] (compatible servers') take any positive `dimensions`.
    fn check(model: &str, options: &OpenAiOptions) -> Result<(), String> {
        let Some(dimension) = options.dimensions else {
            return Ok(());
        };
        match openai_model(model) {
            Some(model) if !model.flexible_dimensions => {
                Err(format!("model {} does not take dimensions", model.name))
            }
            Some(model) if dimension == 0 || dimension > model.default_dimension => Err(format!(
                "dimensions for {} must be between 1 and {}, not {dimension}",
                model.name, model.default_dimension
            )),
            Some(_) | None if dimension == 0 => Err("dimensions must be at least 1".to_string()),
            Some(_) | None => Ok(()),
        }
    }

    /// OpenAI has no `input_type`: documents and queries are embedded alike.
    fn request<'a>(
        model: &'a str,
        options: &'a OpenAiOptions,
        input: &'a [String],
        _kind: InputKind,
    ) -> impl Serialize + 'a {
        EmbeddingsRequest {
            input,
            model,
            dimensions: options.dimensions,
            encoding_format: options.encoding_format,
        }
    }

    fn decode(embedding: EmbeddingData) -> Result<Vec<f32>, String> {
        match embedding {
            EmbeddingData::Float(vector) => Ok(vector),
            EmbeddingData::Base64(encoded) => decode_base64_embedding(&encoded),
        }
    }

    /// An OpenAI-compatible server refusing a request for its size rather than its content:
    /// `"Requested N tokens, max M tokens per request"` or `"Too many inputs"`. The sender keeps
    /// only the error's message (not its `code`), so the documented wording is what is matched.
    fn is_batch_too_large(error: &EmbedError) -> bool {
        matches!(error, EmbedError::Rejected { status: 400, message, .. }
            if message.contains("tokens per request") || message.contains("Too many inputs"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::Embedder;

    type EmbeddingsResponse = crate::embed::client::EmbeddingsResponse<EmbeddingData>;

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
            options: OpenAiOptions {
                dimensions: Some(256),
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
        assert_eq!(short.fingerprint(), "openai:text-embedding-3-small:dim=256");
    }

    #[test]
    fn dimensions_are_checked_for_known_models() {
        let ada = OpenAiSettings {
            model: "text-embedding-ada-002".into(),
            options: OpenAiOptions {
                dimensions: Some(512),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(matches!(
            OpenAiEmbedder::new(ada),
            Err(EmbedError::InvalidSettings { .. })
        ));
        let too_big = OpenAiSettings {
            options: OpenAiOptions {
                dimensions: Some(2000),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(matches!(
            OpenAiEmbedder::new(too_big),
            Err(EmbedError::InvalidSettings { .. })
        ));
        let local = OpenAiSettings {
            model: "nomic-embed-text".into(),
            options: OpenAiOptions {
                dimensions: Some(768),
                ..Default::default()
            },
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
        let body = r#"{"data":[{"embedding":"AADAPw==","index":0}],"usage":{"total_tokens":3}}"#;
        let parsed: EmbeddingsResponse = serde_json::from_str(body).unwrap();
        assert!(matches!(&parsed.data[0].embedding, EmbeddingData::Base64(s) if s == "AADAPw=="));
        let body = r#"{"data":[{"embedding":{"x":1},"index":0}],"usage":{"total_tokens":3}}"#;
        let error = serde_json::from_str::<EmbeddingsResponse>(body).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("an array of numbers or a base64 string"),
            "{error}"
        );
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
