//! Embedding-provider emulator: an HTTP server that speaks Voyage's and OpenAI's
//! `POST /v1/embeddings` closely enough to stand in for them in tests and load tests — request
//! validation, error bodies, `usage` token counts, rate limits with `Retry-After`, latency, random
//! and scripted faults — and returns deterministic vectors (a pure function of model and text).
//!
//! Endpoints:
//! - `POST /v1/embeddings` — Voyage and/or OpenAI format (see [`ApiMode`]);
//! - `POST /admin/faults` (a [`FaultSpec`] or a list), `GET`/`DELETE /admin/faults`;
//! - `GET /admin/stats` ([`StatsSnapshot`]), `POST /admin/reset`;
//! - `GET /healthz`, `GET /metrics` (Prometheus text).
//!
//! Run it as the `provider-emulator` binary (prints `listening on http://ADDR`) or in-process with
//! [`spawn`].

mod config;
mod limits;
mod server;
mod stats;
mod vectors;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{Api, ApiMode, EmulatorConfig};
pub use limits::{FaultKind, FaultSpec, RateStatus, RateWindow, format_reset};
pub use stats::{StatsSnapshot, TimelineEntry};
pub use vectors::{count_tokens, embed as emulated_vector};

use server::EmulatorState;

/// A running emulator. Dropping it stops the server (hung requests are released).
pub struct EmulatorHandle {
    addr: SocketAddr,
    state: Arc<EmulatorState>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl EmulatorHandle {
    /// The bound address (the real port when the config asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the base URL to give a client.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Counters as `GET /admin/stats` reports them.
    pub fn stats(&self) -> StatsSnapshot {
        self.state.stats_snapshot()
    }

    /// Queues a scripted fault, as `POST /admin/faults` does.
    pub fn inject(&self, spec: FaultSpec) {
        self.state.inject(spec);
    }

    /// Every request for the next `for_` gets `kind` (a 5xx status rotates through 500, 502 and
    /// 503): a provider outage or a 429 storm of a given length, however many requests arrive.
    pub fn storm(&self, kind: FaultKind, for_: std::time::Duration) {
        self.state.storm(kind, for_);
    }

    /// Stops accepting connections, releases hung requests and waits for the server to finish.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }

    /// Resolves when the server stops (after [`EmulatorHandle::shutdown`] or a fatal error).
    pub async fn wait(mut self) -> std::io::Result<()> {
        match self.task.take() {
            Some(task) => task.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }

    /// A token that stops the server when cancelled (for signal handlers).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Binds `config.listen` and serves until the handle is shut down or dropped.
pub async fn spawn(config: EmulatorConfig) -> std::io::Result<(SocketAddr, EmulatorHandle)> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let state = Arc::new(EmulatorState::new(config, shutdown.clone()));
    let app = server::router(state.clone());
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    Ok((
        addr,
        EmulatorHandle {
            addr,
            state,
            shutdown,
            task: Some(task),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_process_emulator_serves_faults_and_stats_and_stops() {
        let (addr, handle) = spawn(EmulatorConfig::default()).await.unwrap();
        assert_eq!(handle.base_url(), format!("http://{addr}"));
        handle.inject(FaultSpec {
            count: 1,
            kind: FaultKind::Status { status: 503 },
        });
        let client = reqwest::Client::new();
        let url = format!("{}/v1/embeddings", handle.base_url());
        let body = serde_json::json!({"input": ["a"], "model": "voyage-3.5"});
        let first = client.post(&url).json(&body).send().await.unwrap();
        assert_eq!(first.status().as_u16(), 503);
        let second = client.post(&url).json(&body).send().await.unwrap();
        assert_eq!(second.status().as_u16(), 200);
        let stats = handle.stats();
        assert_eq!(
            (stats.requests_total, stats.server_errors, stats.succeeded),
            (2, 1, 1)
        );
        // A storm answers every request until it is over, then the provider recovers.
        handle.storm(
            FaultKind::RateLimit {
                retry_after_secs: Some(1),
            },
            std::time::Duration::from_millis(300),
        );
        for _ in 0..3 {
            let r = client.post(&url).json(&body).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 429);
        }
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let after = client.post(&url).json(&body).send().await.unwrap();
        assert_eq!(after.status().as_u16(), 200);
        handle.shutdown().await.unwrap();
        assert!(
            client
                .get(format!("http://{addr}/healthz"))
                .send()
                .await
                .is_err()
        );
    }
}
