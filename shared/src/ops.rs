//! The operations endpoints every long-running Sluice service exposes: `/healthz` (the process is
//! alive and serving), `/readyz` (its dependencies answer: broker, database, vector store — the
//! caller supplies the checks) and `/metrics` (Prometheus text).
//!
//! `/readyz` is unauthenticated, so it names the dependency that failed (`broker: unavailable`)
//! and nothing more: the reason (an address, a driver message that may echo a URL) goes to the
//! log, redacted.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One dependency whose reachability decides readiness.
#[async_trait]
pub trait ReadinessCheck: Send + Sync {
    /// Short name shown in `/readyz` output (`database`, `broker`, `qdrant`).
    fn name(&self) -> &'static str;
    /// `Err` with a reason when the dependency cannot be used right now.
    async fn check(&self) -> Result<(), String>;
    /// Whether the reason may be shown on the unauthenticated `/readyz` (it names no address and
    /// quotes no driver). Off unless a check says so.
    fn reason_is_public(&self) -> bool {
        false
    }
}

/// Ready only while the metadata store answers a query (the worker's and the scheduler's check).
pub struct MetadataCheck(pub Arc<dyn crate::metadata::MetadataStore>);

#[async_trait]
impl ReadinessCheck for MetadataCheck {
    fn name(&self) -> &'static str {
        "database"
    }
    async fn check(&self) -> Result<(), String> {
        self.0
            .get("-", "-")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// A check answers within this or counts as failed: a hung dependency must not hang the probe.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
struct OpsState {
    metrics: Option<PrometheusHandle>,
    checks: Arc<Vec<Arc<dyn ReadinessCheck>>>,
    /// The last failure logged per check: a probe polled every few seconds logs a failure once,
    /// and again only when it changes or clears.
    logged: Arc<std::sync::Mutex<std::collections::HashMap<&'static str, String>>>,
}

/// The router, for services that mount more routes beside it.
pub fn router(metrics: Option<PrometheusHandle>, checks: Vec<Arc<dyn ReadinessCheck>>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(OpsState {
            metrics,
            checks: Arc::new(checks),
            logged: Default::default(),
        })
}

/// Serve [`router`] on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn readyz(State(state): State<OpsState>) -> (StatusCode, String) {
    let results = futures::future::join_all(state.checks.iter().map(|check| async move {
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check.check()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        };
        (check.name(), check.reason_is_public(), outcome)
    }))
    .await;
    let mut body = String::new();
    let mut ready = true;
    let mut logged = state
        .logged
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (name, public, outcome) in results {
        match outcome {
            Ok(()) => {
                if logged.remove(name).is_some() {
                    tracing::info!(dependency = name, "ready again");
                }
                body.push_str(&format!("{name}: ok\n"));
            }
            Err(reason) => {
                ready = false;
                let reason = crate::secret::redact(&reason);
                if logged.get(name) != Some(&reason) {
                    tracing::warn!(dependency = name, %reason, "not ready");
                    logged.insert(name, reason.clone());
                }
                if public {
                    body.push_str(&format!("{name}: {reason}\n"));
                } else {
                    body.push_str(&format!("{name}: unavailable\n"));
                }
            }
        }
    }
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body,
    )
}

async fn render_metrics(State(state): State<OpsState>) -> (StatusCode, String) {
    match &state.metrics {
        Some(handle) => (StatusCode::OK, handle.render()),
        None => (
            StatusCode::NOT_FOUND,
            "metrics are not enabled in this process\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(&'static str, Result<(), String>);

    #[async_trait]
    impl ReadinessCheck for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        async fn check(&self) -> Result<(), String> {
            self.1.clone()
        }
    }

    struct Hangs;

    #[async_trait]
    impl ReadinessCheck for Hangs {
        fn name(&self) -> &'static str {
            "qdrant"
        }
        async fn check(&self) -> Result<(), String> {
            std::future::pending().await
        }
    }

    async fn start(checks: Vec<Arc<dyn ReadinessCheck>>) -> (String, CancellationToken) {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("sluice_test_total").increment(3)
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, router(Some(handle), checks), stop.clone()));
        (url, stop)
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let (url, stop) = start(vec![Arc::new(Fixed("database", Ok(())))]).await;
        let get = |path: &str| reqwest::get(format!("{url}{path}"));
        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        let ready = get("/readyz").await.unwrap();
        assert_eq!(ready.status(), 200);
        assert_eq!(ready.text().await.unwrap(), "database: ok\n");
        let metrics = get("/metrics").await.unwrap().text().await.unwrap();
        assert!(metrics.contains("sluice_test_total 3"), "{metrics}");
        stop.cancel();
    }

    #[tokio::test]
    async fn not_ready_when_a_dependency_fails_or_hangs() {
        let checks: Vec<Arc<dyn ReadinessCheck>> = vec![
            Arc::new(Fixed(
                "broker",
                Err("amqp://sluice:Ready-Pw-3@mq:5672: connection refused".into()),
            )),
            Arc::new(Hangs),
            Arc::new(Fixed("database", Ok(()))),
        ];
        let (url, stop) = start(checks).await;
        let ready = reqwest::get(format!("{url}/readyz")).await.unwrap();
        assert_eq!(ready.status(), 503);
        let body = ready.text().await.unwrap();
        // Which dependency failed, never its internal message (an unauthenticated endpoint).
        assert_eq!(
            body,
            "broker: unavailable\nqdrant: unavailable\ndatabase: ok\n"
        );
        stop.cancel();
    }
}
