//! Process-wide admission control for embedding requests: every attempt of every `embed` call of
//! one embedder asks the same [`EmbedLimiter`] before it is sent and reports how it ended.
//!
//! - **Concurrency** is AIMD: it starts at `SLUICE_EMBED_CONCURRENCY`, grows by one after a
//!   limit's worth of successes sent at the limit (up to `SLUICE_EMBED_MAX_CONCURRENCY`), halves
//!   on a 429 (once per congestion event, never below 1).
//! - **Retry-After** of a 429 pauses every request, not only the one that got it: the others
//!   would only collect 429s of their own.
//! - **`x-ratelimit-remaining-*`** headers (OpenAI), when sent, pace requests so the provider's
//!   remaining budget is not overdrawn and stop concurrency growing near the limit.
//! - **`SLUICE_EMBED_TPM` / `SLUICE_EMBED_RPM`** are enforced locally by a token bucket plus a
//!   sliding-window log (see `budget.rs`), charged with the request's estimated tokens and
//!   corrected to the provider's billed `usage` when the answer comes.
//!
//! - **The fleet budget** (`fleet.rs`), when configured, is drawn from after local admission,
//!   so all workers of a fleet share one account's TPM/RPM through PostgreSQL.
//!
//! Waiters are served first come, first served, so a large request is not starved by a stream of
//! small ones. The decisions live in [`RateGovernor`], a clock-driven state machine.

mod budget;
mod fleet;
mod governor;
mod headers;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

pub use fleet::{Bucket, FleetBudget, FleetBudgetError, FleetBudgetSettings, FleetCharge};
pub use governor::{Admission, LimiterSettings, RateGovernor, RequestOutcome};
pub use headers::{RateHeaders, parse_reset};

/// Requests waiting for admission in every limiter of this process.
static WAITING: AtomicU64 = AtomicU64::new(0);

/// Embedding requests of this process waiting right now for a limit (concurrency, Retry-After,
/// TPM/RPM, the fleet budget) to let them go. A worker sizing itself samples it: more documents
/// in flight only help while requests do not queue here.
pub fn requests_waiting() -> u64 {
    WAITING.load(Ordering::Relaxed)
}

/// Counts one request in [`WAITING`] until dropped (admitted or given up).
struct Waiting;

