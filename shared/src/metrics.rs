//! Every metric Sluice emits, named and described in one place (Prometheus naming: `_total`
//! counters, `_seconds` histograms, outcomes as labels). Stages call the `metrics` macros with
//! these names; [`install_prometheus`] sets up the recorder and its descriptions.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const DOCUMENTS_TOTAL: &str = "sluice_documents_total";
pub const DOCUMENTS_FAILED_TOTAL: &str = "sluice_documents_failed_total";
pub const CHUNKS_TOTAL: &str = "sluice_chunks_total";
pub const TOKENS_TOTAL: &str = "sluice_embedded_tokens_total";
pub const STAGE_SECONDS: &str = "sluice_stage_duration_seconds";
pub const DOCUMENT_SECONDS: &str = "sluice_document_duration_seconds";
pub const BYTES_READ_TOTAL: &str = "sluice_bytes_read_total";
pub const IN_FLIGHT: &str = "sluice_documents_in_flight";
pub const EMBED_REQUESTS_TOTAL: &str = "sluice_embed_requests_total";
pub const EMBED_RETRIES_TOTAL: &str = "sluice_embed_retries_total";
pub const EMBED_RATE_LIMITED_TOTAL: &str = "sluice_embed_rate_limited_total";
pub const EMBED_REQUEST_SECONDS: &str = "sluice_embed_request_duration_seconds";
pub const EMBED_TOKENS_TOTAL: &str = "sluice_embed_tokens_total";
/// Gauge: the embedding limiter's current concurrency limit (AIMD), by provider.
pub const EMBED_CONCURRENCY_LIMIT: &str = "sluice_embed_concurrency_limit";
/// Histogram: time a request waited for the embedding limiter (concurrency, pause, TPM/RPM).
pub const EMBED_LIMITER_WAIT_SECONDS: &str = "sluice_embed_limiter_wait_seconds";
/// Histogram: time a request waited for the fleet's shared budget in PostgreSQL.
pub const EMBED_FLEET_BUDGET_WAIT_SECONDS: &str = "sluice_embed_fleet_budget_wait_seconds";
/// Counter: fleet budget database errors (the request was sent without the budget).
pub const EMBED_FLEET_BUDGET_ERRORS: &str = "sluice_embed_fleet_budget_errors_total";
/// Scheduler: HTTP API requests, by route and status code.
pub const API_REQUESTS_TOTAL: &str = "sluice_api_requests_total";
/// Scheduler: jobs confirmed by the broker, by kind and source (`api`, `s3_events`, `watch`,
/// `reindex`).
pub const JOBS_PUBLISHED_TOTAL: &str = "sluice_jobs_published_total";
/// Scheduler: S3 event notifications consumed, by outcome (`published`, `ignored`,
/// `dead_lettered`, `rejected`).
pub const S3_EVENTS_TOTAL: &str = "sluice_s3_events_total";
/// `sluice verify` (gauges of the last run, pushed to a Pushgateway when one is configured):
/// documents of the ledger checked.
pub const VERIFY_DOCUMENTS_CHECKED: &str = "sluice_verify_documents_checked";
/// `sluice verify`: points of the index scanned.
pub const VERIFY_POINTS_SCANNED: &str = "sluice_verify_points_scanned";
/// `sluice verify`: drift found, by kind (missing, short, count_mismatch, unpublished,
/// stray_version, orphan).
pub const VERIFY_DRIFT: &str = "sluice_verify_drift";
/// `sluice verify --repair`: repairs done (fleet: jobs published), by action (delete_version,
/// reindex, publish, unstage).
pub const VERIFY_REPAIRS: &str = "sluice_verify_repairs";
/// `sluice verify --repair`: repairs that failed.
pub const VERIFY_REPAIR_FAILURES: &str = "sluice_verify_repair_failures";
/// `sluice verify`: when the last run ended (Unix seconds).
pub const VERIFY_LAST_RUN_TIMESTAMP: &str = "sluice_verify_last_run_timestamp_seconds";
/// `sluice verify`: how long the last run took.
pub const VERIFY_DURATION: &str = "sluice_verify_duration_seconds";
/// `sluice verify`: 1 if the last run finished, 0 if it stopped with an error.
pub const VERIFY_SUCCESS: &str = "sluice_verify_last_run_success";

