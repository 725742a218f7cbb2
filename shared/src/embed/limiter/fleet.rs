//! The fleet-wide budget: every worker of a fleet draws its embedding requests from one token
//! bucket per provider account, kept in PostgreSQL, so N workers together stay inside the
//! organisation's TPM/RPM however many there are and however unevenly they are loaded.
//!
//! Why a bucket in the database rather than a per-worker share of the limit: a static share
//! (`limit / live workers`) wastes the share of every idle worker and overdraws the window
//! whenever a worker joins (the others' last minute is already spent at the old share). One
//! bucket follows demand, needs no membership, and costs one short transaction per request
//! (a few per second at provider limits, next to requests that take hundreds of milliseconds).
//!
//! The provider counts a sliding window; a bucket of capacity `C` refilled at `r` admits at most
//! `C + r·t` in any `t`. So `C` is 1/60 of the limit (a second's worth of a one-minute window)
//! and `r` is the rest spread over the window plus a transit slack (as in `budget.rs`): at most
//! `limit` in any window, ~97.5% of it sustained. Requests are charged their estimated
//! tokens at admission and settled to the provider's billed `usage` when the answer comes (a
//! 429, which the provider did not count, is refunded whole). Every time is the database's
//! clock, so workers with skewed clocks agree.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Row;
use sqlx::postgres::PgPool;

/// The bucket holds 1/`BURST_DIVISOR` of the window's limit.
const BURST_DIVISOR: f64 = 60.0;
/// The window is stretched by 1/`WINDOW_SLACK_DIVISOR` for the refill rate: a request admitted
/// here reaches the provider a little later, and not always equally later.
const WINDOW_SLACK_DIVISOR: f64 = super::budget::WINDOW_SLACK_DIVISOR as f64;
/// Longest sleep between two looks at the bucket: another worker's refund may arrive earlier
/// than the refill we wait for.
const MAX_POLL: Duration = Duration::from_millis(250);
/// Shortest sleep, so a waiter near the threshold does not spin on the database.
const MIN_POLL: Duration = Duration::from_millis(2);

#[derive(Debug, thiserror::Error)]
#[error("fleet embedding budget {key:?}: {message}")]
pub struct FleetBudgetError {
    key: String,
    message: String,
}

/// What the fleet shares: one provider account's limits over its window.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetBudgetSettings {
    /// Names the account whose limit is shared (workers with the same key share one bucket).
    pub key: String,
    pub tokens_per_window: Option<u64>,
    pub requests_per_window: Option<u64>,
    /// One minute for providers (tests shorten it).
    pub window: Duration,
}

/// One limit as a bucket: what it holds when full and what it refills per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub capacity: f64,
    pub rate_per_sec: f64,
}

impl Bucket {
    /// The bucket for `limit` per `window`: never more than `limit` in any window stretched by
    /// the slack.
    pub fn for_limit(limit: u64, window: Duration) -> Self {
        let limit = limit.max(1) as f64;
        let capacity = (limit / BURST_DIVISOR).max(1.0).min(limit);
        let span = window.as_secs_f64() * (1.0 + 1.0 / WINDOW_SLACK_DIVISOR);
        Bucket {
            capacity,
            rate_per_sec: (limit - capacity) / span.max(1e-3),
        }
    }

    /// Level after `elapsed_secs` of refill from `level`.
    fn refilled(&self, level: f64, elapsed_secs: f64) -> f64 {
        (level + elapsed_secs.max(0.0) * self.rate_per_sec).min(self.capacity)
    }

    /// Seconds until `level` reaches `need` (capped at the capacity, so a request larger than
    /// the bucket goes once it is full, leaving a debt the next ones wait out).
    fn wait_secs(&self, level: f64, need: f64) -> f64 {
        let need = need.min(self.capacity);
        if level >= need || self.rate_per_sec <= 0.0 {
            0.0
        } else {
            (need - level) / self.rate_per_sec
        }
    }
}

/// Units taken from the fleet budget for one request, to settle when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FleetCharge {
    pub tokens: u64,
    pub requests: u64,
    /// When it was admitted, seconds since the Unix epoch by the database's clock.
    pub admitted_at: f64,
}

/// The shared bucket of one provider account (see the module docs).
#[derive(Debug)]
pub struct FleetBudget {
    pool: PgPool,
    key: String,
    tokens: Option<Bucket>,
    requests: Option<Bucket>,
    /// One waiter per process at the database; the others queue here in arrival order.
    turn: tokio::sync::Mutex<()>,
}

