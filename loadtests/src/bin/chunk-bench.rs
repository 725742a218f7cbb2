//! `chunk-bench`: throughput and CPU time of the chunk + tokenise stage on real files, for the
//! chunker (bpe-openai cl100k, bounded pieces) and for the previous one (text-splitter sized by
//! tiktoken-rs, whole sections), on N threads sharing one chunker as the pipeline does. Also
//! times both on one growing unbreakable line (`--scaling`) and the hostile-input files
//! (`--hostile`, chunker only).
//!
//! ```sh
//! cargo build --release -p sluice-loadtests --bin chunk-bench
//! target/release/chunk-bench --threads 2 examples ~/.rustup/toolchains/stable-*/share/doc/rust/html/book README.md
//! target/release/chunk-bench --scaling
//! target/release/chunk-bench --hostile
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use sluice_shared::chunk::Chunker;
use sluice_shared::extract::{self, ExtractSettings};
use sluice_shared::model::ExtractedDoc;
use sluice_shared::usage::cpu_time_with_children;
use text_splitter::{ChunkConfig, ChunkSizer, MarkdownSplitter, TextSplitter};
use tiktoken_rs::CoreBPE;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// Files or folders (searched recursively for .md, .markdown, .txt, .html, .htm and files
    /// without an extension named README/LICENSE/COPYING).
    paths: Vec<PathBuf>,
    /// Threads sharing one chunker.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Passes over the corpus per measurement.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Skip the previous (tiktoken) chunker.
    #[arg(long)]
    new_only: bool,
    /// Time both chunkers on one line of base64 of growing length.
    #[arg(long)]
    scaling: bool,
    /// Time extract + chunk of each hostile-input file (loadtests::hostile).
    #[arg(long)]
    hostile: bool,
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    #[arg(long, default_value_t = 64)]
    overlap: usize,
}

/// The chunker before bpe-openai: text-splitter with tiktoken-rs as its sizer, one call per section.
struct OldChunker {
    bpe: Arc<CoreBPE>,
    text: TextSplitter<Tiktoken>,
    markdown: MarkdownSplitter<Tiktoken>,
}

struct Tiktoken(Arc<CoreBPE>);

impl ChunkSizer for Tiktoken {
    fn size(&self, chunk: &str) -> usize {
        self.0.encode_ordinary(chunk).len()
    }
}

impl OldChunker {
    fn new(max: usize, overlap: usize) -> Self {
        let bpe = Arc::new(tiktoken_rs::cl100k_base().expect("cl100k"));
        let config = || {
            ChunkConfig::new(max)
                .with_overlap(overlap)
                .expect("overlap < max")
                .with_sizer(Tiktoken(bpe.clone()))
        };
        OldChunker {
            text: TextSplitter::new(config()),
            markdown: MarkdownSplitter::new(config()),
            bpe,
        }
    }

    /// (chunks, tokens), computed as the old `Chunker::chunks` did.
    fn run(&self, doc: &ExtractedDoc) -> (u64, u64) {
        let (mut chunks, mut tokens) = (0, 0);
        for section in &doc.sections {
            let pieces: Box<dyn Iterator<Item = &str>> = if doc.format.is_markdown_like() {
                Box::new(self.markdown.chunks(&section.text))
            } else {
                Box::new(self.text.chunks(&section.text))
            };
            for chunk in pieces {
                chunks += 1;
                tokens += self.bpe.encode_ordinary(chunk).len() as u64;
                std::hint::black_box(chunk.to_string());
            }
        }
        (chunks, tokens)
    }
}

fn new_run(chunker: &Chunker, doc: &ExtractedDoc) -> (u64, u64) {
    let (mut chunks, mut tokens) = (0, 0);
    for chunk in chunker.chunks(doc) {
        match chunk {
            Ok(chunk) => {
                chunks += 1;
                tokens += u64::from(chunk.tokens);
            }
            Err(e) => eprintln!("  {e}"),
        }
    }
    (chunks, tokens)
}

fn peak_rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for entry in entries {
            collect(&entry, out);
        }
        return;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if matches!(ext, "md" | "markdown" | "txt" | "html" | "htm")
        || (ext.is_empty()
            && ["README", "LICENSE", "COPYING"]
                .iter()
                .any(|p| name.starts_with(p)))
        || path.starts_with("/usr/share/common-licenses")
    {
        out.push(path.to_path_buf());
    }
}

/// (label, wall, cpu, chunks, tokens) of `repeat` passes of `work` over `docs` on `threads`.
fn measure(
    docs: &[ExtractedDoc],
    threads: usize,
    repeat: usize,
    work: &(dyn Fn(&ExtractedDoc) -> (u64, u64) + Sync),
) -> (Duration, Duration, u64, u64) {
    let cpu = cpu_time_with_children();
    let wall = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let totals = std::sync::Mutex::new((0u64, 0u64));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut mine = (0, 0);
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= docs.len() * repeat {
                        break;
                    }
                    let (c, t) = work(&docs[i % docs.len()]);
                    mine.0 += c;
                    mine.1 += t;
                }
                let mut totals = totals.lock().unwrap();
                totals.0 += mine.0;
                totals.1 += mine.1;
            });
        }
    });
    let (chunks, tokens) = *totals.lock().unwrap();
    (
        wall.elapsed(),
        cpu_time_with_children() - cpu,
        chunks,
        tokens,
    )
}

