//! Fault injection and rate limiting: the parts of the emulator that make a provider unpleasant.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A deterministic fault for the next `count` embedding requests (`POST /admin/faults`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultSpec {
    /// How many consecutive requests get this fault.
    #[serde(default = "one")]
    pub count: u32,
    #[serde(flatten)]
    pub kind: FaultKind,
}

fn one() -> u32 {
    1
}

/// What a faulty request gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// HTTP 429 with `Retry-After` (seconds; none sent when `null`).
    RateLimit {
        #[serde(default)]
        retry_after_secs: Option<u64>,
    },
    /// Any status with the wire format's error body (500, 502, 503, 400, ...).
    Status { status: u16 },
    /// No answer for `secs` (default: the configured hang duration), then 504.
    Hang {
        #[serde(default)]
        secs: Option<u64>,
    },
}

impl FaultSpec {
    /// The fault `--fail-first N --fail-status S` describes.
    pub fn from_status(count: u32, status: u16, retry_after_secs: u64) -> Self {
        let kind = if status == 429 {
            FaultKind::RateLimit {
                retry_after_secs: Some(retry_after_secs),
            }
        } else {
            FaultKind::Status { status }
        };
        FaultSpec { count, kind }
    }
}

/// Pending deterministic faults, consumed one request at a time.
#[derive(Debug, Default)]
pub struct FaultQueue {
    pending: VecDeque<FaultSpec>,
}

impl FaultQueue {
    pub fn push(&mut self, spec: FaultSpec) {
        if spec.count > 0 {
            self.pending.push_back(spec);
        }
    }

    pub fn clear(&mut self) {
        self.pending.clear();
    }

    pub fn pending(&self) -> Vec<FaultSpec> {
        self.pending.iter().cloned().collect()
    }

    /// The fault for the next request, if any.
    pub fn next(&mut self) -> Option<FaultKind> {
        let front = self.pending.front_mut()?;
        let kind = front.kind.clone();
        front.count -= 1;
        if front.count == 0 {
            self.pending.pop_front();
        }
        Some(kind)
    }
}

/// Which limit a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
}

/// The state of the limits after a request, for OpenAI's `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateStatus {
    pub limit_requests: Option<u64>,
    pub remaining_requests: u64,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: u64,
    /// Until the request limit is fully replenished.
    pub reset_requests: Duration,
    /// Until the token limit is fully replenished.
    pub reset_tokens: Duration,
}

/// A refused request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limited {
    pub kind: LimitKind,
    pub limit: u64,
    pub used: u64,
    pub requested: u64,
    /// When the request would fit again.
    pub retry_after: Duration,
    pub status: RateStatus,
}

/// Sliding-window request and token limits: every admitted request is remembered for one
/// window, and a new one is admitted only if it fits next to those still in the window.
#[derive(Debug)]
pub struct RateWindow {
    window: Duration,
    max_requests: Option<u64>,
    max_tokens: Option<u64>,
    admitted: VecDeque<(Instant, u64)>,
    tokens_in_window: u64,
}

impl RateWindow {
    pub fn new(window: Duration, max_requests: Option<u64>, max_tokens: Option<u64>) -> Self {
        RateWindow {
            window,
            max_requests,
            max_tokens,
            admitted: VecDeque::new(),
            tokens_in_window: 0,
        }
    }

