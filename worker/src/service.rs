//! The consume loop: bounded prefetch and concurrency, settle each delivery after the pipeline's
//! durable write, and a graceful shutdown that never counts a healthy job as a failed delivery.
//!
//! Bounds: the broker sends at most `SLUICE_PREFETCH` unacked deliveries; at most
//! `SLUICE_WORKER_CONCURRENCY` of them are processed at once (a semaphore permit is taken before
//! the next delivery is pulled, so the rest wait in the prefetch buffer, not in memory here).
//!
//! Shutdown (SIGTERM): cancel the consumer, hand back deliveries that were prefetched but never
//! started, let in-flight jobs finish until `SLUICE_SHUTDOWN_DEADLINE_SECS`, then hand back the
//! rest. "Hand back" republishes a copy with a confirm and acks the original, so the job's
//! delivery count starts again from zero (see `Delivery::hand_back`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use sluice_shared::config::Settings;
use sluice_shared::memory::DocumentBudget;
use sluice_shared::ops::{self, MetadataCheck, ReadinessCheck};
use sluice_shared::queue::{self, Consumer, Delivery, Publisher};
use sluice_shared::store::{StoreError, VectorStore};
use sluice_shared::wiring;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::handler::{self, Context, Decision};

const JOBS_TOTAL: &str = "sluice_jobs_total";
const JOB_AGE_SECONDS: &str = "sluice_job_publish_to_ack_seconds";
const JOBS_IN_FLIGHT: &str = "sluice_jobs_in_flight";

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let prometheus = sluice_shared::metrics::install_prometheus().map_err(anyhow::Error::msg)?;
    metrics::describe_counter!(
        JOBS_TOTAL,
        "Jobs settled, by kind and outcome (acked, retried, dead_lettered, handed_back)."
    );
    metrics::describe_histogram!(
        JOB_AGE_SECONDS,
        metrics::Unit::Seconds,
        "Time from publish to ack."
    );
    metrics::describe_gauge!(JOBS_IN_FLIGHT, "Jobs this worker is processing.");
    let fleet = settings.fleet.clone();
    let pipeline = Arc::new(wiring::build_pipeline(&settings, false).await?);
    let connection = Arc::new(queue::connect(&fleet.queue).await?);
    let setup = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    queue::declare_topology(&setup, &fleet.queue).await?;
    let publisher = Arc::new(Publisher::connect(&fleet.queue).await?);

    let ops_stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(fleet.http_listen)
        .await
        .with_context(|| format!("binding SLUICE_HTTP_LISTEN {}", fleet.http_listen))?;
    tracing::info!(address = %listener.local_addr()?, "serving /healthz, /readyz, /metrics");
    let checks: Vec<Arc<dyn ReadinessCheck>> = vec![
        Arc::new(BrokerCheck(connection.clone())),
        Arc::new(MetadataCheck(pipeline.metadata.clone())),
        Arc::new(StoreCheck(
            pipeline.store.clone(),
            settings.collection.clone(),
        )),
    ];
    let ops_task = tokio::spawn(ops::serve(
        listener,
        ops::router(Some(prometheus), checks),
        ops_stop.clone(),
    ));

    let tag = format!("sluice-worker-{}-{}", hostname(), std::process::id());
    let mut consumer =
        Consumer::start_with_publisher(&connection, &fleet.queue, &tag, publisher.clone()).await?;
    let ctx = Arc::new(Context {
        pipeline,
        publisher: publisher.clone(),
        default_collection: settings.collection.clone(),
        default_tenant: settings.tenant.clone(),
        max_file_size: settings.max_file_size,
        document_budget: DocumentBudget::new(settings.max_inflight_bytes),
        max_attempts: fleet.max_attempts,
        guard: handler::Guard::from_settings(&settings),
    });
    tracing::info!(queue = %fleet.queue.work_queue, concurrency = fleet.worker_concurrency, "consuming");

    let slots = Arc::new(Semaphore::new(fleet.worker_concurrency));
    let abandon = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let outcome = loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
        };
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            delivery = consumer.next() => delivery,
        };
        while tasks.try_join_next().is_some() {}
        match delivery {
            Some(Ok(delivery)) => {
                let (ctx, abandon) = (ctx.clone(), abandon.clone());
                tasks.spawn(async move {
                    process(&ctx, delivery, &abandon).await;
                    drop(permit);
                });
            }
            Some(Err(e)) => {
                break Err(
                    anyhow::Error::new(e).context("the broker connection could not be recovered")
                );
            }
            None => {
                break Err(anyhow::anyhow!(
                    "the broker cancelled the consumer (queue deleted?)"
                ));
            }
        }
    };

    // Graceful shutdown: no new deliveries; prefetched ones go back untouched.
    let deadline = Instant::now() + fleet.shutdown_deadline;
    if let Err(e) = consumer.cancel().await {
        tracing::warn!(error = %e, "could not cancel the consumer");
    }
    let mut handed_back = 0;
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
    {
        settle_hand_back(delivery).await;
        handed_back += 1;
    }
    tracing::info!(
        in_flight = tasks.len(),
        handed_back,
        "waiting for in-flight jobs"
    );
    let drained = tokio::time::timeout_at(deadline.into(), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = tasks.len(),
            "shutdown deadline reached; handing back unfinished jobs"
        );
        abandon.cancel();
        while tasks.join_next().await.is_some() {}
    }
    let _ = consumer.close().await;
    publisher.close().await;
    ops_stop.cancel();
    let _ = ops_task.await;
    tracing::info!("worker stopped");
    outcome
}

