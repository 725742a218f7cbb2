//! The fleet-wide embedding budget against the real PostgreSQL: workers (each its own pool, as
//! separate processes would have) sharing one account's bucket never take more than the limit in
//! any window, refunds reach every worker, and accounts do not share.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_shared::embed::limiter::{FleetBudget, FleetBudgetSettings, FleetCharge};
use sluice_shared::metadata::PostgresStore;
use sluice_shared::testing::TestDatabase;
use sqlx::postgres::PgPoolOptions;

/// A migrated database of the test's own.
async fn database() -> TestDatabase {
    let db = TestDatabase::create().await;
    PostgresStore::connect(&db.url)
        .await
        .expect("migrating the test database");
    db
}

/// A budget with a pool of its own, as one worker process opens it.
async fn worker_budget(db: &TestDatabase, settings: &FleetBudgetSettings) -> Arc<FleetBudget> {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await
        .expect("connecting to the test database");
    FleetBudget::new(pool, settings).expect("a limit is set")
}

fn tokens_only(key: &str, tokens: u64, window: Duration) -> FleetBudgetSettings {
    FleetBudgetSettings {
        key: key.to_string(),
        tokens_per_window: Some(tokens),
        requests_per_window: None,
        window,
    }
}

#[tokio::test]
async fn workers_sharing_an_account_never_take_more_than_its_limit_in_any_window() {
    let db = database().await;
    const LIMIT: u64 = 24_000;
    const REQUEST: u64 = 300;
    let window = Duration::from_secs(2);
    let settings = FleetBudgetSettings {
        requests_per_window: Some(60),
        ..tokens_only("acct", LIMIT, window)
    };
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(worker_budget(&db, &settings).await);
    }
    // Every worker asks as fast as it can for 3 s (1.5 windows), four requests at a time.
    let until = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for (w, budget) in workers.iter().enumerate() {
        for _ in 0..4 {
            let budget = budget.clone();
            tasks.push(tokio::spawn(async move {
                let mut taken = Vec::new();
                while Instant::now() < until {
                    let charge = budget.take(REQUEST).await.expect("taking from the budget");
                    taken.push((w, charge));
                }
                taken
            }));
        }
    }
    let mut admissions: Vec<(usize, FleetCharge)> = Vec::new();
    for task in tasks {
        admissions.extend(task.await.unwrap());
    }
    admissions.sort_by(|a, b| a.1.admitted_at.total_cmp(&b.1.admitted_at));
    for w in 0..3 {
        assert!(
            admissions.iter().any(|(worker, _)| *worker == w),
            "worker {w} was starved"
        );
    }
    // The database's clock says when each was admitted: no window may hold more than the limit.
    let span = window.as_secs_f64();
    for (i, (_, first)) in admissions.iter().enumerate() {
        let in_window: Vec<&FleetCharge> = admissions[i..]
            .iter()
            .map(|(_, c)| c)
            .take_while(|c| c.admitted_at - first.admitted_at < span)
            .collect();
        let tokens: u64 = in_window.iter().map(|c| c.tokens).sum();
        assert!(
            tokens <= LIMIT,
            "{tokens} tokens admitted within {span} s of admission {i}: over the limit of {LIMIT}"
        );
        assert!(
            in_window.len() <= 60,
            "{} requests admitted within {span} s of admission {i}: over the limit of 60",
            in_window.len()
        );
    }
    // Demand was far above the limit, so the fleet took most of it (the burst plus the refill).
    let total: u64 = admissions.iter().map(|(_, c)| c.tokens).sum();
    assert!(
        total > LIMIT / 2,
        "3 s of demand far above the limit got only {total} tokens"
    );
}

#[tokio::test]
async fn unused_tokens_settled_by_one_worker_are_available_to_another() {
    let db = database().await;
    // A slow refill (6,000 per 10 minutes): whatever the test sees comes from the refund.
    let settings = tokens_only("acct", 6_000, Duration::from_secs(600));
    let a = worker_budget(&db, &settings).await;
    let b = worker_budget(&db, &settings).await;
    let capacity = a.token_bucket().unwrap().capacity as u64;
    let charged = a.take(capacity).await.unwrap();
    assert_eq!(charged.tokens, capacity);
    // The provider billed a fifth of the estimate.
    let billed = FleetCharge {
        tokens: capacity / 5,
        ..charged
    };
    a.settle(charged, billed).await.unwrap();
    let refunded = capacity - capacity / 5;
    let got = tokio::time::timeout(Duration::from_secs(5), b.take(refunded))
        .await
        .expect("the refund is there at once; the refill alone would take 50 s");
    assert_eq!(got.unwrap().tokens, refunded);
}

