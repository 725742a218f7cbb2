//! Progress reporting for long commands: an indicatif bar on a terminal, and a plain line every few
//! seconds otherwise (CI logs, `kubectl logs`), so progress is visible either way.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

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
    total: u64,
    started: Instant,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start(label: &'static str, total: u64, counters: Arc<Counters>) -> Self {
        let started = Instant::now();
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix} [{bar:30}] {pos}/{len} docs  {msg}  {elapsed}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label);
            bar.enable_steady_tick(Duration::from_millis(200));
            return Progress {
                bar: Some(bar),
                counters,
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
                eprintln!("{label}: {}", line(&c, total, started));
            }
        });
        Progress {
            bar: None,
            counters,
            total,
            started,
            ticker: Some(ticker),
        }
    }

    /// Call after each document.
    pub fn update(&self) {
        if let Some(bar) = &self.bar {
            bar.set_position(self.counters.done.load(Ordering::Relaxed));
            bar.set_message(rates(&self.counters, self.started));
        }
    }

    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if let Some(t) = &self.ticker {
            t.abort();
            eprintln!("done: {}", line(&self.counters, self.total, self.started));
        }
    }
}

fn rates(c: &Counters, started: Instant) -> String {
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let done = c.done.load(Ordering::Relaxed);
    format!(
        "{:.1} docs/s, {} chunks, {} failed",
        done as f64 / secs,
        c.chunks.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed)
    )
}

fn line(c: &Counters, total: u64, started: Instant) -> String {
    format!(
        "{}/{} docs, {}",
        c.done.load(Ordering::Relaxed),
        total,
        rates(c, started)
    )
}
