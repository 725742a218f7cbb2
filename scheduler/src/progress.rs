//! Progress reporting for long commands (ingest, verify, reindex): an indicatif bar (count, rate,
//! ETA, and why the command waits, if it does) on a terminal, and a plain line every few seconds
//! otherwise (CI logs, `kubectl logs`), so progress is visible either way.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// What the counters count, as shown: `{done}/{total} {item}, {rate} {item}/s, ETA {eta},
/// {chunks} {chunks label}, {failed} {failed label}`.
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

/// Pause between two plain progress lines when stderr is not a terminal.
const LINE_INTERVAL: Duration = Duration::from_secs(5);

/// `{per_sec:1}`: indicatif reads the width of `per_sec` as its number of decimals.
const BAR_TEMPLATE: &str =
    "{spinner} {prefix} [{bar:30}] {pos}/{len} {item}  {per_sec:1}  ETA {eta}  {msg}  {elapsed}";

/// What the bar and the plain lines read.
struct State {
    label: &'static str,
    units: Units,
    counters: Arc<Counters>,
    /// Grows when more is done than was counted at the start (documents added meanwhile).
    total: AtomicU64,
    started: Instant,
    /// Why the command is not progressing, e.g. `waiting: queue depth 8 > 5`.
    status: Mutex<Option<String>>,
}

/// The progress of one long command; [`Progress::finish`] it at the end.
pub struct Progress {
    bar: Option<ProgressBar>,
    state: Arc<State>,
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
        let state = Arc::new(State {
            label,
            units,
            counters,
            total: AtomicU64::new(total),
            started: Instant::now(),
            status: Mutex::new(None),
        });
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(bar_style(units));
            bar.set_prefix(label);
            bar.enable_steady_tick(Duration::from_millis(200));
            return Progress {
                bar: Some(bar),
                state,
                ticker: None,
            };
        }
        let shown = state.clone();
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(LINE_INTERVAL);
            interval.tick().await;
            loop {
                interval.tick().await;
                eprintln!("{}: {}", shown.label, shown.line());
            }
        });
        Progress {
            bar: None,
            state,
            ticker: Some(ticker),
        }
    }

    /// Call after the counters moved.
    pub fn update(&self) {
        let done = self.state.counters.done.load(Ordering::Relaxed);
        let grown = self.state.total.fetch_max(done, Ordering::Relaxed) < done;
        if let Some(bar) = &self.bar {
            if grown {
                bar.set_length(done);
            }
            bar.set_position(done);
            bar.set_message(self.state.message());
        }
    }

    /// Shows why the command is held back (`Some`), or that it no longer is (`None`). Without a
    /// terminal, a line says so at once when the hold starts.
    pub fn set_status(&self, status: Option<String>) {
        let started = {
            let mut current = self.state.status.lock().expect("status lock");
            let started = status.is_some() && current.is_none();
            *current = status;
            started
        };
        match &self.bar {
            Some(bar) => bar.set_message(self.state.message()),
            None if started => eprintln!("{}: {}", self.state.label, self.state.line()),
            None => {}
        }
    }

    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if let Some(t) = &self.ticker {
            t.abort();
            eprintln!("done: {}", self.state.line());
        }
    }
}

fn bar_style(units: Units) -> ProgressStyle {
    ProgressStyle::with_template(&BAR_TEMPLATE.replace("{item}", units.item))
        .expect("valid template")
        .progress_chars("=> ")
}

impl State {
    /// The bar's message: the other counters and the status.
    fn message(&self) -> String {
        let c = &self.counters;
        let mut parts = Vec::new();
        if let Some(label) = self.units.chunks {
            parts.push(format!("{} {label}", c.chunks.load(Ordering::Relaxed)));
        }
        parts.push(format!(
            "{} {}",
            c.failed.load(Ordering::Relaxed),
            self.units.failed
        ));
        parts.extend(self.status.lock().expect("status lock").clone());
        parts.join(", ")
    }

    /// A plain progress line: counts, rate, ETA, the other counters and the status.
    fn line(&self) -> String {
        let done = self.counters.done.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let item = self.units.item;
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        let eta = match total.saturating_sub(done) {
            0 => "0s".to_string(),
            _ if rate <= 0.0 => "unknown".to_string(),
            left => format!("{:.0}s", left as f64 / rate),
        };
        format!(
            "{done}/{total} {item}, {rate:.1} {item}/s, ETA {eta}, {}",
            self.message()
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use indicatif::{ProgressDrawTarget, TermLike};

    use super::*;

    /// A terminal that keeps what is drawn on it.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<String>>);

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            200
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(s)
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_bar_shows_counts_rate_eta_and_why_it_waits() {
        let screen = Screen::default();
        let bar = ProgressBar::with_draw_target(
            Some(10),
            ProgressDrawTarget::term_like(Box::new(screen.clone())),
        );
        bar.set_style(bar_style(DOCUMENTS));
        bar.set_position(4);
        bar.set_message("waiting: queue depth 8 > 5");
        bar.force_draw();
        let shown = screen.0.lock().unwrap().clone();
        for part in ["4/10 docs", "/s", "ETA", "waiting: queue depth 8 > 5"] {
            assert!(shown.contains(part), "{part:?} missing from {shown:?}");
        }
    }
}