    pub fn is_limited(&self) -> bool {
        self.max_requests.is_some() || self.max_tokens.is_some()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, tokens)) = self.admitted.front() {
            if now.duration_since(at) < self.window {
                break;
            }
            self.admitted.pop_front();
            self.tokens_in_window -= tokens;
        }
    }

    fn status(&self, now: Instant) -> RateStatus {
        let reset = self.admitted.back().map_or(Duration::ZERO, |&(at, _)| {
            (at + self.window).saturating_duration_since(now)
        });
        RateStatus {
            limit_requests: self.max_requests,
            remaining_requests: self
                .max_requests
                .map_or(u64::MAX, |m| m.saturating_sub(self.admitted.len() as u64)),
            limit_tokens: self.max_tokens,
            remaining_tokens: self
                .max_tokens
                .map_or(u64::MAX, |m| m.saturating_sub(self.tokens_in_window)),
            reset_requests: reset,
            reset_tokens: reset,
        }
    }

    /// Admits a request of `tokens` at `now`, or says when it would fit.
    pub fn admit(&mut self, now: Instant, tokens: u64) -> Result<RateStatus, Box<Limited>> {
        self.expire(now);
        if let Some(max) = self.max_requests
            && self.admitted.len() as u64 >= max
        {
            // The oldest admitted request leaving the window frees one slot.
            let excess = self.admitted.len() as u64 + 1 - max;
            let retry_after =
                self.time_until_freed(now, |freed_requests, _| freed_requests >= excess);
            return Err(Box::new(Limited {
                kind: LimitKind::Requests,
                limit: max,
                used: self.admitted.len() as u64,
                requested: 1,
                retry_after,
                status: self.status(now),
            }));
        }
        if let Some(max) = self.max_tokens
            && self.tokens_in_window + tokens > max
        {
            let retry_after = if tokens > max {
                // Never fits: tell the client to come back after a whole window, as a provider would.
                self.window
            } else {
                let needed = self.tokens_in_window + tokens - max;
                self.time_until_freed(now, |_, freed_tokens| freed_tokens >= needed)
            };
            return Err(Box::new(Limited {
                kind: LimitKind::Tokens,
                limit: max,
                used: self.tokens_in_window,
                requested: tokens,
                retry_after,
                status: self.status(now),
            }));
        }
        self.admitted.push_back((now, tokens));
        self.tokens_in_window += tokens;
        Ok(self.status(now))
    }

    fn time_until_freed(&self, now: Instant, enough: impl Fn(u64, u64) -> bool) -> Duration {
        let (mut requests, mut tokens) = (0, 0);
        for &(at, t) in &self.admitted {
            requests += 1;
            tokens += t;
            if enough(requests, tokens) {
                return (at + self.window).saturating_duration_since(now);
            }
        }
        self.window
    }
}

/// Formats a duration the way OpenAI's `x-ratelimit-reset-*` headers do (`"120ms"`, `"1.5s"`, `"6m0s"`).
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_queue_hands_out_each_fault_count_times() {
        let mut q = FaultQueue::default();
        q.push(FaultSpec::from_status(2, 429, 1));
        q.push(FaultSpec::from_status(1, 503, 0));
        assert_eq!(
            q.next(),
            Some(FaultKind::RateLimit {
                retry_after_secs: Some(1)
            })
        );
        assert_eq!(
            q.next(),
            Some(FaultKind::RateLimit {
                retry_after_secs: Some(1)
            })
        );
        assert_eq!(q.next(), Some(FaultKind::Status { status: 503 }));
        assert_eq!(q.next(), None);
    }

    #[test]
    fn fault_spec_json_shape() {
        let spec: FaultSpec =
            serde_json::from_str(r#"{"kind":"rate_limit","count":3,"retry_after_secs":2}"#)
                .unwrap();
        assert_eq!(
            spec,
            FaultSpec {
                count: 3,
                kind: FaultKind::RateLimit {
                    retry_after_secs: Some(2)
                }
            }
        );
        let spec: FaultSpec = serde_json::from_str(r#"{"kind":"status","status":502}"#).unwrap();
        assert_eq!(spec.count, 1);
    }

    #[test]
    fn window_limits_requests_and_tells_when_to_retry() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(Duration::from_secs(10), Some(2), None);
        assert!(w.admit(t0, 5).is_ok());
        assert!(w.admit(t0 + Duration::from_secs(1), 5).is_ok());
        let limited = w.admit(t0 + Duration::from_secs(2), 5).unwrap_err();
        assert_eq!(limited.kind, LimitKind::Requests);
        assert_eq!(limited.retry_after, Duration::from_secs(8));
        assert!(w.admit(t0 + Duration::from_secs(10), 5).is_ok());
    }

    #[test]
    fn window_limits_tokens() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(Duration::from_secs(10), None, Some(100));
        assert_eq!(w.admit(t0, 60).unwrap().remaining_tokens, 40);
        let limited = w.admit(t0 + Duration::from_secs(3), 50).unwrap_err();
        assert_eq!(
            (limited.kind, limited.used, limited.requested),
            (LimitKind::Tokens, 60, 50)
        );
        assert_eq!(limited.retry_after, Duration::from_secs(7));
        assert_eq!(
            w.admit(t0, 500).unwrap_err().retry_after,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn reset_durations_format_like_openai() {
        assert_eq!(format_reset(Duration::from_millis(120)), "120ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(2)), "2s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }
}
