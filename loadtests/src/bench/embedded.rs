//! `sluice-bench --mode ingest --batches N`: the embedded store at size. The corpus is split into
//! `N` folders indexed one after the other by separate `sluice ingest` runs into the same data
//! directory, so each run's CPU per 1,000 chunks shows whether writing into a larger collection
//! costs more; then searches over the whole collection are timed in-process, as `sluice search`
//! runs them (query embedding, BM25 query, hybrid search of the embedded store).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_shared::config::{Loader, Settings};
use sluice_shared::wiring;

use super::figures::percentile;
use crate::corpus::WORDS;

/// Search latency over the collection `sluice ingest` filled in `data_dir`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct SearchLatency {
    pub queries: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs `queries` searches of two to four corpus words each (top 10) with the settings `sluice`
/// ran with (`env`), after as many unmeasured ones to warm the caches.
pub async fn search_latency(
    data_dir: &Path,
    env: &HashMap<String, String>,
    queries: usize,
) -> anyhow::Result<SearchLatency> {
    let mut env = env.clone();
    env.insert("SLUICE_DATA_DIR".into(), data_dir.display().to_string());
    let settings = Settings::from_loader(&Loader::from_parts(env, None)?)?;
    let pipeline = wiring::build_pipeline(&settings, true)
        .await
        .context("opening the embedded store")?;
    let mut rng = StdRng::seed_from_u64(11);
    let mut latencies = Vec::with_capacity(queries);
    for i in 0..queries * 2 {
        let words: Vec<&str> = (0..rng.random_range(2..=4))
            .map(|_| WORDS[rng.random_range(0..WORDS.len())])
            .collect();
        let started = Instant::now();
        let hits = pipeline
            .search(&settings.collection, &words.join(" "), 10, None)
            .await?;
        if i >= queries {
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        anyhow::ensure!(!hits.is_empty(), "no hits for {words:?}");
    }
    Ok(SearchLatency {
        queries,
        p50_ms: percentile(&mut latencies, 50.0).unwrap_or(0.0),
        p99_ms: percentile(&mut latencies, 99.0).unwrap_or(0.0),
    })
}
