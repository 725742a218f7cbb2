//! The embedding limiter's rules, driven with an explicit clock (no sleeping, no timing
//! assertions): AIMD concurrency, the shared Retry-After pause, TPM/RPM never exceeded in any
//! window, pacing from `x-ratelimit-*` headers; and the async wrapper's queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_shared::embed::limiter::{
    EmbedLimiter, LimiterSettings, RateGovernor, RateHeaders, RequestOutcome,
};

const SUCCESS: RequestOutcome = RequestOutcome::Success {
    headers: None,
    billed_tokens: None,
};

fn rate_limited(retry_after: Option<Duration>) -> RequestOutcome {
    RequestOutcome::RateLimited {
        retry_after,
        headers: None,
    }
}

fn settings(initial: usize, max: usize) -> LimiterSettings {
    LimiterSettings {
        initial_concurrency: initial,
        max_concurrency: max,
        ..LimiterSettings::default()
    }
}

/// Admits `n` requests at `now`, panicking if any has to wait.
fn admit_all(
    g: &mut RateGovernor,
    now: Instant,
    n: usize,
) -> Vec<sluice_shared::embed::limiter::Admission> {
    (0..n)
        .map(|i| {
            g.admit(now, 10)
                .unwrap_or_else(|w| panic!("request {i} must wait: {w:?}"))
        })
        .collect()
}

#[test]
fn concurrency_grows_after_successes_at_the_limit_up_to_the_maximum() {
    let t = Instant::now();
    let mut g = RateGovernor::new(settings(2, 4), t);
    assert_eq!(g.limit(), 2);
    let round = admit_all(&mut g, t, 2);
    assert_eq!(
        g.admit(t, 10),
        Err(None),
        "a third request waits for a slot"
    );
    for a in round {
        g.finish(t, a, SUCCESS);
    }
    assert_eq!(g.limit(), 3);
    for _ in 0..5 {
        let n = g.limit();
        for a in admit_all(&mut g, t, n) {
            g.finish(t, a, SUCCESS);
        }
    }
    assert_eq!(g.limit(), 4, "never above max_concurrency");
}

#[test]
fn successes_below_the_limit_do_not_raise_it() {
    let t = Instant::now();
    let mut g = RateGovernor::new(settings(4, 64), t);
    for _ in 0..50 {
        let a = g.admit(t, 10).unwrap();
        g.finish(t, a, SUCCESS);
    }
    assert_eq!(g.limit(), 4);
}

#[test]
fn a_429_halves_the_limit_once_per_congestion_event_never_below_one() {
    let t = Instant::now();
    let mut g = RateGovernor::new(settings(16, 64), t);
    let burst = admit_all(&mut g, t, 3);
    let mut burst = burst.into_iter();
    g.finish(t, burst.next().unwrap(), rate_limited(None));
    assert_eq!(g.limit(), 8);
    // The other two were sent before the decrease: the same congestion, no second halving.
    g.finish(t, burst.next().unwrap(), rate_limited(None));
    g.finish(t, burst.next().unwrap(), rate_limited(None));
    assert_eq!(g.limit(), 8);
    for expected in [4, 2, 1, 1] {
        let a = g.admit(t, 10).unwrap();
        g.finish(t, a, rate_limited(None));
        assert_eq!(g.limit(), expected);
    }
}

#[test]
fn retry_after_pauses_every_request_not_just_the_one_refused() {
    let t = Instant::now();
    let mut g = RateGovernor::new(settings(8, 64), t);
    let first = g.admit(t, 10).unwrap();
    let other = g.admit(t, 10).unwrap();
    let at = t + Duration::from_millis(100);
    g.finish(at, first, rate_limited(Some(Duration::from_secs(5))));
    let resume = at + Duration::from_secs(5);
    assert_eq!(g.paused_until(), Some(resume));
    // Requests in flight may finish; nothing new is sent until the pause is over.
    g.finish(at, other, SUCCESS);
    for now in [
        at,
        at + Duration::from_secs(4),
        resume - Duration::from_millis(1),
    ] {
        assert_eq!(g.admit(now, 10), Err(Some(resume)));
    }
    assert!(g.admit(resume, 10).is_ok());
}

#[test]
fn retry_after_is_capped_by_max_pause() {
    let t = Instant::now();
    let mut g = RateGovernor::new(
        LimiterSettings {
            max_pause: Duration::from_secs(10),
            ..settings(2, 4)
        },
        t,
    );
    let a = g.admit(t, 1).unwrap();
    g.finish(t, a, rate_limited(Some(Duration::from_secs(3600))));
    assert_eq!(g.paused_until(), Some(t + Duration::from_secs(10)));
}

/// Runs a saturated sender against `g` for `windows` windows with a deterministic mix of request
/// sizes; returns `(admitted at, tokens the provider counts)`.
fn simulate(
    g: &mut RateGovernor,
    window: Duration,
    windows: u32,
    billed: impl Fn(u64) -> u64,
) -> Vec<(Instant, u64)> {
    let t0 = Instant::now();
    let end = t0 + window * windows;
    let mut now = t0;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut admitted = Vec::new();
    while now < end {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let tokens = 200 + seed % 4_800;
        match g.admit(now, tokens) {
            Ok(a) => {
                let counted = billed(tokens);
                admitted.push((now, counted));
                g.finish(
                    now,
                    a,
                    RequestOutcome::Success {
                        headers: None,
                        billed_tokens: Some(counted),
                    },
                );
            }
            Err(Some(at)) => {
                assert!(at > now, "a wait must move time forward");
                now = at;
            }
            Err(None) => panic!("every request finished, no slot can be busy"),
        }
    }
    admitted
}

