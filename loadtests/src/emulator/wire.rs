//! The two wire formats of `POST /v1/embeddings`: request validation as the real APIs document it,
//! their error bodies, and their success responses.
//!
//! Voyage errors are `{"detail": "..."}` (422 for a malformed body, 400 for limits and bad
//! values); OpenAI errors are `{"error": {"message", "type", "param", "code"}}`.

use serde::Serialize;
use serde_json::{Value, json};
use sluice_shared::embed::{openai, voyage};

use super::config::{Api, ApiMode};
use super::vectors::{EmbeddingValue, Encoding, count_tokens, embed, encode};

/// An error answer, renderable in either format.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// OpenAI `error.type`.
    pub kind: &'static str,
    /// OpenAI `error.code`.
    pub code: Option<&'static str>,
    /// OpenAI `error.param`.
    pub param: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        let kind = match status {
            429 => "requests",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        };
        ApiError {
            status,
            message: message.into(),
            kind,
            code: None,
            param: None,
        }
    }

    fn with(mut self, kind: &'static str, code: Option<&'static str>) -> Self {
        self.kind = kind;
        self.code = code;
        self
    }

    /// The body in the format of `api`.
    pub fn body(&self, api: Api) -> Value {
        match api {
            Api::Voyage => json!({ "detail": self.message }),
            Api::Openai => json!({ "error": {
                "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
            }}),
        }
    }
}

/// Picks the wire format of one request.
pub fn detect_api(mode: ApiMode, auto_default: Api, body: Option<&Value>) -> Api {
    match mode {
        ApiMode::Voyage => Api::Voyage,
        ApiMode::Openai => Api::Openai,
        ApiMode::Auto => {
            let Some(Value::Object(fields)) = body else {
                return auto_default;
            };
            let has = |names: &[&str]| names.iter().any(|n| fields.contains_key(*n));
            if has(&[
                "input_type",
                "output_dimension",
                "truncation",
                "output_dtype",
            ]) {
                Api::Voyage
            } else if has(&["dimensions", "encoding_format"]) {
                Api::Openai
            } else if fields
                .get("model")
                .and_then(Value::as_str)
                .is_some_and(|m| m.starts_with("voyage"))
            {
                Api::Voyage
            } else {
                auto_default
            }
        }
    }
}

/// What the emulator knows of one model.
#[derive(Debug, Clone, PartialEq)]
struct ModelInfo {
    name: String,
    default_dimension: u32,
    /// Voyage: the accepted `output_dimension` values (empty: parameter refused).
    voyage_dimensions: Vec<u32>,
    /// OpenAI: whether `dimensions` is accepted (1..=default).
    openai_flexible: bool,
    max_tokens_per_request: usize,
    context_tokens: usize,
    quantized_output: bool,
}

fn find_model(api: Api, name: &str, overrides: &[(String, u32)]) -> Option<ModelInfo> {
    let known = match api {
        Api::Voyage => voyage::voyage_model(name).map(|m| ModelInfo {
            name: m.name.to_string(),
            default_dimension: m.default_dimension,
            voyage_dimensions: m.dimensions.to_vec(),
            openai_flexible: false,
            max_tokens_per_request: m.max_tokens_per_request,
            context_tokens: m.context_tokens,
            quantized_output: m.quantized_output,
        }),
        Api::Openai => openai::openai_model(name).map(|m| ModelInfo {
            name: m.name.to_string(),
            default_dimension: m.default_dimension,
            voyage_dimensions: Vec::new(),
            openai_flexible: m.flexible_dimensions,
            max_tokens_per_request: openai::MAX_TOKENS_PER_REQUEST,
            context_tokens: openai::MAX_TOKENS_PER_INPUT,
            quantized_output: false,
        }),
    };
    let override_dim = overrides.iter().find(|(n, _)| n == name).map(|&(_, d)| d);
    match (known, override_dim) {
        (Some(mut model), Some(dim)) => {
            model.default_dimension = dim;
            if !model.voyage_dimensions.contains(&dim) && !model.voyage_dimensions.is_empty() {
                model.voyage_dimensions.push(dim);
            }
            Some(model)
        }
        (Some(model), None) => Some(model),
        (None, Some(dim)) => Some(ModelInfo {
            name: name.to_string(),
            default_dimension: dim,
            voyage_dimensions: Vec::new(),
            openai_flexible: false,
            max_tokens_per_request: match api {
                Api::Voyage => voyage::FALLBACK_TOKENS_PER_REQUEST,
                Api::Openai => openai::MAX_TOKENS_PER_REQUEST,
            },
            context_tokens: match api {
                Api::Voyage => voyage::FALLBACK_CONTEXT_TOKENS,
                Api::Openai => openai::MAX_TOKENS_PER_INPUT,
            },
            quantized_output: false,
        }),
        (None, None) => None,
    }
}

