//! `sluice-bench`: measures `sluice ingest` on a generated corpus with the embedding-provider
//! emulator at a fixed latency, and prints documents/s, chunks/s, MB/s and peak RSS.
//!
//! ```sh
//! cargo build --release --bin sluice --bin sluice-bench
//! target/release/sluice-bench --docs 1000 --latency-ms 50
//! ```

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use sluice_loadtests::corpus::{CorpusSpec, generate};
use sluice_loadtests::emulator::EmulatorConfig;

#[derive(Parser)]
#[command(about = "Benchmark `sluice ingest` against the provider emulator")]
struct Args {
    /// Documents in the generated corpus.
    #[arg(long, default_value_t = 1000)]
    docs: usize,
    /// Typical document size in bytes.
    #[arg(long, default_value_t = 8000)]
    doc_bytes: usize,
    /// Format mix in percent: pdf,markdown,html,text.
    #[arg(long, default_value = "25,25,25,25")]
    mix: String,
    /// Emulator latency per request, milliseconds.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// Embedding provider wire format: voyage or openai; `bm25` runs without the emulator.
    #[arg(long, default_value = "voyage")]
    provider: String,
    /// The `sluice` binary (default: next to this one).
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Documents processed at once (SLUICE_CONCURRENCY); default: sluice's own default.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sluice = match args.sluice.clone() {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("sluice"),
    };
    if !sluice.exists() {
        bail!(
            "{} not found: build it first (cargo build --release --bin sluice) or pass --sluice",
            sluice.display()
        );
    }
    let mix: Vec<u32> = args
        .mix
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .context("--mix")?;
    let [pdf, md, html, txt] = mix[..] else {
        bail!("--mix takes four numbers: pdf,markdown,html,text")
    };

    let work = tempfile::tempdir()?;
    let corpus_dir = work.path().join("corpus");
    eprintln!("generating {} documents…", args.docs);
    let spec = CorpusSpec {
        documents: args.docs,
        doc_bytes: args.doc_bytes,
        mix: [pdf, md, html, txt],
        ..Default::default()
    };
    let corpus = generate(&corpus_dir, &spec)?;

    let rt = tokio::runtime::Runtime::new()?;
    let mut cmd = Command::new(&sluice);
    cmd.arg("ingest").arg(&corpus_dir).arg("--json");
    cmd.env("SLUICE_DATA_DIR", work.path().join("data"));
    if let Some(c) = args.concurrency {
        cmd.env("SLUICE_CONCURRENCY", c.to_string());
    }
    if args.provider != "bm25" {
        let config = EmulatorConfig {
            latency: Duration::from_millis(args.latency_ms),
            ..Default::default()
        };
        let (addr, handle) = rt.block_on(sluice_loadtests::emulator::spawn(config))?;
        std::mem::forget(handle);
        cmd.env("SLUICE_EMBED_PROVIDER", &args.provider)
            .env("SLUICE_EMBED_BASE_URL", format!("http://{addr}"))
            .env("SLUICE_EMBED_API_KEY", "bench");
    }
    eprintln!(
        "running {} ingest over {} files ({:.1} MB)…",
        sluice.display(),
        corpus.files,
        corpus.bytes as f64 / 1e6
    );
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut stdout)?;
    let (status, peak_rss_kib) = wait_with_rusage(child.id() as i32)?;
    let elapsed = started.elapsed().as_secs_f64();
    let summary: serde_json::Value =
        serde_json::from_str(&stdout).with_context(|| format!("sluice output: {stdout}"))?;
    if status != 0 && status != 3 {
        bail!("sluice exited with status {status}");
    }
    let chunks = summary["chunks"].as_u64().unwrap_or(0);
    let figures = serde_json::json!({
        "documents": corpus.files,
        "indexed": summary["indexed"],
        "failed": summary["failed"],
        "chunks": chunks,
        "tokens": summary["tokens"],
        "corpus_mb": corpus.bytes as f64 / 1e6,
        "elapsed_secs": elapsed,
        "documents_per_sec": corpus.files as f64 / elapsed,
        "chunks_per_sec": chunks as f64 / elapsed,
        "mb_per_sec": corpus.bytes as f64 / 1e6 / elapsed,
        "peak_rss_mb": peak_rss_kib as f64 / 1024.0,
        "emulator_latency_ms": args.latency_ms,
        "provider": args.provider,
    });
    println!(
        "sluice ingest benchmark ({} provider, {} ms emulator latency)",
        args.provider, args.latency_ms
    );
    println!(
        "  documents   {} ({} indexed, {} failed), {:.1} MB",
        corpus.files,
        summary["indexed"],
        summary["failed"],
        corpus.bytes as f64 / 1e6
    );
    println!("  elapsed     {elapsed:.2} s");
    println!("  documents/s {:.1}", corpus.files as f64 / elapsed);
    println!(
        "  chunks/s    {:.1} ({chunks} chunks)",
        chunks as f64 / elapsed
    );
    println!("  MB/s        {:.2}", corpus.bytes as f64 / 1e6 / elapsed);
    println!(
        "  peak RSS    {:.1} MB (largest of sluice and its PDF children)",
        peak_rss_kib as f64 / 1024.0
    );
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&figures)?)?;
    }
    Ok(())
}

/// Waits for `pid` and returns its exit status and the peak RSS (KiB) over it and every
/// descendant it waited for (the PDF extraction children).
fn wait_with_rusage(pid: i32) -> anyhow::Result<(i32, i64)> {
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: plain syscall on our own child; `status` and `usage` are valid out-pointers.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if rc < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let mut children: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN covers grandchildren reaped by the child.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut children) };
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok((code, usage.ru_maxrss.max(children.ru_maxrss)))
}
