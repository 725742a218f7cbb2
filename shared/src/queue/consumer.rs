//! Consuming jobs: manual acks, bounded prefetch, and one way to settle each delivery.
//!
//! Every settle is at-least-once: [`Delivery::retry_later`] and [`Delivery::dead_letter`] publish
//! the copy WITH a confirm first and ack the original only afterwards. A crash in between leaves
//! two copies (the original is redelivered), never none; job processing is idempotent.

use std::sync::Arc;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tracing::{debug, warn};

use super::headers::{
    self, ATTEMPT_HEADER, DELIVERY_COUNT_HEADER, ERROR_HEADER, ERROR_KIND_HEADER,
};
use super::{Publisher, QueueError, QueueRoute, QueueSettings};

/// A consumer on one queue (the work queue, or the S3 events queue). Yields [`Delivery`] values
/// through [`Consumer::next`], each carrying that queue's [`QueueRoute`].
pub struct Consumer {
    channel: Channel,
    inner: lapin::Consumer,
    /// Consumers replaced by [`Consumer::set_prefetch`]: cancelled, still yielding what the
    /// broker had already sent them.
    retiring: Vec<lapin::Consumer>,
    publisher: Arc<Publisher>,
    route: Arc<QueueRoute>,
    base_tag: String,
    tag: String,
    generation: u32,
}

impl Consumer {
    /// Starts consuming the work queue on a new channel of `connection`, with the settings'
    /// `prefetch` and manual acks. Retries and dead letters are published over a [`Publisher`]
    /// with its own connection (see [`Publisher`] for why). [`super::Broker::consumer`] shares
    /// one publisher instead.
    pub async fn start(
        connection: &Connection,
        settings: &QueueSettings,
        tag: &str,
    ) -> Result<Self, QueueError> {
        settings.validate()?;
        let publisher = Arc::new(Publisher::connect(settings).await?);
        let route = QueueRoute::work(settings);
        Self::start_on(connection, route, settings.prefetch, tag, publisher).await
    }

    /// Starts consuming `route`'s queue on a new channel of `connection`, with `prefetch`
    /// unacked deliveries at most and manual acks; settles publish through `publisher`.
    pub async fn start_on(
        connection: &Connection,
        route: QueueRoute,
        prefetch: u16,
        tag: &str,
        publisher: Arc<Publisher>,
    ) -> Result<Self, QueueError> {
        let channel = super::open_channel(connection, "opening a consumer channel").await?;
        // Per-consumer prefetch (global=false): quorum queues refuse global QoS.
        channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await
            .map_err(|source| QueueError::Channel {
                what: "setting prefetch",
                source,
            })?;
        let inner = channel
            .basic_consume(
                route.queue().into(),
                tag.into(),
                // no_ack=false: every delivery waits for an explicit settle.
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| QueueError::Channel {
                what: "starting the consumer",
                source,
            })?;
        Ok(Consumer {
            channel,
            inner,
            retiring: Vec::new(),
            publisher,
            route: Arc::new(route),
            base_tag: tag.to_string(),
            tag: tag.to_string(),
            generation: 0,
        })
    }