/// Jobs settled by a worker, by kind and outcome.
pub const JOBS_TOTAL: &str = "sluice_jobs_total";
/// Time from a job's publication to its ack.
pub const JOB_AGE_SECONDS: &str = "sluice_job_publish_to_ack_seconds";
/// Jobs a worker is processing.
pub const JOBS_IN_FLIGHT: &str = "sluice_jobs_in_flight";
/// 1 while a worker's intake is paused because `dependency` is unreachable.
pub const INTAKE_PAUSED: &str = "sluice_worker_intake_paused";
/// Pauses of a worker's intake, by dependency.
pub const OUTAGES_TOTAL: &str = "sluice_worker_outages_total";
/// Jobs a worker processes (and prefetches) at once: fixed, or as its sizing chose.
pub const WORKER_CONCURRENCY: &str = "sluice_worker_concurrency";
/// Watched objects whose job was confirmed, by change (new, changed, removed).
pub const WATCH_OBJECTS_TOTAL: &str = "sluice_watch_objects_total";
/// Polls of a watched location whose listing failed.
pub const WATCH_LISTING_ERRORS_TOTAL: &str = "sluice_watch_listing_errors_total";
/// Polls stopped because a job could not be published.
pub const WATCH_PUBLISH_ERRORS_TOTAL: &str = "sluice_watch_publish_errors_total";
/// Time to poll one watched location.
pub const WATCH_POLL_SECONDS: &str = "sluice_watch_poll_seconds";

/// A worker paused its intake because `dependency` does not answer.
pub fn outage_started(dependency: &'static str) {
    metrics::gauge!(INTAKE_PAUSED, "dependency" => dependency).set(1.0);
    metrics::counter!(OUTAGES_TOTAL, "dependency" => dependency).increment(1);
}

/// `dependency` answers again; intake resumes.
pub fn outage_ended(dependency: &'static str) {
    metrics::gauge!(INTAKE_PAUSED, "dependency" => dependency).set(0.0);
}

