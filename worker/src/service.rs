//! The consume loop: bounded prefetch and concurrency, settle each delivery after the pipeline's
//! durable write, and a graceful shutdown that never counts a healthy job as a failed delivery.
//!
//! Bounds: the broker sends at most `SLUICE_PREFETCH` unacked deliveries; at most
//! `SLUICE_WORKER_CONCURRENCY` of them are processed at once (a semaphore permit is taken before
//! the next delivery is pulled, so the rest wait in the prefetch buffer, not in memory here).
//! Unless the operator fixed either, both start at 16 and follow the worker's sizing
//! (`sizing.rs`).
//!
//! Shutdown (SIGTERM): cancel the consumer, hand back deliveries that were prefetched but never
//! started, let in-flight jobs finish until `SLUICE_SHUTDOWN_DEADLINE_SECS`, then hand back the
//! rest. "Hand back" republishes a copy with a confirm and acks the original, so the job's
//! delivery count starts again from zero (see `Delivery::hand_back`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use futures::FutureExt;
use sluice_shared::config::{Settings, WorkerSizing};
use sluice_shared::memory::DocumentBudget;
use sluice_shared::metrics::InFlight;
use sluice_shared::ops::{self, MetadataCheck, ReadinessCheck};
use sluice_shared::queue::{self, Broker, Consumer, Delivery};
use sluice_shared::store::{StoreError, VectorStore};
use sluice_shared::wiring;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::handler::{self, Context, Decision};
use crate::outage::{OutageCheck, Outages};
use crate::sizing;