/// A valid request, ready to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub api: Api,
    pub model: String,
    /// The text each vector is derived from (token arrays are rendered as text).
    pub inputs: Vec<String>,
    pub total_tokens: u64,
    pub dimension: usize,
    pub encoding: Encoding,
}

/// Validates a request body of format `api`.
pub fn parse(api: Api, body: &[u8], overrides: &[(String, u32)]) -> Result<Parsed, ApiError> {
    match api {
        Api::Voyage => parse_voyage(body, overrides),
        Api::Openai => parse_openai(body, overrides),
    }
}

fn parse_voyage(body: &[u8], overrides: &[(String, u32)]) -> Result<Parsed, ApiError> {
    let malformed = |message: String| ApiError::new(422, message);
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("Request body is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(malformed("Request body must be a JSON object.".into()));
    };
    let inputs: Vec<String> = match fields.get("input") {
        None | Some(Value::Null) => return Err(malformed("Field 'input' is required.".into())),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                malformed("Field 'input' must be a string or a list of strings.".into())
            })?,
        Some(_) => {
            return Err(malformed(
                "Field 'input' must be a string or a list of strings.".into(),
            ));
        }
    };
    let model_name = match fields.get("model") {
        Some(Value::String(m)) => m.as_str(),
        None | Some(Value::Null) => return Err(malformed("Field 'model' is required.".into())),
        Some(_) => return Err(malformed("Field 'model' must be a string.".into())),
    };
    let truncation = match fields.get("truncation") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(malformed("Field 'truncation' must be a boolean.".into())),
    };
    let bad = |message: String| ApiError::new(400, message);
    match fields.get("input_type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "query" || t == "document" => {}
        Some(other) => {
            return Err(bad(format!(
                "Value {other} supplied for argument 'input_type' is not valid, please choose one of [None, 'query', 'document']."
            )));
        }
    }
    let model = find_model(Api::Voyage, model_name, overrides).ok_or_else(|| {
        let names: Vec<&str> = voyage::MODELS.iter().map(|m| m.name).collect();
        bad(format!(
            "Model {model_name} is not supported. Supported models are {names:?}."
        ))
    })?;
    let dimension = match fields.get("output_dimension") {
        None | Some(Value::Null) => model.default_dimension,
        Some(v) => {
            let requested = v
                .as_u64()
                .ok_or_else(|| malformed("Field 'output_dimension' must be an integer.".into()))?;
            match u32::try_from(requested)
                .ok()
                .filter(|d| model.voyage_dimensions.contains(d))
            {
                Some(d) => d,
                None if model.voyage_dimensions.is_empty() => {
                    return Err(bad(format!(
                        "Model {} does not support the output_dimension argument.",
                        model.name
                    )));
                }
                None => {
                    return Err(bad(format!(
                        "Value {requested} supplied for argument 'output_dimension' is not valid for model {}; choose one of {:?}.",
                        model.name, model.voyage_dimensions
                    )));
                }
            }
        }
    };
    let encoding = match fields.get("output_dtype").map(|v| v.as_str()) {
        None | Some(Some("float")) => Encoding::Float,
        Some(Some(dtype @ ("int8" | "uint8" | "binary" | "ubinary"))) if model.quantized_output => {
            match dtype {
                "int8" => Encoding::Int8,
                "uint8" => Encoding::Uint8,
                "binary" => Encoding::Binary,
                _ => Encoding::Ubinary,
            }
        }
        Some(Some(dtype @ ("int8" | "uint8" | "binary" | "ubinary"))) => {
            return Err(bad(format!(
                "Model {} does not support output_dtype '{dtype}'.",
                model.name
            )));
        }
        Some(other) => {
            return Err(bad(format!(
                "Value {} supplied for argument 'output_dtype' is not valid, please choose one of ['float', 'int8', 'uint8', 'binary', 'ubinary'].",
                other.map_or("null".to_string(), |s| format!("'{s}'"))
            )));
        }
    };
    if inputs.is_empty() {
        return Err(bad("Input cannot be an empty list.".into()));
    }
    if inputs.len() > voyage::MAX_INPUTS_PER_REQUEST {
        return Err(bad(format!(
            "The batch size limit is {}. Your batch size is {}.",
            voyage::MAX_INPUTS_PER_REQUEST,
            inputs.len()
        )));
    }
    let mut total = 0usize;
    for (index, text) in inputs.iter().enumerate() {
        if text.is_empty() {
            return Err(bad(format!("Input at index {index} is an empty string.")));
        }
        let tokens = count_tokens(text);
        if tokens > model.context_tokens && !truncation {
            return Err(bad(format!(
                "Input at index {index} has {tokens} tokens, which exceeds the context length of {} tokens for model {}. Set truncation=True or shorten the input.",
                model.context_tokens, model.name
            )));
        }
        total += tokens.min(model.context_tokens);
    }
    if total > model.max_tokens_per_request {
        return Err(bad(format!(
            "Request to model '{}' failed. The max allowed tokens per submitted batch is {}. Your batch has {total} tokens after truncation. Please lower the number of tokens in the batch.",
            model.name, model.max_tokens_per_request
        )));
    }
    Ok(Parsed {
        api: Api::Voyage,
        model: model.name,
        inputs,
        total_tokens: total as u64,
        dimension: dimension as usize,
        encoding,
    })
}

