//! Progress of `sluice reindex`: an indicatif bar (published/total, rate, ETA, and why it is
//! waiting) on a terminal; otherwise a plain line every few seconds and whenever the run starts
//! waiting for the queue, so CI logs and `kubectl logs` show it too.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Pause between two plain progress lines when stderr is not a terminal.
const LINE_INTERVAL: Duration = Duration::from_secs(5);

/// `{per_sec:1}`: indicatif reads the width of `per_sec` as its number of decimals.
const BAR_TEMPLATE: &str =
    "{spinner} reindex [{bar:30}] {pos}/{len} docs  {per_sec:1}  ETA {eta}  {msg}";

pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
    /// The queue depth and the limit it must fall to, while held back.
    waiting: Option<(u32, u32)>,
}

impl Progress {
    /// `total`: documents this run expects to publish (those after the cursor).
    pub fn start(total: u64) -> Self {
        let now = Instant::now();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(BAR_TEMPLATE)
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            total,
            done: 0,
            started: now,
            last_line: now,
            waiting: None,
        }
    }

    /// `n` more documents published (confirmed).
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            // Documents added since the count was taken can push past the total.
            if self.done > self.total {
                self.total = self.done;
                bar.set_length(self.total);
            }
            bar.set_position(self.done);
        } else if self.last_line.elapsed() >= LINE_INTERVAL {
            self.line();
        }
    }

    /// Held back by a queue `depth` above `limit` (`Some`), or free to publish (`None`).
    pub fn waiting(&mut self, state: Option<(u32, u32)>) {
        let started_waiting = state.is_some() && self.waiting.is_none();
        self.waiting = state;
        if let Some(bar) = &self.bar {
            bar.set_message(self.waiting_text());
        } else if started_waiting || (state.is_some() && self.last_line.elapsed() >= LINE_INTERVAL)
        {
            self.line();
        }
    }

    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn waiting_text(&self) -> String {
        match self.waiting {
            Some((depth, limit)) => format!("waiting: queue depth {depth} > {limit}"),
            None => String::new(),
        }
    }

    fn line(&mut self) {
        self.last_line = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.done as f64 / secs;
        let eta = match self.total.saturating_sub(self.done) {
            0 => "0s".to_string(),
            _ if rate <= 0.0 => "unknown".to_string(),
            left => format!("{:.0}s", left as f64 / rate),
        };
        let waiting = match self.waiting {
            Some(_) => format!(", {}", self.waiting_text()),
            None => String::new(),
        };
        eprintln!(
            "reindex: {}/{} docs published, {rate:.1} docs/s, ETA {eta}{waiting}",
            self.done, self.total
        );
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
        bar.set_style(ProgressStyle::with_template(BAR_TEMPLATE).expect("template parses"));
        bar.set_position(4);
        bar.set_message("waiting: queue depth 8 > 5");
        bar.force_draw();
        let shown = screen.0.lock().unwrap().clone();
        for part in ["4/10 docs", "/s", "ETA", "waiting: queue depth 8 > 5"] {
            assert!(shown.contains(part), "{part:?} missing from {shown:?}");
        }
    }
}
