//! `sluice-bench --mode ingest`: one `sluice ingest` process over the corpus (embedded Qdrant and
//! SQLite), as a user on one machine runs it.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::figures::Figures;
use super::procs::{vm_hwm_kib, wait_usage};

/// What the ingest run measured; the caller adds the emulator's side.
#[derive(Debug)]
pub struct IngestOutcome {
    pub figures: Figures,
    pub started: Instant,
    pub finished: Instant,
}

/// Runs `sluice ingest` over `corpus_dir`, or with `batches` > 1 over each of its `batch-NN`
/// folders in turn into the same data directory, adding up the figures and keeping each run's
/// CPU per 1,000 chunks.
pub fn run_batches(
    sluice: &Path,
    corpus_dir: &Path,
    batches: usize,
    data_dir: &Path,
    env: &HashMap<String, String>,
) -> anyhow::Result<IngestOutcome> {
    if batches <= 1 {
        return run(sluice, corpus_dir, data_dir, env);
    }
    let mut total: Option<IngestOutcome> = None;
    for batch in 0..batches {
        let dir = corpus_dir.join(format!("batch-{batch:02}"));
        let out = run(sluice, &dir, data_dir, env)?;
        let f = &out.figures;
        let per_1k = f.cpu_secs * 1000.0 / f.chunks.max(1) as f64;
        eprintln!(
            "  batch {}/{batches}: {} chunks, {:.2} CPU-s per 1,000 chunks, {:.1} s",
            batch + 1,
            f.chunks,
            per_1k,
            f.elapsed_secs
        );
        let sum = total.get_or_insert_with(|| IngestOutcome {
            figures: Figures {
                mode: "ingest".into(),
                workers: 1,
                ..Figures::default()
            },
            started: out.started,
            finished: out.finished,
        });
        let t = &mut sum.figures;
        t.indexed += f.indexed;
        t.failed += f.failed;
        t.chunks += f.chunks;
        t.tokens += f.tokens;
        t.cpu_secs += f.cpu_secs;
        t.worker_peak_rss_max_mb = t.worker_peak_rss_max_mb.max(f.worker_peak_rss_max_mb);
        t.worker_peak_rss_sum_mb = t.worker_peak_rss_max_mb;
        t.peak_rss_with_children_mb = t.peak_rss_with_children_mb.max(f.peak_rss_with_children_mb);
        t.batch_cpu_per_1k_chunks.push(per_1k);
        sum.finished = out.finished;
        t.elapsed_secs = (sum.finished - sum.started).as_secs_f64();
    }
    total.context("no batches")
}

/// Runs `sluice ingest <corpus_dir> --json` with `env` (embedding settings, concurrency) and a
/// data directory under `data_dir`.
pub fn run(
    sluice: &Path,
    corpus_dir: &Path,
    data_dir: &Path,
    env: &HashMap<String, String>,
) -> anyhow::Result<IngestOutcome> {
    let mut cmd = Command::new(sluice);
    cmd.arg("ingest")
        .arg(corpus_dir)
        .arg("--json")
        .env("SLUICE_DATA_DIR", data_dir)
        .envs(env)
        .stdout(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", sluice.display()))?;
    let pid = child.id();
    // VmHWM of sluice itself, sampled while it runs (the stdout reader below blocks).
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while let Some(kib) = vm_hwm_kib(pid) {
            peak = kib.max(peak);
            std::thread::sleep(Duration::from_millis(200));
        }
        peak
    });
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut stdout)?;
    let usage = wait_usage(pid, Duration::from_secs(600))?
        .context("sluice closed its output but did not exit")?;
    let finished = Instant::now();
    let peak_kib = sampler.join().unwrap_or(0);
    if usage.exit_code != 0 && usage.exit_code != 3 {
        bail!("sluice exited with status {}", usage.exit_code);
    }
    let summary: serde_json::Value =
        serde_json::from_str(&stdout).with_context(|| format!("sluice output: {stdout}"))?;
    let count = |key: &str| summary[key].as_u64().unwrap_or(0);
    let figures = Figures {
        mode: "ingest".into(),
        workers: 1,
        indexed: count("indexed"),
        failed: count("failed"),
        chunks: count("chunks"),
        tokens: count("tokens"),
        elapsed_secs: (finished - started).as_secs_f64(),
        worker_peak_rss_sum_mb: peak_kib as f64 / 1024.0,
        worker_peak_rss_max_mb: peak_kib as f64 / 1024.0,
        peak_rss_with_children_mb: usage.max_rss_with_children_kib as f64 / 1024.0,
        cpu_secs: usage.cpu_secs,
        ..Figures::default()
    };
    Ok(IngestOutcome {
        figures,
        started,
        finished,
    })
}
