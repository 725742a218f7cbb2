//! What the emulator has seen: counters for `GET /admin/stats` and `/metrics`, and a per-second
//! timeline of requests and tokens admitted, served and refused with 429 (the throughput plots of
//! `sluice-bench` come from it).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Most batch sizes remembered; a soak test must not grow the emulator without bound.
const MAX_BATCH_SIZES: usize = 100_000;

/// How an embeddings request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// 429, injected or from the rate window.
    RateLimited,
    /// Injected 5xx (and 504 after a hang).
    ServerError,
    /// 401 or a validation error.
    Rejected,
}

/// One second of the timeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Seconds since the emulator started.
    pub second: u64,
    /// Embedding requests received (every outcome).
    pub requests: u64,
    /// Requests answered 200, counted when the answer was sent (after the latency).
    pub succeeded: u64,
    /// Requests answered 429 (rate window or injected).
    pub rate_limited: u64,
    /// Tokens of the requests in `succeeded`.
    pub tokens: u64,
    /// Requests the rate window let through, counted when admitted: this (not `succeeded`, which
    /// lags by the latency) is what the window charges, so a rate-limit plot must use it.
    #[serde(default)]
    pub admitted: u64,
    /// Tokens of the requests in `admitted`.
    #[serde(default)]
    pub admitted_tokens: u64,
}

/// `GET /admin/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    pub uptime_secs: f64,
    /// Embedding requests received (every outcome).
    pub requests_total: u64,
    pub succeeded: u64,
    pub rate_limited: u64,
    pub server_errors: u64,
    pub rejected: u64,
    /// Requests that were made to hang.
    pub hung: u64,
    pub inputs_served: u64,
    pub tokens_served: u64,
    pub in_flight: u64,
    /// Most embedding requests in progress at once.
    pub max_in_flight: u64,
    /// Inputs per successful request, in completion order.
    pub batch_sizes: Vec<usize>,
    /// Per-second counts, seconds without requests left out.
    pub timeline: Vec<TimelineEntry>,
}

/// Mutable counters behind a mutex in the server state.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    snapshot: StatsSnapshot,
    timeline: BTreeMap<u64, TimelineEntry>,
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            started: Instant::now(),
            snapshot: StatsSnapshot::default(),
            timeline: BTreeMap::new(),
        }
    }

    /// Forgets everything except the requests in flight.
    pub fn reset(&mut self) {
        let in_flight = self.snapshot.in_flight;
        *self = Stats::new();
        self.snapshot.in_flight = in_flight;
        self.snapshot.max_in_flight = in_flight;
    }

    fn entry(&mut self) -> &mut TimelineEntry {
        let second = self.started.elapsed().as_secs();
        self.timeline.entry(second).or_insert(TimelineEntry {
            second,
            ..TimelineEntry::default()
        })
    }

    pub fn request_started(&mut self) {
        self.snapshot.requests_total += 1;
        self.snapshot.in_flight += 1;
        self.snapshot.max_in_flight = self.snapshot.max_in_flight.max(self.snapshot.in_flight);
        self.entry().requests += 1;
    }

    pub fn request_finished(&mut self) {
        self.snapshot.in_flight = self.snapshot.in_flight.saturating_sub(1);
    }

    /// The rate window let a request of `tokens` through (it may still fail later).
    pub fn admitted(&mut self, tokens: u64) {
        let entry = self.entry();
        entry.admitted += 1;
        entry.admitted_tokens += tokens;
    }

    pub fn hung(&mut self) {
        self.snapshot.hung += 1;
    }

    pub fn record(&mut self, outcome: Outcome, inputs: usize, tokens: u64) {
        match outcome {
            Outcome::Ok => {
                self.snapshot.succeeded += 1;
                self.snapshot.inputs_served += inputs as u64;
                self.snapshot.tokens_served += tokens;
                if self.snapshot.batch_sizes.len() < MAX_BATCH_SIZES {
                    self.snapshot.batch_sizes.push(inputs);
                }
                let entry = self.entry();
                entry.succeeded += 1;
                entry.tokens += tokens;
            }
            Outcome::RateLimited => {
                self.snapshot.rate_limited += 1;
                self.entry().rate_limited += 1;
            }
            Outcome::ServerError => self.snapshot.server_errors += 1,
            Outcome::Rejected => self.snapshot.rejected += 1,
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut snapshot = self.snapshot.clone();
        snapshot.uptime_secs = self.started.elapsed().as_secs_f64();
        snapshot.timeline = self.timeline.values().copied().collect();
        snapshot
    }

    /// Prometheus text exposition of the counters.
    pub fn prometheus(&self) -> String {
        let s = &self.snapshot;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP emulator_requests_total Embedding requests by outcome."
        );
        let _ = writeln!(out, "# TYPE emulator_requests_total counter");
        for (outcome, value) in [
            ("ok", s.succeeded),
            ("rate_limited", s.rate_limited),
            ("server_error", s.server_errors),
            ("rejected", s.rejected),
        ] {
            let _ = writeln!(
                out,
                "emulator_requests_total{{outcome=\"{outcome}\"}} {value}"
            );
        }
        for (name, help, kind, value) in [
            (
                "emulator_hung_requests_total",
                "Requests made to hang.",
                "counter",
                s.hung,
            ),
            (
                "emulator_inputs_served_total",
                "Inputs embedded.",
                "counter",
                s.inputs_served,
            ),
            (
                "emulator_tokens_served_total",
                "Tokens embedded.",
                "counter",
                s.tokens_served,
            ),
            (
                "emulator_in_flight_requests",
                "Embedding requests in progress.",
                "gauge",
                s.in_flight,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outcomes_batches_and_concurrency() {
        let mut stats = Stats::new();
        stats.request_started();
        stats.request_started();
        stats.admitted(30);
        stats.record(Outcome::Ok, 3, 30);
        stats.request_finished();
        stats.record(Outcome::RateLimited, 0, 0);
        stats.request_finished();
        let s = stats.snapshot();
        assert_eq!(
            (
                s.requests_total,
                s.succeeded,
                s.rate_limited,
                s.max_in_flight,
                s.in_flight
            ),
            (2, 1, 1, 2, 0)
        );
        assert_eq!(s.batch_sizes, vec![3]);
        assert_eq!(s.timeline.iter().map(|e| e.tokens).sum::<u64>(), 30);
        let admitted: (u64, u64) = s
            .timeline
            .iter()
            .fold((0, 0), |(n, t), e| (n + e.admitted, t + e.admitted_tokens));
        assert_eq!(admitted, (1, 30));
        assert!(
            stats
                .prometheus()
                .contains("emulator_tokens_served_total 30")
        );
    }
}
