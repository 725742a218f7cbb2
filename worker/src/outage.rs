//! Outages pause, they do not poison: when a job fails in a way a down dependency would explain
//! (PostgreSQL, Qdrant, the embedding provider), the worker asks that dependency directly. If it
//! does not answer, the job is handed back without spending an attempt, intake pauses (the
//! consumer is cancelled, prefetched jobs go back to the queue, `/readyz` says why), and a
//! background probe resumes intake once the dependency answers again. If it does answer, the
//! failure was the job's own and it is retried as usual. So an outage of any length moves nothing
//! to the DLQ, and one bad job cannot pause the fleet.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_shared::ops::ReadinessCheck;
use sluice_shared::pipeline::{Dependency, Pipeline};
use sluice_shared::store::StoreError;
use tokio::sync::watch;

/// How long one probe may take before the dependency counts as down. The provider's gets
/// longer: a probe is a real (one-word) embedding request, which the client itself retries.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const PROVIDER_PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Probing while paused starts at the first and backs off to the second.
const FIRST_PROBE_DELAY: Duration = Duration::from_secs(1);
const MAX_PROBE_DELAY: Duration = Duration::from_secs(15);

/// The worker's view of its dependencies; one per process.
pub struct Outages {
    pipeline: Arc<Pipeline>,
    collection: String,
    paused: watch::Sender<Option<Dependency>>,
}

impl Outages {
    pub fn new(pipeline: Arc<Pipeline>, collection: String) -> Arc<Self> {
        Arc::new(Outages {
            pipeline,
            collection,
            paused: watch::Sender::new(None),
        })
    }

    /// The dependency intake is paused for, if any.
    pub fn paused(&self) -> Option<Dependency> {
        *self.paused.borrow()
    }

    /// Resolves once intake may resume.
    pub async fn resumed(&self) {
        let mut rx = self.paused.subscribe();
        // The sender lives as long as `self`, so this only ends when the pause does.
        let _ = rx.wait_for(Option::is_none).await;
    }

    /// Whether `dependency` is down, probing it unless intake is already paused for it. A failed
    /// probe pauses intake and starts the background probe that resumes it.
    pub async fn is_down(self: &Arc<Self>, dependency: Dependency) -> bool {
        if self.paused() == Some(dependency) {
            return true;
        }
        if self.probe(dependency).await {
            return false;
        }
        let newly_paused = self.paused.send_if_modified(|paused| {
            if paused.is_none() {
                *paused = Some(dependency);
                true
            } else {
                false
            }
        });
        if newly_paused {
            tracing::warn!(
                dependency = dependency.as_str(),
                "dependency unreachable: pausing intake until it answers"
            );
            sluice_shared::metrics::outage_started(dependency.as_str());
            tokio::spawn(self.clone().probe_until_up(dependency));
        }
        true
    }

    async fn probe_until_up(self: Arc<Self>, dependency: Dependency) {
        let mut delay = FIRST_PROBE_DELAY;
        loop {
            tokio::time::sleep(delay).await;
            if self.probe(dependency).await {
                tracing::info!(
                    dependency = dependency.as_str(),
                    "dependency answers again: resuming intake"
                );
                sluice_shared::metrics::outage_ended(dependency.as_str());
                self.paused.send_replace(None);
                return;
            }
            delay = (delay * 2).min(MAX_PROBE_DELAY);
        }
    }

    /// One probe: `true` when the dependency answered.
    async fn probe(&self, dependency: Dependency) -> bool {
        let pipeline = &self.pipeline;
        let probe = async {
            match dependency {
                Dependency::MetadataStore => pipeline
                    .metadata
                    .get(&self.collection, "sluice-probe")
                    .await
                    .is_ok(),
                Dependency::VectorStore => matches!(
                    pipeline
                        .store
                        .count(&self.collection, Some("sluice-probe"))
                        .await,
                    Ok(_) | Err(StoreError::MissingCollection(_))
                ),
                Dependency::EmbeddingProvider => match &pipeline.embedder {
                    Some(embedder) => embedder
                        .embed(
                            &["probe".to_string()],
                            sluice_shared::embed::InputKind::Query,
                        )
                        .await
                        .is_ok(),
                    None => true,
                },
            }
        };
        let limit = match dependency {
            Dependency::EmbeddingProvider => PROVIDER_PROBE_TIMEOUT,
            Dependency::MetadataStore | Dependency::VectorStore => PROBE_TIMEOUT,
        };
        tokio::time::timeout(limit, probe).await.unwrap_or(false)
    }
}

/// `/readyz` reports not ready, with the reason, while intake is paused.
pub struct OutageCheck(pub Arc<Outages>);

#[async_trait]
impl ReadinessCheck for OutageCheck {
    fn name(&self) -> &'static str {
        "intake"
    }
    async fn check(&self) -> Result<(), String> {
        match self.0.paused() {
            None => Ok(()),
            Some(dependency) => Err(format!("paused: {} unreachable", dependency.as_str())),
        }
    }
    // Names only which dependency, never its address or error.
    fn reason_is_public(&self) -> bool {
        true
    }
}
