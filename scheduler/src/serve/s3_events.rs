//! S3 event notifications → jobs: consumes `SLUICE_S3_EVENTS_QUEUE` (filled by MinIO's AMQP target,
//! or by a bridge from AWS S3), turns each event into index/delete jobs with
//! [`parse_s3_event`] and publishes them to the work exchange.
//!
//! ```text
//!  bucket ─► events queue ─► parse_s3_event ─┬─► publish every job (confirmed) ─► ack the event
//!                                            ├─► no job (test event, ObjectAccessed…) ─► ack
//!                                            └─► unparsable ─► DLQ with the reason ─► ack
//! ```
//!
//! At-least-once: an event is acked only after every job it implies was confirmed. If a publish
//! is not confirmed the event is rejected back to its queue (a failed delivery, so the queue's
//! `x-delivery-limit` ends a hopeless event in the DLQ instead of retrying it forever); the jobs
//! already published then go out again, which is harmless because jobs are idempotent and
//! carry the same derived `job_id`.
//!
//! Events are handled one at a time, in queue order, so that a create followed by a delete of
//! the same key produce their jobs in that order. The prefetch (`SLUICE_PREFETCH`) bounds what
//! waits in memory.
//!
//! The queue is declared like the work queue (durable quorum, dead-lettering to the DLX,
//! `x-delivery-limit`) with retry queues of its own (`queue::declare_s3_events_queue`); one that
//! already exists with other arguments is consumed as it is. It is not bound to anything: point
//! the bucket's AMQP target at the default exchange with the queue name as routing key, or bind
//! the queue to the exchange the target publishes to.
//!
//! Connection loss: lapin's auto-recovery restores the consumer; if recovery gives up, this loop
//! reconnects from scratch with backoff until shutdown.

use std::sync::Arc;
use std::time::Duration;

use lapin::Connection;
use sluice_shared::job::parse_s3_event;
use sluice_shared::queue::{self, Broker, Consumer, Delivery, Publisher, job_headers};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// First pause before reconnecting after the connection was lost for good; doubles up to
/// [`MAX_RECONNECT_DELAY`].
const MIN_RECONNECT_DELAY: Duration = Duration::from_secs(1);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// Pause after an event's jobs could not be published (the broker is in trouble; the rejected
/// event comes straight back, and a tight loop would only count up its deliveries faster).
const PUBLISH_FAILURE_PAUSE: Duration = Duration::from_secs(1);

/// Consumes `events_queue` until `shutdown`, reconnecting as often as needed. Never returns an
/// error: a broken broker is waited out, a broken event goes to the DLQ.
pub async fn consume(broker: Arc<Broker>, events_queue: String, shutdown: CancellationToken) {
    let tag = queue::consumer_tag("serve-s3-events");
    let mut delay = MIN_RECONNECT_DELAY;
    while !shutdown.is_cancelled() {
        match session(&broker, &events_queue, &tag, &shutdown).await {
            Ok(()) => delay = MIN_RECONNECT_DELAY,
            Err(e) => {
                warn!(error = %format_args!("{e:#}"), queue = %events_queue, ?delay,
                    "S3 events consumer stopped, reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(MAX_RECONNECT_DELAY);
            }
        }
    }
    info!(queue = %events_queue, "S3 events consumer stopped");
}

/// One connection's worth of consuming (a connection of its own, so that one lost for good can
/// be replaced without touching the rest of the process). `Ok` when stopped by `shutdown`.
async fn session(
    broker: &Broker,
    events_queue: &str,
    tag: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let connection = queue::connect(broker.settings()).await?;
    let result = consume_on(&connection, broker, events_queue, tag, shutdown).await;
    let _ = connection.close(200, "bye".into()).await;
    result
}

async fn consume_on(
    connection: &Connection,
    broker: &Broker,
    events_queue: &str,
    tag: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let settings = broker.settings();
    let route = queue::declare_s3_events_queue(connection, settings, events_queue).await?;
    // Deliveries only dead-letter, reject, requeue or ack; were one handed back or retried, its
    // route would return it to the events queue.
    let publisher = broker.publisher();
    let mut consumer =
        Consumer::start_on(connection, route, settings.prefetch, tag, publisher.clone()).await?;
    info!(queue = %events_queue, "consuming S3 event notifications");
    let routing_key = &settings.routing_key;
    let outcome = loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = consumer.next() => next,
        };
        match delivery {
            Some(Ok(delivery)) => {
                tokio::select! {
                    // Dropped unsettled: the broker requeues it when the channel closes below.
                    _ = shutdown.cancelled() => break Ok(()),
                    _ = handle(delivery, &publisher, routing_key) => {}
                }
            }
            Some(Err(e)) => break Err(e.into()),
            None => {
                break Err(anyhow::anyhow!(
                    "the broker cancelled the consumer of {events_queue} (queue deleted?)"
                ));
            }
        }
    };
    // Hand prefetched events back untouched (nack: not counted as a failure on RabbitMQ 4.3+).
    let _ = consumer.cancel().await;
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
    {
        let _ = delivery.requeue().await;
    }
    let _ = consumer.close().await;
    outcome
}

/// Turns one event into jobs and settles it (see the module docs).
async fn handle(delivery: Delivery, publisher: &Publisher, routing_key: &str) {
    let jobs = match parse_s3_event(delivery.body()) {
        Ok(jobs) => jobs,
        Err(e) => {
            warn!(error = %e, "S3 event cannot be turned into jobs, dead-lettering it");
            let outcome = match delivery.dead_letter(&e.to_string(), e.kind()).await {
                Ok(()) => "dead_lettered",
                // It was rejected without requeue: the queue's own dead-lettering takes it.
                Err(error) => {
                    warn!(%error, "could not dead-letter the S3 event ourselves");
                    "rejected"
                }
            };
            sluice_shared::metrics::s3_events_total(outcome).increment(1);
            return;
        }
    };
    for job in &jobs {
        let kind = job.spec.kind();
        if let Err(e) = publisher
            .publish_with_retry(routing_key, job.to_json().as_bytes(), job_headers(0))
            .await
        {
            error!(error = %e, job_id = %job.job_id, kind,
                "job from an S3 event not confirmed; returning the event to its queue");
            if let Err(error) = delivery.reject().await {
                warn!(%error, "could not return the S3 event; the broker redelivers it");
            }
            sluice_shared::metrics::s3_events_total("rejected").increment(1);
            tokio::time::sleep(PUBLISH_FAILURE_PAUSE).await;
            return;
        }
        sluice_shared::metrics::jobs_published_total(kind, "s3_events").increment(1);
        debug!(job_id = %job.job_id, kind, "job from an S3 event published");
    }
    let outcome = if jobs.is_empty() {
        "ignored"
    } else {
        "published"
    };
    match delivery.ack().await {
        Ok(()) => sluice_shared::metrics::s3_events_total(outcome).increment(1),
        // The event comes back and its jobs are published again: harmless, jobs are idempotent.
        Err(error) => warn!(%error, "could not ack the S3 event after publishing its jobs"),
    }
}
