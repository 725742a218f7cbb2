//! Every metric Sluice emits, declared once below with its labels, unit and description.
//! Stages record through the functions the table generates (`documents_total("indexed")`), so a
//! misspelt name or a missing label does not compile; [`ALL`] lists them for `/metrics`'
//! descriptions, the README's metric table and the dashboards' checks.

use metrics::{Counter, Gauge, Histogram, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// One metric as declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub unit: Option<Unit>,
    pub help: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

macro_rules! handle_type {
    (counter) => {
        Counter
    };
    (gauge) => {
        Gauge
    };
    (histogram) => {
        Histogram
    };
}

macro_rules! kind_of {
    (counter) => {
        Kind::Counter
    };
    (gauge) => {
        Kind::Gauge
    };
    (histogram) => {
        Kind::Histogram
    };
}

macro_rules! unit_of {
    () => {
        None
    };
    ($unit:ident) => {
        Some(Unit::$unit)
    };
}

/// `kind [(Unit)] function = "name" (labels…): "description";` — one function per metric that
/// returns its handle for the given label values, and one [`Metric`] in [`ALL`].
macro_rules! declare_metrics {
    ($(
        $kind:ident $(($unit:ident))? $func:ident = $name:literal ($($label:ident),*): $help:literal;
    )*) => {
        $(
            #[doc = concat!("`", $name, "`: ", $help)]
            pub fn $func($($label: impl Into<SharedString>),*) -> handle_type!($kind) {
                metrics::$kind!($name $(, stringify!($label) => $label.into())*)
            }
        )*

        /// Every metric, in declaration order.
        pub const ALL: &[Metric] = &[$(
            Metric {
                name: $name,
                kind: kind_of!($kind),
                labels: &[$(stringify!($label)),*],
                unit: unit_of!($($unit)?),
                help: $help,
            },
        )*];
    };
}

declare_metrics! {
    // The pipeline, in every process that indexes.
    counter documents_total = "sluice_documents_total" (outcome):
        "Documents processed, by outcome (indexed, unchanged, failed, deleted).";
    counter documents_failed_total = "sluice_documents_failed_total" (reason):
        "Failed documents, by reason.";
    counter chunks_total = "sluice_chunks_total" ():
        "Chunks written to the vector store.";
    counter embedded_tokens_total = "sluice_embedded_tokens_total" ():
        "Tokens of the chunks written (cl100k count).";
    histogram(Seconds) stage_duration_seconds = "sluice_stage_duration_seconds" (stage):
        "Time spent per pipeline stage, by stage.";
    histogram(Seconds) document_duration_seconds = "sluice_document_duration_seconds" ():
        "Time to process one document end to end.";
    counter(Bytes) bytes_read_total = "sluice_bytes_read_total" ():
        "Bytes read from sources.";
    gauge documents_in_flight = "sluice_documents_in_flight" ():
        "Documents being processed right now.";

    // Workers.
    counter jobs_total = "sluice_jobs_total" (kind, outcome):
        "Jobs settled, by kind and outcome (acked, retried, dead_lettered, handed_back).";
    histogram(Seconds) job_publish_to_ack_seconds = "sluice_job_publish_to_ack_seconds" ():
        "Time from publish to ack.";
    gauge jobs_in_flight = "sluice_jobs_in_flight" ():
        "Jobs this worker is processing.";
    gauge worker_intake_paused = "sluice_worker_intake_paused" (dependency):
        "1 while the worker takes no jobs because a dependency is unreachable, by dependency.";
    counter worker_outages_total = "sluice_worker_outages_total" (dependency):
        "Times the worker paused its intake for an unreachable dependency, by dependency.";
    gauge worker_concurrency = "sluice_worker_concurrency" ():
        "Jobs the worker processes and prefetches at once (grows while the provider has room).";

    // Embedding providers and the rate limiter.
    counter embed_requests_total = "sluice_embed_requests_total" (provider, outcome):
        "Embedding requests, by provider and outcome.";
    counter embed_retries_total = "sluice_embed_retries_total" (provider, reason):
        "Embedding request retries, by provider and reason.";
    counter embed_rate_limited_total = "sluice_embed_rate_limited_total" (provider):
        "Embedding requests answered 429, by provider.";
    histogram(Seconds) embed_request_duration_seconds = "sluice_embed_request_duration_seconds" (provider):
        "Embedding request latency, by provider.";
    counter embed_tokens_total = "sluice_embed_tokens_total" (provider):
        "Tokens billed by the embedding provider.";
    gauge embed_concurrency_limit = "sluice_embed_concurrency_limit" (provider):
        "Embedding requests allowed in flight by the adaptive limiter, by provider.";
    histogram(Seconds) embed_limiter_wait_seconds = "sluice_embed_limiter_wait_seconds" (provider):
        "Time embedding requests waited for the limiter, by provider.";
    histogram(Seconds) embed_fleet_budget_wait_seconds = "sluice_embed_fleet_budget_wait_seconds" ():
        "Time embedding requests waited for the fleet-wide TPM/RPM budget.";
    counter embed_fleet_budget_errors_total = "sluice_embed_fleet_budget_errors_total" ():
        "Fleet budget database errors; the request was sent without the budget.";

    // The scheduler: API, S3 events, watch mode, reindex.
    counter api_requests_total = "sluice_api_requests_total" (route, status):
        "Scheduler HTTP API requests, by route and status.";
    counter jobs_published_total = "sluice_jobs_published_total" (kind, source):
        "Jobs published and confirmed by the broker, by kind and source (api, s3_events, watch, reindex).";
    counter s3_events_total = "sluice_s3_events_total" (outcome):
        "S3 event notifications consumed, by outcome (published, ignored, dead_lettered, rejected).";
    counter watch_objects_total = "sluice_watch_objects_total" (change):
        "Watched objects whose job was published and confirmed, by change (new, changed, removed).";
    counter watch_listing_errors_total = "sluice_watch_listing_errors_total" ():
        "Polls of a watched location whose listing failed (nothing was enqueued or deleted).";
    counter watch_publish_errors_total = "sluice_watch_publish_errors_total" ():
        "Polls stopped because a job could not be published; the rest waits for the next poll.";
    histogram(Seconds) watch_poll_seconds = "sluice_watch_poll_seconds" ():
        "Time to poll one watched location: list, compare, publish, record.";

    // `sluice verify`: gauges of the last run, pushed to a Pushgateway when one is configured.
    gauge verify_documents_checked = "sluice_verify_documents_checked" ():
        "Documents of the ledger checked by the last sluice verify.";
    gauge verify_points_scanned = "sluice_verify_points_scanned" ():
        "Points of the index scanned by the last sluice verify.";
    gauge verify_drift = "sluice_verify_drift" (kind):
        "Drift found by the last sluice verify, by kind.";
    gauge verify_repairs = "sluice_verify_repairs" (action):
        "Repairs done (fleet: jobs published) by the last sluice verify --repair, by action.";
    gauge verify_repair_failures = "sluice_verify_repair_failures" ():
        "Repairs that failed in the last sluice verify --repair.";
    gauge(Seconds) verify_last_run_timestamp_seconds = "sluice_verify_last_run_timestamp_seconds" ():
        "When the last sluice verify ended (Unix time).";
    gauge(Seconds) verify_duration_seconds = "sluice_verify_duration_seconds" ():
        "Duration of the last sluice verify.";
    gauge verify_last_run_success = "sluice_verify_last_run_success" ():
        "1 if the last sluice verify finished, 0 if it stopped with an error.";
}

/// A worker paused its intake because `dependency` does not answer.
pub fn outage_started(dependency: &'static str) {
    worker_intake_paused(dependency).set(1.0);
    worker_outages_total(dependency).increment(1);
}

/// `dependency` answers again; intake resumes.
pub fn outage_ended(dependency: &'static str) {
    worker_intake_paused(dependency).set(0.0);
}

/// Counts one unit of work in an in-flight gauge for as long as it lives, whatever way the work
/// ends (returned, failed, cancelled or abandoned at shutdown).
pub struct InFlight(Gauge);

impl InFlight {
    /// `sluice_documents_in_flight`.
    pub fn documents() -> Self {
        Self::enter(documents_in_flight())
    }

    /// `sluice_jobs_in_flight`.
    pub fn jobs() -> Self {
        Self::enter(jobs_in_flight())
    }

    fn enter(gauge: Gauge) -> Self {
        gauge.increment(1.0);
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Registers descriptions so `/metrics` carries HELP lines.
pub fn describe() {
    for m in ALL {
        match (m.kind, m.unit) {
            (Kind::Counter, Some(unit)) => metrics::describe_counter!(m.name, unit, m.help),
            (Kind::Counter, None) => metrics::describe_counter!(m.name, m.help),
            (Kind::Gauge, Some(unit)) => metrics::describe_gauge!(m.name, unit, m.help),
            (Kind::Gauge, None) => metrics::describe_gauge!(m.name, m.help),
            (Kind::Histogram, Some(unit)) => metrics::describe_histogram!(m.name, unit, m.help),
            (Kind::Histogram, None) => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// Pushes rendered Prometheus text to a Pushgateway (`PUT <gateway>/metrics/job/<job>`), which
/// keeps it for Prometheus to scrape: how a short-lived command such as `sluice verify` reports.
/// The error never carries the URL's password.
pub async fn push_to_gateway(gateway: &str, job: &str, text: String) -> Result<(), String> {
    let url = format!("{}/metrics/job/{job}", gateway.trim_end_matches('/'));
    let shown = crate::secret::redact_url(gateway);
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .build()
        .map_err(|e| format!("pushgateway client: {e}"))?
        .put(&url)
        .header("content-type", "text/plain; version=0.0.4")
        .body(text)
        .send()
        .await
        .map_err(|e| format!("pushing metrics to {shown}: {}", e.without_url()))?;
    if !response.status().is_success() {
        return Err(format!(
            "pushing metrics to {shown}: HTTP {}",
            response.status()
        ));
    }
    Ok(())
}

/// Install the global Prometheus recorder (once per process) and return the handle that renders
/// `/metrics`.
pub fn install_prometheus() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
        ])
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::ALL;

    /// `name{label,label}` as the README writes a metric.
    fn written(name: &str, labels: &[&str]) -> String {
        if labels.is_empty() {
            name.to_string()
        } else {
            format!("{name}{{{}}}", labels.join(","))
        }
    }

    #[test]
    fn the_readme_lists_every_metric_with_its_labels_and_nothing_else() {
        let listed: BTreeSet<String> = crate::config::readme::readme_rows("sluice_")
            .into_iter()
            .flat_map(|(names, _)| names)
            .collect();
        let declared: BTreeSet<String> = ALL.iter().map(|m| written(m.name, m.labels)).collect();
        let missing: Vec<_> = declared.difference(&listed).collect();
        let stale: Vec<_> = listed.difference(&declared).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "README metric table out of step with shared/src/metrics.rs:\n  \
             not in the README: {missing:?}\n  in the README, not emitted: {stale:?}"
        );
    }

    #[test]
    fn names_are_unique_and_prometheus_shaped() {
        let mut seen = BTreeSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} declared twice", m.name);
            assert!(m.name.starts_with("sluice_"), "{}", m.name);
            if m.kind == super::Kind::Counter {
                assert!(
                    m.name.ends_with("_total"),
                    "counter {} lacks _total",
                    m.name
                );
            }
            if m.unit == Some(metrics::Unit::Seconds) {
                assert!(m.name.ends_with("_seconds"), "{} is in seconds", m.name);
            }
        }
    }
}
