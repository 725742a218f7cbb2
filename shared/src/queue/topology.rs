//! Declares the exchanges and queues (see the binding scheme in the module docs). Declarations
//! are idempotent: the same arguments succeed again; different ones fail with
//! PRECONDITION_FAILED, which surfaces a misconfigured fleet at start-up instead of at runtime.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ErrorKind, ExchangeKind};
use tracing::{info, warn};

use super::{QueueError, QueueRoute, QueueSettings};

fn put_str(args: &mut FieldTable, key: &str, value: &str) {
    args.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(value)),
    );
}

fn put_int(args: &mut FieldTable, key: &str, value: i64) {
    args.insert(ShortString::from(key), AMQPValue::LongLongInt(value));
}

/// Milliseconds as the broker wants them, saturating instead of wrapping.
fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Quorum queue arguments with at-least-once dead-lettering: the queue keeps a dead-lettered
/// message until the DLX target confirmed it, which RabbitMQ only does with `reject-publish`
/// overflow (with the default `drop-head` it silently falls back to at-most-once).
fn quorum_with_dead_lettering(exchange: &str, routing_key: &str) -> FieldTable {
    let mut args = FieldTable::default();
    put_str(&mut args, "x-queue-type", "quorum");
    put_str(&mut args, "x-dead-letter-exchange", exchange);
    put_str(&mut args, "x-dead-letter-routing-key", routing_key);
    put_str(&mut args, "x-dead-letter-strategy", "at-least-once");
    put_str(&mut args, "x-overflow", "reject-publish");
    args
}

/// Arguments of the work queue: quorum, `x-delivery-limit`, dead letters to the DLX.
pub fn work_queue_arguments(settings: &QueueSettings) -> FieldTable {
    let mut args = quorum_with_dead_lettering(
        &settings.dead_letter_exchange,
        &settings.dead_letter_routing_key,
    );
    put_int(
        &mut args,
        "x-delivery-limit",
        i64::from(settings.delivery_limit),
    );
    if let Some(timeout) = settings.consumer_timeout {
        put_int(&mut args, "x-consumer-timeout", millis(timeout));
    }
    args
}

/// Arguments of the work queue's retry queue for `delay` (see [`route_retry_arguments`]).
pub fn retry_queue_arguments(settings: &QueueSettings, delay: std::time::Duration) -> FieldTable {
    route_retry_arguments(&QueueRoute::work(settings), delay)
}

/// Arguments of a retry queue of `route` for `delay`: a fixed `x-message-ttl` whose expiry
/// dead-letters the message back onto the route's own queue (through the exchange and routing
/// key that reach it). One queue per delay because quorum queues only expire messages at the
/// head: a 5 s message behind a 300 s one would wait 300 s. Nobody consumes these queues, so no
/// delivery limit is needed.
pub fn route_retry_arguments(route: &QueueRoute, delay: std::time::Duration) -> FieldTable {
    let mut args = quorum_with_dead_lettering(route.exchange(), route.routing_key());
    put_int(&mut args, "x-message-ttl", millis(delay));
    args
}

/// Arguments of the DLQ: a plain quorum queue (durable, replicated); dead letters stay until an
/// operator moves or deletes them.
pub fn dead_letter_queue_arguments(_settings: &QueueSettings) -> FieldTable {
    let mut args = FieldTable::default();
    put_str(&mut args, "x-queue-type", "quorum");
    args
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

async fn exchange(channel: &Channel, name: &str) -> Result<(), QueueError> {
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| QueueError::Declare {
            what: format!("exchange {name}"),
            source,
        })
}

async fn queue(channel: &Channel, name: &str, args: FieldTable) -> Result<(), QueueError> {
    channel
        .queue_declare(name.into(), durable_queue(), args)
        .await
        .map(|_| ())
        .map_err(|source| QueueError::Declare {
            what: format!("queue {name}"),
            source,
        })
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), QueueError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| QueueError::Declare {
            what: format!("binding {queue} to {exchange} with key {key}"),
            source,
        })
}

