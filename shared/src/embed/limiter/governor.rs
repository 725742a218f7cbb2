//! The limiter's decisions as a plain state machine with the clock passed in, so every rule can
//! be tested without sleeping: AIMD concurrency, the shared pause after a 429, pacing from the
//! provider's `x-ratelimit-*` headers, and the configured TPM/RPM budgets.

use std::time::{Duration, Instant};

use super::budget::Budget;
use super::headers::RateHeaders;

/// Below this share of its limit left (per the provider's headers), concurrency stops growing:
/// more requests in flight would only reach the limit sooner.
const LOW_WATER_DIVISOR: u64 = 10;

/// Most of what the provider says is left that one process keeps in flight, at first. Every
/// process sharing an account reads the same `remaining`; if each sent all of it, N processes
/// would overdraw it N times before the next answers told them. And an answer is a round trip
/// old: the others' requests of the last round trip are not in it yet, so N processes holding a
/// share `q` each stay within it while `2·N·q ≤ 1` — five processes at a tenth.
const MAX_SHARE_OF_REMAINING: f64 = 0.1;
/// Floor of the share: a fleet of a hundred processes, each still allowed one request at a time.
const MIN_SHARE_OF_REMAINING: f64 = 0.002;
/// Growth of the share per success, after a 429 halved it (the share follows the number of
/// processes, which changes slowly).
const SHARE_GROWTH: f64 = 1.001;

/// Settings of one embedder's limiter.
#[derive(Debug, Clone, PartialEq)]
pub struct LimiterSettings {
    /// Requests in flight allowed at first (`SLUICE_EMBED_CONCURRENCY`); AIMD moves it from there.
    pub initial_concurrency: usize,
    /// Ceiling of the additive increase (`SLUICE_EMBED_MAX_CONCURRENCY`).
    pub max_concurrency: usize,
    /// Estimated tokens admitted per `window` (`SLUICE_EMBED_TPM`); `None` = unlimited.
    pub tokens_per_window: Option<u64>,
    /// Requests admitted per `window` (`SLUICE_EMBED_RPM`); `None` = unlimited.
    pub requests_per_window: Option<u64>,
    /// The window the two limits apply to: one minute for providers (tests shorten it).
    pub window: Duration,
    /// Ceiling on the pause a `Retry-After` imposes on every request.
    pub max_pause: Duration,
    /// The account's limits are configured but enforced outside this limiter (the fleet's shared
    /// budget). Configured limits, here or there, decide how much is sent; the share of the
    /// provider's `remaining` is only for processes sharing an account nobody described.
    pub limits_enforced_elsewhere: bool,
}

impl Default for LimiterSettings {
    fn default() -> Self {
        LimiterSettings {
            initial_concurrency: 4,
            max_concurrency: 64,
            tokens_per_window: None,
            requests_per_window: None,
            window: Duration::from_secs(60),
            max_pause: Duration::from_secs(120),
            limits_enforced_elsewhere: false,
        }
    }
}

/// One admitted request, handed back to [`RateGovernor::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    id: u64,
    tokens: u64,
    /// Whether the request was admitted with the concurrency limit well used: only such
    /// successes show the limit may be too low, so only they make it grow.
    saturated: bool,
    /// Whether other requests of this process were in flight when it was admitted. A refused
    /// request sent alone is the probe that finds the window full, and says nothing about
    /// the share.
    beside_others: bool,
}

impl Admission {
    /// Tokens charged to the budget at admission.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }
}

/// How an admitted request ended, as far as rate limiting is concerned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RequestOutcome {
    Success {
        headers: Option<RateHeaders>,
        /// The provider's `usage.total_tokens`, replacing the estimate in the token budget.
        billed_tokens: Option<u64>,
    },
    /// HTTP 429.
    RateLimited {
        retry_after: Option<Duration>,
        headers: Option<RateHeaders>,
    },
    /// Anything else (5xx, timeout, rejection, dropped): says nothing about the rate limit.
    Failed,
}

/// What the provider's headers said about one of its limits, projected forward.
#[derive(Debug, Clone, Copy)]
struct Hint {
    remaining: f64,
    /// Units per second the provider replenishes, estimated as used / time to full reset.
    rate: f64,
    at: Instant,
    /// When the provider's limit is fully replenished; the hint is void afterwards.
    until: Instant,
    /// Units we admitted since the headers were read.
    spent: u64,
    low: bool,
}

