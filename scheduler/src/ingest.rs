//! `sluice ingest`: index every document under a location with bounded in-process concurrency,
//! then (with `--prune`) remove documents that disappeared from it.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;
use sluice_shared::config::{Settings, validate_collection_name};
use sluice_shared::memory::DocumentBudget;
use sluice_shared::pipeline::{DocumentJob, Outcome, Pipeline};
use sluice_shared::source::Source;
use sluice_shared::wiring;

use crate::progress::{Counters, Progress};

#[derive(clap::Args)]
pub struct IngestArgs {
    /// A folder, a file, or a URL (file://, s3://bucket/prefix, gs://, az://).
    pub location: String,
    /// Collection to write to (default: the SLUICE_COLLECTION setting).
    #[arg(long)]
    pub collection: Option<String>,
    /// Tenant recorded on every chunk.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Delete documents previously ingested from this location that no longer exist there.
    #[arg(long)]
    pub prune: bool,
    /// Re-index every document even if unchanged.
    #[arg(long)]
    pub force: bool,
    /// Documents processed at once (default: the SLUICE_CONCURRENCY setting).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Default)]
struct Summary {
    location: String,
    collection: String,
    documents: u64,
    indexed: u64,
    unchanged: u64,
    failed: u64,
    pruned: u64,
    chunks: u64,
    tokens: u64,
    bytes: u64,
    elapsed_secs: f64,
    failures: Vec<Failure>,
}

#[derive(Serialize)]
struct Failure {
    source: String,
    reason: String,
    error: String,
}

pub async fn run(settings: Settings, args: IngestArgs) -> anyhow::Result<ExitCode> {
    let collection = args
        .collection
        .clone()
        .unwrap_or_else(|| settings.collection.clone());
    validate_collection_name("--collection", &collection)?;
    let tenant = args.tenant.clone().or_else(|| settings.tenant.clone());
    let concurrency = args.concurrency.unwrap_or(settings.concurrency).max(1);
    let started = Instant::now();

    // The location given on the command line is this run's allow-list: listing never leaves it
    // (symlinks out of it are skipped) and each read re-checks the file is still inside it.
    let source = Source::open(&args.location)?.with_read_timeout(settings.read_timeout);
    let objects = source
        .list()
        .await
        .with_context(|| format!("listing {}", args.location))?;
    let pipeline = Arc::new(wiring::build_pipeline(&settings, true).await?);

    let counters = Arc::new(Counters::default());
    let progress = Progress::start("ingest", objects.len() as u64, counters.clone());
    let mut summary = Summary {
        location: source.root_uri().to_string(),
        collection: collection.clone(),
        documents: objects.len() as u64,
        bytes: objects.iter().map(|o| o.size).sum(),
        ..Default::default()
    };
    let seen: HashSet<String> = objects.iter().map(|o| o.uri.clone()).collect();
    let single_object = objects.len() == 1 && objects[0].uri == source.root_uri();

    // Each in-flight document holds its bytes and more: memory is bounded by the byte budget.
    let budget = DocumentBudget::new(settings.max_inflight_bytes);
    let mut results = futures::stream::iter(objects)
        .map(|object| {
            let pipeline = pipeline.clone();
            let source = source.clone();
            let budget = budget.clone();
            let mut job = DocumentJob::for_uri(&collection, &object.uri, tenant.clone());
            job.force = args.force;
            let max = settings.max_file_size;
            async move {
                // Over the size limit: refused without being read, so nothing to reserve.
                let _reservation = if object.size <= max {
                    Some(budget.reserve(object.size).await)
                } else {
                    None
                };
                let fetched = source.read(&object, max).await;
                let result = pipeline.index(&job, fetched).await;
                (object.uri, result)
            }
        })
        .buffer_unordered(concurrency);

    while let Some((uri, result)) = results.next().await {
        counters.done.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(Outcome::Indexed { chunks, tokens, .. }) => {
                summary.indexed += 1;
                summary.chunks += chunks;
                summary.tokens += tokens;
                counters.chunks.fetch_add(chunks, Ordering::Relaxed);
            }
            Ok(Outcome::Unchanged { .. }) => summary.unchanged += 1,
            Err(e) => {
                summary.failed += 1;
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(source = %uri, error = %e, "document failed");
                summary.failures.push(Failure {
                    source: uri,
                    reason: e.kind().to_string(),
                    error: e.to_string(),
                });
            }
        }
        progress.update();
    }
    drop(results);
    progress.finish();

    if args.prune {
        summary.pruned = prune(&pipeline, &collection, &source, single_object, &seen).await?;
    }
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    summary.failures.sort_by(|a, b| a.source.cmp(&b.source));
    print_summary(&summary, args.json)?;
    Ok(if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_SOME_FAILED)
    })
}

/// Delete documents recorded under this location that the listing no longer shows. Only runs after
/// a successful listing, so an unreachable bucket never prunes everything.
async fn prune(
    pipeline: &Pipeline,
    collection: &str,
    source: &Source,
    single_object: bool,
    seen: &HashSet<String>,
) -> anyhow::Result<u64> {
    let root = source.root_uri();
    // A folder's prefix ends with '/' so `docs` does not prune `docs2/...`.
    let prefix = if single_object || root.ends_with('/') {
        root.to_string()
    } else {
        format!("{root}/")
    };
    let known = pipeline
        .metadata
        .list_by_source_prefix(collection, &prefix)
        .await?;
    let mut pruned = 0;
    for doc in known.into_iter().filter(|d| !seen.contains(&d.source)) {
        pipeline
            .delete(collection, &doc.doc_id)
            .await
            .with_context(|| format!("pruning {}", doc.source))?;
        pruned += 1;
    }
    Ok(pruned)
}

fn print_summary(s: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    let rate = s.documents as f64 / s.elapsed_secs.max(1e-3);
    println!(
        "ingested {} documents from {} into collection {:?} in {:.1}s ({:.1} docs/s)",
        s.documents, s.location, s.collection, s.elapsed_secs, rate
    );
    println!(
        "  indexed {}, unchanged {}, failed {}{}",
        s.indexed,
        s.unchanged,
        s.failed,
        if s.pruned > 0 {
            format!(", pruned {}", s.pruned)
        } else {
            String::new()
        }
    );
    println!(
        "  {} chunks, {} tokens, {:.1} MB read",
        s.chunks,
        s.tokens,
        s.bytes as f64 / 1e6
    );
    if !s.failures.is_empty() {
        println!("failures:");
        for f in &s.failures {
            println!("  [{}] {}", f.reason, f.error);
        }
    }
    Ok(())
}