/// Runs one job and settles its delivery.
async fn process(ctx: &Context, delivery: Delivery, abandon: &CancellationToken) {
    metrics::gauge!(JOBS_IN_FLIGHT).increment(1.0);
    let outcome = tokio::select! {
        outcome = handler::handle(ctx, delivery.body(), delivery.attempt()) => Some(outcome),
        _ = abandon.cancelled() => None,
    };
    metrics::gauge!(JOBS_IN_FLIGHT).decrement(1.0);
    let Some((job, decision)) = outcome else {
        settle_hand_back(delivery).await;
        return;
    };
    let kind = job.as_ref().map_or("malformed", |j| j.spec.kind());
    let published = job
        .as_ref()
        .and_then(|j| j.enqueued_at)
        .map(|t| t.timestamp_millis() as f64 / 1000.0)
        .or_else(|| delivery.published_at().map(|s| s as f64));
    let (label, settled) = match &decision {
        Decision::Ack => ("acked", delivery.ack().await),
        Decision::Retry { attempt, reason } => {
            tracing::info!(kind, attempt, %reason, "job will be retried");
            ("retried", delivery.retry_later(*attempt, reason).await)
        }
        Decision::DeadLetter {
            reason,
            kind: error_kind,
        } => {
            tracing::warn!(kind, error_kind, %reason, "job dead-lettered");
            (
                "dead_lettered",
                delivery.dead_letter(reason, error_kind).await,
            )
        }
    };
    match settled {
        Ok(()) => {
            metrics::counter!(JOBS_TOTAL, "kind" => kind, "outcome" => label).increment(1);
            if let (Decision::Ack, Some(published)) = (&decision, published) {
                let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
                metrics::histogram!(JOB_AGE_SECONDS).record((now - published).max(0.0));
            }
        }
        // The broker will redeliver it (the channel is gone) or already has it back.
        Err(e) => {
            tracing::warn!(error = %e, kind, outcome = label, "could not settle the delivery")
        }
    }
}

async fn settle_hand_back(delivery: Delivery) {
    match delivery.hand_back().await {
        Ok(()) => {
            metrics::counter!(JOBS_TOTAL, "kind" => "any", "outcome" => "handed_back").increment(1)
        }
        Err(e) => tracing::warn!(error = %e, "could not hand a job back"),
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into())
}

struct BrokerCheck(Arc<lapin::Connection>);

#[async_trait]
impl ReadinessCheck for BrokerCheck {
    fn name(&self) -> &'static str {
        "broker"
    }
    async fn check(&self) -> Result<(), String> {
        if self.0.status().connected() {
            Ok(())
        } else {
            Err("not connected (reconnecting)".into())
        }
    }
}

struct StoreCheck(Arc<dyn VectorStore>, String);

#[async_trait]
impl ReadinessCheck for StoreCheck {
    fn name(&self) -> &'static str {
        "qdrant"
    }
    async fn check(&self) -> Result<(), String> {
        match self.0.count(&self.1, Some("-")).await {
            Ok(_) | Err(StoreError::MissingCollection(_)) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}
