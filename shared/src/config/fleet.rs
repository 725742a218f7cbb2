//! Settings of the fleet: the broker and its queue names, and how a worker consumes.

use std::net::SocketAddr;
use std::time::Duration;

use super::{ConfigError, Loader, invalid};
use crate::queue::{DEFAULT_AMQP_URL, QueueSettings};
use crate::secret::Secret;

/// `SLUICE_AMQP_*`, `SLUICE_QUEUE_*` and worker settings.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Broker and queue names. `SLUICE_AMQP_URL` (or `_FILE`),
    /// `SLUICE_QUEUE_PREFIX` (exchange and work queue `<prefix>.jobs`, DLX
    /// `<prefix>.dlx`, DLQ `<prefix>.dlq`, retry queues `<prefix>.retry.<delay>`),
    /// `SLUICE_QUEUE_RETRY_DELAYS_SECS`, `SLUICE_QUEUE_DELIVERY_LIMIT`
    ///, `SLUICE_PREFETCH`.
    pub queue: QueueSettings,
    /// `SLUICE_WORKER_CONCURRENCY`: jobs one worker processes at once (unset: the prefetch).
    /// With neither it nor `SLUICE_PREFETCH` set, the worker starts here and sizes itself.
    pub worker_concurrency: usize,
    /// Fixed when `SLUICE_WORKER_CONCURRENCY` or `SLUICE_PREFETCH` is set; otherwise automatic,
    /// up to `SLUICE_WORKER_MAX_CONCURRENCY`.
    pub worker_sizing: WorkerSizing,
    /// `SLUICE_MAX_ATTEMPTS`: delayed retries of a transiently failing job before it is
    /// dead-lettered.
    pub max_attempts: u32,
    /// `SLUICE_SHUTDOWN_DEADLINE_SECS`: after SIGTERM, how long in-flight jobs may finish before
    /// the rest are handed back to the queue.
    pub shutdown_deadline: Duration,
    /// `SLUICE_HTTP_LISTEN`: address of `/healthz`, `/readyz` and `/metrics`.
    pub http_listen: SocketAddr,
}

/// How a worker decides how many jobs it holds and processes at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerSizing {
    /// As configured.
    Fixed,
    /// Concurrency and prefetch grow from the initial value while every slot is busy and the
    /// provider's limit has room (see `worker/src/sizing.rs`), up to `max`.
    Auto { max: usize },
}

pub(super) fn load(l: &Loader) -> Result<FleetConfig, ConfigError> {
    let prefix: String = l.get("queue_prefix", "sluice".to_string())?;
    if prefix.is_empty()
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(invalid(
            "SLUICE_QUEUE_PREFIX",
            format!("invalid prefix {prefix:?}: use letters, digits, '.', '_' or '-'"),
        ));
    }
    let delays_text: String = l.get("queue_retry_delays_secs", "5,30,300".to_string())?;
    let retry_delays = delays_text
        .split(',')
        .map(|d| {
            d.trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 1.0)
                .map(Duration::from_secs_f64)
        })
        .collect::<Option<Vec<_>>>()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| {
            invalid(
                "SLUICE_QUEUE_RETRY_DELAYS_SECS",
                format!("expected comma-separated seconds ≥ 1, got {delays_text:?}"),
            )
        })?;
    let defaults = QueueSettings::default();
    let queue = QueueSettings {
        amqp_url: {
            l.mark_default("amqp_url", DEFAULT_AMQP_URL);
            l.secret("amqp_url")?
                .unwrap_or_else(|| Secret::new(DEFAULT_AMQP_URL))
        },
        exchange: format!("{prefix}.jobs"),
        work_queue: format!("{prefix}.jobs"),
        dead_letter_exchange: format!("{prefix}.dlx"),
        dead_letter_queue: format!("{prefix}.dlq"),
        retry_queue_prefix: format!("{prefix}.retry"),
        retry_delays,
        delivery_limit: l.get("queue_delivery_limit", defaults.delivery_limit)?,
        prefetch: l.get("prefetch", defaults.prefetch)?,
        ..defaults
    };
    let fixed_concurrency: Option<usize> = l.opt("worker_concurrency")?;
    let worker_sizing = if fixed_concurrency.is_none() && l.opt::<u16>("prefetch")?.is_none() {
        let max: usize = l.get("worker_max_concurrency", 256)?;
        if max < usize::from(queue.prefetch) || max > usize::from(u16::MAX) {
            return Err(invalid(
                "SLUICE_WORKER_MAX_CONCURRENCY",
                format!("must be between {} and {}", queue.prefetch, u16::MAX),
            ));
        }
        WorkerSizing::Auto { max }
    } else {
        WorkerSizing::Fixed
    };
    queue
        .validate()
        .map_err(|e| invalid("SLUICE_QUEUE_*", e.to_string()))?;
    let fleet = FleetConfig {
        worker_concurrency: fixed_concurrency.unwrap_or(usize::from(queue.prefetch)),
        worker_sizing,
        max_attempts: l.get("max_attempts", 5)?,
        shutdown_deadline: l.secs("shutdown_deadline_secs", 25)?,
        http_listen: l.get("http_listen", SocketAddr::from(([0, 0, 0, 0], 9090)))?,
        queue,
    };
    if fleet.worker_concurrency == 0 {
        return Err(invalid("SLUICE_WORKER_CONCURRENCY", "must be at least 1"));
    }
    Ok(fleet)
}