const OPENAI_INVALID_INPUT: &str = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.";

fn parse_openai(body: &[u8], overrides: &[(String, u32)]) -> Result<Parsed, ApiError> {
    let bad = |message: String| ApiError::new(400, message);
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        bad("We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)".into())
    })?;
    let Value::Object(fields) = value else {
        return Err(bad(OPENAI_INVALID_INPUT.into()));
    };
    // (text used for the vector, token count)
    let token_text = |ids: &[Value]| -> Option<(String, usize)> {
        let ids: Option<Vec<u64>> = ids.iter().map(Value::as_u64).collect();
        let ids = ids?;
        Some((format!("tokens:{ids:?}"), ids.len()))
    };
    let inputs: Vec<(String, usize)> = match fields.get("input") {
        None | Some(Value::Null) => return Err(bad("'input' is a required property".into())),
        Some(Value::String(s)) if !s.is_empty() => vec![(s.clone(), count_tokens(s))],
        Some(Value::Array(items)) if !items.is_empty() => {
            if items.iter().all(Value::is_string) {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|s| (s.to_string(), count_tokens(s)))
                    .collect()
            } else if items.iter().all(Value::is_number) {
                vec![token_text(items).ok_or_else(|| bad(OPENAI_INVALID_INPUT.into()))?]
            } else {
                items
                    .iter()
                    .map(|v| {
                        v.as_array()
                            .filter(|a| !a.is_empty())
                            .and_then(|a| token_text(a))
                    })
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad(OPENAI_INVALID_INPUT.into()))?
            }
        }
        Some(_) => return Err(bad(OPENAI_INVALID_INPUT.into())),
    };
    if inputs.iter().any(|(text, _)| text.is_empty()) {
        return Err(bad(OPENAI_INVALID_INPUT.into()));
    }
    let model_name = match fields.get("model") {
        Some(Value::String(m)) => m.as_str(),
        _ => return Err(bad("you must provide a model parameter".into())),
    };
    let model = find_model(Api::Openai, model_name, overrides).ok_or_else(|| {
        ApiError::new(
            404,
            format!("The model `{model_name}` does not exist or you do not have access to it."),
        )
        .with("invalid_request_error", Some("model_not_found"))
    })?;
    let dimension = match fields.get("dimensions") {
        None | Some(Value::Null) => model.default_dimension,
        Some(_) if !model.openai_flexible => {
            return Err(bad(
                "This model does not support specifying dimensions.".into()
            ));
        }
        Some(v) => match v.as_i64() {
            Some(d) if d < 1 => {
                return Err(bad(format!(
                    "Invalid value for 'dimensions' = {d}. Must be greater than or equal to 1."
                )));
            }
            Some(d) if d > i64::from(model.default_dimension) => {
                return Err(bad(format!(
                    "Invalid value for 'dimensions' = {d}. Must be less than or equal to {}.",
                    model.default_dimension
                )));
            }
            Some(d) => d as u32,
            None => {
                return Err(bad(format!(
                    "Invalid type for 'dimensions': expected an integer, but got {v}."
                )));
            }
        },
    };
    let encoding = match fields.get("encoding_format") {
        None | Some(Value::Null) => Encoding::Float,
        Some(Value::String(f)) if f == "float" => Encoding::Float,
        Some(Value::String(f)) if f == "base64" => Encoding::Base64,
        Some(other) => {
            return Err(bad(format!(
                "Invalid value for 'encoding_format' = {other}. Supported values are: 'float' and 'base64'."
            )));
        }
    };
    if inputs.len() > openai::MAX_INPUTS_PER_REQUEST {
        return Err(bad(format!(
            "Too many inputs. The max number of inputs is {}. We recommend splitting the request into batches.",
            openai::MAX_INPUTS_PER_REQUEST
        )));
    }
    if let Some((_, tokens)) = inputs
        .iter()
        .find(|(_, tokens)| *tokens > model.context_tokens)
    {
        return Err(bad(format!(
            "This model's maximum context length is {} tokens, however you requested {tokens} tokens ({tokens} in your prompt; 0 for the completion). Please reduce your prompt; or completion length.",
            model.context_tokens
        )));
    }
    let total: usize = inputs.iter().map(|(_, t)| t).sum();
    if total > model.max_tokens_per_request {
        return Err(bad(format!(
            "Requested {total} tokens, max {} tokens per request",
            model.max_tokens_per_request
        ))
        .with("max_tokens_per_request", Some("max_tokens_per_request")));
    }
    Ok(Parsed {
        api: Api::Openai,
        model: model.name,
        inputs: inputs.into_iter().map(|(text, _)| text).collect(),
        total_tokens: total as u64,
        dimension: dimension as usize,
        encoding,
    })
}

