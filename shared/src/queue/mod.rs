//! # RabbitMQ: the queue between the scheduler and the workers
//!
//! Where it sits in the fleet:
//!
//! ```text
//!  scheduler ──publish (confirmed)──► exchange ──"job"──► work queue (quorum) ──► worker
//!                                                           │  ▲                   │
//!                          x-delivery-limit / reject ───────┘  │ TTL expiry        ├─ ack (after Qdrant + PostgreSQL)
//!                                                              │                   ├─ retry_later ─► retry queue (5 s | 30 s | 300 s)
//!                    DLX ──"dead"──► DLQ (quorum) ◄────────────┼───────────────────┴─ dead_letter
//!                                                              └── retry queue dead-letters back to exchange/"job"
//! ```
//!
//! - [`Broker::connect`] is how a process starts: it connects, declares the topology
//!   ([`declare_topology`], idempotent) and hands out the [`Publisher`] and [`Consumer`]s.
//! - [`Publisher`] publishes persistent messages on a confirm-mode channel and returns only once
//!   the broker has confirmed them ([`Publisher::publish_with_retry`] retries and reconnects).
//! - [`Consumer`] yields [`Delivery`] values with manual acks and a bounded prefetch; a delivery is
//!   settled exactly once, by [`Delivery::ack`], [`Delivery::retry_later`],
//!   [`Delivery::hand_back`], [`Delivery::dead_letter`] or [`Delivery::requeue`]. Each delivery
//!   carries the [`QueueRoute`] of the queue it came from, so a retry or a hand-back returns it
//!   to that queue: the work queue's jobs through the retry queues below, the S3 events queue's
//!   events through its own (`<events queue>.retry.<delay>`, see [`declare_s3_events_queue`]).
//!
//! Binding scheme (all names come from [`QueueSettings`]):
//! - work exchange (durable, `direct`) → work queue, binding key [`QueueSettings::routing_key`]
//!   (default `job`);
//! - dead-letter exchange (durable, `direct`) → DLQ, binding key
//!   [`QueueSettings::dead_letter_routing_key`] (default `dead`); the work queue dead-letters with
//!   that key too, so broker-side and application-side dead letters land in the same DLQ;
//! - retry queues are not bound: they are published to by name through the default exchange, and
//!   their `x-message-ttl` expiry dead-letters back to the work exchange with the work routing key.

// QueueError carries lapin's error (about 130 bytes with the route): errors here follow network
// round trips, so moving a larger Result costs nothing measurable next to them.
#![allow(clippy::result_large_err)]

mod broker;
mod consumer;
mod error;
mod headers;
mod publisher;
mod route;
mod topology;

use std::time::Duration;

use backon::ExponentialBuilder;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};

use crate::secret::{Secret, redact_url};

pub use broker::Broker;
pub use consumer::{Consumer, Delivery};
pub use error::QueueError;
pub use headers::{
    ATTEMPT_HEADER, DELIVERY_COUNT_HEADER, ERROR_HEADER, ERROR_KIND_HEADER, attempt_of,
    header_string, job_headers,
};
pub use lapin::types::FieldTable as Headers;
pub use publisher::Publisher;
pub use route::{QueueRoute, RetryQueue};
pub use topology::{
    dead_letter_queue_arguments, declare_s3_events_queue, declare_topology, retry_queue_arguments,
    route_retry_arguments, work_queue_arguments,
};

