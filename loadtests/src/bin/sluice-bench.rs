//! `sluice-bench`: measures Sluice on a generated corpus against the embedding-provider emulator
//! (latency, TPM/RPM limits): one `sluice ingest` (`--mode ingest`) or N `sluice-worker`
//! processes on RabbitMQ and PostgreSQL (`--mode fleet`). Prints documents/s, chunks/s, tokens/s,
//! the share of the TPM limit used, 429s, enqueue→ack percentiles, peak RSS and CPU per 1,000
//! chunks; `--json` and `--plot` write the figures and a tokens/s plot. `--mode chaos` runs the
//! fleet under faults (kills, freezes past the lease, outages, provider storms, changes and
//! deletes) and audits every document afterwards; it exits 1 when anything was lost, doubled,
//! stale, miscounted or unexpectedly dead-lettered. `--mode coldstart` times a worker from process
//! start to its first ack, against the same document on a warm worker. `--mode budget` measures
//! the fleet-wide embedding budget alone (admissions/s, PostgreSQL CPU per request). Fleet runs
//! also print PostgreSQL's CPU per 1,000 documents in each fifth of the run; ingest runs with
//! `--batches N` print each batch's CPU per 1,000 chunks and `--searches N` search latency.
//!
//! ```sh
//! cargo build --release --bin sluice --bin sluice-worker --bin sluice-bench
//! target/release/sluice-bench --docs 1000 --latency-ms 50
//! target/release/sluice-bench --mode fleet --workers 4 --docs 5000 --tpm 1000000 --rpm 2000 \
//!     --latency-ms 300 --json bench.json --plot bench.svg
//! # the long chaos run (30 s outages, 10 minutes of chaos):
//! target/release/sluice-bench --mode chaos --workers 3 --docs 500 --chaos-secs 600 \
//!     --outage-secs 30 --json chaos.json
//! target/release/sluice-bench --mode coldstart --runs 7 --docs 20 --mix 0,100,0,0 --latency-ms 0
//! # the embedded store at 100,000 chunks, then 500 searches over it:
//! target/release/sluice-bench --docs 25000 --batches 10 --latency-ms 0 --searches 500
//! target/release/sluice-bench --mode budget --workers 16 --budget-secs 20
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use sluice_loadtests::bench::figures::Figures;
use sluice_loadtests::bench::{budget, coldstart, embedded, fleet, ingest, plot};
use sluice_loadtests::chaos::ChaosOptions;
use sluice_loadtests::corpus::{CorpusSpec, CorpusStats, generate};
use sluice_loadtests::emulator::{EmulatorConfig, EmulatorHandle};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// One `sluice ingest` process (embedded Qdrant and SQLite).
    Ingest,
    /// `--workers` `sluice-worker` processes on RabbitMQ, PostgreSQL and a Qdrant stand-in.
    Fleet,
    /// The fleet under chaos, then an audit of ledger, index and DLQ (see `chaos`).
    Chaos,
    /// Scale from zero: a job waits, a worker starts; time to its first ack (`--runs` times).
    Coldstart,
    /// The fleet-wide embedding budget alone: admissions per second and PostgreSQL CPU per
    /// request for `--workers` simulated workers over `--budget-secs`.
    Budget,
}