/// Counts one unit of work in an in-flight gauge for as long as it lives, whatever way the work
/// ends (returned, failed, cancelled or abandoned at shutdown).
pub struct InFlight(&'static str);

impl InFlight {
    /// `sluice_documents_in_flight`.
    pub fn documents() -> Self {
        Self::enter(IN_FLIGHT)
    }

    /// Any in-flight gauge by name.
    pub fn enter(gauge: &'static str) -> Self {
        metrics::gauge!(gauge).increment(1.0);
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}

/// Registers descriptions so `/metrics` carries HELP lines.
pub fn describe() {
    describe_counter!(
        DOCUMENTS_TOTAL,
        "Documents processed, by outcome (indexed, unchanged, failed, deleted)."
    );
    describe_counter!(DOCUMENTS_FAILED_TOTAL, "Failed documents, by reason.");
    describe_counter!(CHUNKS_TOTAL, "Chunks written to the vector store.");
    describe_counter!(TOKENS_TOTAL, "Tokens of the chunks written (cl100k count).");
    describe_histogram!(
        STAGE_SECONDS,
        Unit::Seconds,
        "Time spent per pipeline stage, by stage."
    );
    describe_histogram!(
        DOCUMENT_SECONDS,
        Unit::Seconds,
        "Time to process one document end to end."
    );
    describe_counter!(BYTES_READ_TOTAL, Unit::Bytes, "Bytes read from sources.");
    describe_gauge!(IN_FLIGHT, "Documents being processed right now.");
    describe_counter!(
        JOBS_TOTAL,
        "Jobs settled, by kind and outcome (acked, retried, dead_lettered, handed_back)."
    );
    describe_histogram!(JOB_AGE_SECONDS, Unit::Seconds, "Time from publish to ack.");
    describe_gauge!(JOBS_IN_FLIGHT, "Jobs this worker is processing.");
    describe_gauge!(
        INTAKE_PAUSED,
        "1 while the worker takes no jobs because a dependency is unreachable, by dependency."
    );
    describe_counter!(
        OUTAGES_TOTAL,
        "Times the worker paused its intake for an unreachable dependency, by dependency."
    );
    describe_gauge!(
        WORKER_CONCURRENCY,
        "Jobs the worker processes and prefetches at once (grows while the provider has room)."
    );
    describe_counter!(
        EMBED_REQUESTS_TOTAL,
        "Embedding requests, by provider and outcome."
    );
    describe_counter!(
        EMBED_RETRIES_TOTAL,
        "Embedding request retries, by provider and reason."
    );
    describe_counter!(
        EMBED_RATE_LIMITED_TOTAL,
        "Embedding requests answered 429, by provider."
    );
    describe_histogram!(
        EMBED_REQUEST_SECONDS,
        Unit::Seconds,
        "Embedding request latency, by provider."
    );
    describe_counter!(
        EMBED_TOKENS_TOTAL,
        "Tokens billed by the embedding provider."
    );
    describe_gauge!(
        EMBED_CONCURRENCY_LIMIT,
        "Embedding requests allowed in flight by the adaptive limiter, by provider."
    );
    describe_histogram!(
        EMBED_LIMITER_WAIT_SECONDS,
        Unit::Seconds,
        "Time embedding requests waited for the limiter, by provider."
    );
    describe_histogram!(
        EMBED_FLEET_BUDGET_WAIT_SECONDS,
        Unit::Seconds,
        "Time embedding requests waited for the fleet-wide TPM/RPM budget."
    );
    describe_counter!(
        EMBED_FLEET_BUDGET_ERRORS,
        "Fleet budget database errors; the request was sent without the budget."
    );
    describe_counter!(
        API_REQUESTS_TOTAL,
        "Scheduler HTTP API requests, by route and status."
    );
    describe_counter!(
        JOBS_PUBLISHED_TOTAL,
        "Jobs published and confirmed by the broker, by kind and source."
    );
    describe_counter!(
        S3_EVENTS_TOTAL,
        "S3 event notifications consumed, by outcome."
    );
    describe_gauge!(
        VERIFY_DOCUMENTS_CHECKED,
        "Documents of the ledger checked by the last sluice verify."
    );
    describe_gauge!(
        VERIFY_POINTS_SCANNED,
        "Points of the index scanned by the last sluice verify."
    );
    describe_gauge!(
        VERIFY_DRIFT,
        "Drift found by the last sluice verify, by kind."
    );
    describe_gauge!(
        VERIFY_REPAIRS,
        "Repairs done (fleet: jobs published) by the last sluice verify --repair, by action."
    );
    describe_gauge!(
        VERIFY_REPAIR_FAILURES,
        "Repairs that failed in the last sluice verify --repair."
    );
    describe_gauge!(
        VERIFY_LAST_RUN_TIMESTAMP,
        Unit::Seconds,
        "When the last sluice verify ended (Unix time)."
    );
    describe_gauge!(
        VERIFY_DURATION,
        Unit::Seconds,
        "Duration of the last sluice verify."
    );
    describe_gauge!(
        VERIFY_SUCCESS,
        "1 if the last sluice verify finished, 0 if it stopped with an error."
    );
    describe_counter!(
        WATCH_OBJECTS_TOTAL,
        "Watched objects whose job was published and confirmed, by change (new, changed, removed)."
    );
    describe_counter!(
        WATCH_LISTING_ERRORS_TOTAL,
        "Polls of a watched location whose listing failed (nothing was enqueued or deleted)."
    );
    describe_counter!(
        WATCH_PUBLISH_ERRORS_TOTAL,
        "Polls stopped because a job could not be published; the rest waits for the next poll."
    );
    describe_histogram!(
        WATCH_POLL_SECONDS,
        Unit::Seconds,
        "Time to poll one watched location: list, compare, publish, record."
    );
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
