//! Emulator settings: which wire format to speak, credentials, latency, rate limits and faults.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A provider wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    Voyage,
    Openai,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Voyage => "voyage",
            Api::Openai => "openai",
        }
    }
}

/// Which wire format(s) `POST /v1/embeddings` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ApiMode {
    Voyage,
    Openai,
    /// Decide per request: Voyage-only fields (`input_type`, `output_dimension`, `truncation`,
    /// `output_dtype`) → Voyage; OpenAI-only fields (`dimensions`, `encoding_format`) → OpenAI;
    /// otherwise a `voyage-*` model name → Voyage; otherwise [`EmulatorConfig::auto_default`].
    Auto,
}

/// Everything the emulator can be told; [`Default`] is a fast, fault-free server on a random port.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Wire format(s) served.
    pub api: ApiMode,
    /// Format assumed in `auto` mode when a request has no telling field.
    pub auto_default: Api,
    /// When set, requests must carry `Authorization: Bearer <key>` or `api-key: <key>` (else 401).
    pub api_key: Option<String>,
    /// Fixed latency added to every successful request.
    pub latency: Duration,
    /// Uniform random extra latency, 0 to this.
    pub latency_jitter: Duration,
    /// Extra latency per 1,000 tokens in the request (providers are slower for bigger batches).
    pub latency_per_1k_tokens: Duration,
    /// Requests allowed per `rate_window` (429 beyond it); `None` = unlimited.
    pub requests_per_window: Option<u64>,
    /// Tokens allowed per `rate_window` (429 beyond it); `None` = unlimited.
    pub tokens_per_window: Option<u64>,
    /// Length of the sliding rate-limit window (providers use one minute).
    pub rate_window: Duration,
    /// Probability (0–1) that a request fails with a random 500, 502 or 503.
    pub error_rate: f64,
    /// Probability (0–1) that a request hangs for `hang_duration` (then gets a 504).
    pub hang_rate: f64,
    /// How long a hung request hangs.
    pub hang_duration: Duration,
    /// Faults applied, in order, to the first requests (see also `POST /admin/faults`).
    pub initial_faults: Vec<super::FaultSpec>,
    /// Extra models or dimension overrides: `(model, dimension)`. A name unknown to the built-in
    /// tables becomes a valid model of both formats with a fixed dimension.
    pub model_dimensions: Vec<(String, u32)>,
    /// Seed of the fault and jitter random numbers (vectors do not depend on it).
    pub seed: u64,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api: ApiMode::Auto,
            auto_default: Api::Openai,
            api_key: None,
            latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            latency_per_1k_tokens: Duration::ZERO,
            requests_per_window: None,
            tokens_per_window: None,
            rate_window: Duration::from_secs(60),
            error_rate: 0.0,
            hang_rate: 0.0,
            hang_duration: Duration::from_secs(600),
            initial_faults: Vec::new(),
            model_dimensions: Vec::new(),
            seed: 0x5eed,
        }
    }
}