#[derive(Parser)]
#[command(about = "Benchmark Sluice against the provider emulator")]
struct Args {
    #[arg(long, value_enum, default_value = "ingest")]
    mode: Mode,
    /// Worker processes (fleet mode).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Cold starts measured (coldstart mode).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Documents in the generated corpus.
    #[arg(long, default_value_t = 1000)]
    docs: usize,
    /// Typical document size in bytes.
    #[arg(long, default_value_t = 8000)]
    doc_bytes: usize,
    /// Format mix in percent: pdf,markdown,html,text.
    #[arg(long, default_value = "25,25,25,25")]
    mix: String,
    /// Use the files of this folder (not recursive) instead of a generated corpus, e.g. one
    /// assembled by loadtests/real-corpus.sh.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Large PDFs added to the corpus.
    #[arg(long, default_value_t = 0)]
    large_pdfs: usize,
    /// Size of each large PDF, MB.
    #[arg(long, default_value_t = 50)]
    large_pdf_mb: usize,
    /// Emulator latency per request, milliseconds (default 50; chaos: 250 plus as much jitter,
    /// so that work is in flight when faults strike).
    #[arg(long)]
    latency_ms: Option<u64>,
    /// Emulator limit: tokens per minute (429 beyond it); none by default.
    #[arg(long)]
    tpm: Option<u64>,
    /// Emulator limit: requests per minute (429 beyond it); none by default.
    #[arg(long)]
    rpm: Option<u64>,
    /// Do not tell Sluice the emulator's limits: it has only the 429s, `Retry-After` and the
    /// rate-limit headers to go by.
    #[arg(long)]
    limits_unannounced: bool,
    /// Ingest mode: split the generated corpus into this many folders, indexed one after the other
    /// by separate `sluice ingest` runs into one data directory (prints each run's CPU per 1,000
    /// chunks: flat when a larger collection costs no more to write).
    #[arg(long, default_value_t = 1)]
    batches: usize,
    /// Budget mode: seconds to run.
    #[arg(long, default_value_t = 20)]
    budget_secs: u64,
    /// Ingest mode: afterwards, time this many searches over the collection (p50/p99).
    #[arg(long, default_value_t = 0)]
    searches: usize,
    /// Embedding provider wire format: voyage or openai; `bm25` runs without the emulator.
    #[arg(long, default_value = "voyage")]
    provider: String,
    /// The `sluice` binary (default: next to this one).
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// The `sluice-worker` binary (default: next to this one).
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// Documents processed at once (SLUICE_CONCURRENCY, ingest) / jobs per worker
    /// (SLUICE_WORKER_CONCURRENCY, fleet); default: Sluice's own.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Extra environment for `sluice` / the workers, KEY=VALUE (repeatable), e.g. the workers'
    /// own rate-limit settings. The bench's own SLUICE_* environment is passed on too.
    #[arg(long = "worker-env", value_name = "KEY=VALUE")]
    worker_env: Vec<String>,
    /// PostgreSQL for fleet mode (default: a fresh database on the local server, dropped after).
    #[arg(long)]
    database_url: Option<String>,
    /// Give up on a fleet run after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout_secs: u64,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG plot of tokens/s over the run against the TPM limit here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Chaos: seed of the schedule and the corpus.
    #[arg(long, default_value_t = 9)]
    seed: u64,
    /// Chaos: length of the chaos phase, seconds (the drain follows).
    #[arg(long, default_value_t = 75)]
    chaos_secs: u64,
    /// Chaos: how long PostgreSQL and Qdrant are each cut, seconds.
    #[arg(long, default_value_t = 4)]
    outage_secs: u64,
    /// Chaos: the workers' SLUICE_LEASE_SECS (a freeze lasts 1.5 times this).
    #[arg(long, default_value_t = 6)]
    lease_secs: u64,
    /// Chaos: SIGKILL a worker about this often, seconds.
    #[arg(long, default_value_t = 7)]
    kill_every_secs: u64,
    /// Chaos: latency the Qdrant proxy adds to each chunk each way, milliseconds.
    #[arg(long, default_value_t = 150)]
    qdrant_latency_ms: u64,
    /// Chaos: keep the corpus and worker logs in this folder (default: a temporary one).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// Files and bytes of a corpus folder given with `--corpus`.
fn existing_corpus(dir: &std::path::Path) -> anyhow::Result<CorpusStats> {
    let mut stats = CorpusStats { files: 0, bytes: 0 };
    for entry in std::fs::read_dir(dir)? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            stats.files += 1;
            stats.bytes += meta.len();
        }
    }
    if stats.files == 0 {
        bail!("--corpus {} holds no files", dir.display());
    }
    Ok(stats)
}

