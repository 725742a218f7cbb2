//! How many jobs a worker processes at once, and holds as prefetch, when the operator has not
//! fixed it (`SLUICE_WORKER_CONCURRENCY`, `SLUICE_PREFETCH`).
//!
//! A worker's throughput is its jobs in flight divided by the time one job takes (Little's law).
//! That time is mostly waiting — for the embedding provider (hundreds of milliseconds a request),
//! for Qdrant and PostgreSQL — so no fixed number fits every provider: 16 in flight keep a
//! zero-latency provider busy but reach about half of an 8M TPM account at 300 ms. So the worker
//! measures instead. Every [`INTERVAL`] it asks:
//!
//! - **Were all slots busy** for most of the interval? Otherwise more slots would sit idle too.
//! - **Did the provider's limits hold requests back** (TPM/RPM, `Retry-After`, the fleet budget,
//!   the adaptive request concurrency: [`requests_waiting`])? Then the account, not the worker,
//!   sets the pace, and more jobs in flight would only wait in the limiter.
//! - **Is the CPU nearly saturated**? Then more jobs in flight only share it.
//!
//! Busy, with room at the provider and on the CPU, two intervals running: concurrency and prefetch
//! grow by half, up to `SLUICE_WORKER_MAX_CONCURRENCY`. After [`IDLE_INTERVALS`] mostly idle intervals (the queue ran
//! dry) they halve again, down to the starting value, so an idle worker does not hold a large
//! prefetch when work returns and KEDA adds workers. Memory does not grow with the slots: the
//! bytes of documents in flight are bounded by `SLUICE_MAX_INFLIGHT_BYTES` whatever the count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_shared::embed::limiter::requests_waiting;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

/// How often the decision is taken.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Slot occupancy is sampled this often within an interval.
const SAMPLE: Duration = Duration::from_millis(50);
/// Share of samples with every slot taken that counts as busy.
const BUSY: f64 = 0.8;
/// Share of samples with requests waiting in the limiter that counts as the provider setting the
/// pace.
const LIMITED: f64 = 0.25;
/// Consecutive intervals with room before concurrency grows: one interval can be a burst the
/// limiter's bucket absorbed.
const ROOM_INTERVALS: u32 = 2;
/// Share of the cores in use that counts as CPU-bound.
const CPU_BOUND: f64 = 0.9;
/// Mean occupancy below this share of the slots counts as idle.
const IDLE: f64 = 0.25;
/// Consecutive idle intervals before concurrency halves.
const IDLE_INTERVALS: u32 = 10;

/// What one interval looked like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Share of samples at which every slot was taken.
    pub all_busy: f64,
    /// Mean share of slots taken.
    pub occupancy: f64,
    /// Share of samples at which embedding requests were waiting for a limit.
    pub limited: f64,
    /// Process CPU time over wall time, divided by the cores available.
    pub cpu: f64,
}

/// The decision rule, free of clocks and semaphores so it can be tested alone.
#[derive(Debug, Clone)]
pub struct Rule {
    pub initial: usize,
    pub max: usize,
    idle_streak: u32,
    room_streak: u32,
}

impl Rule {
    pub fn new(initial: usize, max: usize) -> Self {
        Rule {
            initial,
            max: max.max(initial),
            idle_streak: 0,
            room_streak: 0,
        }
    }

    /// The concurrency for the next interval.
    pub fn next(&mut self, current: usize, seen: Observation) -> usize {
        if seen.occupancy < IDLE {
            self.idle_streak += 1;
        } else {
            self.idle_streak = 0;
        }
        if seen.all_busy >= BUSY && seen.limited < LIMITED && seen.cpu < CPU_BOUND {
            self.room_streak += 1;
            if self.room_streak >= ROOM_INTERVALS {
                self.room_streak = 0;
                return (current + current.div_ceil(2)).min(self.max);
            }
            return current;
        }
        self.room_streak = 0;
        if self.idle_streak >= IDLE_INTERVALS {
            self.idle_streak = 0;
            return (current / 2).max(self.initial);
        }
        current
    }
}

