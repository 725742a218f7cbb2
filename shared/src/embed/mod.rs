//! Embed stage: chunk texts → vectors. One [`Embedder`] trait, three providers (Voyage,
//! OpenAI-compatible, local BM25). The dense providers are one [`DenseClient`] each, over a
//! [`Provider`] that holds only what its API does differently; the client batches up to the
//! documented per-request limits and retries 429/5xx/timeouts with jittered exponential backoff
//! (backon), honouring `Retry-After`.

pub mod batch;
pub mod bm25;
mod client;
mod http;
pub mod limiter;
pub mod openai;
pub mod packing;
pub mod retry;
pub mod voyage;

pub use batch::{Batch, BatchClose, BatchLimits, estimate_tokens};
pub use bm25::{Bm25Encoder, Bm25Settings};
pub use client::{DenseClient, DenseSettings, Provider};
pub use limiter::{EmbedLimiter, LimiterPermit, LimiterSettings, RequestOutcome};
pub use openai::{OpenAiEmbedder, OpenAiOptions, OpenAiSettings};
pub use packing::{PackingEmbedder, PackingSettings};
pub use voyage::{VoyageEmbedder, VoyageOptions, VoyageSettings};

use async_trait::async_trait;

use crate::model::SparseVector;

/// Whether texts are documents being indexed or a search query (Voyage's `input_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Document,
    Query,
}

/// The result of embedding a batch: one vector per input, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseEmbeddings {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens the provider billed (its `usage.total_tokens`).
    pub tokens: u64,
}

/// Why embedding failed. Messages carry the provider's own words but never the API key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    /// 429 after the retry budget was spent.
    #[error("{provider}: rate limited (HTTP 429) after {attempts} attempts: {message}")]
    RateLimited {
        provider: &'static str,
        attempts: u32,
        message: String,
    },
    /// 5xx after the retry budget was spent.
    #[error("{provider}: server error (HTTP {status}) after {attempts} attempts: {message}")]
    Server {
        provider: &'static str,
        status: u16,
        attempts: u32,
        message: String,
    },
    /// Network error or timeout after the retry budget was spent.
    #[error("{provider}: request failed after {attempts} attempts: {message}")]
    Transport {
        provider: &'static str,
        attempts: u32,
        message: String,
    },
    /// 400/401/403/404/422: the provider's own message, never retried.
    #[error("{provider}: request rejected (HTTP {status}): {message}")]
    Rejected {
        provider: &'static str,
        status: u16,
        message: String,
    },
    /// The provider answered 2xx with something that does not fit its documented format.
    #[error("{provider}: unexpected response: {message}")]
    Protocol {
        provider: &'static str,
        message: String,
    },
    /// One input alone exceeds the provider's per-input token limit.
    #[error(
        "{provider}: input {index} has about {tokens} tokens, over the per-input limit of {limit}"
    )]
    InputTooLong {
        provider: &'static str,
        index: usize,
        tokens: usize,
        limit: usize,
    },
    /// The embedder's settings cannot work (bad base URL, zero limits, unknown BM25 language).
    #[error("{provider}: invalid settings: {message}")]
    InvalidSettings {
        provider: &'static str,
        message: String,
    },
}

impl EmbedError {
    /// Whether the job should be retried later (a delayed retry), as opposed to failed for good.
    pub fn is_retryable(&self) -> bool {
        match self {
            EmbedError::RateLimited { .. }
            | EmbedError::Server { .. }
            | EmbedError::Transport { .. } => true,
            EmbedError::Rejected { .. }
            | EmbedError::Protocol { .. }
            | EmbedError::InputTooLong { .. }
            | EmbedError::InvalidSettings { .. } => false,
        }
    }

    /// Short stable name of the error kind, for metrics labels and job records.
    pub fn kind(&self) -> &'static str {
        match self {
            EmbedError::RateLimited { .. } => "embed_rate_limited",
            EmbedError::Server { .. } => "embed_server_error",
            EmbedError::Transport { .. } => "embed_transport",
            EmbedError::Rejected { .. } => "embed_rejected",
            EmbedError::Protocol { .. } => "embed_protocol",
            EmbedError::InputTooLong { .. } => "embed_input_too_long",
            EmbedError::InvalidSettings { .. } => "embed_invalid_settings",
        }
    }
}

/// A dense embedding provider.
#[async_trait]
pub trait Embedder: Send + Sync {
    /// Stable description of the model and its settings (provider, model, dimensions); part of the
    /// pipeline fingerprint, so changing it re-embeds everything.
    fn fingerprint(&self) -> String;

    /// Embed any number of texts; the implementation splits them into requests within the
    /// provider's per-request limits and returns vectors in input order.
    async fn embed(&self, texts: &[String], kind: InputKind)
    -> Result<DenseEmbeddings, EmbedError>;
}

/// Sparse BM25 vectors computed locally (no network). Separate from [`Embedder`] because every
/// point gets one, with or without a dense provider.
pub trait SparseEncoder: Send + Sync {
    fn fingerprint(&self) -> String;
    fn encode_documents(&self, texts: &[String]) -> Vec<SparseVector>;
    fn encode_query(&self, text: &str) -> SparseVector;
}
