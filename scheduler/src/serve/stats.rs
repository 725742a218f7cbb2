//! What `GET /v1/stats` and `/readyz` know about the broker: a probe connection of its own that
//! reads queue depths by passive declares, and the numbers of the stats answer.
//!
//! The probe never shares a channel with publishing or consuming: a passive declare of a queue
//! that does not exist closes its channel (AMQP NOT_FOUND), and that must not take a publish or a
//! consumer down with it. After any failure the channel is dropped and the next call opens a new
//! one; a dead connection is replaced on demand, with a single connection attempt, so a probe
//! answers quickly instead of sitting in a reconnect backoff.

use std::sync::Arc;

use chrono::{Duration as ChronoDuration, Utc};
use lapin::{Channel, Connection};
use serde::Serialize;
use sluice_shared::metadata::{DocumentStats, FailureReason, MetadataStore};
use sluice_shared::queue::{self, QueueError, QueueSettings};
use tokio::sync::Mutex;

/// Failure reasons listed by `GET /v1/stats`: enough to see what is going wrong, small enough to
/// read at a glance.
const MAX_FAILURE_REASONS: usize = 20;

/// Windows of the indexing rates, in seconds.
const RATE_WINDOWS_SECS: [i64; 2] = [60, 300];

/// A broker connection for readiness and queue depths (see the module docs).
pub struct BrokerProbe {
    /// The fleet's queue settings with a single connection attempt: probes reconnect on demand.
    settings: QueueSettings,
    link: Mutex<Link>,
}

struct Link {
    connection: Option<Arc<Connection>>,
    channel: Option<Channel>,
}

