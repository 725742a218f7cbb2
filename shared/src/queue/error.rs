//! Typed errors of the queue module and whether retrying can help.

use lapin::ErrorKind;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

/// What can go wrong talking to RabbitMQ. Messages never contain the broker password: URLs are
/// stored already redacted, and lapin's own messages (which may echo the AMQP URL) are passed
/// through [`crate::secret::redact`].
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A setting is unusable; names the setting.
    #[error("invalid queue setting {setting}: {reason}")]
    InvalidSettings {
        setting: &'static str,
        reason: String,
    },
    /// The broker could not be reached or refused the login.
    #[error(
        "cannot connect to RabbitMQ at {url}: {} (is the broker running? \
         `rabbitmq-server -detached` starts a local one)", redacted(.source)
    )]
    Connect { url: String, source: lapin::Error },
    /// Declaring an exchange, queue or binding failed, e.g. because it exists with other
    /// arguments (PRECONDITION_FAILED) or does not exist (passive declare, NOT_FOUND).
    #[error("declaring {what}: {}", redacted(.source))]
    Declare { what: String, source: lapin::Error },
    /// Opening a channel, enabling confirms, setting QoS, starting or cancelling a consumer.
    #[error("{what}: {}", redacted(.source))]
    Channel {
        what: &'static str,
        source: lapin::Error,
    },
    /// The publish failed before the broker confirmed it (channel or connection lost): the
    /// message may or may not have been stored; publish again.
    #[error("publishing to exchange {exchange:?} with key {routing_key:?}: {}", redacted(.source))]
    Publish {
        exchange: String,
        routing_key: String,
        source: lapin::Error,
    },
    /// No confirm arrived within `confirm_timeout`.
    #[error(
        "no publisher confirm within {seconds} s for exchange {exchange:?} key {routing_key:?}"
    )]
    ConfirmTimeout {
        exchange: String,
        routing_key: String,
        seconds: u64,
    },
    /// The broker refused to take responsibility for the message (e.g. a full queue with
    /// `x-overflow=reject-publish`, or a quorum queue without a leader).
    #[error("broker nacked the message for exchange {exchange:?} key {routing_key:?}")]
    Nacked {
        exchange: String,
        routing_key: String,
    },
    /// The message reached no queue (mandatory publish returned): the topology is missing or the
    /// routing key is wrong. Retrying the same publish cannot help until the topology is fixed.
    #[error("message unroutable on exchange {exchange:?} key {routing_key:?}: {reply}")]
    Unroutable {
        exchange: String,
        routing_key: String,
        reply: String,
    },
    /// `publish_with_retry` gave up; the message was NOT confirmed and must be reported.
    #[error("publish not confirmed after {attempts} attempts: {last}")]
    GaveUp {
        attempts: usize,
        last: Box<QueueError>,
    },
    /// A retry delay index outside [`super::QueueSettings::retry_delays`].
    #[error("no retry delay with index {index} ({count} configured)")]
    NoSuchRetryDelay { index: usize, count: usize },
    /// Acking/nacking a delivery failed.
    #[error("settling delivery: {}", redacted(.0))]
    Settle(lapin::Error),
    /// The delivery's channel closed before it was settled. The broker requeues it with
    /// `redelivered=true`; nothing was acked.
    #[error("the delivery's channel is closed; the broker will redeliver the message")]
    ChannelGone,
}

impl QueueError {
    /// Whether trying the same operation again (after a reconnect) can succeed. Exhaustive on
    /// purpose: a new variant must decide.
    pub fn is_retryable(&self) -> bool {
        match self {
            QueueError::InvalidSettings { .. } => false,
            QueueError::Connect { source, .. } => lapin_is_transient(source),
            QueueError::Declare { source, .. } => lapin_is_transient(source),
            QueueError::Channel { source, .. } => lapin_is_transient(source),
            QueueError::Publish { source, .. } => lapin_is_transient(source),
            QueueError::ConfirmTimeout { .. } => true,
            // reject-publish overflow and leaderless quorum queues clear up by themselves.
            QueueError::Nacked { .. } => true,
            QueueError::Unroutable { .. } => false,
            QueueError::GaveUp { .. } => false,
            QueueError::NoSuchRetryDelay { .. } => false,
            QueueError::Settle(source) => lapin_is_transient(source),
            // The broker redelivers by itself; settling again is impossible.
            QueueError::ChannelGone => false,
        }
    }
}

