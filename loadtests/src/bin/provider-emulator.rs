//! `provider-emulator`: a stand-in for the Voyage and OpenAI embedding APIs. Prints
//! `listening on http://ADDR` once bound, then serves until SIGINT/SIGTERM.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use sluice_loadtests::emulator::{Api, ApiMode, EmulatorConfig, FaultSpec, spawn};

/// Embedding-provider emulator (Voyage / OpenAI wire formats).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address to bind; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Wire format served on POST /v1/embeddings.
    #[arg(long, value_enum, default_value = "auto")]
    api: ApiMode,
    /// Format assumed in auto mode when the request does not tell.
    #[arg(long, value_enum, default_value = "openai")]
    auto_default: Api,
    /// Require this API key (Authorization: Bearer KEY or api-key: KEY); 401 otherwise.
    #[arg(long, env = "EMULATOR_API_KEY")]
    api_key: Option<String>,
    /// Fixed latency per request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Random extra latency per request, 0 to this many milliseconds.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Extra latency per 1,000 request tokens, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_per_1k_tokens_ms: u64,
    /// Requests allowed per rate window (429 beyond it).
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens allowed per rate window (429 beyond it).
    #[arg(long)]
    tpm: Option<u64>,
    /// Rate window length in seconds (providers use 60).
    #[arg(long, default_value_t = 60.0)]
    rate_window_secs: f64,
    /// Probability (0-1) of a random 500/502/503.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Probability (0-1) that a request hangs.
    #[arg(long, default_value_t = 0.0)]
    hang_rate: f64,
    /// How long a hung request hangs, in seconds.
    #[arg(long, default_value_t = 600)]
    hang_secs: u64,
    /// The first N requests fail with --fail-status.
    #[arg(long, default_value_t = 0)]
    fail_first: u32,
    /// Status of the --fail-first failures (429 carries Retry-After: --retry-after-secs).
    #[arg(long, default_value_t = 429)]
    fail_status: u16,
    /// Retry-After of the --fail-first 429s, in seconds.
    #[arg(long, default_value_t = 1)]
    retry_after_secs: u64,
    /// Extra model or dimension override, NAME=DIM (repeatable).
    #[arg(long = "model", value_name = "NAME=DIM")]
    models: Vec<String>,
    /// Seed of the random faults and jitter.
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
}

fn parse_model(spec: &str) -> anyhow::Result<(String, u32)> {
    let (name, dim) = spec
        .split_once('=')
        .with_context(|| format!("--model {spec:?}: expected NAME=DIM"))?;
    let dim: u32 = dim
        .parse()
        .with_context(|| format!("--model {spec:?}: DIM must be a positive integer"))?;
    if name.is_empty() || dim == 0 {
        bail!("--model {spec:?}: NAME must not be empty and DIM must be positive");
    }
    Ok((name.to_string(), dim))
}

impl Cli {
    fn into_config(self) -> anyhow::Result<EmulatorConfig> {
        for (flag, p) in [
            ("--error-rate", self.error_rate),
            ("--hang-rate", self.hang_rate),
        ] {
            if !(0.0..=1.0).contains(&p) {
                bail!("{flag} must be between 0 and 1, got {p}");
            }
        }
        if !(self.rate_window_secs > 0.0 && self.rate_window_secs.is_finite()) {
            bail!("--rate-window-secs must be positive");
        }
        let initial_faults = if self.fail_first > 0 {
            vec![FaultSpec::from_status(
                self.fail_first,
                self.fail_status,
                self.retry_after_secs,
            )]
        } else {
            Vec::new()
        };
        Ok(EmulatorConfig {
            listen: self.listen,
            api: self.api,
            auto_default: self.auto_default,
            api_key: self.api_key,
            latency: Duration::from_millis(self.latency_ms),
            latency_jitter: Duration::from_millis(self.jitter_ms),
            latency_per_1k_tokens: Duration::from_millis(self.latency_per_1k_tokens_ms),
            requests_per_window: self.rpm,
            tokens_per_window: self.tpm,
            rate_window: Duration::from_secs_f64(self.rate_window_secs),
            error_rate: self.error_rate,
            hang_rate: self.hang_rate,
            hang_duration: Duration::from_secs(self.hang_secs),
            initial_faults,
            model_dimensions: self
                .models
                .iter()
                .map(|m| parse_model(m))
                .collect::<anyhow::Result<_>>()?,
            seed: self.seed,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Cli::parse().into_config()?;
    let (addr, handle) = spawn(config)
        .await
        .context("cannot bind the listen address")?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{addr}")?;
        stdout.flush()?;
    }
    let stop = handle.shutdown_token();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        stop.cancel();
    });
    handle.wait().await.context("server failed")?;
    Ok(())
}