/// The most any window of length `window` (closed at its start, like the emulator's) holds.
fn max_in_any_window(admitted: &[(Instant, u64)], window: Duration) -> u64 {
    let mut max = 0;
    let mut sum = 0;
    let mut start = 0;
    for &(at, units) in admitted {
        sum += units;
        while at.duration_since(admitted[start].0) >= window {
            sum -= admitted[start].1;
            start += 1;
        }
        max = max.max(sum);
    }
    max
}

#[test]
fn token_budget_never_admits_more_than_tpm_in_any_minute() {
    let minute = Duration::from_secs(60);
    let tpm = 200_000;
    let mut g = RateGovernor::new(
        LimiterSettings {
            tokens_per_window: Some(tpm),
            ..settings(4, 4)
        },
        Instant::now(),
    );
    let admitted = simulate(&mut g, minute, 5, |estimate| estimate);
    assert!(max_in_any_window(&admitted, minute) <= tpm);
    // The limit is used, not merely respected: after the first minute nearly all of it.
    let total: u64 = admitted.iter().map(|a| a.1).sum();
    assert!(total > 4 * tpm, "{total} tokens in five minutes");
}

#[test]
fn billed_usage_below_the_estimate_frees_budget_without_overshooting() {
    let minute = Duration::from_secs(60);
    let tpm = 200_000;
    let mut g = RateGovernor::new(
        LimiterSettings {
            tokens_per_window: Some(tpm),
            ..settings(4, 4)
        },
        Instant::now(),
    );
    // The provider counts three quarters of the estimate (bytes/4 against bytes/3).
    let admitted = simulate(&mut g, minute, 5, |estimate| estimate * 3 / 4);
    assert!(max_in_any_window(&admitted, minute) <= tpm);
    let total: u64 = admitted.iter().map(|a| a.1).sum();
    assert!(total > 4 * tpm, "{total} billed tokens in five minutes");
}

#[test]
fn request_budget_never_admits_more_than_rpm_in_any_window() {
    let window = Duration::from_secs(2);
    let rpm = 30;
    let mut g = RateGovernor::new(
        LimiterSettings {
            requests_per_window: Some(rpm),
            window,
            ..settings(4, 4)
        },
        Instant::now(),
    );
    let admitted: Vec<_> = simulate(&mut g, window, 20, |t| t)
        .into_iter()
        .map(|(at, _)| (at, 1))
        .collect();
    assert!(max_in_any_window(&admitted, window) <= rpm);
    assert!(admitted.len() as u64 > 15 * rpm);
}

#[test]
fn remaining_headers_slow_requests_down_before_the_provider_runs_out() {
    let t = Instant::now();
    let mut g = RateGovernor::new(settings(4, 8), t);
    let a = g.admit(t, 100).unwrap();
    // 100 of 1,000 tokens left, full again in 9 s: the provider refills about 100 tokens/s.
    let headers = RateHeaders {
        limit_tokens: Some(1000),
        remaining_tokens: Some(100),
        reset_tokens: Some(Duration::from_secs(9)),
        ..RateHeaders::default()
    };
    g.finish(
        t,
        a,
        RequestOutcome::Success {
            headers: Some(headers),
            billed_tokens: None,
        },
    );
    // 300 tokens need 200 more than are left: two seconds of refill.
    assert_eq!(g.admit(t, 300), Err(Some(t + Duration::from_secs(2))));
    // A small request fits in what is left, and is counted against it.
    let small = g.admit(t, 60).unwrap();
    assert_eq!(g.admit(t, 60), Err(Some(t + Duration::from_millis(200))));
    g.finish(t, small, SUCCESS);
    // Near the provider's limit concurrency does not grow, however many succeed.
    let later = t + Duration::from_secs(1);
    for _ in 0..20 {
        let a = g.admit(later, 1).unwrap();
        g.finish(later, a, SUCCESS);
    }
    assert_eq!(g.limit(), 4);
    // After the reset the hint is void.
    assert!(g.admit(t + Duration::from_secs(9), 5_000).is_ok());
}

#[tokio::test]
async fn waiters_are_served_in_order_and_a_cancelled_waiter_passes_its_turn() {
    let limiter = Arc::new(EmbedLimiter::new("test", settings(1, 1)));
    let held = limiter.acquire(10).await;
    // Times out while queued: its future is dropped and must not block those behind it.
    let cancelled = tokio::time::timeout(Duration::from_millis(20), limiter.acquire(10)).await;
    assert!(cancelled.is_err(), "the only slot is held");
    let waiter = {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.acquire(10).await })
    };
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    held.finish(SUCCESS);
    let permit = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter behind a cancelled one is admitted")
        .unwrap();
    assert_eq!(limiter.in_flight(), 1);
    drop(permit);
    assert_eq!(limiter.in_flight(), 0);
}

#[tokio::test]
async fn a_429_in_one_task_holds_back_the_others_for_retry_after() {
    let limiter = Arc::new(EmbedLimiter::new("test", settings(8, 8)));
    let refused = limiter.acquire(10).await;
    let pause = Duration::from_millis(300);
    let paused_at = Instant::now();
    refused.finish(rate_limited(Some(pause)));
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let permit = limiter.acquire(10).await;
                let admitted = Instant::now();
                permit.finish(SUCCESS);
                admitted
            })
        })
        .collect();
    for task in tasks {
        let admitted = task.await.unwrap();
        assert!(admitted >= paused_at + pause, "admitted during the pause");
    }
    assert_eq!(limiter.limit(), 4);
}
