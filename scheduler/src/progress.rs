//! Progress reporting for long commands: an indicatif bar on a terminal, and a plain line every few
//! seconds otherwise (CI logs, `kubectl logs`), so progress is visible either way.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// What the counters count, as shown: `{done}/{total} {item}, {rate} {item}/s, {chunks} {chunks
/// label}, {failed} {failed label}`.
#[derive(Clone, Copy)]
pub struct Units {
    pub item: &'static str,
    /// `None`: the chunks counter is not shown.
    pub chunks: Option<&'static str>,
    pub failed: &'static str,
}

/// Documents processed, chunks written, documents failed (ingest).
pub const DOCUMENTS: Units = Units {
    item: "docs",
    chunks: Some("chunks"),
    failed: "failed",
};

/// Counters shown while ingesting.
#[derive(Default)]
pub struct Counters {
    pub done: AtomicU64,
    pub chunks: AtomicU64,
    pub failed: AtomicU64,
}

pub struct Progress {
    bar: Option<ProgressBar>,
    counters: Arc<Counters>,
    units: Units,
    total: u64,
    started: Instant,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start(label: &'static str, total: u64, counters: Arc<Counters>) -> Self {
        Self::start_with(label, DOCUMENTS, total, counters)
    }

    pub fn start_with(
        label: &'static str,
        units: Units,
        total: u64,
        counters: Arc<Counters>,
    ) -> Self {
        let started = Instant::now();
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{{spinner}} {{prefix}} [{{bar:30}}] {{pos}}/{{len}} {}  {{msg}}  {{elapsed}}",
                    units.item
                ))
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label);
            bar.enable_steady_tick(Duration::from_millis(200));
            return Progress {
                bar: Some(bar),
                counters,
                units,
                total,
                started,
                ticker: None,
            };
        }
        let c = counters.clone();
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(5));
            interval.tick().await;
            loop {
                interval.tick().await;
                eprintln!("{label}: {}", line(&c, units, total, started));
            }
        });
        Progress {
            bar: None,
            counters,
            units,
            total,
            started,
            ticker: Some(ticker),
        }
    }

    /// Call after each document.
    pub fn update(&self) {
        if let Some(bar) = &self.bar {
            bar.set_position(self.counters.done.load(Ordering::Relaxed));
            bar.set_message(rates(&self.counters, self.units, self.started));
        }
    }

    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if let Some(t) = &self.ticker {
            t.abort();
            eprintln!(
                "done: {}",
                line(&self.counters, self.units, self.total, self.started)
            );
        }
    }
}

fn rates(c: &Counters, units: Units, started: Instant) -> String {
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let done = c.done.load(Ordering::Relaxed);
    let chunks = units
        .chunks
        .map(|label| format!(", {} {label}", c.chunks.load(Ordering::Relaxed)))
        .unwrap_or_default();
    format!(
        "{:.1} {}/s{chunks}, {} {}",
        done as f64 / secs,
        units.item,
        c.failed.load(Ordering::Relaxed),
        units.failed
    )
}

fn line(c: &Counters, units: Units, total: u64, started: Instant) -> String {
    format!(
        "{}/{} {}, {}",
        c.done.load(Ordering::Relaxed),
        total,
        units.item,
        rates(c, units, started)
    )
}