impl Hint {
    fn from(
        limit: Option<u64>,
        remaining: Option<u64>,
        reset: Option<Duration>,
        now: Instant,
    ) -> Option<Hint> {
        let (remaining, reset) = (remaining?, reset?);
        let rate = match limit {
            Some(limit) if !reset.is_zero() => {
                limit.saturating_sub(remaining) as f64 / reset.as_secs_f64()
            }
            // Without the limit, assume nothing comes back before the reset.
            Some(_) | None => 0.0,
        };
        Some(Hint {
            remaining: remaining as f64,
            rate,
            at: now,
            until: now + reset,
            spent: 0,
            low: limit.is_some_and(|limit| remaining < limit / LOW_WATER_DIVISOR),
        })
    }

    /// What the provider would report left at `now`: its last figure plus the estimated refill.
    fn left(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.remaining + self.rate * elapsed
    }

    /// Whether `in_flight` units already sent plus `units` more stay within `share` of what the
    /// provider last said was left (see [`MAX_SHARE_OF_REMAINING`]). The estimated refill is not
    /// counted: a provider counting a sliding window gives nothing back until the oldest
    /// requests in it age out, however soon its `reset` says it is full again.
    ///
    /// Past the reset the figure says nothing, so nothing is allowed beside a request in flight
    /// until an answer brings a new one: otherwise every process would resume at full
    /// concurrency at the same moment (their Retry-After pauses end together) into a window
    /// that has only begun to empty.
    fn share_allows(&self, now: Instant, share: f64, in_flight: u64, units: u64) -> bool {
        now < self.until && (in_flight + units) as f64 <= self.remaining * share
    }

    fn ready_at(&self, now: Instant, units: u64) -> Option<Instant> {
        if now >= self.until {
            return None;
        }
        let available = self.left(now) - self.spent as f64;
        if available >= units as f64 {
            return None;
        }
        if self.rate <= 0.0 {
            return Some(self.until);
        }
        let wait = Duration::from_secs_f64((units as f64 - available) / self.rate);
        Some((now + wait).min(self.until))
    }
}

/// The limiter's state. Not thread-safe by itself; [`super::EmbedLimiter`] wraps it.
#[derive(Debug)]
pub struct RateGovernor {
    settings: LimiterSettings,
    limit: usize,
    in_flight: usize,
    /// Estimated tokens of the requests in flight.
    in_flight_tokens: u64,
    /// How much of the provider's `remaining` this process may hold in flight: halved when a
    /// request sent beside others of ours is refused (more processes share the account than the
    /// share allows for), regrown slowly by successes.
    share: f64,
    successes: usize,
    next_id: u64,
    /// Admissions with a smaller id were sent before the last decrease: their 429s are the same
    /// congestion that caused it and must not halve the limit again.
    decreased_before: u64,
    paused_until: Option<Instant>,
    tokens: Option<Budget>,
    requests: Option<Budget>,
    token_hint: Option<Hint>,
    request_hint: Option<Hint>,
}

impl RateGovernor {
    pub fn new(settings: LimiterSettings, now: Instant) -> Self {
        let mut settings = settings;
        settings.initial_concurrency = settings.initial_concurrency.max(1);
        settings.max_concurrency = settings.max_concurrency.max(settings.initial_concurrency);
        RateGovernor {
            limit: settings.initial_concurrency,
            in_flight: 0,
            in_flight_tokens: 0,
            share: MAX_SHARE_OF_REMAINING,
            successes: 0,
            next_id: 0,
            decreased_before: 0,
            paused_until: None,
            tokens: settings
                .tokens_per_window
                .map(|l| Budget::new(l, settings.window, now)),
            requests: settings
                .requests_per_window
                .map(|l| Budget::new(l, settings.window, now)),
            token_hint: None,
            request_hint: None,
            settings,
        }
    }

