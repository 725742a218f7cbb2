//! The arithmetic of `sluice-bench`: per-second series from the emulator's timeline, the
//! steady-state window, percentiles, and the figures it prints and writes as JSON. Pure
//! functions, so the numbers in the README can be checked by the unit tests below.

use std::ops::Range;

use serde::Serialize;

use crate::emulator::{StatsSnapshot, TimelineEntry};

/// One second of a run, from the emulator's timeline (missing seconds are zeros).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Second {
    /// Seconds since the run started (the first job was published / `sluice ingest` started).
    pub second: u64,
    /// Tokens the rate window admitted in this second.
    pub tokens: u64,
    /// Requests admitted in this second.
    pub requests: u64,
    /// Requests answered 429 in this second.
    pub rate_limited: u64,
}

/// The run's seconds `first..=last` of the emulator's clock, re-based to start at 0, gaps filled.
pub fn run_series(timeline: &[TimelineEntry], first: u64, last: u64) -> Vec<Second> {
    let mut series: Vec<Second> = (first..=last)
        .map(|s| Second {
            second: s - first,
            ..Second::default()
        })
        .collect();
    for entry in timeline {
        if (first..=last).contains(&entry.second) {
            let slot = &mut series[(entry.second - first) as usize];
            slot.tokens += entry.admitted_tokens;
            slot.requests += entry.admitted;
            slot.rate_limited += entry.rate_limited;
        }
    }
    series
}

/// Indexes of the steady state among `seconds` seconds: without the first and the last 10%
/// (ramp-up while the workers fill their pipelines, tail while the last documents drain).
pub fn steady_window(seconds: usize) -> Range<usize> {
    let cut = seconds / 10;
    cut..seconds - cut
}

/// Mean tokens per second over `window` of `series`; `None` for an empty window.
pub fn mean_tokens_per_sec(series: &[Second], window: Range<usize>) -> Option<f64> {
    let slice = series.get(window)?;
    if slice.is_empty() {
        return None;
    }
    Some(slice.iter().map(|s| s.tokens as f64).sum::<f64>() / slice.len() as f64)
}

/// The most tokens admitted in any `window_secs` consecutive seconds (all of them when the run is
/// shorter): what the emulator's sliding window compares with the limit.
pub fn peak_window_tokens(series: &[Second], window_secs: usize) -> u64 {
    let window = window_secs.clamp(1, series.len().max(1));
    series
        .windows(window)
        .map(|w| w.iter().map(|s| s.tokens).sum())
        .max()
        .unwrap_or_else(|| series.iter().map(|s| s.tokens).sum())
}

