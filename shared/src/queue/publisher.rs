//! Confirmed publishing: a message counts as sent only once the broker acked it on a confirm-mode
//! channel. Used by the scheduler (jobs) and by workers (delayed retries, dead letters).
//!
//! A publisher owns its own connection: RabbitMQ throttles publishing connections under flow
//! control or a resource alarm, and a consumer sharing that connection would stall its acks too.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::Mutex;
use tracing::{error, info, warn};

use super::{QueueError, QueueSettings, connect};

/// AMQP delivery mode of messages that survive a broker restart.
const PERSISTENT: u8 = 2;

/// Backoff between publish attempts: quick at first (a dropped connection usually recovers in
/// well under a second), capped so that a broker restart is picked up within 15 s.
fn publish_backoff(attempts: usize) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(15))
        .with_jitter()
        .with_max_times(attempts.saturating_sub(1))
}

struct Link {
    connection: Connection,
    channel: Channel,
    /// Bumped whenever the channel is replaced, so concurrent publishers that all saw the same
    /// failure replace it only once.
    generation: u64,
}

/// Publishes persistent JSON messages and waits for the broker's confirm. Cheap to share behind
/// an `Arc`: publishes run concurrently on one channel; the lock is held only to swap channels.
pub struct Publisher {
    settings: QueueSettings,
    link: Mutex<Link>,
}

async fn open_confirm_channel(connection: &Connection) -> Result<Channel, QueueError> {
    let channel = super::open_channel(connection, "opening a publishing channel").await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|source| QueueError::Channel {
            what: "enabling publisher confirms",
            source,
        })?;
    Ok(channel)
}

impl Publisher {
    /// Opens a dedicated connection (auto-recovering) and a confirm-mode channel on it.
    pub async fn connect(settings: &QueueSettings) -> Result<Self, QueueError> {
        let connection = connect(settings).await?;
        let channel = open_confirm_channel(&connection).await?;
        Ok(Publisher {
            settings: settings.clone(),
            link: Mutex::new(Link {
                connection,
                channel,
                generation: 0,
            }),
        })
    }

    /// The settings this publisher routes by.
    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// Publishes a job to the work exchange with `routing_key` once, returning when the broker
    /// confirmed it. Errors: [`QueueError::Nacked`], [`QueueError::Unroutable`],
    /// [`QueueError::ConfirmTimeout`], or [`QueueError::Publish`] for a lost channel.
    pub async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<(), QueueError> {
        self.publish_once(&self.settings.exchange, routing_key, body, headers)
            .await
            .map_err(|(error, _generation)| error)
    }