/// Declares the whole topology. Safe to call from every process at every start: declarations
/// with the same arguments are no-ops. The DLX and DLQ come first so that nothing the work queue
/// dead-letters can be unroutable, even for a moment.
pub async fn declare_topology(
    channel: &Channel,
    settings: &QueueSettings,
) -> Result<(), QueueError> {
    settings.validate()?;
    exchange(channel, &settings.dead_letter_exchange).await?;
    queue(
        channel,
        &settings.dead_letter_queue,
        dead_letter_queue_arguments(settings),
    )
    .await?;
    bind(
        channel,
        &settings.dead_letter_queue,
        &settings.dead_letter_exchange,
        &settings.dead_letter_routing_key,
    )
    .await?;

    exchange(channel, &settings.exchange).await?;
    queue(
        channel,
        &settings.work_queue,
        work_queue_arguments(settings),
    )
    .await?;
    bind(
        channel,
        &settings.work_queue,
        &settings.exchange,
        &settings.routing_key,
    )
    .await?;

    declare_retry_queues(channel, &QueueRoute::work(settings)).await?;
    info!(
        exchange = %settings.exchange,
        work_queue = %settings.work_queue,
        dead_letter_queue = %settings.dead_letter_queue,
        retry_queues = ?settings.retry_queue_names(),
        "queue topology declared"
    );
    Ok(())
}

async fn declare_retry_queues(channel: &Channel, route: &QueueRoute) -> Result<(), QueueError> {
    for retry in route.retry_queues() {
        queue(
            channel,
            &retry.name,
            route_retry_arguments(route, retry.delay),
        )
        .await?;
    }
    Ok(())
}

const DECLARING: &str = "opening a channel to declare queues";

/// Declares the S3 event notification queue `name` like the work queue (durable quorum,
/// dead-lettering to the DLX, `x-delivery-limit`) and its own retry queues, and returns its route.
/// An events queue that already exists with other arguments (an operator's, or one from the
/// broker's definitions) is checked to exist and consumed as it is. The DLX comes from
/// [`declare_topology`], which must have run first.
pub async fn declare_s3_events_queue(
    connection: &Connection,
    settings: &QueueSettings,
    name: &str,
) -> Result<QueueRoute, QueueError> {
    let route = QueueRoute::s3_events(settings, name);
    let mut channel = super::open_channel(connection, DECLARING).await?;
    if let Err(error) = queue(&channel, name, work_queue_arguments(settings)).await {
        if !matches!(&error, QueueError::Declare { source, .. } if is_precondition_failed(source)) {
            return Err(error);
        }
        // The broker closed that channel; the passive declare and the rest need a new one.
        channel = super::open_channel(connection, DECLARING).await?;
        super::queue_counts(&channel, name).await?;
        warn!(queue = name, %error,
            "the S3 events queue exists with other arguments; consuming it as it is");
    }
    declare_retry_queues(&channel, &route).await?;
    let _ = channel.close(200, "bye".into()).await;
    Ok(route)
}

fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn get<'a>(args: &'a FieldTable, key: &str) -> &'a AMQPValue {
        args.inner()
            .get(key)
            .unwrap_or_else(|| panic!("missing {key}"))
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(v.into())
    }

    #[test]
    fn work_queue_is_quorum_with_limit_and_at_least_once_dead_lettering() {
        let settings = QueueSettings {
            delivery_limit: 7,
            ..QueueSettings::default()
        };
        let args = work_queue_arguments(&settings);
        assert_eq!(get(&args, "x-queue-type"), &s("quorum"));
        assert_eq!(get(&args, "x-delivery-limit"), &AMQPValue::LongLongInt(7));
        assert_eq!(get(&args, "x-dead-letter-exchange"), &s("sluice.dlx"));
        assert_eq!(get(&args, "x-dead-letter-routing-key"), &s("dead"));
        assert_eq!(get(&args, "x-dead-letter-strategy"), &s("at-least-once"));
        assert_eq!(get(&args, "x-overflow"), &s("reject-publish"));
        assert!(!args.contains_key("x-consumer-timeout"));
    }

    #[test]
    fn consumer_timeout_is_set_in_milliseconds() {
        let settings = QueueSettings {
            consumer_timeout: Some(Duration::from_secs(3600)),
            ..QueueSettings::default()
        };
        let args = work_queue_arguments(&settings);
        assert_eq!(
            get(&args, "x-consumer-timeout"),
            &AMQPValue::LongLongInt(3_600_000)
        );
    }

    #[test]
    fn retry_queue_expires_back_to_the_work_exchange() {
        let settings = QueueSettings::default();
        let args = retry_queue_arguments(&settings, Duration::from_secs(30));
        assert_eq!(get(&args, "x-queue-type"), &s("quorum"));
        assert_eq!(get(&args, "x-message-ttl"), &AMQPValue::LongLongInt(30_000));
        assert_eq!(get(&args, "x-dead-letter-exchange"), &s("sluice.jobs"));
        assert_eq!(get(&args, "x-dead-letter-routing-key"), &s("job"));
        assert_eq!(get(&args, "x-dead-letter-strategy"), &s("at-least-once"));
    }
}