/// After the shutdown deadline, runs are told to stop (they remove their own partly written
/// version and release their lease); jobs still running this much later are dropped as they are.
const ABANDON_GRACE: Duration = Duration::from_secs(5);

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let prometheus = sluice_shared::metrics::install_prometheus().map_err(anyhow::Error::msg)?;
    let fleet = settings.fleet.clone();
    // The stores and the broker are independent: connecting to them at once makes a worker that
    // KEDA starts for a waiting job consume sooner (scale from zero).
    let (pipeline, broker) = tokio::join!(
        build_pipeline_when_reachable(&settings, &shutdown),
        Broker::connect(&fleet.queue)
    );
    let Some(pipeline) = pipeline? else {
        return Ok(());
    };
    let pipeline = Arc::new(pipeline);
    let broker = broker?;

    let ops_stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(fleet.http_listen)
        .await
        .with_context(|| format!("binding SLUICE_HTTP_LISTEN {}", fleet.http_listen))?;
    tracing::info!(address = %listener.local_addr()?, "serving /healthz, /readyz, /metrics");
    let outages = Outages::new(pipeline.clone(), settings.collection.clone());
    let checks: Vec<Arc<dyn ReadinessCheck>> = vec![
        Arc::new(OutageCheck(outages.clone())),
        Arc::new(BrokerCheck(broker.connection().clone())),
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

    let tag = queue::consumer_tag("worker");
    // The prefetch a (re)started consumer uses follows the sizing.
    let mut prefetch = fleet.queue.prefetch;
    let mut consumer = broker.consumer(broker.work_route(), prefetch, &tag).await?;
    let ctx = Arc::new(Context {
        pipeline,
        publisher: broker.publisher(),
        default_collection: settings.collection.clone(),
        default_tenant: settings.tenant.clone(),
        max_file_size: settings.max_file_size,
        document_budget: DocumentBudget::new(settings.max_inflight_bytes),
        max_attempts: fleet.max_attempts,
        guard: handler::Guard::from_settings(&settings),
    });
    tracing::info!(queue = %fleet.queue.work_queue, concurrency = fleet.worker_concurrency, "consuming");

    let slots = Arc::new(Semaphore::new(fleet.worker_concurrency));
    let (resize, mut resized) = tokio::sync::watch::channel(fleet.worker_concurrency);
    let sizing_stop = shutdown.child_token();
    match fleet.worker_sizing {
        WorkerSizing::Auto { max } => {
            let rule = sizing::Rule::new(fleet.worker_concurrency, max);
            tokio::spawn(sizing::run(
                slots.clone(),
                rule,
                resize,
                sizing_stop.clone(),
            ));
        }
        WorkerSizing::Fixed => {
            sluice_shared::metrics::worker_concurrency().set(fleet.worker_concurrency as f64);
        }
    }
    let abandon = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let outcome = loop {
        if resized.has_changed().unwrap_or(false) {
            let size = *resized.borrow_and_update();
            prefetch = u16::try_from(size).unwrap_or(u16::MAX);
            // A broken channel shows in `next` below, which waits for lapin's recovery; until
            // then the old prefetch stands.
            if let Err(e) = consumer.set_prefetch(prefetch).await {
                tracing::warn!(error = %e, "could not resize the consumer's prefetch");
            }
        }
        if outages.paused().is_some() {
            // Stop intake while a dependency is down: prefetched jobs go back to the queue (they
            // would otherwise sit unacked toward the broker's consumer timeout) and a new consumer
            // starts once the dependency answers.
            if let Err(e) = consumer.cancel().await {
                tracing::warn!(error = %e, "could not cancel the consumer");
            }
            hand_back_prefetched(&mut consumer).await;
            let _ = consumer.close().await;
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                () = outages.resumed() => {}
            }
            consumer = match broker.consumer(broker.work_route(), prefetch, &tag).await {
                Ok(consumer) => consumer,
                Err(e) => break Err(anyhow::Error::new(e).context("restarting the consumer")),
            };
        }
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
        };
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            delivery = consumer.next() => delivery,
        };
        reap(&mut tasks);
        match delivery {
            Some(Ok(delivery)) if outages.paused().is_some() => settle_hand_back(delivery).await,
            Some(Ok(delivery)) => {
                let (ctx, abandon, outages) = (ctx.clone(), abandon.clone(), outages.clone());
                tasks.spawn(async move {
                    process(&ctx, &outages, delivery, &abandon).await;
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

    sizing_stop.cancel();
    // Graceful shutdown: no new deliveries; prefetched ones go back untouched.
    let deadline = Instant::now() + fleet.shutdown_deadline;
    if let Err(e) = consumer.cancel().await {
        tracing::warn!(error = %e, "could not cancel the consumer");
    }
    let handed_back = hand_back_prefetched(&mut consumer).await;
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
        ctx.pipeline.abandon();
        abandon.cancel();
        while tasks.join_next().await.is_some() {}
    }
    let _ = consumer.close().await;
    ops_stop.cancel();
    let _ = ops_task.await;
    broker.close().await;
    tracing::info!("worker stopped");
    outcome
}

/// The pipeline, once its dependencies answer: a worker started during an outage (a restart, a
/// scale-up) waits for PostgreSQL instead of exiting, and a crash loop never starts. `None` when
/// shutdown comes first. Configuration errors are returned at once.
async fn build_pipeline_when_reachable(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<sluice_shared::pipeline::Pipeline>> {
    let mut pause = Duration::from_secs(1);
    loop {
        match wiring::build_pipeline(settings, false).await {
            Ok(pipeline) => return Ok(Some(pipeline)),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, retry_in = ?pause, "a dependency is unreachable at start-up; waiting for it");
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(15));
    }
}

/// Collects finished job tasks; a task that panicked outside the job's own code is logged (its
/// delivery, unsettled, returns to the queue when the channel closes).
fn reap(tasks: &mut JoinSet<()>) {
    while let Some(done) = tasks.try_join_next() {
        if let Err(e) = done {
            tracing::error!(error = %e, "job task failed");
        }
    }
}

/// Hands back every delivery already prefetched by a cancelled consumer; returns how many.
async fn hand_back_prefetched(consumer: &mut Consumer) -> usize {
    let mut handed_back = 0;
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
    {
        settle_hand_back(delivery).await;
        handed_back += 1;
    }
    handed_back
}

/// Runs one job and settles its delivery. A panic in the job is caught and settled like a
/// failure (retried, then dead-lettered), never left unsettled.
async fn process(
    ctx: &Context,
    outages: &Arc<Outages>,
    delivery: Delivery,
    abandon: &CancellationToken,
) {
    let in_flight = InFlight::jobs();
    let handled =
        std::panic::AssertUnwindSafe(handler::handle(ctx, delivery.body(), delivery.attempt()))
            .catch_unwind();
    let outcome = tokio::select! {
        outcome = handled => Some(outcome),
        // Runs notice the pipeline's abandon at once and clean up; this is the backstop.
        () = async { abandon.cancelled().await; tokio::time::sleep(ABANDON_GRACE).await } => None,
    };
    drop(in_flight);
    let (job, decision) = match outcome {
        None => {
            settle_hand_back(delivery).await;
            return;
        }
        Some(Ok(handled)) => handled,
        Some(Err(panic)) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_string());
            tracing::error!(panic = %detail, "job panicked");
            let reason = format!("internal error: job panicked: {detail}");
            (
                None,
                handler::retry_or_give_up(ctx, delivery.attempt(), reason, "panic"),
            )
        }
    };
    let decision = match decision {
        Decision::Suspect {
            dependency,
            otherwise,
        } => {
            if outages.is_down(dependency).await {
                Decision::HandBack {
                    reason: format!("{} unreachable", dependency.as_str()),
                }
            } else {
                *otherwise
            }
        }
        other => other,
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
        Decision::HandBack { reason } => {
            tracing::info!(kind, %reason, "job handed back");
            ("handed_back", delivery.hand_back().await)
        }
        Decision::Suspect { .. } => unreachable!("resolved above"),
    };
    match settled {
        Ok(()) => {
            sluice_shared::metrics::jobs_total(kind, label).increment(1);
            if let (Decision::Ack, Some(published)) = (&decision, published) {
                let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
                sluice_shared::metrics::job_publish_to_ack_seconds()
                    .record((now - published).max(0.0));
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
        Ok(()) => sluice_shared::metrics::jobs_total("any", "handed_back").increment(1),
        Err(e) => tracing::warn!(error = %e, "could not hand a job back"),
    }
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