    /// Like [`Self::publish`] but retried with backoff (and a reconnect) while the error is
    /// retryable, up to `publish_attempts` times. A message that still is not confirmed is
    /// logged at error level and returned as [`QueueError::GaveUp`]: never silently dropped.
    pub async fn publish_with_retry(
        &self,
        routing_key: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<(), QueueError> {
        let exchange = self.settings.exchange.clone();
        self.publish_retrying(&exchange, routing_key, body, headers)
            .await
    }

    /// Publishes to the delayed-retry queue `delay_index` (into `retry_delays`), with retries.
    /// The queue's TTL later moves the message back to the work queue.
    pub async fn publish_to_retry(
        &self,
        delay_index: usize,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<(), QueueError> {
        let delay =
            self.settings
                .retry_delays
                .get(delay_index)
                .ok_or(QueueError::NoSuchRetryDelay {
                    index: delay_index,
                    count: self.settings.retry_delays.len(),
                })?;
        let queue = self.settings.retry_queue_name(*delay);
        // The default exchange routes by queue name; retry queues are not bound anywhere else.
        self.publish_retrying("", &queue, body, headers).await
    }

    /// Publishes to the dead-letter exchange (and so the DLQ), with retries. `headers` should
    /// carry the reason ([`super::ERROR_HEADER`], [`super::ERROR_KIND_HEADER`]).
    pub async fn publish_to_dlq(&self, body: &[u8], headers: FieldTable) -> Result<(), QueueError> {
        let exchange = self.settings.dead_letter_exchange.clone();
        let key = self.settings.dead_letter_routing_key.clone();
        self.publish_retrying(&exchange, &key, body, headers).await
    }

    /// Closes the channel and connection. Every publish already returned was confirmed, so
    /// nothing is pending.
    pub async fn close(&self) {
        let link = self.link.lock().await;
        let _ = link.channel.close(200, "bye".into()).await;
        let _ = link.connection.close(200, "bye".into()).await;
    }

    /// Publishes to `exchange` with `routing_key`, retried like [`Self::publish_with_retry`].
    pub(super) async fn publish_retrying(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<(), QueueError> {
        let mut backoff = publish_backoff(self.settings.publish_attempts).build();
        let mut attempt = 0usize;
        loop {
            attempt += 1;
            let generation = match self
                .publish_once(exchange, routing_key, body, headers.clone())
                .await
            {
                Ok(_) => return Ok(()),
                Err((error, generation)) if error.is_retryable() => match backoff.next() {
                    Some(delay) => {
                        warn!(%error, attempt, exchange, routing_key, ?delay,
                            "publish not confirmed, retrying");
                        tokio::time::sleep(delay).await;
                        generation
                    }
                    None => {
                        error!(%error, attempt, exchange, routing_key,
                            "publish not confirmed, giving up");
                        return Err(QueueError::GaveUp {
                            attempts: attempt,
                            last: Box::new(error),
                        });
                    }
                },
                Err((error, _)) => {
                    error!(%error, attempt, exchange, routing_key,
                        "publish refused, not retrying");
                    return Err(error);
                }
            };
            self.recover(generation).await;
        }
    }

    /// One publish and its confirm. On error also returns the channel generation it used.
    async fn publish_once(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<(), (QueueError, u64)> {
        let (channel, generation) = {
            let link = self.link.lock().await;
            (link.channel.clone(), link.generation)
        };
        let publish_error = |source| QueueError::Publish {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            source,
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into())
            .with_timestamp(now)
            .with_headers(headers);
        // mandatory: an unroutable message comes back instead of vanishing with a positive ack.
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                body,
                properties,
            )
            .await
            .map_err(|e| (publish_error(e), generation))?;
        let timeout = self.settings.confirm_timeout;
        let confirmation = match tokio::time::timeout(timeout, confirm).await {
            Ok(Ok(confirmation)) => confirmation,
            Ok(Err(e)) => return Err((publish_error(e), generation)),
            Err(_) => {
                return Err((
                    QueueError::ConfirmTimeout {
                        exchange: exchange.to_string(),
                        routing_key: routing_key.to_string(),
                        seconds: timeout.as_secs(),
                    },
                    generation,
                ));
            }
        };
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err((
                QueueError::Unroutable {
                    exchange: exchange.to_string(),
                    routing_key: routing_key.to_string(),
                    reply: format!("{} {}", returned.reply_code, returned.reply_text),
                },
                generation,
            )),
            Confirmation::Nack(_) => Err((
                QueueError::Nacked {
                    exchange: exchange.to_string(),
                    routing_key: routing_key.to_string(),
                },
                generation,
            )),
            // Only possible if confirm mode were lost; a fresh channel restores it.
            Confirmation::NotRequested => Err((
                QueueError::Publish {
                    exchange: exchange.to_string(),
                    routing_key: routing_key.to_string(),
                    source: lapin::ErrorKind::InvalidChannelState(
                        lapin::ChannelState::Error,
                        "publisher confirms not enabled",
                    )
                    .into(),
                },
                generation,
            )),
        }
    }

    /// Makes sure the next attempt has a usable channel. lapin's auto-recovery handles dropped
    /// connections itself (the same `Channel` comes back, confirm mode included), so this only
    /// steps in when the channel is dead for good: closed by a channel error, or recovery gave up.
    async fn recover(&self, failed_generation: u64) {
        let mut link = self.link.lock().await;
        if link.generation != failed_generation {
            return; // another task already replaced the channel
        }
        let status = link.channel.status();
        if status.connected() && status.confirm() {
            return; // the failure was a nack or timeout; the channel itself is fine
        }
        if status.reconnecting() || link.connection.status().reconnecting() {
            return; // lapin is recovering; the next attempt waits through the backoff
        }
        if !link.connection.status().connected() {
            match connect(&self.settings).await {
                Ok(connection) => link.connection = connection,
                Err(error) => {
                    warn!(%error, "publisher reconnect failed");
                    return;
                }
            }
        }
        match open_confirm_channel(&link.connection).await {
            Ok(channel) => {
                link.channel = channel;
                link.generation += 1;
                info!(
                    generation = link.generation,
                    "publisher opened a new confirm channel"
                );
            }
            Err(error) => warn!(%error, "publisher could not open a new channel"),
        }
    }
}
