//! One configured rate limit (tokens or requests per window) as a token bucket for smooth pacing
//! plus a log of the last window's admissions as the hard cap.
//!
//! Why both: a bucket of capacity `B` refilled at `limit / window` admits up to `B + limit` in any
//! one window (a full bucket spent at once, then a window of refill), so on its own it would break
//! a provider's rolling window unless its rate were cut by `B / limit`. Providers (and the
//! emulator's `RateWindow`) count a sliding window of admitted requests, so we keep the same log
//! and refuse what would not fit in it: the bucket spreads requests over the window, the log makes
//! "never more than `limit` in any window" hold exactly, and neither costs steady-state throughput.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The bucket holds this fraction of one window's allowance (10 s of a one-minute limit): enough
/// that a start or a pause is followed by a quick ramp instead of a trickle, small enough that the
/// requests of a window are spread over it rather than fired in its first second.
const BURST_DIVISOR: f64 = 6.0;

/// The log keeps admissions for the window plus this fraction of it (the fleet budget stretches
/// its refill by the same). Our clock starts when we admit a request, the provider's when it
/// arrives; a request that spent longer in transit than the one admitted a window later would
/// still be in the provider's window after leaving ours. 1/120 of a minute (0.5 s) is more than
/// a request spends between admission and arrival, even one that opens a TLS connection, and
/// costs 0.8% of the limit, only while the log rather than the bucket holds requests back. (It
/// was 1/40: 2.5% of the limit, most of the gap between a worker at its limit and the limit.)
pub(crate) const WINDOW_SLACK_DIVISOR: u32 = 120;

/// A rate limit of `limit` units (tokens or requests) per `window`.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: u64,
    window: Duration,
    capacity: f64,
    /// Units per second.
    rate: f64,
    /// May go negative: a request larger than the whole bucket is admitted when the bucket is
    /// full and leaves a debt, else it could never be sent.
    level: f64,
    refilled_at: Instant,
    /// `(admitted at, admission id, units)`, oldest first.
    log: VecDeque<(Instant, u64, u64)>,
    in_log: u64,
}

impl Budget {
    pub(crate) fn new(limit: u64, window: Duration, now: Instant) -> Self {
        let limit = limit.max(1);
        let window = window.max(Duration::from_millis(1));
        let capacity = (limit as f64 / BURST_DIVISOR).max(1.0);
        Budget {
            limit,
            window,
            capacity,
            rate: limit as f64 / window.as_secs_f64(),
            level: capacity,
            refilled_at: now,
            log: VecDeque::new(),
            in_log: 0,
        }
    }

    fn span(&self) -> Duration {
        self.window + self.window / WINDOW_SLACK_DIVISOR
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.level = (self.level + elapsed * self.rate).min(self.capacity);
        self.refilled_at = self.refilled_at.max(now);
        let span = self.span();
        while let Some(&(at, _, units)) = self.log.front() {
            if now.saturating_duration_since(at) < span {
                break;
            }
            self.log.pop_front();
            self.in_log -= units;
        }
    }

    /// `None` when `units` can be admitted at `now`, else the earliest time worth trying again.
    pub(crate) fn ready_at(&mut self, now: Instant, units: u64) -> Option<Instant> {
        self.refill(now);
        let mut ready = now;
        let need = (units as f64).min(self.capacity);
        if self.level < need {
            let wait = (need - self.level) / self.rate;
            // Rounded up to a whole millisecond so the retry does not land a hair too early.
            let wait = Duration::from_millis((wait * 1000.0).ceil() as u64);
            ready = ready.max(now + wait);
        }
        if self.in_log + units > self.limit && !self.log.is_empty() {
            // A request over the whole limit goes alone, once the log is empty; the provider
            // decides what to make of it.
            let must_free = (self.in_log + units).saturating_sub(self.limit);
            let span = self.span();
            let mut freed = 0;
            let mut at_least = self.log.back().map_or(now, |&(at, _, _)| at + span);
            for &(at, _, units) in &self.log {
                freed += units;
                if freed >= must_free {
                    at_least = at + span;
                    break;
                }
            }
            ready = ready.max(at_least);
        }
        (ready > now).then_some(ready)
    }

    /// Takes `units` for admission `id` (call after `ready_at` said yes).
    pub(crate) fn take(&mut self, now: Instant, id: u64, units: u64) {
        self.refill(now);
        self.level -= units as f64;
        self.log.push_back((now, id, units));
        self.in_log += units;
    }

    /// Corrects admission `id` to `units` (the provider's count, or 0 when it refused the request
    /// and so did not count it). The difference returns to, or is taken from, the bucket too.
    pub(crate) fn settle(&mut self, now: Instant, id: u64, units: u64) {
        self.refill(now);
        if let Some(entry) = self.log.iter_mut().find(|(_, i, _)| *i == id) {
            let charged = entry.2;
            entry.2 = units;
            self.in_log = self.in_log - charged + units;
            self.level = (self.level + charged as f64 - units as f64).min(self.capacity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_paces_and_log_caps_the_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(60);
        let mut b = Budget::new(600, window, t0);
        // Burst: 100 units at once, then 10 units per second.
        assert_eq!(b.ready_at(t0, 100), None);
        b.take(t0, 1, 100);
        let at = b.ready_at(t0, 10).unwrap();
        assert_eq!(at - t0, Duration::from_secs(1));
        // Over the whole limit: waits for the log to empty.
        assert!(b.ready_at(t0, 1000).unwrap() >= t0 + window);
    }

    #[test]
    fn settle_returns_unused_units() {
        let t0 = Instant::now();
        let mut b = Budget::new(600, Duration::from_secs(60), t0);
        b.take(t0, 1, 100);
        assert!(b.ready_at(t0, 50).is_some());
        b.settle(t0, 1, 40);
        assert_eq!(b.ready_at(t0, 50), None);
    }
}