impl FleetBudget {
    /// The budget of `settings.key` in the database behind `pool` (migrated by the metadata
    /// store). `None` when neither limit is set: there is nothing to share.
    pub fn new(pool: PgPool, settings: &FleetBudgetSettings) -> Option<Arc<Self>> {
        let tokens = settings
            .tokens_per_window
            .map(|l| Bucket::for_limit(l, settings.window));
        let requests = settings
            .requests_per_window
            .map(|l| Bucket::for_limit(l, settings.window));
        if tokens.is_none() && requests.is_none() {
            return None;
        }
        Some(Arc::new(FleetBudget {
            pool,
            key: settings.key.clone(),
            tokens,
            requests,
            turn: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn token_bucket(&self) -> Option<Bucket> {
        self.tokens
    }

    fn error(&self, what: &str, e: sqlx::Error) -> FleetBudgetError {
        crate::metrics::embed_fleet_budget_errors_total().increment(1);
        FleetBudgetError {
            key: self.key.clone(),
            message: format!("{what}: {e}"),
        }
    }

    /// Waits until the fleet may send one request of `tokens` estimated tokens and takes them.
    /// Cancel-safe: a take that completed is only lost to the budget (conservative).
    pub async fn take(&self, tokens: u64) -> Result<FleetCharge, FleetBudgetError> {
        let started = Instant::now();
        let _turn = self.turn.lock().await;
        loop {
            match self.try_take(tokens).await? {
                Ok(charge) => {
                    crate::metrics::embed_fleet_budget_wait_seconds()
                        .record(started.elapsed().as_secs_f64());
                    return Ok(charge);
                }
                Err(wait) => tokio::time::sleep(wait.clamp(MIN_POLL, MAX_POLL)).await,
            }
        }
    }

    /// One look at the bucket: the charge, or how long until it could be admitted.
    async fn try_take(
        &self,
        tokens: u64,
    ) -> Result<Result<FleetCharge, Duration>, FleetBudgetError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.error("starting a transaction", e))?;
        let row = sqlx::query(
            "SELECT tokens, requests, \
                    GREATEST(0, EXTRACT(EPOCH FROM clock_timestamp() - refilled_at))::float8 \
             FROM embed_budgets WHERE key = $1 FOR UPDATE",
        )
        .bind(&self.key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| self.error("reading the bucket", e))?;
        let Some(row) = row else {
            // First use of this key: a full bucket. A concurrent creator wins, which is fine.
            sqlx::query(
                "INSERT INTO embed_budgets (key, tokens, requests, refilled_at) \
                 VALUES ($1, $2, $3, clock_timestamp()) ON CONFLICT (key) DO NOTHING",
            )
            .bind(&self.key)
            .bind(self.tokens.map_or(0.0, |b| b.capacity))
            .bind(self.requests.map_or(0.0, |b| b.capacity))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error("creating the bucket", e))?;
            tx.commit()
                .await
                .map_err(|e| self.error("creating the bucket", e))?;
            return Ok(Err(Duration::ZERO));
        };
        let elapsed: f64 = row.get(2);
        let token_level = self.tokens.map(|b| b.refilled(row.get(0), elapsed));
        let request_level = self.requests.map(|b| b.refilled(row.get(1), elapsed));
        let wait = self
            .tokens
            .zip(token_level)
            .map_or(0.0, |(b, level)| b.wait_secs(level, tokens as f64))
            .max(
                self.requests
                    .zip(request_level)
                    .map_or(0.0, |(b, level)| b.wait_secs(level, 1.0)),
            );
        if wait > 0.0 {
            // Nothing to write: the refill is computed from `refilled_at` on every look.
            tx.rollback()
                .await
                .map_err(|e| self.error("releasing the bucket", e))?;
            return Ok(Err(Duration::from_secs_f64(wait)));
        }
        let mut charge = FleetCharge {
            tokens: if self.tokens.is_some() { tokens } else { 0 },
            requests: u64::from(self.requests.is_some()),
            admitted_at: 0.0,
        };
        charge.admitted_at = sqlx::query_scalar(
            "UPDATE embed_budgets SET tokens = $2, requests = $3, \
                    refilled_at = refilled_at + make_interval(secs => $4) \
             WHERE key = $1 RETURNING EXTRACT(EPOCH FROM refilled_at)::float8",
        )
        .bind(&self.key)
        .bind(token_level.unwrap_or(0.0) - charge.tokens as f64)
        .bind(request_level.unwrap_or(0.0) - charge.requests as f64)
        .bind(elapsed)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| self.error("taking from the bucket", e))?;
        tx.commit()
            .await
            .map_err(|e| self.error("taking from the bucket", e))?;
        Ok(Ok(charge))
    }

    /// Gives back what a request did not use: `charged` minus what the provider `billed` (more
    /// is taken when it billed more than the estimate). Never above the bucket's capacity.
    pub async fn settle(
        &self,
        charged: FleetCharge,
        billed: FleetCharge,
    ) -> Result<(), FleetBudgetError> {
        let tokens = charged.tokens as f64 - billed.tokens as f64;
        let requests = charged.requests as f64 - billed.requests as f64;
        if tokens == 0.0 && requests == 0.0 {
            return Ok(());
        }
        sqlx::query(
            "UPDATE embed_budgets SET tokens = LEAST($3, tokens + $2), \
                    requests = LEAST($5, requests + $4) WHERE key = $1",
        )
        .bind(&self.key)
        .bind(if self.tokens.is_some() { tokens } else { 0.0 })
        .bind(self.tokens.map_or(0.0, |b| b.capacity))
        .bind(if self.requests.is_some() {
            requests
        } else {
            0.0
        })
        .bind(self.requests.map_or(0.0, |b| b.capacity))
        .execute(&self.pool)
        .await
        .map_err(|e| self.error("settling a request", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_never_admits_more_than_the_limit_in_a_stretched_window() {
        let window = Duration::from_secs(60);
        let b = Bucket::for_limit(1_000_000, window);
        let span = 60.0 * (1.0 + 1.0 / WINDOW_SLACK_DIVISOR);
        // Full bucket spent at once, then a whole span of refill.
        assert!(b.capacity + b.rate_per_sec * span <= 1_000_000.0 + 1e-6);
        // And it sustains all but the burst and the slack: 97.5% of the limit.
        assert!(b.rate_per_sec * 60.0 >= 0.97 * 1_000_000.0);
    }

    #[test]
    fn waits_are_what_the_refill_needs() {
        let b = Bucket::for_limit(6000, Duration::from_secs(60));
        assert_eq!(b.wait_secs(b.capacity, 50.0), 0.0);
        let w = b.wait_secs(0.0, 50.0);
        assert!((w - 50.0 / b.rate_per_sec).abs() < 1e-9);
        // A request larger than the bucket waits only for a full bucket.
        assert!((b.wait_secs(0.0, 1e9) - b.capacity / b.rate_per_sec).abs() < 1e-9);
        assert_eq!(b.refilled(0.0, 1e9), b.capacity);
    }
}
