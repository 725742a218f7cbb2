//! The one way a process starts talking to RabbitMQ: connect, declare the topology, then hand out
//! the publisher and consumers.

use std::sync::Arc;

use lapin::Connection;

use super::{
    Consumer, Publisher, QueueError, QueueRoute, QueueSettings, connect, declare_topology,
    open_channel,
};

/// A process's link to the broker: a connection for declaring, consuming and probing, and a
/// [`Publisher`] on a connection of its own (so publisher confirms never wait behind deliveries,
/// and flow control on publishing never stalls acks). Cheap to share behind an `Arc`.
pub struct Broker {
    settings: QueueSettings,
    connection: Arc<Connection>,
    publisher: Arc<Publisher>,
}

impl Broker {
    /// Opens both connections at once (lapin's auto-recovery on) and declares the topology
    /// (exchanges, work queue, retry queues, DLQ) on the first before returning.
    pub async fn connect(settings: &QueueSettings) -> Result<Self, QueueError> {
        settings.validate()?;
        let declared = async {
            let connection = connect(settings).await?;
            let channel = open_channel(
                &connection,
                "opening a channel to declare the queue topology",
            )
            .await?;
            declare_topology(&channel, settings).await?;
            let _ = channel.close(200, "bye".into()).await;
            Ok(connection)
        };
        let (connection, publisher) = tokio::try_join!(declared, Publisher::connect(settings))?;
        Ok(Broker {
            settings: settings.clone(),
            connection: Arc::new(connection),
            publisher: Arc::new(publisher),
        })
    }

    /// The settings the broker was connected with.
    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// The declaring and consuming connection, for readiness checks and passive declares.
    pub fn connection(&self) -> &Arc<Connection> {
        &self.connection
    }

    /// The process's publisher (shared: publishes run concurrently on it).
    pub fn publisher(&self) -> Arc<Publisher> {
        self.publisher.clone()
    }

    /// A new channel on the broker's connection (for passive declares, which close their channel
    /// when the queue is missing); `what` says what it is for, should opening it fail.
    pub async fn channel(&self, what: &'static str) -> Result<lapin::Channel, QueueError> {
        open_channel(&self.connection, what).await
    }

    /// The work queue's route.
    pub fn work_route(&self) -> QueueRoute {
        QueueRoute::work(&self.settings)
    }

    /// Starts a consumer of `route`'s queue on the broker's connection with `prefetch` unacked
    /// deliveries at most; its deliveries settle through the shared publisher, back onto
    /// `route`'s own queues.
    pub async fn consumer(
        &self,
        route: QueueRoute,
        prefetch: u16,
        tag: &str,
    ) -> Result<Consumer, QueueError> {
        Consumer::start_on(
            &self.connection,
            route,
            prefetch,
            tag,
            self.publisher.clone(),
        )
        .await
    }

    /// Closes the publisher and the connection. Every publish already returned was confirmed;
    /// unsettled deliveries return to their queues.
    pub async fn close(&self) {
        self.publisher.close().await;
        let _ = self.connection.close(200, "bye".into()).await;
    }
}