    /// The current concurrency limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Until when every request waits after a 429's `Retry-After`.
    pub fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Admits a request of `tokens` estimated tokens at `now`, or says when to ask again:
    /// `Err(Some(t))` at `t`, `Err(None)` when a request in flight finishes.
    pub fn admit(&mut self, now: Instant, tokens: u64) -> Result<Admission, Option<Instant>> {
        let mut ready = now;
        if let Some(until) = self.paused_until {
            if until > now {
                ready = ready.max(until);
            } else {
                self.paused_until = None;
            }
        }
        if let Some(hint) = &self.request_hint
            && let Some(at) = hint.ready_at(now, 1)
        {
            ready = ready.max(at);
        }
        if let Some(hint) = &self.token_hint
            && let Some(at) = hint.ready_at(now, tokens)
        {
            ready = ready.max(at);
        }
        if let Some(budget) = &mut self.tokens
            && let Some(at) = budget.ready_at(now, tokens)
        {
            ready = ready.max(at);
        }
        if let Some(budget) = &mut self.requests
            && let Some(at) = budget.ready_at(now, 1)
        {
            ready = ready.max(at);
        }
        if ready > now {
            return Err(Some(ready));
        }
        if self.in_flight >= self.limit {
            return Err(None);
        }
        // With nothing in flight a request always goes (the hints above already waited for
        // what it needs); otherwise wait for an answer, which brings fresh headers.
        let limits_configured = self.settings.limits_enforced_elsewhere
            || self.tokens.is_some()
            || self.requests.is_some();
        let beyond_share = !limits_configured
            && (self
                .request_hint
                .is_some_and(|h| !h.share_allows(now, self.share, self.in_flight as u64, 1))
                || self.token_hint.is_some_and(|h| {
                    !h.share_allows(now, self.share, self.in_flight_tokens, tokens)
                }));
        if self.in_flight > 0 && beyond_share {
            return Err(None);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight += 1;
        self.in_flight_tokens += tokens;
        if let Some(budget) = &mut self.tokens {
            budget.take(now, id, tokens);
        }
        if let Some(budget) = &mut self.requests {
            budget.take(now, id, 1);
        }
        if let Some(hint) = &mut self.token_hint {
            hint.spent += tokens;
        }
        if let Some(hint) = &mut self.request_hint {
            hint.spent += 1;
        }
        Ok(Admission {
            id,
            tokens,
            // At least half the limit in use (as Netflix's concurrency-limits judges it): requests
            // admitted one at a time into an idle limiter prove nothing about a higher one.
            saturated: self.in_flight * 2 >= self.limit,
            beside_others: self.in_flight > 1,
        })
    }

    /// Records how an admitted request ended.
    pub fn finish(&mut self, now: Instant, admission: Admission, outcome: RequestOutcome) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.in_flight_tokens = self.in_flight_tokens.saturating_sub(admission.tokens);
        match outcome {
            RequestOutcome::Success {
                headers,
                billed_tokens,
            } => {
                if let Some(headers) = headers {
                    self.read_headers(now, &headers);
                    self.share = (self.share * SHARE_GROWTH).min(MAX_SHARE_OF_REMAINING);
                }
                if let (Some(budget), Some(billed)) = (&mut self.tokens, billed_tokens) {
                    budget.settle(now, admission.id, billed);
                }
                let near_limit = [&self.token_hint, &self.request_hint]
                    .iter()
                    .any(|h| h.is_some_and(|h| h.low && now < h.until));
                if admission.saturated && !near_limit {
                    // Additive increase: one more after a limit's worth of successes, i.e.
                    // about one step per round trip while the limit is what holds us back.
                    self.successes += 1;
                    if self.successes >= self.limit {
                        self.limit = (self.limit + 1).min(self.settings.max_concurrency);
                        self.successes = 0;
                    }
                }
            }
            RequestOutcome::RateLimited {
                retry_after,
                headers,
            } => {
                if admission.id >= self.decreased_before {
                    if admission.beside_others {
                        self.share = (self.share / 2.0).max(MIN_SHARE_OF_REMAINING);
                    }
                    self.limit = (self.limit / 2).max(1);
                    self.decreased_before = self.next_id;
                    self.successes = 0;
                }
                if let Some(wait) = retry_after {
                    let until = now + wait.min(self.settings.max_pause);
                    self.paused_until = Some(self.paused_until.map_or(until, |u| u.max(until)));
                }
                if let Some(headers) = headers {
                    self.read_headers(now, &headers);
                }
                // A refused request is not counted by the provider; keep it out of our window too.
                if let Some(budget) = &mut self.tokens {
                    budget.settle(now, admission.id, 0);
                }
            }
            RequestOutcome::Failed => {}
        }
    }

    fn read_headers(&mut self, now: Instant, headers: &RateHeaders) {
        if let Some(hint) = Hint::from(
            headers.limit_tokens,
            headers.remaining_tokens,
            headers.reset_tokens,
            now,
        ) {
            self.token_hint = Some(hint);
        }
        if let Some(hint) = Hint::from(
            headers.limit_requests,
            headers.remaining_requests,
            headers.reset_requests,
            now,
        ) {
            self.request_hint = Some(hint);
        }
    }
}