impl Waiting {
    fn enter() -> Self {
        WAITING.fetch_add(1, Ordering::Relaxed);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Admission control shared by all requests of one embedder (see the module docs).
#[derive(Debug)]
pub struct EmbedLimiter {
    provider: &'static str,
    inner: Mutex<Inner>,
    /// Signalled whenever a waiter may now be admitted (a release, a new head of the queue).
    changed: Notify,
    /// The fleet's shared budget, drawn from after local admission.
    fleet: Option<Arc<FleetBudget>>,
}

#[derive(Debug)]
struct Inner {
    governor: RateGovernor,
    /// The ticket allowed to try admission; later tickets wait their turn.
    head: u64,
    next_ticket: u64,
    /// Tickets of waiters that gave up (their future was dropped) before their turn.
    abandoned: BTreeSet<u64>,
}

impl Inner {
    fn advance_head(&mut self) {
        self.head += 1;
        while self.abandoned.remove(&self.head) {
            self.head += 1;
        }
    }
}

impl EmbedLimiter {
    /// A limiter for `provider` (the metrics label). Zero concurrencies are raised to 1 and the
    /// maximum to at least the initial value; configuration validation reports them earlier.
    pub fn new(provider: &'static str, settings: LimiterSettings) -> Self {
        let governor = RateGovernor::new(settings, Instant::now());
        crate::metrics::embed_concurrency_limit(provider).set(governor.limit() as f64);
        EmbedLimiter {
            provider,
            inner: Mutex::new(Inner {
                governor,
                head: 0,
                next_ticket: 0,
                abandoned: BTreeSet::new(),
            }),
            changed: Notify::new(),
            fleet: None,
        }
    }

    /// Also draws every admitted request from the fleet's shared budget (see `fleet.rs`).
    pub fn with_fleet_budget(mut self, fleet: Option<Arc<FleetBudget>>) -> Self {
        self.fleet = fleet;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent between statements, so a panic elsewhere does not spoil it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current concurrency limit.
    pub fn limit(&self) -> usize {
        self.lock().governor.limit()
    }

    /// Requests admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.lock().governor.in_flight()
    }

    /// Waits until a request of `estimated_tokens` may be sent. Cancel-safe: dropping the future
    /// gives up the place in the queue.
    pub async fn acquire(self: &Arc<Self>, estimated_tokens: u64) -> LimiterPermit {
        let _waiting = Waiting::enter();
        let permit = self.acquire_local(estimated_tokens).await;
        self.draw_from_fleet(permit, estimated_tokens).await
    }

    /// Admission by this process's own rules (concurrency, pause, local TPM/RPM).
    async fn acquire_local(self: &Arc<Self>, estimated_tokens: u64) -> LimiterPermit {
        let started = Instant::now();
        let mut ticket = Ticket {
            limiter: self,
            number: {
                let mut inner = self.lock();
                inner.next_ticket += 1;
                inner.next_ticket - 1
            },
            served: false,
        };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before looking at the state, so a release in between is not missed.
            notified.as_mut().enable();
            let wait = {
                let mut inner = self.lock();
                if inner.head != ticket.number {
                    None
                } else {
                    match inner.governor.admit(Instant::now(), estimated_tokens) {
                        Ok(admission) => {
                            inner.advance_head();
                            ticket.served = true;
                            drop(inner);
                            self.changed.notify_waiters();
                            crate::metrics::embed_limiter_wait_seconds(self.provider)
                                .record(started.elapsed().as_secs_f64());
                            return LimiterPermit {
                                limiter: self.clone(),
                                admission: Some(admission),
                                fleet_charge: None,
                            };
                        }
                        Err(wait) => wait,
                    }
                }
            };
            match wait {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Takes the request's estimate from the fleet budget, if there is one, holding the local
    /// slot meanwhile. When the database cannot be reached the request goes anyway: the
    /// provider's 429s still govern, and a database outage fails the document soon enough.
    async fn draw_from_fleet(&self, mut permit: LimiterPermit, tokens: u64) -> LimiterPermit {
        if let Some(fleet) = &self.fleet {
            match fleet.take(tokens).await {
                Ok(charge) => permit.fleet_charge = Some(charge),
                Err(e) => tracing::warn!(error = %e, "sending without the fleet budget"),
            }
        }
        permit
    }

    fn finish(&self, admission: Admission, outcome: RequestOutcome) {
        let limit = {
            let mut inner = self.lock();
            inner.governor.finish(Instant::now(), admission, outcome);
            inner.governor.limit()
        };
        crate::metrics::embed_concurrency_limit(self.provider).set(limit as f64);
        self.changed.notify_waiters();
    }
}

/// A place in the admission queue; dropping it unserved passes the turn on.
struct Ticket<'a> {
    limiter: &'a EmbedLimiter,
    number: u64,
    served: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        {
            let mut inner = self.limiter.lock();
            if inner.head == self.number {
                inner.advance_head();
            } else {
                inner.abandoned.insert(self.number);
            }
        }
        self.limiter.changed.notify_waiters();
    }
}

/// Permission to send one request. Report its end with [`LimiterPermit::finish`]; dropping it
/// counts as [`RequestOutcome::Failed`] (frees the slot, teaches nothing).
#[derive(Debug)]
pub struct LimiterPermit {
    limiter: Arc<EmbedLimiter>,
    admission: Option<Admission>,
    fleet_charge: Option<FleetCharge>,
}

impl LimiterPermit {
    /// Estimated tokens the request was charged at admission.
    pub fn tokens(&self) -> u64 {
        self.admission.map_or(0, |a| a.tokens())
    }

    pub fn finish(mut self, outcome: RequestOutcome) {
        self.settle_with_fleet(&outcome);
        if let Some(admission) = self.admission.take() {
            self.limiter.finish(admission, outcome);
        }
    }
}

impl LimiterPermit {
    /// Corrects the fleet budget's charge to what the provider counted: its billed usage, or
    /// nothing for a 429. Other failures keep the estimate (the provider may have counted them).
    fn settle_with_fleet(&mut self, outcome: &RequestOutcome) {
        let (Some(charged), Some(fleet)) = (self.fleet_charge.take(), self.limiter.fleet.clone())
        else {
            return;
        };
        let billed = match outcome {
            RequestOutcome::Success {
                billed_tokens: Some(billed),
                ..
            } if charged.tokens > 0 => FleetCharge {
                tokens: *billed,
                ..charged
            },
            RequestOutcome::RateLimited { .. } => FleetCharge {
                tokens: 0,
                requests: 0,
                ..charged
            },
            _ => return,
        };
        // Off the request's path: the next request need not wait for the refund's round trip.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = fleet.settle(charged, billed).await {
                    tracing::warn!(error = %e, "settling a request with the fleet budget");
                }
            });
        }
    }
}

impl Drop for LimiterPermit {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            self.limiter.finish(admission, RequestOutcome::Failed);
        }
    }
}