/// A lapin error as text, with any credential it echoes removed.
pub(crate) fn redacted(error: &lapin::Error) -> String {
    crate::secret::redact(&error.to_string())
}

/// Whether a lapin error is a lost or not-yet-recovered connection/channel (retry) rather than a
/// broker refusal that will repeat (don't).
pub(crate) fn lapin_is_transient(error: &lapin::Error) -> bool {
    match error.kind() {
        ErrorKind::IOError(_)
        | ErrorKind::MissingHeartbeatError
        | ErrorKind::InvalidChannel(_)
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::InvalidConnectionState(_) => true,
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(soft) => match soft {
                // Another consumer holds an exclusive lock; it may go away.
                AMQPSoftError::RESOURCELOCKED => true,
                AMQPSoftError::CONTENTTOOLARGE
                | AMQPSoftError::NOROUTE
                | AMQPSoftError::NOCONSUMERS
                | AMQPSoftError::ACCESSREFUSED
                | AMQPSoftError::NOTFOUND
                | AMQPSoftError::PRECONDITIONFAILED => false,
            },
            AMQPErrorKind::Hard(hard) => match hard {
                // Closed by an operator (`rabbitmqctl close_all_connections`), a node shutting
                // down, a resource alarm or an internal error: a reconnect can succeed.
                AMQPHardError::CONNECTIONFORCED
                | AMQPHardError::RESOURCEERROR
                | AMQPHardError::INTERNALERROR => true,
                AMQPHardError::INVALIDPATH
                | AMQPHardError::FRAMEERROR
                | AMQPHardError::SYNTAXERROR
                | AMQPHardError::COMMANDINVALID
                | AMQPHardError::CHANNELERROR
                | AMQPHardError::UNEXPECTEDFRAME
                | AMQPHardError::NOTALLOWED
                | AMQPHardError::NOTIMPLEMENTED => false,
            },
        },
        ErrorKind::ChannelsLimitReached
        | ErrorKind::InvalidProtocolVersion(_)
        | ErrorKind::RuntimeShutdownError(_)
        | ErrorKind::ParsingError(_)
        | ErrorKind::SerialisationError(_)
        | ErrorKind::AuthProviderError(_)
        | ErrorKind::FutureCompleted
        | ErrorKind::NoDefaultRuntime => false,
        // lapin's ErrorKind is #[non_exhaustive], so this arm is forced on us. A kind added
        // upstream is most likely another flavour of lost connection; retrying is bounded anyway.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn io_error() -> lapin::Error {
        lapin::Error::from(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
    }

    #[test]
    fn lapin_messages_never_show_the_amqp_password() {
        let source = lapin::Error::from(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "connect amqp://sluice:Mq-Secret-9@mq:5672/%2f refused",
        ));
        let err = QueueError::Connect {
            url: "amqp://sluice:***@mq:5672/%2f".into(),
            source,
        };
        let shown = err.to_string();
        assert!(!shown.contains("Mq-Secret-9"), "{shown}");
        assert!(shown.contains("refused"), "{shown}");
    }

    #[test]
    fn lost_connections_are_retryable_refusals_are_not() {
        let publish = QueueError::Publish {
            exchange: "x".into(),
            routing_key: "k".into(),
            source: io_error(),
        };
        assert!(publish.is_retryable());
        assert!(
            !QueueError::Unroutable {
                exchange: "x".into(),
                routing_key: "k".into(),
                reply: "NO_ROUTE".into()
            }
            .is_retryable()
        );
        assert!(!QueueError::ChannelGone.is_retryable());
        assert!(
            QueueError::Nacked {
                exchange: "x".into(),
                routing_key: "k".into()
            }
            .is_retryable()
        );
    }
}