/// The `p`-th percentile (0–100) of `values` by the nearest-rank method; `None` when empty.
/// Sorts `values`.
pub fn percentile(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

/// Cost per 1,000 documents in each fifth of a run, from samples of (documents settled, cost so
/// far) in time order: the fifth boundaries are found by documents, not by time, so a slow start
/// does not skew the comparison. Fifths with no samples inside them are left out.
pub fn cost_per_1k_by_fifth(samples: &[(u64, f64)], total: u64) -> Vec<f64> {
    let at = |docs: u64| samples.iter().find(|(done, _)| *done >= docs).copied();
    let mut out = Vec::new();
    let mut start = samples.first().copied().unwrap_or((0, 0.0));
    for fifth in 1..=5u64 {
        let Some(end) = at(total * fifth / 5) else {
            break;
        };
        if end.0 > start.0 {
            out.push((end.1 - start.1) * 1000.0 / (end.0 - start.0) as f64);
            start = end;
        }
    }
    out
}

/// `1.234 / 2.345 / …`: a series of figures on one line.
fn slashed(values: &[f64]) -> String {
    let shown: Vec<String> = values.iter().map(|v| format!("{v:.3}")).collect();
    shown.join(" / ")
}

/// Everything one benchmark run measured; the JSON written by `--json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// `ingest` or `fleet`.
    pub mode: String,
    /// Worker processes (1 for `ingest`).
    pub workers: usize,
    pub provider: String,
    pub emulator_latency_ms: u64,
    /// The emulator's tokens-per-minute limit, if any.
    pub tpm_limit: Option<u64>,
    /// The emulator's requests-per-minute limit, if any.
    pub rpm_limit: Option<u64>,
    pub documents: usize,
    pub indexed: u64,
    pub failed: u64,
    pub chunks: u64,
    /// Tokens the pipeline recorded for the indexed documents.
    pub tokens: u64,
    pub corpus_mb: f64,
    /// From the first publish (or the start of `sluice ingest`) to the last document settled.
    pub elapsed_secs: f64,
    pub documents_per_sec: f64,
    pub chunks_per_sec: f64,
    pub mb_per_sec: f64,
    /// Tokens the emulator served over the run, per second.
    pub tokens_per_sec: f64,
    /// Mean tokens/s admitted over the steady state.
    pub steady_tokens_per_sec: Option<f64>,
    /// The steady state's seconds (first and last 10% of the run left out).
    pub steady_secs: usize,
    /// `steady_tokens_per_sec` as a percentage of the TPM limit.
    pub tpm_percent_steady: Option<f64>,
    /// Most tokens admitted in any 60 s of the run, as a percentage of the TPM limit.
    pub peak_60s_tpm_percent: Option<f64>,
    /// Embedding requests the emulator received (every outcome).
    pub requests: u64,
    /// Requests answered 429.
    pub rate_limited: u64,
    /// `rate_limited / requests`, in percent.
    pub rate_limited_percent: f64,
    /// Enqueue → ack (fleet) in seconds, over the indexed documents.
    pub enqueue_to_ack_p50_secs: Option<f64>,
    pub enqueue_to_ack_p99_secs: Option<f64>,
    /// Peak resident set (VmHWM) of the worker processes themselves, summed and largest, MB.
    pub worker_peak_rss_sum_mb: f64,
    pub worker_peak_rss_max_mb: f64,
    /// Largest peak RSS of a worker or any child it waited for (PDF extraction), MB.
    pub peak_rss_with_children_mb: f64,
    /// User + system CPU of the workers and their children.
    pub cpu_secs: f64,
    pub cpu_secs_per_1k_chunks: Option<f64>,
    /// CPU seconds of the PostgreSQL server over the run (fleet mode), the bench's own
    /// connection excluded.
    pub postgres_cpu_secs: Option<f64>,
    /// PostgreSQL CPU seconds per 1,000 documents settled, in each fifth of the run (by
    /// documents): flat when the metadata store's cost does not grow with the table.
    pub postgres_cpu_per_1k_docs_by_fifth: Vec<f64>,
    /// Ingest in batches: each `sluice ingest` run's CPU seconds per 1,000 chunks, in order.
    pub batch_cpu_per_1k_chunks: Vec<f64>,
    /// Ingest: search latency over the collection afterwards.
    pub search: Option<crate::bench::embedded::SearchLatency>,
    /// Tokens/s per second of the run (admitted by the emulator's rate window).
    pub series: Vec<Second>,
}

impl Figures {
    /// Fills the emulator-derived figures from its stats, for a run that covered the emulator's
    /// seconds `first..=last`.
    pub fn apply_emulator(&mut self, stats: &StatsSnapshot, first: u64, last: u64) {
        self.series = run_series(&stats.timeline, first, last);
        self.requests = stats.requests_total;
        self.rate_limited = stats.rate_limited;
        self.rate_limited_percent = if stats.requests_total == 0 {
            0.0
        } else {
            100.0 * stats.rate_limited as f64 / stats.requests_total as f64
        };
        if self.elapsed_secs > 0.0 {
            self.tokens_per_sec = stats.tokens_served as f64 / self.elapsed_secs;
        }
        let window = steady_window(self.series.len());
        self.steady_secs = window.len();
        self.steady_tokens_per_sec = mean_tokens_per_sec(&self.series, window);
        if let Some(tpm) = self.tpm_limit.filter(|&t| t > 0) {
            self.tpm_percent_steady = self
                .steady_tokens_per_sec
                .map(|t| 100.0 * t * 60.0 / tpm as f64);
            self.peak_60s_tpm_percent =
                Some(100.0 * peak_window_tokens(&self.series, 60) as f64 / tpm as f64);
        }
    }