/// The default broker URL: the local RabbitMQ with the guest account, default vhost.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Where the queues live and how they behave. Every name is configurable so that several fleets
/// (or several tests) can share one broker.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Broker URL, e.g. `amqp://user:password@host:5672/%2f`. A secret: it may hold a password,
    /// and is only ever shown through [`redact_url`]. Default [`DEFAULT_AMQP_URL`].
    pub amqp_url: Secret,
    /// Durable direct exchange jobs are published to. Default `sluice.jobs`.
    pub exchange: String,
    /// Routing key of jobs on [`Self::exchange`] and binding key of the work queue. Default `job`.
    pub routing_key: String,
    /// Quorum work queue the workers consume. Default `sluice.jobs`.
    pub work_queue: String,
    /// Dead-letter exchange (durable, direct). Default `sluice.dlx`.
    pub dead_letter_exchange: String,
    /// Routing key dead letters carry on [`Self::dead_letter_exchange`]. Default `dead`.
    pub dead_letter_routing_key: String,
    /// Quorum queue holding dead letters until an operator looks at them. Default `sluice.dlq`.
    pub dead_letter_queue: String,
    /// Retry queues are named `<prefix>.<delay>` (`sluice.retry.5s`). Default `sluice.retry`.
    pub retry_queue_prefix: String,
    /// One delayed-retry queue per delay, tried in order: attempt 1 waits the first delay,
    /// attempt 2 the second, later attempts the last. Quorum queues expire messages only at their
    /// head, so each delay needs its own queue with a fixed `x-message-ttl`. Default 5 s, 30 s,
    /// 300 s. Must not be empty; each delay at least 1 ms.
    pub retry_delays: Vec<Duration>,
    /// `x-delivery-limit` of the work queue: after this many failed deliveries the broker
    /// dead-letters a message by itself (a poison message that crashes workers). Default 20,
    /// RabbitMQ 4's own default, stated explicitly so that 3.x brokers behave the same.
    pub delivery_limit: u32,
    /// `basic_qos` prefetch per consumer: how many unacked jobs a worker holds at once. The first
    /// bound of the pipeline; keep it near the worker's in-process concurrency. Default 16.
    pub prefetch: u16,
    /// `x-consumer-timeout` of the work queue (RabbitMQ 3.12+): how long a delivery may stay
    /// unacked before the broker closes the consumer's channel. `None` keeps the broker's
    /// `consumer_timeout` (30 minutes by default). Default `None`.
    pub consumer_timeout: Option<Duration>,
    /// How long a publish may wait for the broker's confirm before it counts as lost. Default 30 s.
    pub confirm_timeout: Duration,
    /// How many times [`Publisher::publish_with_retry`] tries before it gives up. Default 10
    /// (about a minute and a half with the backoff capped at 15 s).
    pub publish_attempts: usize,
    /// TCP connection attempts, at start-up and again after each dropped connection (lapin's
    /// auto-recovery), with backoff from 250 ms doubling up to 5 s between attempts. The default
    /// 10 spans about 33 s: long enough for a broker restart, short enough that a wrong URL fails
    /// start-up quickly. Default 10.
    pub reconnect_attempts: usize,
    /// Connection name shown in the management UI. Default `sluice`.
    pub connection_name: String,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            amqp_url: Secret::new(DEFAULT_AMQP_URL),
            exchange: "sluice.jobs".into(),
            routing_key: "job".into(),
            work_queue: "sluice.jobs".into(),
            dead_letter_exchange: "sluice.dlx".into(),
            dead_letter_routing_key: "dead".into(),
            dead_letter_queue: "sluice.dlq".into(),
            retry_queue_prefix: "sluice.retry".into(),
            retry_delays: vec![
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(300),
            ],
            delivery_limit: 20,
            prefetch: 16,
            consumer_timeout: None,
            confirm_timeout: Duration::from_secs(30),
            publish_attempts: 10,
            reconnect_attempts: 10,
            connection_name: "sluice".into(),
        }
    }
}

impl QueueSettings {
    /// Checks what the broker would otherwise reject in confusing ways.
    pub fn validate(&self) -> Result<(), QueueError> {
        let invalid = |setting: &'static str, reason: &str| {
            Err(QueueError::InvalidSettings {
                setting,
                reason: reason.to_string(),
            })
        };
        if self.retry_delays.is_empty() {
            return invalid("retry_delays", "at least one delay is needed");
        }
        if self.retry_delays.iter().any(|d| d.as_millis() == 0) {
            return invalid("retry_delays", "every delay must be at least 1 ms");
        }
        if self.delivery_limit == 0 {
            return invalid("delivery_limit", "must be at least 1");
        }
        if self.prefetch == 0 {
            return invalid("prefetch", "0 would mean unlimited; use at least 1");
        }
        if self.publish_attempts == 0 {
            return invalid("publish_attempts", "must be at least 1");
        }
        if self.reconnect_attempts == 0 {
            return invalid("reconnect_attempts", "must be at least 1");
        }
        for (setting, name) in [
            ("exchange", &self.exchange),
            ("work_queue", &self.work_queue),
            ("dead_letter_exchange", &self.dead_letter_exchange),
            ("dead_letter_queue", &self.dead_letter_queue),
            ("retry_queue_prefix", &self.retry_queue_prefix),
        ] {
            // AMQP short strings hold at most 255 bytes; leave room for the retry suffix.
            if name.is_empty() || name.len() > 200 {
                return invalid(setting, "must be 1 to 200 bytes");
            }
        }
        Ok(())
    }

    /// Name of the retry queue for `delay`: `<prefix>.5s`, or `<prefix>.1500ms` for fractions.
    pub fn retry_queue_name(&self, delay: Duration) -> String {
        route::retry_queue_name(&self.retry_queue_prefix, delay)
    }

    /// Names of all retry queues, in the order of [`Self::retry_delays`].
    pub fn retry_queue_names(&self) -> Vec<String> {
        self.retry_delays
            .iter()
            .map(|d| self.retry_queue_name(*d))
            .collect()
    }

    /// Index into [`Self::retry_delays`] for a message's `attempt` (1-based: the first retry is
    /// attempt 1). Attempts past the last delay keep using the last (longest) one.
    pub fn retry_delay_index(&self, attempt: u32) -> usize {
        route::retry_delay_index(self.retry_delays.len(), attempt)
    }

    /// The broker URL with its password masked, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact_url(self.amqp_url.expose())
    }
}

