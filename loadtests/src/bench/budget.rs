//! `sluice-bench --mode budget`: how many requests per second the fleet-wide embedding budget
//! (one token bucket row in PostgreSQL, see `sluice_shared::embed::limiter::FleetBudget`) can
//! admit, and what each costs PostgreSQL. `--workers` processes are simulated by as many
//! budgets with pools of their own, each admitting `IN_FLIGHT` requests at a time, against a
//! limit so high that nobody ever waits for tokens: what is left is the row lock and the
//! transactions, which is the design's ceiling.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use sluice_shared::embed::limiter::{FleetBudget, FleetBudgetSettings, FleetCharge};
use sluice_shared::metadata::PostgresStore;
use sqlx::postgres::PgPoolOptions;

use super::figures::percentile;
use super::procs::ServerCpu;

/// Requests each simulated worker has waiting for admission at once (a worker's embedding
/// requests in flight queue for its one turn at the database).
const IN_FLIGHT: usize = 8;

#[derive(Debug, Clone, Serialize)]
pub struct BudgetFigures {
    pub workers: usize,
    pub secs: f64,
    /// Requests admitted and settled.
    pub requests: u64,
    pub requests_per_sec: f64,
    /// Time from asking the budget to admission, milliseconds.
    pub admit_p50_ms: f64,
    pub admit_p99_ms: f64,
    /// PostgreSQL CPU seconds per 1,000 requests (admission + settlement).
    pub postgres_cpu_per_1k_requests: f64,
}

impl BudgetFigures {
    pub fn render(&self) -> String {
        format!(
            "sluice-bench budget ({} simulated workers, {:.0} s)\n  admitted     {} requests, \
             {:.0}/s\n  admission    p50 {:.2} ms, p99 {:.2} ms\n  PostgreSQL   {:.3} CPU-s \
             per 1,000 requests (one core saturates at ~{:.0} requests/s)\n",
            self.workers,
            self.secs,
            self.requests,
            self.requests_per_sec,
            self.admit_p50_ms,
            self.admit_p99_ms,
            self.postgres_cpu_per_1k_requests,
            1000.0 / self.postgres_cpu_per_1k_requests.max(1e-9)
        )
    }
}

pub async fn run(database_url: &str, workers: usize, secs: u64) -> anyhow::Result<BudgetFigures> {
    // Migrates the database (the budget's table is part of the metadata schema).
    PostgresStore::connect(database_url)
        .await
        .context("preparing the bench database")?;
    let settings = FleetBudgetSettings {
        key: format!("bench-{}", uuid::Uuid::new_v4().simple()),
        tokens_per_window: Some(1 << 50),
        requests_per_window: Some(1 << 40),
        window: Duration::from_secs(60),
    };
    let mut budgets = Vec::with_capacity(workers);
    for _ in 0..workers {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(database_url)
            .await?;
        budgets.push(FleetBudget::new(pool, &settings).context("a budget with limits")?);
    }
    let mut postgres = ServerCpu::new("postgres", Vec::new());
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_at_start = postgres.secs();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for budget in &budgets {
        for _ in 0..IN_FLIGHT {
            let (budget, stop) = (budget.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut admits = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    let charge = budget.take(4_000).await?;
                    admits.push(asked.elapsed().as_secs_f64() * 1000.0);
                    // The provider billed less than the estimate: a refund, as most answers do.
                    let billed = FleetCharge {
                        tokens: 3_000,
                        ..charge
                    };
                    budget.settle(charge, billed).await?;
                }
                anyhow::Ok(admits)
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut admits = Vec::new();
    for task in tasks {
        admits.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = postgres.secs() - cpu_at_start;
    let requests = admits.len() as u64;
    Ok(BudgetFigures {
        workers,
        secs: elapsed,
        requests,
        requests_per_sec: requests as f64 / elapsed,
        admit_p50_ms: percentile(&mut admits, 50.0).unwrap_or(0.0),
        admit_p99_ms: percentile(&mut admits, 99.0).unwrap_or(0.0),
        postgres_cpu_per_1k_requests: cpu * 1000.0 / requests.max(1) as f64,
    })
}