/// Runs the rule every [`INTERVAL`] against the worker's slots until `stop`; publishes each new
/// size on `resized` (the intake loop changes the consumer's prefetch to match) and resizes
/// `slots` itself. Shrinking takes only free permits; busy ones are given back as jobs end.
pub async fn run(
    slots: Arc<Semaphore>,
    mut rule: Rule,
    resized: watch::Sender<usize>,
    stop: CancellationToken,
) {
    let mut current = rule.initial;
    let mut owed = 0;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    sluice_shared::metrics::worker_concurrency().set(current as f64);
    loop {
        let started = Instant::now();
        let cpu_before = sluice_shared::usage::own_cpu_time();
        let (mut samples, mut full, mut taken, mut waiting) = (0u32, 0u32, 0usize, 0u32);
        while started.elapsed() < INTERVAL {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(SAMPLE) => {}
            }
            // The semaphore holds `current + owed` permits: those owed from a shrink are
            // forgotten as jobs give them back.
            let busy = (current + owed)
                .saturating_sub(slots.available_permits())
                .min(current);
            samples += 1;
            taken += busy;
            if busy == current {
                full += 1;
            }
            if requests_waiting() > 0 {
                waiting += 1;
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let seen = Observation {
            all_busy: f64::from(full) / f64::from(samples.max(1)),
            occupancy: taken as f64 / (f64::from(samples.max(1)) * current as f64),
            limited: f64::from(waiting) / f64::from(samples.max(1)),
            cpu: (sluice_shared::usage::own_cpu_time() - cpu_before).as_secs_f64() / wall / cores,
        };
        if owed > 0 {
            owed -= slots.forget_permits(owed);
        }
        let next = rule.next(current, seen);
        if next == current {
            continue;
        }
        if next > current {
            let repay = owed.min(next - current);
            owed -= repay;
            slots.add_permits(next - current - repay);
        } else {
            owed += current - next;
            owed -= slots.forget_permits(owed);
        }
        tracing::info!(
            from = current,
            to = next,
            all_busy = seen.all_busy,
            limited = seen.limited,
            cpu = seen.cpu,
            "worker concurrency resized"
        );
        current = next;
        sluice_shared::metrics::worker_concurrency().set(current as f64);
        if resized.send(current).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(all_busy: f64, occupancy: f64, limited: f64, cpu: f64) -> Observation {
        Observation {
            all_busy,
            occupancy,
            limited,
            cpu,
        }
    }

    #[test]
    fn grows_by_half_while_busy_with_room_up_to_the_max() {
        let mut rule = Rule::new(16, 100);
        let busy = seen(0.95, 1.0, 0.0, 0.3);
        let mut sizes = vec![16];
        for _ in 0..12 {
            let next = rule.next(*sizes.last().unwrap(), busy);
            sizes.push(next);
        }
        assert_eq!(
            sizes,
            [16, 16, 24, 24, 36, 36, 54, 54, 81, 81, 100, 100, 100],
            "every second interval with room"
        );
    }

    #[test]
    fn holds_when_the_provider_limit_or_the_cpu_sets_the_pace_or_slots_are_free() {
        let mut rule = Rule::new(16, 256);
        let room = seen(1.0, 1.0, 0.0, 0.3);
        for held in [
            seen(1.0, 1.0, 0.6, 0.3),
            seen(1.0, 1.0, 0.0, 0.95),
            seen(0.5, 0.9, 0.0, 0.3),
        ] {
            assert_eq!(rule.next(32, room), 32);
            assert_eq!(rule.next(32, held), 32, "{held:?}");
            assert_eq!(rule.next(32, room), 32, "{held:?} broke the streak");
            assert_eq!(rule.next(32, held), 32, "{held:?}");
        }
    }

    #[test]
    fn halves_after_a_long_idle_spell_but_not_below_the_start() {
        let mut rule = Rule::new(16, 256);
        let idle = seen(0.0, 0.05, 0.0, 0.01);
        let mut current = 100;
        for _ in 0..IDLE_INTERVALS - 1 {
            current = rule.next(current, idle);
        }
        assert_eq!(current, 100);
        current = rule.next(current, idle);
        assert_eq!(current, 50);
        for _ in 0..IDLE_INTERVALS * 4 {
            current = rule.next(current, idle);
        }
        assert_eq!(current, 16);
    }
}