/// One queue as the broker reports it.
#[derive(Debug, Clone, Serialize)]
pub struct QueueInfo {
    pub name: String,
    /// Ready messages (not counting deliveries a consumer holds unacked); `None` when the broker
    /// could not tell (see `error`).
    pub depth: Option<u32>,
    /// Consumers attached (workers on the work queue).
    pub consumers: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl BrokerProbe {
    /// Wraps `connection` (already open, from start-up); later connections are made on demand.
    pub fn new(settings: &QueueSettings, connection: Arc<Connection>) -> Self {
        BrokerProbe {
            settings: QueueSettings {
                reconnect_attempts: 1,
                connection_name: format!("{}-probe", settings.connection_name),
                ..settings.clone()
            },
            link: Mutex::new(Link {
                connection: Some(connection),
                channel: None,
            }),
        }
    }

    /// `Ok` when the broker answers: the connection is up, or a new one could be opened.
    pub async fn check(&self) -> Result<(), String> {
        let mut link = self.link.lock().await;
        self.channel(&mut link)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Depth and consumers of each queue in `names`, in order. A queue that cannot be read gets
    /// its error instead of numbers; the others are still read.
    pub async fn queues(&self, names: &[String]) -> Vec<QueueInfo> {
        let mut link = self.link.lock().await;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let answer = match self.channel(&mut link).await {
                Ok(channel) => queue::queue_counts(&channel, name).await,
                Err(e) => Err(e),
            };
            out.push(match answer {
                Ok((depth, consumers)) => QueueInfo {
                    name: name.clone(),
                    depth: Some(depth),
                    consumers: Some(consumers),
                    error: None,
                },
                Err(error) => {
                    // The broker closed the channel (NOT_FOUND) or it was lost: start afresh.
                    link.channel = None;
                    QueueInfo {
                        name: name.clone(),
                        depth: None,
                        consumers: None,
                        error: Some(error.to_string()),
                    }
                }
            });
        }
        out
    }

    /// A usable channel, replacing a closed channel or connection first.
    async fn channel(&self, link: &mut Link) -> Result<Channel, QueueError> {
        if let Some(channel) = &link.channel
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        link.channel = None;
        let usable = link.connection.as_ref().is_some_and(|c| {
            let status = c.status();
            status.connected() || status.reconnecting()
        });
        if !usable {
            link.connection = Some(Arc::new(queue::connect(&self.settings).await?));
        }
        let connection = link.connection.as_ref().expect("set just above");
        let channel = queue::open_channel(connection, "opening a probe channel").await?;
        link.channel = Some(channel.clone());
        Ok(channel)
    }
}

/// The answer of `GET /v1/stats`.
#[derive(Debug, Serialize)]
pub struct StatsReport {
    pub work_queue: QueueInfo,
    pub dead_letter_queue: QueueInfo,
    pub retry_queues: Vec<QueueInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_events_queue: Option<QueueInfo>,
    /// Documents a worker holds a lease on right now (status `processing`).
    pub in_flight: i64,
    /// Documents per status.
    pub documents: serde_json::Map<String, serde_json::Value>,
    pub rates: Rates,
    /// Failed documents by reason, most frequent first.
    pub failures_by_reason: Vec<FailureReason>,
}

/// Indexing throughput, from the documents' `indexed_at` times.
#[derive(Debug, Serialize)]
pub struct Rates {
    pub indexed_last_1m: i64,
    pub indexed_last_5m: i64,
    pub indexed_per_second_1m: f64,
    pub indexed_per_second_5m: f64,
}

/// Gathers the report. Queues that cannot be read carry their error; a metadata store failure
/// fails the whole report (there is nothing useful to show without it).
pub async fn gather(
    probe: &BrokerProbe,
    settings: &QueueSettings,
    s3_events_queue: Option<&str>,
    metadata: &dyn MetadataStore,
    collection: Option<&str>,
) -> Result<StatsReport, sluice_shared::metadata::MetadataError> {
    let now = Utc::now();
    let since: Vec<_> = RATE_WINDOWS_SECS
        .iter()
        .map(|s| now - ChronoDuration::seconds(*s))
        .collect();
    let documents = metadata
        .stats(collection, &since, MAX_FAILURE_REASONS)
        .await?;

    let retry_names = settings.retry_queue_names();
    let mut names = vec![
        settings.work_queue.clone(),
        settings.dead_letter_queue.clone(),
    ];
    names.extend(retry_names.iter().cloned());
    names.extend(s3_events_queue.map(str::to_string));
    let mut infos = probe.queues(&names).await.into_iter();
    let work_queue = infos.next().expect("one answer per name");
    let dead_letter_queue = infos.next().expect("one answer per name");
    let retry_queues = infos.by_ref().take(retry_names.len()).collect();
    let s3_events_queue = infos.next();
    Ok(report(
        work_queue,
        dead_letter_queue,
        retry_queues,
        s3_events_queue,
        documents,
    ))
}

fn report(
    work_queue: QueueInfo,
    dead_letter_queue: QueueInfo,
    retry_queues: Vec<QueueInfo>,
    s3_events_queue: Option<QueueInfo>,
    stats: DocumentStats,
) -> StatsReport {
    let count = |status| {
        stats
            .counts
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    };
    let in_flight = count(sluice_shared::metadata::DocStatus::Processing);
    let documents = stats
        .counts
        .iter()
        .map(|(status, n)| (status.as_str().to_string(), serde_json::Value::from(*n)))
        .collect();
    let indexed = |i: usize| stats.indexed_since.get(i).copied().unwrap_or(0);
    let (last_1m, last_5m) = (indexed(0), indexed(1));
    StatsReport {
        work_queue,
        dead_letter_queue,
        retry_queues,
        s3_events_queue,
        in_flight,
        documents,
        rates: Rates {
            indexed_last_1m: last_1m,
            indexed_last_5m: last_5m,
            indexed_per_second_1m: last_1m as f64 / RATE_WINDOWS_SECS[0] as f64,
            indexed_per_second_5m: last_5m as f64 / RATE_WINDOWS_SECS[1] as f64,
        },
        failures_by_reason: stats.failures_by_reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_shared::metadata::DocStatus;

    fn queue(name: &str, depth: u32) -> QueueInfo {
        QueueInfo {
            name: name.into(),
            depth: Some(depth),
            consumers: Some(0),
            error: None,
        }
    }

    #[test]
    fn report_turns_counts_into_rates_and_in_flight() {
        let stats = DocumentStats {
            counts: vec![
                (DocStatus::Processing, 4),
                (DocStatus::Indexed, 10),
                (DocStatus::Failed, 1),
                (DocStatus::Deleted, 0),
            ],
            indexed_since: vec![6, 30],
            failures_by_reason: vec![],
        };
        let r = report(queue("w", 3), queue("d", 1), vec![], None, stats);
        assert_eq!(r.in_flight, 4);
        assert_eq!(r.documents["indexed"], 10);
        assert_eq!((r.rates.indexed_last_1m, r.rates.indexed_last_5m), (6, 30));
        assert!((r.rates.indexed_per_second_1m - 0.1).abs() < 1e-9);
        assert!((r.rates.indexed_per_second_5m - 0.1).abs() < 1e-9);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["work_queue"]["depth"], 3);
        assert!(json.get("s3_events_queue").is_none());
    }
}
