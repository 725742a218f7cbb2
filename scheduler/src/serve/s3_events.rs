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
//! `x-delivery-limit`); one that already exists with other arguments is consumed as it is. It is
//! not bound to anything: point the bucket's AMQP target at the default exchange with the queue
//! name as routing key, or bind the queue to the exchange the target publishes to.
//!
//! Connection loss: lapin's auto-recovery restores the consumer; if recovery gives up, this loop
//! reconnects from scratch with backoff until shutdown.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{Connection, ErrorKind};
use sluice_shared::job::parse_s3_event;
use sluice_shared::queue::{
    self, Consumer, Delivery, Publisher, QueueError, QueueSettings, job_headers,
    work_queue_arguments,
};
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
pub async fn consume(
    settings: QueueSettings,
    events_queue: String,
    publisher: Arc<Publisher>,
    shutdown: CancellationToken,
) {
    let events = QueueSettings {
        work_queue: events_queue.clone(),
        ..settings.clone()
    };
    let tag = queue::consumer_tag("serve-s3-events");
    let mut delay = MIN_RECONNECT_DELAY;
    while !shutdown.is_cancelled() {
        match session(&events, &tag, &publisher, &shutdown).await {
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

/// One connection's worth of consuming. `Ok` when stopped by `shutdown`.
async fn session(
    events: &QueueSettings,
    tag: &str,
    publisher: &Arc<Publisher>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let connection = queue::connect(events).await?;
    let result = consume_on(&connection, events, tag, publisher, shutdown).await;
    let _ = connection.close(200, "bye".into()).await;
    result
}

async fn consume_on(
    connection: &Connection,
    events: &QueueSettings,
    tag: &str,
    publisher: &Arc<Publisher>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    declare_events_queue(connection, events).await?;
    // Deliveries use the publisher only to dead-letter. Never settle an event with `retry_later`
    // or `hand_back`: they would route the *event* to the work queue.
    let mut consumer =
        Consumer::start_with_publisher(connection, events, tag, publisher.clone()).await?;
    info!(queue = %events.work_queue, "consuming S3 event notifications");
    let routing_key = &events.routing_key;
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
                    _ = handle(delivery, publisher, routing_key) => {}
                }
            }
            Some(Err(e)) => break Err(e.into()),
            None => {
                break Err(anyhow::anyhow!(
                    "the broker cancelled the consumer of {} (queue deleted?)",
                    events.work_queue
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

/// Declares the events queue like the work queue; if it exists with other arguments, checks it
/// exists and uses it as it is.
async fn declare_events_queue(
    connection: &Connection,
    events: &QueueSettings,
) -> Result<(), QueueError> {
    let name = events.work_queue.as_str();
    let declare_error = |what: String| move |source| QueueError::Declare { what, source };
    let channel = open_channel(connection).await?;
    let declared = channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            work_queue_arguments(events),
        )
        .await;
    match declared {
        Ok(_) => {
            let _ = channel.close(200, "bye".into()).await;
            Ok(())
        }
        Err(e) if is_precondition_failed(&e) => {
            // The broker closed that channel; a passive declare needs a new one.
            let channel = open_channel(connection).await?;
            channel
                .queue_declare(
                    name.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(declare_error(format!("queue {name} (passive)")))?;
            let _ = channel.close(200, "bye".into()).await;
            warn!(queue = name, error = %e,
                "the S3 events queue exists with other arguments; consuming it as it is");
            Ok(())
        }
        Err(e) => Err(declare_error(format!("queue {name}"))(e)),
    }
}

async fn open_channel(connection: &Connection) -> Result<lapin::Channel, QueueError> {
    connection
        .create_channel()
        .await
        .map_err(|source| QueueError::Channel {
            what: "opening a channel for the S3 events queue",
            source,
        })
}

fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)))
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