    /// Changes how many unacked deliveries the broker sends this consumer. Per-consumer prefetch
    /// is fixed when a consumer starts (and quorum queues refuse the channel-wide kind), so a new
    /// consumer starts on the same channel with the new prefetch and the old one is cancelled;
    /// what the broker already sent the old one is still yielded by [`Self::next`] — nothing is
    /// handed back, so no delivery count grows.
    pub async fn set_prefetch(&mut self, prefetch: u16) -> Result<(), QueueError> {
        let channel_error = |what| move |source| QueueError::Channel { what, source };
        self.channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await
            .map_err(channel_error("setting prefetch"))?;
        self.generation += 1;
        let tag = format!("{}.{}", self.base_tag, self.generation);
        let inner = self
            .channel
            .basic_consume(
                self.route.queue().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(channel_error("starting the resized consumer"))?;
        if let Err(source) = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await
        {
            // Keep the old consumer: the new one is cancelled (best effort) and what it already
            // received is still drained by `next`, so no delivery is left unread.
            let _ = self
                .channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
            self.retiring.push(inner);
            return Err(QueueError::Channel {
                what: "cancelling the replaced consumer",
                source,
            });
        }
        self.retiring
            .push(std::mem::replace(&mut self.inner, inner));
        self.tag = tag;
        Ok(())
    }

    /// The next delivery; `None` once the consumer is cancelled. A dropped connection is waited
    /// out when lapin can recover it (the consumer is re-registered; unacked deliveries from the
    /// old channel are redelivered by the broker and their settles fail with
    /// [`QueueError::ChannelGone`]). An unrecoverable channel error is returned.
    pub async fn next(&mut self) -> Option<Result<Delivery, QueueError>> {
        while let Some(old) = self.retiring.first_mut() {
            match old.next().await {
                Some(Ok(inner)) => return Some(Ok(self.delivery(inner))),
                // Its channel is this consumer's: a failure shows on the current one too.
                Some(Err(_)) | None => {
                    self.retiring.remove(0);
                }
            }
        }
        loop {
            match self.inner.next().await? {
                Ok(inner) => return Some(Ok(self.delivery(inner))),
                Err(error) => {
                    warn!(error = %super::error::redacted(&error), tag = %self.tag, "consumer channel failed, waiting for recovery");
                    if let Err(source) = self.channel.wait_for_recovery(error).await {
                        return Some(Err(QueueError::Channel {
                            what: "consuming",
                            source,
                        }));
                    }
                }
            }
        }
    }

    /// Stops new deliveries (first step of a graceful shutdown). Deliveries already received can
    /// still be settled; [`Self::next`] drains the prefetched ones and then returns `None`.
    pub async fn cancel(&self) -> Result<(), QueueError> {
        self.channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await
            .map_err(|source| QueueError::Channel {
                what: "cancelling the consumer",
                source,
            })
    }

    /// Closes the consumer's channel: every unsettled delivery goes back to the queue.
    pub async fn close(&self) -> Result<(), QueueError> {
        self.channel
            .close(200, "bye".into())
            .await
            .map_err(|source| QueueError::Channel {
                what: "closing the consumer channel",
                source,
            })
    }

    fn delivery(&self, inner: lapin::message::Delivery) -> Delivery {
        Delivery {
            inner,
            publisher: self.publisher.clone(),
            route: self.route.clone(),
        }
    }
}

/// One delivery (a job, or an S3 event). Settle it exactly once; each settle consumes it. Every
/// settle that moves the message keeps it on the queue it came from (see [`QueueRoute`]), apart
/// from [`Delivery::dead_letter`], which sends it to the DLQ.
pub struct Delivery {
    inner: lapin::message::Delivery,
    publisher: Arc<Publisher>,
    route: Arc<QueueRoute>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("queue", &self.route.queue())
            .field("delivery_tag", &self.inner.delivery_tag)
            .field("redelivered", &self.inner.redelivered)
            .field("attempt", &self.attempt())
            .field("bytes", &self.inner.data.len())
            .finish()
    }
}

/// Maps lapin's settle result: `Ok(false)` means the acker was poisoned by a closed channel.
fn settled(result: lapin::Result<bool>) -> Result<(), QueueError> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(QueueError::ChannelGone),
        Err(error) => Err(QueueError::Settle(error)),
    }
}

impl Delivery {
    /// The queue this message was delivered from.
    pub fn queue(&self) -> &str {
        self.route.queue()
    }

    /// The message body (JSON for jobs).
    pub fn body(&self) -> &[u8] {
        &self.inner.data
    }

    /// The message headers, if any.
    pub fn headers(&self) -> Option<&FieldTable> {
        self.inner.properties.headers().as_ref()
    }

    /// Whether the broker delivered this message before (to this or another consumer) without it
    /// being acked: processing may have happened already, so it must be idempotent.
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    /// How many delayed retries this job has had (`x-sluice-attempt`; 0 for a fresh job).
    pub fn attempt(&self) -> u32 {
        headers::attempt_of(self.headers())
    }

    /// Failed deliveries the quorum queue has counted (`x-delivery-count`; 0 on a first
    /// delivery). The broker dead-letters the message once this exceeds `delivery_limit`.
    pub fn delivery_count(&self) -> u32 {
        self.headers()
            .and_then(|h| h.inner().get(DELIVERY_COUNT_HEADER))
            .and_then(headers::integer)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    }

    /// When the message was published (seconds since the epoch), if the publisher said so.
    pub fn published_at(&self) -> Option<u64> {
        *self.inner.properties.timestamp()
    }

    /// The underlying lapin delivery, for what this wrapper does not cover.
    pub fn inner(&self) -> &lapin::message::Delivery {
        &self.inner
    }

    /// Acks: the job is done (its result is durable in Qdrant and PostgreSQL).
    pub async fn ack(self) -> Result<(), QueueError> {
        settled(self.inner.ack(BasicAckOptions::default()).await)
    }