fn binary(given: &Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name(name),
    };
    if !path.exists() {
        bail!(
            "{} not found: build it first (cargo build --release --bin {name}) or pass its path",
            path.display()
        );
    }
    Ok(path)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mix: Vec<u32> = args
        .mix
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .context("--mix")?;
    let [pdf, md, html, txt] = mix[..] else {
        bail!("--mix takes four numbers: pdf,markdown,html,text")
    };
    if args.mode == Mode::Fleet && args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    if args.batches == 0
        || (args.batches > 1 && (args.mode != Mode::Ingest || args.corpus.is_some()))
    {
        bail!("--batches takes a number from 1 and splits a generated corpus in ingest mode");
    }
    let mut env: HashMap<String, String> = HashMap::new();
    for pair in &args.worker_env {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--worker-env {pair:?} is not KEY=VALUE"))?;
        env.insert(key.to_string(), value.to_string());
    }
    if args.mode == Mode::Budget {
        return run_budget(&args);
    }
    // Resolve the binaries before spending minutes on a corpus.
    let program = match args.mode {
        Mode::Budget => unreachable!("handled above"),
        Mode::Ingest => binary(&args.sluice, "sluice")?,
        Mode::Fleet | Mode::Chaos | Mode::Coldstart => binary(&args.worker_bin, "sluice-worker")?,
    };
    if args.mode == Mode::Chaos {
        return chaos(&args, program, env);
    }

    let work = tempfile::tempdir()?;
    let (corpus_dir, corpus) = match &args.corpus {
        Some(dir) => {
            let dir = std::fs::canonicalize(dir)
                .with_context(|| format!("--corpus {}", dir.display()))?;
            let stats = existing_corpus(&dir)?;
            (dir, stats)
        }
        None => {
            let corpus_dir = work.path().join("corpus");
            eprintln!(
                "generating {} documents (+{} large PDFs)…",
                args.docs, args.large_pdfs
            );
            let mut stats = CorpusStats { files: 0, bytes: 0 };
            for batch in 0..args.batches {
                let spec = CorpusSpec {
                    documents: args.docs / args.batches,
                    doc_bytes: args.doc_bytes,
                    mix: [pdf, md, html, txt],
                    large_pdfs: if batch == 0 { args.large_pdfs } else { 0 },
                    large_pdf_bytes: args.large_pdf_mb << 20,
                    seed: 7 + batch as u64,
                };
                let dir = match args.batches {
                    1 => corpus_dir.clone(),
                    _ => corpus_dir.join(format!("batch-{batch:02}")),
                };
                let batch_stats = generate(&dir, &spec)?;
                stats.files += batch_stats.files;
                stats.bytes += batch_stats.bytes;
            }
            (corpus_dir, stats)
        }
    };

    let rt = tokio::runtime::Runtime::new()?;
    let emulator: Option<EmulatorHandle> = if args.provider == "bm25" {
        None
    } else {
        let config = EmulatorConfig {
            latency: Duration::from_millis(args.latency_ms.unwrap_or(50)),
            tokens_per_window: args.tpm,
            requests_per_window: args.rpm,
            rate_window: Duration::from_secs(60),
            ..Default::default()
        };
        let (addr, handle) = rt.block_on(sluice_loadtests::emulator::spawn(config))?;
        for (key, value) in [
            ("SLUICE_EMBED_PROVIDER", args.provider.clone()),
            ("SLUICE_EMBED_BASE_URL", format!("http://{addr}")),
            ("SLUICE_EMBED_API_KEY", "bench".to_string()),
        ] {
            env.entry(key.into()).or_insert(value);
        }
        // The limits as an operator configures them, copied from the provider's account page
        // (`--worker-env SLUICE_EMBED_TPM=…` overrides, `SLUICE_EMBED_BUDGET=process` makes
        // each worker spend them alone).
        for (key, limit) in [
            ("SLUICE_EMBED_TPM", args.tpm),
            ("SLUICE_EMBED_RPM", args.rpm),
        ] {
            if let Some(limit) = limit.filter(|_| !args.limits_unannounced) {
                env.entry(key.into()).or_insert(limit.to_string());
            }
        }
        Some(handle)
    };
    if let Some(c) = args.concurrency {
        let key = match args.mode {
            Mode::Ingest => "SLUICE_CONCURRENCY",
            Mode::Fleet | Mode::Chaos | Mode::Coldstart | Mode::Budget => {
                "SLUICE_WORKER_CONCURRENCY"
            }
        };
        env.entry(key.into()).or_insert(c.to_string());
    }

    eprintln!(
        "running {} over {} files ({:.1} MB)…",
        program.display(),
        corpus.files,
        corpus.bytes as f64 / 1e6
    );
    let fleet_options = || -> anyhow::Result<fleet::FleetOptions> {
        std::fs::create_dir_all(work.path().join("logs"))?;
        Ok(fleet::FleetOptions {
            workers: args.workers,
            worker_bin: program.clone(),
            database_url: args.database_url.clone(),
            env: env.clone(),
            timeout: Duration::from_secs(args.timeout_secs),
            log_dir: work.path().join("logs"),
        })
    };
    if args.mode == Mode::Coldstart {
        let figures = rt.block_on(coldstart::run(&fleet_options()?, &corpus_dir, args.runs))?;
        print!("{}", figures.render());
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&figures)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(emulator) = emulator {
            rt.block_on(emulator.shutdown())?;
        }
        return Ok(());
    }
    let (mut figures, started, finished): (Figures, Instant, Instant) = match args.mode {
        Mode::Chaos | Mode::Coldstart | Mode::Budget => unreachable!("handled above"),
        Mode::Ingest => {
            let data_dir = work.path().join("data");
            let out = ingest::run_batches(&program, &corpus_dir, args.batches, &data_dir, &env)?;
            let mut figures = out.figures;
            if args.searches > 0 {
                eprintln!("timing {} searches…", args.searches);
                figures.search =
                    Some(rt.block_on(embedded::search_latency(&data_dir, &env, args.searches))?);
            }
            (figures, out.started, out.finished)
        }
        Mode::Fleet => {
            let out = rt.block_on(fleet::run(&fleet_options()?, &corpus_dir))?;
            let started = out.started.expect("fleet run start");
            let finished = out.finished.expect("fleet run end");
            (out.figures, started, finished)
        }
    };
    figures.provider = args.provider.clone();
    figures.emulator_latency_ms = args.latency_ms.unwrap_or(50);
    figures.tpm_limit = args.tpm;
    figures.rpm_limit = args.rpm;
    figures.documents = corpus.files;
    figures.corpus_mb = corpus.bytes as f64 / 1e6;
    figures.compute_rates();
    if let Some(emulator) = &emulator {
        let stats = emulator.stats();
        // The emulator's clock started before the run: map the run's instants onto its seconds.
        let now = Instant::now();
        let at = |t: Instant| (stats.uptime_secs - (now - t).as_secs_f64()).max(0.0) as u64;
        figures.apply_emulator(&stats, at(started), at(finished));
    }
    print!("{}", figures.render());
    if figures.elapsed_secs < 180.0 && figures.tpm_limit.is_some() {
        eprintln!(
            "note: the emulator's limit is a 60 s sliding window, so a run this short can burst \
             above the per-second rate; steady-state figures need several minutes"
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "{} ({} worker{}), {} ms latency: tokens/s admitted vs the TPM limit",
            figures.mode,
            figures.workers,
            if figures.workers == 1 { "" } else { "s" },
            figures.emulator_latency_ms
        );
        std::fs::write(path, plot::tokens_svg(&figures.series, args.tpm, &title))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(emulator) = emulator {
        rt.block_on(emulator.shutdown())?;
    }
    Ok(())
}