fn report(label: &str, mb: f64, repeat: usize, r: (Duration, Duration, u64, u64)) {
    let (wall, cpu, chunks, tokens) = r;
    let mb = mb * repeat as f64;
    println!(
        "{label:<34} {:>8.2} s wall {:>8.2} s CPU  {:>8.2} MB/s per core  {:>7.3} CPU-s/1k chunks  {} chunks {} tokens",
        wall.as_secs_f64(),
        cpu.as_secs_f64(),
        mb / cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1000.0 / chunks.max(1) as f64,
        chunks / repeat as u64,
        tokens / repeat as u64,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // PDFs go to this binary run as the child, as the product's binaries do.
    sluice_shared::extract::pdf::run_child_if_requested();
    let args = Args::parse();
    let settings = ExtractSettings::with_defaults();
    let chunker = Chunker::new(args.max_tokens, args.overlap)?;
    if args.scaling {
        let old = OldChunker::new(args.max_tokens, args.overlap);
        println!("one line of base64, no whitespace:");
        for kb in [64, 128, 256, 512, 1024, 6 * 1024] {
            let line: String = (0..kb * 1024)
                .map(|i| {
                    b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3+/z9"[(i * 7 + i / 13) % 44] as char
                })
                .collect();
            let doc = sluice_shared::extract::text::plain(line);
            let t = Instant::now();
            let (chunks, _) = new_run(&chunker, &doc);
            let new = t.elapsed();
            let old_time = if kb <= 1024 && !args.new_only {
                let t = Instant::now();
                old.run(&doc);
                format!("{:>8.2} s", t.elapsed().as_secs_f64())
            } else {
                "(not run)".to_string()
            };
            println!(
                "  {kb:>5} KiB: chunker {:>7.3} s ({chunks} chunks)   tiktoken chunker {old_time}",
                new.as_secs_f64()
            );
        }
    }
    if args.hostile {
        let dir = tempfile::tempdir()?;
        let files = sluice_loadtests::hostile::write_hostile_files(dir.path())?;
        println!(
            "hostile inputs (extract + chunk, this process, peak RSS is the process's so far):"
        );
        for file in files {
            let bytes = Bytes::from(std::fs::read(&file.path)?);
            let size = bytes.len();
            let cpu = cpu_time_with_children();
            let t = Instant::now();
            let outcome =
                match extract::extract(&file.name, bytes, &settings, &CancellationToken::new())
                    .await
                {
                    Ok(doc) => {
                        let (chunks, tokens) =
                            tokio::task::block_in_place(|| new_run(&chunker, &doc));
                        format!("{chunks} chunks, {tokens} tokens")
                    }
                    Err(e) => format!("failed ({}): {e}", e.kind()),
                };
            println!(
                "  {:<24} {:>10} B {:>7.2} s wall {:>7.2} s CPU  peak RSS {:>5} MB  {outcome}",
                file.name,
                size,
                t.elapsed().as_secs_f64(),
                (cpu_time_with_children() - cpu).as_secs_f64(),
                peak_rss_mb()
            );
        }
    }
    if args.paths.is_empty() {
        return Ok(());
    }
    let mut files = Vec::new();
    for path in &args.paths {
        collect(path, &mut files);
    }
    let t = Instant::now();
    let cpu = cpu_time_with_children();
    let mut docs = Vec::new();
    let mut bytes_in = 0;
    for file in &files {
        let bytes = Bytes::from(std::fs::read(file)?);
        bytes_in += bytes.len();
        let name = file.display().to_string();
        match extract::extract(&name, bytes, &settings, &CancellationToken::new()).await {
            Ok(doc) => docs.push(doc),
            Err(e) => eprintln!("skipped: {e}"),
        }
    }
    let text_mb = docs
        .iter()
        .flat_map(|d| &d.sections)
        .map(|s| s.text.len())
        .sum::<usize>() as f64
        / 1e6;
    println!(
        "{} files, {:.1} MB read, {} documents, {text_mb:.2} MB of text; extraction {:.2} s wall {:.2} s CPU",
        files.len(),
        bytes_in as f64 / 1e6,
        docs.len(),
        t.elapsed().as_secs_f64(),
        (cpu_time_with_children() - cpu).as_secs_f64()
    );
    // Warm both tokenizers (vocabulary load) outside the measurement.
    let warm = sluice_shared::extract::text::plain("warm up".into());
    new_run(&chunker, &warm);
    let old = (!args.new_only).then(|| OldChunker::new(args.max_tokens, args.overlap));
    if let Some(old) = &old {
        old.run(&warm);
    }
    for threads in [1, args.threads] {
        let r = measure(&docs, threads, args.repeat, &|d| new_run(&chunker, d));
        report(
            &format!("chunker (bpe-openai), {threads} thr"),
            text_mb,
            args.repeat,
            r,
        );
        if let Some(old) = &old {
            let r = measure(&docs, threads, args.repeat, &|d| old.run(d));
            report(
                &format!("before (tiktoken-rs), {threads} thr"),
                text_mb,
                args.repeat,
                r,
            );
        }
        if args.threads == 1 {
            break;
        }
    }
    println!("peak RSS {} MB", peak_rss_mb());
    Ok(())
}