/// Opens a connection with lapin's auto-recovery on: after a dropped connection lapin reconnects
/// (`reconnect_attempts` with exponential backoff) and replays channels, confirm mode, QoS and consumers.
/// Deliveries from the lost channel can no longer be acked (their ack fails, they are redelivered
/// by the broker), which [`Delivery`] reports as [`QueueError::ChannelGone`].
pub async fn connect(settings: &QueueSettings) -> Result<Connection, QueueError> {
    settings.validate()?;
    // lapin's default once auto-recovery is on is 16 attempts from 1 s up to 60 s apart, about
    // eleven minutes before an unreachable broker is reported: far too long for start-up.
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(settings.reconnect_attempts.saturating_sub(1));
    let properties = ConnectionProperties::default()
        .with_connection_name(settings.connection_name.clone().into())
        .with_backoff(backoff)
        .enable_auto_recover();
    Connection::connect(settings.amqp_url.expose(), properties)
        .await
        .map_err(|source| QueueError::Connect {
            url: settings.redacted_url(),
            source,
        })
}

/// A new channel on `connection`; `what` says what it is for, should opening it fail.
pub async fn open_channel(
    connection: &Connection,
    what: &'static str,
) -> Result<Channel, QueueError> {
    connection
        .create_channel()
        .await
        .map_err(|source| QueueError::Channel { what, source })
}

/// Ready messages in `queue` (not counting unacked deliveries), by a passive declare. Note that
/// AMQP closes `channel` when the queue does not exist, so use a channel dedicated to such checks.
pub async fn queue_depth(channel: &Channel, queue: &str) -> Result<u32, QueueError> {
    Ok(queue_counts(channel, queue).await?.0)
}

/// (ready messages, consumers) of `queue`, by a passive declare: never creates the queue. The same
/// caveat as [`queue_depth`] applies to `channel`.
pub async fn queue_counts(channel: &Channel, queue: &str) -> Result<(u32, u32), QueueError> {
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|source| QueueError::Declare {
            what: format!("queue {queue} (passive)"),
            source,
        })?;
    Ok((declared.message_count(), declared.consumer_count()))
}

/// A consumer tag naming the process in RabbitMQ's management views: `sluice-<role>-<pod>-<pid>`
/// (`HOSTNAME` is the pod's name on Kubernetes).
pub fn consumer_tag(role: &str) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!("sluice-{role}-{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_names() {
        let s = QueueSettings::default();
        assert_eq!(s.exchange, "sluice.jobs");
        assert_eq!(s.work_queue, "sluice.jobs");
        assert_eq!(s.dead_letter_exchange, "sluice.dlx");
        assert_eq!(s.dead_letter_queue, "sluice.dlq");
        assert_eq!(
            s.retry_queue_names(),
            ["sluice.retry.5s", "sluice.retry.30s", "sluice.retry.300s"]
        );
        assert_eq!((s.delivery_limit, s.prefetch), (20, 16));
        s.validate().expect("defaults are valid");
    }

    #[test]
    fn fractional_delays_get_millisecond_names() {
        let s = QueueSettings::default();
        assert_eq!(
            s.retry_queue_name(Duration::from_millis(1500)),
            "sluice.retry.1500ms"
        );
    }

    #[test]
    fn attempts_past_the_last_delay_use_the_longest() {
        let s = QueueSettings::default();
        assert_eq!(s.retry_delay_index(0), 0);
        assert_eq!(s.retry_delay_index(1), 0);
        assert_eq!(s.retry_delay_index(2), 1);
        assert_eq!(s.retry_delay_index(3), 2);
        assert_eq!(s.retry_delay_index(50), 2);
    }

    #[test]
    fn invalid_settings_name_the_setting() {
        let mut s = QueueSettings {
            retry_delays: vec![],
            ..QueueSettings::default()
        };
        let err = s.validate().unwrap_err();
        assert!(err.to_string().contains("retry_delays"), "{err}");
        s.retry_delays = vec![Duration::from_secs(1)];
        s.prefetch = 0;
        assert!(s.validate().unwrap_err().to_string().contains("prefetch"));
    }

    #[test]
    fn debug_and_redacted_url_hide_the_password() {
        let s = QueueSettings {
            amqp_url: Secret::new("amqp://bob:hunter2@mq:5672/%2f"),
            ..QueueSettings::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.redacted_url(), "amqp://bob:***@mq:5672/%2f");
    }
}