    /// Sends the message to its queue's delayed-retry queue for `attempt` (the attempt number the
    /// retried message will carry, usually `self.attempt() + 1`; it selects the delay, see
    /// [`QueueSettings::retry_delay_index`]), with `reason` in `x-sluice-error`; the delay over, it
    /// returns to the queue it came from. Publishes with a confirm, then acks the original. If
    /// the publish cannot be confirmed the original is rejected with requeue instead (so it is
    /// retried at once and counts toward the delivery limit) and the publish error is returned.
    pub async fn retry_later(self, attempt: u32, reason: &str) -> Result<(), QueueError> {
        let mut headers = self.copied_headers();
        headers::set_attempt(&mut headers, attempt);
        headers::set_string(&mut headers, ERROR_HEADER, reason);
        let retry = &self.route.retry_queue(attempt).name;
        // The default exchange routes by queue name; retry queues are not bound anywhere else.
        match self
            .publisher
            .publish_retrying("", retry, &self.inner.data, headers)
            .await
        {
            Ok(()) => {
                debug!(attempt, retry_queue = %retry, "message sent to its retry queue");
                self.ack().await
            }
            Err(error) => {
                warn!(%error, attempt, "could not publish to the retry queue, requeueing");
                let _ = settled(
                    self.inner
                        .reject(BasicRejectOptions { requeue: true })
                        .await,
                );
                Err(error)
            }
        }
    }

    /// Sends the job to the DLQ with `reason` (`x-sluice-error`) and `kind`
    /// (`x-sluice-error-kind`). Publishes with a confirm, then acks the original. If the publish
    /// cannot be confirmed the original is rejected without requeue instead, so the broker
    /// dead-letters it itself (at-least-once, to the same DLQ, without the reason headers) and
    /// the publish error is returned.
    pub async fn dead_letter(self, reason: &str, kind: &str) -> Result<(), QueueError> {
        let mut headers = self.copied_headers();
        headers::set_attempt(&mut headers, self.attempt());
        headers::set_string(&mut headers, ERROR_HEADER, reason);
        headers::set_string(&mut headers, ERROR_KIND_HEADER, kind);
        match self
            .publisher
            .publish_to_dlq(&self.inner.data, headers)
            .await
        {
            Ok(()) => {
                debug!(kind, "job dead-lettered");
                self.ack().await
            }
            Err(error) => {
                warn!(%error, kind, "could not publish to the DLQ, letting the broker dead-letter");
                let _ = settled(
                    self.inner
                        .reject(BasicRejectOptions { requeue: false })
                        .await,
                );
                Err(error)
            }
        }
    }

    /// Hands the message back for another consumer without it counting as a failed delivery on
    /// any broker version: republishes a copy (same body, headers and attempt) to the queue it
    /// came from with a confirm, then acks this delivery. The fresh copy starts with a delivery count of 0, so a
    /// worker scaled down while holding a job never pushes it toward `x-delivery-limit`. If the
    /// copy cannot be confirmed, falls back to [`Self::requeue`] and returns the publish error.
    pub async fn hand_back(self) -> Result<(), QueueError> {
        let mut headers = self.copied_headers();
        headers::set_attempt(&mut headers, self.attempt());
        let route = &self.route;
        match self
            .publisher
            .publish_retrying(
                route.exchange(),
                route.routing_key(),
                &self.inner.data,
                headers,
            )
            .await
        {
            Ok(()) => self.ack().await,
            Err(error) => {
                warn!(%error, "could not hand the job back by republishing, requeueing it");
                let _ = self.requeue().await;
                Err(error)
            }
        }
    }

    /// Returns the job to the queue untouched, for a worker shutting down with work it will not
    /// finish (`basic.nack` with requeue).
    ///
    /// What the quorum queue counts toward `x-delivery-limit` depends on the broker version:
    /// up to RabbitMQ 4.2 every return counts (nack or reject with requeue, and the unacked
    /// deliveries of a closed channel or lost connection), so a worker scaled down 20 times
    /// while holding the same job would dead-letter it. Since 4.3 (rabbitmq-server PR #15387)
    /// `basic.nack` with requeue is a plain return that does not count, while `basic.reject` and
    /// lost channels/connections still do. Hence a nack here rather than a reject, and a
    /// graceful shutdown should requeue explicitly instead of just closing the channel.
    pub async fn requeue(self) -> Result<(), QueueError> {
        settled(
            self.inner
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await,
        )
    }

    /// Returns the job to the queue as a FAILED delivery (`basic.reject` with requeue), which
    /// every broker version counts toward `x-delivery-limit`: use it when this message made the
    /// work fail and the broker should dead-letter it once the limit is reached.
    pub async fn reject(self) -> Result<(), QueueError> {
        settled(
            self.inner
                .reject(BasicRejectOptions { requeue: true })
                .await,
        )
    }

    /// The original headers minus the broker's delivery counter, which belongs to this queue's
    /// bookkeeping and must not be copied onto a new message.
    fn copied_headers(&self) -> FieldTable {
        let mut copy = FieldTable::default();
        if let Some(original) = self.headers() {
            for (key, value) in original.inner() {
                if key.as_str() != DELIVERY_COUNT_HEADER && key.as_str() != ATTEMPT_HEADER {
                    copy.insert(key.clone(), value.clone());
                }
            }
        }
        copy
    }
}
