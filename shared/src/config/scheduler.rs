//! Settings of the scheduler: `sluice serve` (HTTP API, watch mode, S3 event notifications) and
//! `sluice reindex`.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use super::{ConfigError, Loader, invalid};
use crate::secret::Secret;

/// `SLUICE_API_*`, `SLUICE_WATCH*`, `SLUICE_S3_EVENTS_QUEUE` and `SLUICE_REINDEX_*`.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// `SLUICE_API_LISTEN`: address of the HTTP API and of `/healthz`, `/readyz`, `/metrics`
    ///.
    pub api_listen: SocketAddr,
    /// `SLUICE_SERVE_ROLE`: what one `sluice serve` process runs. Lets a cluster
    /// run the API with several replicas and the watchers / S3-event consumer exactly once.
    pub serve_role: ServeRole,
    /// `SLUICE_API_ALLOW_ANONYMOUS`: let `sluice serve` listen on a non-loopback address with no
    /// `SLUICE_API_KEY`.
    pub api_allow_anonymous: bool,
    /// `SLUICE_API_TIMEOUT_SECS`: a request's time limit, body included.
    pub api_timeout: Duration,
    /// `SLUICE_API_MAX_CONCURRENT_REQUESTS`: requests handled at once; more get a 503
    ///.
    pub api_max_concurrent_requests: usize,
    /// `SLUICE_API_KEY` (or `_FILE`): when set, every `/v1/...` request must carry it as
    /// `Authorization: Bearer <key>` (or `x-api-key`). Probes and `/metrics` stay open.
    pub api_key: Option<Secret>,
    /// `SLUICE_WATCH`: comma-separated locations `sluice serve` polls for new, changed and removed
    /// objects (local folders, `file://`, `s3://`, `gs://`, `az://` URLs). Empty: no watching.
    pub watch: Vec<String>,
    /// `SLUICE_WATCH_INTERVAL_SECS`: pause between two listings of a watched location.
    pub watch_interval: Duration,
    /// `SLUICE_S3_EVENTS_QUEUE`: a queue carrying S3 event notifications (AWS S3 or MinIO's AMQP
    /// target) that `sluice serve` turns into index/delete jobs. Unset: not consumed.
    pub s3_events_queue: Option<String>,
    /// `SLUICE_REINDEX_MAX_QUEUE_DEPTH`: `sluice reindex` waits while the work queue holds more
    /// messages than this, so a large reindex never floods the broker.
    pub reindex_max_queue_depth: u32,
    /// `SLUICE_REINDEX_BATCH`: documents read from the metadata store and published per batch
    ///. Never more than the maximum queue depth.
    pub reindex_batch: usize,
    /// `SLUICE_METRICS_PUSHGATEWAY`: a Prometheus Pushgateway URL (`http://pushgateway:9091`);
    /// when set, `sluice verify` pushes its `sluice_verify_*` metrics there at the end. Unset:
    /// nothing is pushed.
    pub metrics_pushgateway: Option<String>,
}

/// The parts of `sluice serve` a process runs. `/healthz`, `/readyz` and `/metrics` are always served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeRole {
    /// The HTTP API, the watchers and the S3-event consumer: one process does everything.
    All,
    /// Only the `/v1` HTTP API: safe to run with many replicas behind a Service.
    Api,
    /// Only the watchers and the S3-event consumer (no `/v1` API): run exactly one, or every change
    /// is enqueued once per replica.
    Watch,
}

impl ServeRole {
    pub fn serves_api(self) -> bool {
        matches!(self, ServeRole::All | ServeRole::Api)
    }
    pub fn runs_watchers(self) -> bool {
        matches!(self, ServeRole::All | ServeRole::Watch)
    }
}

impl std::fmt::Display for ServeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServeRole::All => "all",
            ServeRole::Api => "api",
            ServeRole::Watch => "watch",
        })
    }
}

impl FromStr for ServeRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "all" => Ok(ServeRole::All),
            "api" => Ok(ServeRole::Api),
            "watch" => Ok(ServeRole::Watch),
            _ => Err("expected all, api or watch".to_string()),
        }
    }
}

pub(super) fn load(l: &Loader) -> Result<SchedulerConfig, ConfigError> {
    let watch_text: String = l.get("watch", String::new())?;
    let watch = watch_text
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    let config = SchedulerConfig {
        api_listen: l.get("api_listen", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
        serve_role: l.get("serve_role", ServeRole::All)?,
        api_allow_anonymous: l.get("api_allow_anonymous", false)?,
        api_timeout: l.secs("api_timeout_secs", 30)?,
        api_max_concurrent_requests: l.get("api_max_concurrent_requests", 512)?,
        api_key: l.secret("api_key")?,
        watch,
        watch_interval: l.secs("watch_interval_secs", 30)?,
        s3_events_queue: l
            .opt::<String>("s3_events_queue")?
            .filter(|q| !q.is_empty()),
        reindex_max_queue_depth: l.get("reindex_max_queue_depth", 1000)?,
        reindex_batch: l.get("reindex_batch", 100)?,
        metrics_pushgateway: l
            .opt::<String>("metrics_pushgateway")?
            .filter(|u| !u.trim().is_empty()),
    };
    if let Some(gateway) = &config.metrics_pushgateway {
        match url::Url::parse(gateway) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => {
                return Err(invalid(
                    "SLUICE_METRICS_PUSHGATEWAY",
                    format!(
                        "expected an http(s):// URL, got {}",
                        crate::secret::redact_url(gateway)
                    ),
                ));
            }
        }
    }
    if config
        .api_key
        .as_ref()
        .is_some_and(|k| k.expose().trim().is_empty())
    {
        return Err(invalid("SLUICE_API_KEY", "is set but empty"));
    }
    if config.api_max_concurrent_requests == 0 {
        return Err(invalid(
            "SLUICE_API_MAX_CONCURRENT_REQUESTS",
            "must be at least 1",
        ));
    }
    if config.reindex_max_queue_depth == 0 {
        return Err(invalid(
            "SLUICE_REINDEX_MAX_QUEUE_DEPTH",
            "must be at least 1",
        ));
    }
    if config.reindex_batch == 0 {
        return Err(invalid("SLUICE_REINDEX_BATCH", "must be at least 1"));
    }
    if config.reindex_batch > config.reindex_max_queue_depth as usize {
        return Err(invalid(
            "SLUICE_REINDEX_BATCH",
            format!(
                "must not exceed SLUICE_REINDEX_MAX_QUEUE_DEPTH ({})",
                config.reindex_max_queue_depth
            ),
        ));
    }
    Ok(config)
}

impl SchedulerConfig {
    /// Refuses an API reachable from other hosts without a key, unless anonymous access was
    /// asked for explicitly. Checked when `sluice serve` starts (with `--listen` applied).
    pub fn check_api_exposure(&self) -> Result<(), ConfigError> {
        if self.api_listen.ip().is_loopback() || self.api_key.is_some() || self.api_allow_anonymous
        {
            return Ok(());
        }
        Err(invalid(
            "SLUICE_API_KEY",
            format!(
                "is required when the API listens on {} (not a loopback address): set \
                 SLUICE_API_KEY (or SLUICE_API_KEY_FILE), listen on 127.0.0.1, or set \
                 SLUICE_API_ALLOW_ANONYMOUS=true to accept jobs from anyone who can reach it",
                self.api_listen
            ),
        ))
    }
}
