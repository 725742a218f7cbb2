//! `sluice-bench --mode coldstart`: scale from zero, as KEDA does it. A job waits in the queue, a
//! `sluice-worker` process starts, and the time from the process start to the job's ack is
//! measured; then a copy of the same document goes to the now warm worker and its enqueue → ack
//! time is the document's own work. Cold minus warm is what starting costs. Repeated `runs` times
//! with a fresh worker (and fresh documents) each time; medians are reported.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::Serialize;
use sluice_shared::metadata::{DocStatus, MetadataStore};

use super::figures::percentile;
use super::fleet::{FleetOptions, Rig};

/// The collection the fleet rig indexes into.
const COLLECTION: &str = "bench";
/// How long one document may take before the run is called stuck.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// One cold start.
#[derive(Debug, Clone, Serialize)]
pub struct ColdStart {
    /// Process start → first ack (the waiting job's commit), milliseconds.
    pub first_ack_ms: f64,
    /// Enqueue → ack of the same-sized job on the warm worker, milliseconds.
    pub warm_document_ms: f64,
    /// Process start → "consuming" in the worker's log (connections, migrations, topology).
    pub consuming_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ColdStartFigures {
    pub runs: Vec<ColdStart>,
    pub first_ack_p50_ms: f64,
    pub warm_document_p50_ms: f64,
    /// Median of (first ack − warm document): the start-up cost the issue bounds at 200 ms.
    pub overhead_p50_ms: f64,
    pub overhead_max_ms: f64,
    pub consuming_p50_ms: f64,
}

impl ColdStartFigures {
    pub fn render(&self) -> String {
        let mut out = String::from("cold start (worker process start → first ack):\n");
        for (i, run) in self.runs.iter().enumerate() {
            out.push_str(&format!(
                "  run {}: first ack {:>7.1} ms, same document warm {:>6.1} ms, start-up {:>6.1} ms (consuming after {})\n",
                i + 1,
                run.first_ack_ms,
                run.warm_document_ms,
                run.first_ack_ms - run.warm_document_ms,
                run.consuming_ms
                    .map_or("?".to_string(), |ms| format!("{ms:.1} ms")),
            ));
        }
        out.push_str(&format!(
            "median: first ack {:.1} ms = start-up {:.1} ms (max {:.1}) + the document's own work {:.1} ms; consuming after {:.1} ms\n",
            self.first_ack_p50_ms,
            self.overhead_p50_ms,
            self.overhead_max_ms,
            self.warm_document_p50_ms,
            self.consuming_p50_ms
        ));
        out
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64
}

/// When the ledger says `uri` was indexed (microseconds since the epoch), polling until then.
async fn indexed_at(rig: &Rig, uri: &str) -> anyhow::Result<i64> {
    let deadline = Instant::now() + ACK_TIMEOUT;
    loop {
        if let Some(record) = rig.metadata.get(COLLECTION, uri).await? {
            match record.status {
                DocStatus::Indexed => {
                    let at = record
                        .indexed_at
                        .context("an indexed document has indexed_at")?;
                    return Ok(at.timestamp_micros());
                }
                DocStatus::Failed => bail!("{uri} failed: {:?}", record.last_error),
                DocStatus::Processing | DocStatus::Deleted => {}
            }
        }
        if Instant::now() > deadline {
            bail!("{uri} was not indexed within {ACK_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Milliseconds from the worker's start to its "consuming" log line, if the log has one with a
/// timestamp (JSON logs).
fn consuming_ms(log: &Path, started_micros: i64) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains("\"consuming\""))?;
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let at = chrono::DateTime::parse_from_rfc3339(value.get("timestamp")?.as_str()?).ok()?;
    Some((at.timestamp_micros() - started_micros) as f64 / 1e3)
}

/// A copy of the file `uri` names, beside it: the same work under another document id.
fn copy_of(uri: &str) -> anyhow::Result<String> {
    let path = url::Url::parse(uri)?
        .to_file_path()
        .map_err(|()| anyhow::anyhow!("{uri} is not a local file"))?;
    let name = path.file_name().context("a file name")?.to_string_lossy();
    let copy = path.with_file_name(format!("warm-{name}"));
    std::fs::copy(&path, &copy)?;
    Ok(url::Url::from_file_path(&copy)
        .map_err(|()| anyhow::anyhow!("{} is not absolute", copy.display()))?
        .to_string())
}

/// `runs` cold starts, each on the next document of the corpus in `corpus_dir`.
pub async fn run(
    options: &FleetOptions,
    corpus_dir: &Path,
    runs: usize,
) -> anyhow::Result<ColdStartFigures> {
    // One more start than measured: the first creates the collection, a one-off that scaling
    // from zero does not repeat.
    let documents: Vec<String> = super::fleet::corpus_uris(corpus_dir)?
        .into_iter()
        .take(runs + 1)
        .collect();
    if documents.len() < runs + 1 {
        bail!("{runs} cold starts need {} documents", runs + 1);
    }
    let pairs = documents
        .into_iter()
        .map(|cold| anyhow::Ok((copy_of(&cold)?, cold)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut options = options.clone();
    options
        .env
        .insert("SLUICE_LOG_FORMAT".into(), "json".into());
    let rig = Rig::start(&options, corpus_dir).await?;
    let mut results = Vec::new();
    for (i, (warm, cold)) in pairs.iter().enumerate() {
        rig.publish(cold).await?;
        let started = now_micros();
        let (mut child, log) = rig.spawn_worker(&options, i)?;
        let outcome = async {
            let first_ack = indexed_at(&rig, cold).await?;
            let enqueued = rig.publish(warm).await?;
            let warm_ack = indexed_at(&rig, warm).await?;
            anyhow::Ok(ColdStart {
                first_ack_ms: (first_ack - started) as f64 / 1e3,
                warm_document_ms: (warm_ack - enqueued) as f64 / 1e3,
                consuming_ms: consuming_ms(&log, started),
            })
        }
        .await;
        // SAFETY: a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        let run = outcome.with_context(|| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            format!("cold start {}; worker log:\n{tail}", i + 1)
        })?;
        if i == 0 {
            eprintln!(
                "  warm-up start (creates the collection): first ack after {:.1} ms",
                run.first_ack_ms
            );
            continue;
        }
        eprintln!("  run {i}: first ack after {:.1} ms", run.first_ack_ms);
        results.push(run);
    }
    rig.finish().await?;

    let mut first: Vec<f64> = results.iter().map(|r| r.first_ack_ms).collect();
    let mut warm: Vec<f64> = results.iter().map(|r| r.warm_document_ms).collect();
    let mut overhead: Vec<f64> = results
        .iter()
        .map(|r| r.first_ack_ms - r.warm_document_ms)
        .collect();
    let mut consuming: Vec<f64> = results.iter().filter_map(|r| r.consuming_ms).collect();
    let median = |values: &mut Vec<f64>| percentile(values, 50.0).unwrap_or(f64::NAN);
    Ok(ColdStartFigures {
        first_ack_p50_ms: median(&mut first),
        warm_document_p50_ms: median(&mut warm),
        overhead_p50_ms: median(&mut overhead),
        overhead_max_ms: overhead.iter().copied().fold(0.0, f64::max),
        consuming_p50_ms: median(&mut consuming),
        runs: results,
    })
}
