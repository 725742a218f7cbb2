//! Where a consumed queue's deliveries go when they are settled. A [`super::Delivery`] carries the
//! route of the queue it came from, so settling a message can only ever put it back on *its own*
//! queue, directly or through that queue's own delayed-retry queues: an S3 event handed back is an
//! S3 event again, never a job on the work queue.

use std::time::Duration;

use super::QueueSettings;

/// A queue that is consumed, how to publish onto it again, and its delayed-retry queues (one per
/// [`QueueSettings::retry_delays`] entry; each expires back onto this queue). Dead letters of every
/// queue go to the one DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRoute {
    queue: String,
    /// Exchange and routing key that reach [`Self::queue`] (what `hand_back` publishes to).
    exchange: String,
    routing_key: String,
    retry_queues: Vec<RetryQueue>,
}

/// One delayed-retry queue of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryQueue {
    pub name: String,
    pub delay: Duration,
}

impl QueueRoute {
    /// The work queue: reached through the work exchange with the work routing key, retried
    /// through `<retry_queue_prefix>.<delay>`.
    pub fn work(settings: &QueueSettings) -> Self {
        QueueRoute {
            queue: settings.work_queue.clone(),
            exchange: settings.exchange.clone(),
            routing_key: settings.routing_key.clone(),
            retry_queues: retry_queues(settings, &settings.retry_queue_prefix),
        }
    }

    /// The S3 event notification queue `name`: not bound to the work exchange, so it is reached
    /// through the default exchange by its name, and retried through `<name>.retry.<delay>`.
    pub fn s3_events(settings: &QueueSettings, name: &str) -> Self {
        QueueRoute {
            queue: name.to_string(),
            exchange: String::new(),
            routing_key: name.to_string(),
            retry_queues: retry_queues(settings, &format!("{name}.retry")),
        }
    }

    /// The consumed queue's name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The exchange that routes to [`Self::queue`] (`""`: the default exchange).
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key that reaches [`Self::queue`] on [`Self::exchange`].
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// The delayed-retry queues, shortest delay first.
    pub fn retry_queues(&self) -> &[RetryQueue] {
        &self.retry_queues
    }

    /// The retry queue a message's `attempt` waits in (see [`retry_delay_index`]).
    pub fn retry_queue(&self, attempt: u32) -> &RetryQueue {
        &self.retry_queues[retry_delay_index(self.retry_queues.len(), attempt)]
    }

    /// Every queue of the route: the consumed one, then its retry queues.
    pub fn queue_names(&self) -> Vec<String> {
        std::iter::once(self.queue.clone())
            .chain(self.retry_queues.iter().map(|r| r.name.clone()))
            .collect()
    }
}

fn retry_queues(settings: &QueueSettings, prefix: &str) -> Vec<RetryQueue> {
    settings
        .retry_delays
        .iter()
        .map(|&delay| RetryQueue {
            name: retry_queue_name(prefix, delay),
            delay,
        })
        .collect()
}

/// `<prefix>.5s`, or `<prefix>.1500ms` for fractions of a second.
pub(super) fn retry_queue_name(prefix: &str, delay: Duration) -> String {
    let ms = delay.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{prefix}.{}s", ms / 1000)
    } else {
        format!("{prefix}.{ms}ms")
    }
}

/// Index of the retry delay for a message's `attempt` (1-based: the first retry is attempt 1)
/// among `delays` delays. Attempts past the last delay keep using the last (longest) one.
pub(super) fn retry_delay_index(delays: usize, attempt: u32) -> usize {
    let wanted = attempt.saturating_sub(1) as usize;
    wanted.min(delays.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_route_uses_the_fleet_names() {
        let s = QueueSettings::default();
        let work = QueueRoute::work(&s);
        assert_eq!(
            (work.queue(), work.exchange(), work.routing_key()),
            ("sluice.jobs", "sluice.jobs", "job")
        );
        assert_eq!(work.queue_names()[1..], s.retry_queue_names());
        assert_eq!(work.retry_queue(1).name, "sluice.retry.5s");
        assert_eq!(work.retry_queue(9).name, "sluice.retry.300s");
    }

    #[test]
    fn an_events_route_never_leads_to_the_work_queue() {
        let s = QueueSettings::default();
        let events = QueueRoute::s3_events(&s, "minio.events");
        assert_eq!(
            (events.queue(), events.exchange(), events.routing_key()),
            ("minio.events", "", "minio.events")
        );
        assert_eq!(
            events.queue_names(),
            [
                "minio.events",
                "minio.events.retry.5s",
                "minio.events.retry.30s",
                "minio.events.retry.300s"
            ]
        );
    }
}