#[tokio::test]
async fn accounts_have_separate_buckets_and_no_limit_means_no_budget() {
    let db = database().await;
    let window = Duration::from_secs(600);
    let a = worker_budget(&db, &tokens_only("voyage:acct-1", 6_000, window)).await;
    let b = worker_budget(&db, &tokens_only("voyage:acct-2", 6_000, window)).await;
    let capacity = a.token_bucket().unwrap().capacity as u64;
    a.take(capacity).await.unwrap();
    // acct-1 is empty for the next minute; acct-2 is untouched.
    tokio::time::timeout(Duration::from_secs(5), b.take(capacity))
        .await
        .expect("another account's bucket is full")
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), a.take(capacity))
            .await
            .is_err(),
        "an empty bucket must make the next request wait"
    );

    let pool = PgPoolOptions::new().connect_lazy(&db.url).unwrap();
    let unlimited = FleetBudgetSettings {
        key: "acct".into(),
        tokens_per_window: None,
        requests_per_window: None,
        window,
    };
    assert!(FleetBudget::new(pool, &unlimited).is_none());
}

/// Three workers (each its own limiter and its own database connection, as processes have) embed
/// through one provider account whose limit their demand exceeds four times over. Returns the
/// provider's 429 count; every call must succeed either way.
async fn three_workers_on_one_account(fleet_budget: bool) -> u64 {
    use sluice_loadtests::emulator::{EmulatorConfig, spawn};
    use sluice_shared::embed::{
        EmbedLimiter, Embedder, InputKind, LimiterSettings, OpenAiEmbedder, OpenAiSettings,
    };
    use sluice_shared::secret::Secret;

    const PROVIDER_LIMIT: u64 = 6_000;
    // What the operator configures: a little under the provider's limit, which counts with its
    // own tokenizer and clock.
    const CONFIGURED: u64 = 5_400;
    let window = Duration::from_secs(2);
    let (_, emulator) = spawn(EmulatorConfig {
        tokens_per_window: Some(PROVIDER_LIMIT),
        rate_window: window,
        ..EmulatorConfig::default()
    })
    .await
    .expect("starting the emulator");
    let db = database().await;
    let mut workers = Vec::new();
    for _ in 0..3 {
        let local_limit = (!fleet_budget).then_some(CONFIGURED);
        let fleet = if fleet_budget {
            Some(worker_budget(&db, &tokens_only("openai:emulator", CONFIGURED, window)).await)
        } else {
            None
        };
        let limiter = EmbedLimiter::new(
            "openai",
            LimiterSettings {
                initial_concurrency: 4,
                max_concurrency: 4,
                tokens_per_window: local_limit,
                window,
                ..LimiterSettings::default()
            },
        )
        .with_fleet_budget(fleet);
        workers.push(Arc::new(
            OpenAiEmbedder::new(OpenAiSettings {
                base_url: format!("{}/v1", emulator.base_url()),
                api_key: Some(Secret::new("sk-test")),
                max_retries: 50,
                retry_min_delay: Duration::from_millis(10),
                retry_max_delay: Duration::from_millis(200),
                limiter: Some(Arc::new(limiter)),
                ..OpenAiSettings::default()
            })
            .unwrap(),
        ));
    }
    // 3 workers × 40 calls × 100 provider tokens = 12,000 tokens: two windows' worth.
    let mut calls = Vec::new();
    for (w, embedder) in workers.iter().enumerate() {
        for call in 0..40 {
            let embedder = embedder.clone();
            calls.push(tokio::spawn(async move {
                let text = format!("worker {w} call {call:02} {}", "x".repeat(380));
                embedder
                    .embed(&[text], InputKind::Document)
                    .await
                    .map(|e| e.vectors.len())
            }));
        }
    }
    for call in calls {
        assert_eq!(call.await.unwrap().expect("every call succeeds"), 1);
    }
    let stats = emulator.stats();
    assert_eq!(stats.succeeded, 120);
    stats.rate_limited
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_sharing_the_fleet_budget_get_no_429s() {
    assert_eq!(three_workers_on_one_account(true).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_each_within_the_limit_alone_overdraw_the_account_together() {
    let rate_limited = three_workers_on_one_account(false).await;
    assert!(
        rate_limited > 0,
        "three times one worker's budget must overdraw the account"
    );
}