/// `--mode budget`: the fleet budget's admissions per second and PostgreSQL cost.
fn run_budget(args: &Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let figures = rt.block_on(async {
        let (url, own_db) = sluice_loadtests::bench::database(args.database_url.as_ref()).await;
        let figures = budget::run(&url, args.workers.max(1), args.budget_secs).await;
        drop(own_db);
        figures
    })?;
    print!("{}", figures.render());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `--mode chaos`: run, print the audit, exit 1 unless clean.
fn chaos(args: &Args, worker_bin: PathBuf, env: HashMap<String, String>) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let mut options = ChaosOptions::short(worker_bin, work_dir.clone());
    options.workers = args.workers.max(1);
    options.documents = args.docs;
    options.doc_bytes = args.doc_bytes;
    options.bad_files = (args.docs / 25).max(2);
    options.seed = args.seed;
    options.intensity.chaos = Duration::from_secs(args.chaos_secs);
    options.intensity.outage = Duration::from_secs(args.outage_secs);
    options.intensity.lease = Duration::from_secs(args.lease_secs);
    options.intensity.kill_every = Duration::from_secs(args.kill_every_secs.max(1));
    options.intensity.duplicates = args.docs / 5;
    options.qdrant_latency = Duration::from_millis(args.qdrant_latency_ms);
    options.intensity.freezes = (args.chaos_secs / 15).max(1) as usize;
    if let Some(ms) = args.latency_ms {
        options.latency = Duration::from_millis(ms);
    }
    options.drain_timeout = Duration::from_secs(args.timeout_secs.min(3600));
    if let Some(c) = args.concurrency {
        options.concurrency = c;
    }
    options.env = env;
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(sluice_loadtests::chaos::run(&options))?;
    print!("{}", report.render());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.work_dir.is_some() {
        eprintln!("corpus and worker logs kept in {}", work_dir.display());
    }
    if !report.clean() {
        std::process::exit(1);
    }
    Ok(())
}