#[derive(Serialize)]
struct Item {
    object: &'static str,
    index: usize,
    embedding: EmbeddingValue,
}

/// The success body: vectors in input order, `usage` in the format's shape. CPU work: run it off
/// the async threads for big requests.
pub fn render_success(parsed: &Parsed) -> Vec<u8> {
    let data: Vec<Item> = parsed
        .inputs
        .iter()
        .enumerate()
        .map(|(index, text)| Item {
            object: "embedding",
            index,
            embedding: encode(
                embed(&parsed.model, text, parsed.dimension),
                parsed.encoding,
            ),
        })
        .collect();
    let usage = match parsed.api {
        Api::Voyage => json!({ "total_tokens": parsed.total_tokens }),
        Api::Openai => {
            json!({ "prompt_tokens": parsed.total_tokens, "total_tokens": parsed.total_tokens })
        }
    };
    let body = json!({ "object": "list", "data": data, "model": parsed.model, "usage": usage });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_mode_reads_the_telling_fields() {
        let d = |v: Value| detect_api(ApiMode::Auto, Api::Openai, Some(&v));
        assert_eq!(
            d(json!({"input": "x", "model": "m", "input_type": "query"})),
            Api::Voyage
        );
        assert_eq!(
            d(json!({"input": "x", "model": "m", "dimensions": 8})),
            Api::Openai
        );
        assert_eq!(d(json!({"input": "x", "model": "voyage-3.5"})), Api::Voyage);
        assert_eq!(d(json!({"input": "x", "model": "m"})), Api::Openai);
        assert_eq!(detect_api(ApiMode::Voyage, Api::Openai, None), Api::Voyage);
    }

    #[test]
    fn voyage_validation() {
        let p = |v: Value| parse(Api::Voyage, v.to_string().as_bytes(), &[]);
        let ok = p(json!({"input": ["a", "b"], "model": "voyage-3.5", "output_dimension": 256}))
            .unwrap();
        assert_eq!(
            (ok.dimension, ok.inputs.len(), ok.total_tokens),
            (256, 2, 2)
        );
        assert_eq!(p(json!({"model": "voyage-3.5"})).unwrap_err().status, 422);
        assert_eq!(
            p(json!({"input": [], "model": "voyage-3.5"}))
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            p(json!({"input": "a", "model": "voyage-9"}))
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            p(json!({"input": "a", "model": "voyage-3", "output_dimension": 512}))
                .unwrap_err()
                .status,
            400
        );
        let long = "x".repeat(4 * 32_000 + 4);
        assert_eq!(
            p(json!({"input": long, "model": "voyage-3.5", "truncation": false}))
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            p(json!({"input": long, "model": "voyage-3.5"}))
                .unwrap()
                .total_tokens,
            32_000
        );
        let err = ApiError::new(400, "m").body(Api::Voyage);
        assert_eq!(err, json!({"detail": "m"}));
    }

    #[test]
    fn openai_validation() {
        let p = |v: Value| parse(Api::Openai, v.to_string().as_bytes(), &[]);
        let ok = p(json!({"input": "abcd", "model": "text-embedding-3-small", "encoding_format": "base64"})).unwrap();
        assert_eq!((ok.dimension, ok.encoding), (1536, Encoding::Base64));
        assert_eq!(
            p(json!({"input": [[1, 2, 3]], "model": "text-embedding-3-small"}))
                .unwrap()
                .total_tokens,
            3
        );
        assert_eq!(
            p(json!({"input": "", "model": "text-embedding-3-small"}))
                .unwrap_err()
                .status,
            400
        );
        let missing = p(json!({"input": "a", "model": "nope"})).unwrap_err();
        assert_eq!(
            (missing.status, missing.code),
            (404, Some("model_not_found"))
        );
        assert_eq!(
            p(json!({"input": "a", "model": "text-embedding-ada-002", "dimensions": 8}))
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            p(json!({"input": "a", "model": "text-embedding-3-small", "dimensions": 4000}))
                .unwrap_err()
                .status,
            400
        );
        let body = ApiError::new(400, "m").body(Api::Openai);
        assert_eq!(
            body,
            json!({"error": {"message": "m", "type": "invalid_request_error", "param": null, "code": null}})
        );
    }

    #[test]
    fn overrides_register_models() {
        let extra = vec![("local-model".to_string(), 8)];
        let ok = parse(
            Api::Openai,
            br#"{"input":"a","model":"local-model"}"#,
            &extra,
        )
        .unwrap();
        assert_eq!(ok.dimension, 8);
    }
}