    /// Fills the rates from the counts and `elapsed_secs`.
    pub fn compute_rates(&mut self) {
        let secs = self.elapsed_secs.max(1e-9);
        self.documents_per_sec = self.documents as f64 / secs;
        self.chunks_per_sec = self.chunks as f64 / secs;
        self.mb_per_sec = self.corpus_mb / secs;
        self.cpu_secs_per_1k_chunks =
            (self.chunks > 0).then(|| self.cpu_secs * 1000.0 / self.chunks as f64);
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let opt = |v: Option<f64>, unit: &str| match v {
            Some(v) => format!("{v:.1}{unit}"),
            None => "n/a".to_string(),
        };
        let limit = |v: Option<u64>| v.map_or("none".to_string(), |v| v.to_string());
        let mut out = format!(
            "sluice-bench {} ({} worker{}, {} provider, {} ms latency, TPM limit {}, RPM limit {})\n",
            self.mode,
            self.workers,
            if self.workers == 1 { "" } else { "s" },
            self.provider,
            self.emulator_latency_ms,
            limit(self.tpm_limit),
            limit(self.rpm_limit),
        );
        let mut lines = vec![
            (
                "documents",
                format!(
                    "{} ({} indexed, {} failed), {:.1} MB",
                    self.documents, self.indexed, self.failed, self.corpus_mb
                ),
            ),
            ("elapsed", format!("{:.2} s", self.elapsed_secs)),
            ("documents/s", format!("{:.1}", self.documents_per_sec)),
            (
                "chunks/s",
                format!("{:.1} ({} chunks)", self.chunks_per_sec, self.chunks),
            ),
            (
                "tokens/s",
                format!(
                    "{:.0} served over the run; {} admitted in the steady state ({} s)",
                    self.tokens_per_sec,
                    opt(self.steady_tokens_per_sec, ""),
                    self.steady_secs
                ),
            ),
            (
                "TPM limit",
                format!(
                    "{} of it in the steady state; busiest 60 s: {}",
                    opt(self.tpm_percent_steady, "%"),
                    opt(self.peak_60s_tpm_percent, "%")
                ),
            ),
            (
                "429s",
                format!(
                    "{} of {} requests ({:.2}%)",
                    self.rate_limited, self.requests, self.rate_limited_percent
                ),
            ),
            (
                "enqueue→ack",
                format!(
                    "p50 {} p99 {}",
                    opt(self.enqueue_to_ack_p50_secs, " s"),
                    opt(self.enqueue_to_ack_p99_secs, " s")
                ),
            ),
            (
                "peak RSS",
                format!(
                    "workers {:.1} MB max, {:.1} MB summed; {:.1} MB with PDF children",
                    self.worker_peak_rss_max_mb,
                    self.worker_peak_rss_sum_mb,
                    self.peak_rss_with_children_mb
                ),
            ),
            (
                "CPU",
                format!(
                    "{:.2} s, {} per 1,000 chunks",
                    self.cpu_secs,
                    self.cpu_secs_per_1k_chunks
                        .map_or("n/a".into(), |v| format!("{v:.3} s"))
                ),
            ),
        ];
        if !self.batch_cpu_per_1k_chunks.is_empty() {
            lines.push((
                "by batch",
                format!(
                    "CPU-s per 1,000 chunks: {}",
                    slashed(&self.batch_cpu_per_1k_chunks)
                ),
            ));
        }
        if let Some(search) = &self.search {
            lines.push((
                "search",
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms over {} queries of {} chunks",
                    search.p50_ms, search.p99_ms, search.queries, self.chunks
                ),
            ));
        }
        if let Some(pg) = self.postgres_cpu_secs {
            lines.push((
                "PostgreSQL",
                format!(
                    "{pg:.2} CPU-s; per 1,000 documents by fifth of the run: {} s",
                    slashed(&self.postgres_cpu_per_1k_docs_by_fifth)
                ),
            ));
        }
        for (name, value) in lines {
            out.push_str(&format!("  {name:<13}{value}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(second: u64, admitted_tokens: u64) -> TimelineEntry {
        TimelineEntry {
            second,
            admitted: 1,
            admitted_tokens,
            ..TimelineEntry::default()
        }
    }

    #[test]
    fn series_is_rebased_and_gaps_are_zero() {
        let timeline = [entry(3, 10), entry(5, 30), entry(9, 99)];
        let series = run_series(&timeline, 3, 6);
        let tokens: Vec<(u64, u64)> = series.iter().map(|s| (s.second, s.tokens)).collect();
        assert_eq!(tokens, vec![(0, 10), (1, 0), (2, 30), (3, 0)]);
    }

    #[test]
    fn steady_window_drops_a_tenth_at_each_end() {
        assert_eq!(steady_window(100), 10..90);
        assert_eq!(steady_window(25), 2..23);
        // Too short to trim: the whole run.
        assert_eq!(steady_window(9), 0..9);
        assert_eq!(steady_window(0), 0..0);
    }

    #[test]
    fn mean_over_the_steady_state_ignores_ramp_and_tail() {
        let mut series: Vec<Second> = (0..10)
            .map(|s| Second {
                second: s,
                tokens: 100,
                ..Second::default()
            })
            .collect();
        series[0].tokens = 0;
        series[9].tokens = 5;
        assert_eq!(mean_tokens_per_sec(&series, steady_window(10)), Some(100.0));
        assert_eq!(mean_tokens_per_sec(&series, 3..3), None);
    }

    #[test]
    fn peak_window_slides_and_covers_short_runs() {
        let series: Vec<Second> = [1u64, 5, 5, 1]
            .iter()
            .enumerate()
            .map(|(i, &t)| Second {
                second: i as u64,
                tokens: t,
                ..Second::default()
            })
            .collect();
        assert_eq!(peak_window_tokens(&series, 2), 10);
        assert_eq!(peak_window_tokens(&series, 60), 12);
        assert_eq!(peak_window_tokens(&[], 60), 0);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut values, 50.0), Some(50.0));
        assert_eq!(percentile(&mut values, 99.0), Some(99.0));
        assert_eq!(percentile(&mut values, 100.0), Some(100.0));
        assert_eq!(percentile(&mut values, 0.0), Some(1.0));
        assert_eq!(percentile(&mut [7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&mut [], 50.0), None);
    }

    #[test]
    fn cost_per_fifth_is_split_by_documents() {
        // 100 documents; the cost doubles for the last 40 of them.
        let samples: Vec<(u64, f64)> = (0..=100u64)
            .map(|d| {
                (
                    d,
                    if d <= 60 {
                        d as f64
                    } else {
                        60.0 + 2.0 * (d - 60) as f64
                    },
                )
            })
            .collect();
        assert_eq!(
            cost_per_1k_by_fifth(&samples, 100),
            vec![1000.0, 1000.0, 1000.0, 2000.0, 2000.0]
        );
        // Coarse samples: a fifth without a sample of its own is merged into the next.
        let coarse = [(0, 0.0), (30, 3.0), (100, 10.0)];
        assert_eq!(cost_per_1k_by_fifth(&coarse, 100), vec![100.0, 100.0]);
        assert!(cost_per_1k_by_fifth(&[], 100).is_empty());
    }

    #[test]
    fn tpm_percent_comes_from_the_steady_state() {
        let timeline: Vec<TimelineEntry> = (0..20).map(|s| entry(s, 1000)).collect();
        let mut figures = Figures {
            tpm_limit: Some(120_000),
            elapsed_secs: 20.0,
            ..Figures::default()
        };
        let stats = StatsSnapshot {
            requests_total: 200,
            rate_limited: 2,
            tokens_served: 20_000,
            timeline,
            ..StatsSnapshot::default()
        };
        figures.apply_emulator(&stats, 0, 19);
        assert_eq!(figures.steady_secs, 16);
        // 1,000 tokens/s = 60,000 per minute = half the limit.
        assert_eq!(figures.tpm_percent_steady, Some(50.0));
        assert_eq!(
            figures.peak_60s_tpm_percent,
            Some(100.0 * 20_000.0 / 120_000.0)
        );
        assert_eq!(figures.rate_limited_percent, 1.0);
        assert_eq!(figures.tokens_per_sec, 1000.0);
    }
}
