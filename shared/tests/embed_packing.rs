//! The packing embedder against the in-process provider emulator: many documents' texts share
//! requests, every caller gets exactly its own vectors, a request the provider refuses as too
//! large is split and still succeeds, and a failed request fails only the callers it carried.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use sluice_loadtests::emulator::{
    self, ApiMode, EmulatorConfig, EmulatorHandle, FaultKind, FaultSpec, emulated_vector,
};
use sluice_shared::embed::{
    DenseEmbeddings, EmbedError, Embedder, InputKind, OpenAiEmbedder, OpenAiSettings,
    PackingEmbedder, PackingSettings, VoyageEmbedder, VoyageSettings,
};

const DIMENSION: usize = 1024;

async fn start(api: ApiMode, latency: Duration) -> EmulatorHandle {
    let (_, handle) = emulator::spawn(EmulatorConfig {
        api,
        latency,
        ..EmulatorConfig::default()
    })
    .await
    .expect("cannot start the provider emulator on 127.0.0.1");
    handle
}

fn voyage_settings(emulator: &EmulatorHandle) -> VoyageSettings {
    VoyageSettings {
        base_url: emulator.base_url(),
        request_timeout: Duration::from_secs(10),
        retry_min_delay: Duration::from_millis(10),
        retry_max_delay: Duration::from_millis(50),
        ..VoyageSettings::default()
    }
}

fn packer(inner: VoyageEmbedder, linger: Duration, in_flight: usize) -> PackingEmbedder {
    let limits = inner.batch_limits();
    PackingEmbedder::new(
        Arc::new(inner),
        PackingSettings {
            limits,
            linger,
            max_packs_in_flight: in_flight,
        },
    )
    .unwrap()
}

fn doc_texts(doc: usize, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "document {doc} chunk {i}: some words about topic {}",
                doc * 7 + i
            )
        })
        .collect()
}

fn assert_vectors(model: &str, texts: &[String], out: &DenseEmbeddings) {
    assert_eq!(out.vectors.len(), texts.len());
    for (text, vector) in texts.iter().zip(&out.vectors) {
        let expected = emulated_vector(model, text, vector.len());
        assert!(
            vector
                .iter()
                .zip(&expected)
                .all(|(a, e)| (a - e).abs() < 1e-6),
            "caller got a vector that is not the one of its text {text:?}"
        );
    }
}

#[tokio::test]
async fn concurrent_callers_share_few_requests_and_each_gets_its_own_vectors() {
    let emulator = start(ApiMode::Voyage, Duration::ZERO).await;
    let embedder = packer(
        VoyageEmbedder::new(voyage_settings(&emulator)).unwrap(),
        Duration::from_millis(300),
        8,
    );
    let docs: Vec<Vec<String>> = (0..50).map(|d| doc_texts(d, 3)).collect();
    let results = join_all(
        docs.iter()
            .map(|texts| embedder.embed(texts, InputKind::Document)),
    )
    .await;
    let stats = emulator.stats();
    assert!(
        stats.requests_total <= 5,
        "50 callers of 3 texts took {} requests",
        stats.requests_total
    );
    assert_eq!(stats.inputs_served, 150);
    let mut billed = 0;
    for (texts, result) in docs.iter().zip(results) {
        let out = result.unwrap();
        assert_eq!(out.vectors[0].len(), DIMENSION);
        assert_vectors("voyage-3.5", texts, &out);
        billed += out.tokens;
    }
    // The bill is shared out among callers, not lost or counted twice.
    assert_eq!(billed, stats.tokens_served);

    // The same text embedded alone gives the same vector as it did in a pack.
    let alone = embedder
        .embed(&docs[17][1..2], InputKind::Document)
        .await
        .unwrap();
    let packed = embedder
        .embed(&docs[17], InputKind::Document)
        .await
        .unwrap();
    assert_eq!(alone.vectors[0], packed.vectors[1]);
}

#[tokio::test]
async fn a_caller_larger_than_one_request_is_spread_over_several_in_order() {
    let emulator = start(ApiMode::Voyage, Duration::ZERO).await;
    let embedder = packer(
        VoyageEmbedder::new(VoyageSettings {
            max_inputs_per_request: Some(4),
            ..voyage_settings(&emulator)
        })
        .unwrap(),
        Duration::from_millis(100),
        2,
    );
    let big = doc_texts(1, 10);
    let small = doc_texts(2, 3);
    let (big_out, small_out) = tokio::join!(
        embedder.embed(&big, InputKind::Document),
        embedder.embed(&small, InputKind::Document)
    );
    assert_vectors("voyage-3.5", &big, &big_out.unwrap());
    assert_vectors("voyage-3.5", &small, &small_out.unwrap());
    let stats = emulator.stats();
    assert_eq!(stats.requests_total, 4, "13 texts at 4 per request");
    assert!(stats.batch_sizes.iter().all(|&n| n <= 4));
}

/// Texts of about `bytes` bytes each, distinct so every vector is checkable.
fn long_texts(doc: usize, n: usize, bytes: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let head = format!("document {doc} text {i} ");
            format!("{head}{}", "lorem ipsum ".repeat((bytes - head.len()) / 12))
        })
        .collect()
}

#[tokio::test]
async fn a_pack_voyage_refuses_as_too_many_tokens_is_split_and_succeeds() {
    let emulator = start(ApiMode::Voyage, Duration::ZERO).await;
    // The client believes in 1M tokens per request; the emulated voyage-3-large allows 120K, so
    // the one pack of 300 × ~500 tokens is refused and must be split.
    let embedder = packer(
        VoyageEmbedder::new(VoyageSettings {
            model: "voyage-3-large".into(),
            max_tokens_per_request: Some(1_000_000),
            ..voyage_settings(&emulator)
        })
        .unwrap(),
        Duration::from_millis(300),
        4,
    );
    let docs: Vec<Vec<String>> = (0..3).map(|d| long_texts(d, 100, 2000)).collect();
    let results = join_all(
        docs.iter()
            .map(|texts| embedder.embed(texts, InputKind::Document)),
    )
    .await;
    for (texts, result) in docs.iter().zip(results) {
        assert_vectors("voyage-3-large", texts, &result.unwrap());
    }
    let stats = emulator.stats();
    assert_eq!(
        (stats.rejected, stats.succeeded),
        (1, 2),
        "one refused pack, then its two halves"
    );
}

#[tokio::test]
async fn a_request_openai_refuses_as_too_many_tokens_is_split_and_succeeds() {
    let emulator = start(ApiMode::Openai, Duration::ZERO).await;
    // OpenAI allows 300K tokens per request; the client is told 2M, so 400 × ~1,000 tokens go
    // out as one request, are refused, and are sent again in halves.
    let inner = OpenAiEmbedder::new(OpenAiSettings {
        base_url: format!("{}/v1", emulator.base_url()),
        max_tokens_per_request: Some(2_000_000),
        request_timeout: Duration::from_secs(10),
        ..OpenAiSettings::default()
    })
    .unwrap();
    let texts = long_texts(9, 400, 4000);
    let out = inner.embed(&texts, InputKind::Document).await.unwrap();
    assert_vectors("text-embedding-3-small", &texts, &out);
    let stats = emulator.stats();
    assert_eq!((stats.rejected, stats.succeeded), (1, 2));
}

#[tokio::test]
async fn a_failed_pack_fails_only_the_callers_it_carried() {
    let emulator = start(ApiMode::Voyage, Duration::ZERO).await;
    // Four inputs per request and one request at a time: callers A and B (2 texts each) fill
    // the first pack, C and D the second. The first request gets a 500 and no retries.
    let embedder = packer(
        VoyageEmbedder::new(VoyageSettings {
            max_inputs_per_request: Some(4),
            max_retries: 0,
            ..voyage_settings(&emulator)
        })
        .unwrap(),
        Duration::from_secs(1),
        1,
    );
    emulator.inject(FaultSpec {
        count: 1,
        kind: FaultKind::Status { status: 500 },
    });
    let docs: Vec<Vec<String>> = (0..4).map(|d| doc_texts(d, 2)).collect();
    let results = join_all(
        docs.iter()
            .map(|texts| embedder.embed(texts, InputKind::Document)),
    )
    .await;
    for result in &results[..2] {
        assert!(
            matches!(result, Err(EmbedError::Server { status: 500, .. })),
            "{result:?}"
        );
    }
    for (texts, result) in docs[2..].iter().zip(&results[2..]) {
        assert_vectors("voyage-3.5", texts, result.as_ref().unwrap());
    }
    assert_eq!(emulator.stats().requests_total, 2);
}

#[tokio::test]
async fn a_caller_that_gives_up_does_not_disturb_the_others() {
    let emulator = start(ApiMode::Voyage, Duration::from_millis(200)).await;
    let embedder = Arc::new(packer(
        VoyageEmbedder::new(voyage_settings(&emulator)).unwrap(),
        Duration::from_millis(50),
        2,
    ));
    let docs: Vec<Vec<String>> = (0..6).map(|d| doc_texts(d, 3)).collect();
    let tasks: Vec<_> = docs
        .iter()
        .cloned()
        .map(|texts| {
            let embedder = embedder.clone();
            tokio::spawn(async move { embedder.embed(&texts, InputKind::Document).await })
        })
        .collect();
    tokio::task::yield_now().await;
    tasks[0].abort();
    let mut tasks = tasks.into_iter();
    // Aborted before or after its answer: either way it must not matter to the others.
    let _ = tasks.next().unwrap().await;
    for (texts, task) in docs[1..].iter().zip(tasks) {
        assert_vectors("voyage-3.5", texts, &task.await.unwrap().unwrap());
    }
    // The dispatcher still serves new callers.
    let later = doc_texts(99, 2);
    let out = embedder.embed(&later, InputKind::Document).await.unwrap();
    assert_vectors("voyage-3.5", &later, &out);
}

#[tokio::test]
async fn queries_are_not_held_back_for_packing() {
    let emulator = start(ApiMode::Voyage, Duration::ZERO).await;
    // With an hour's linger a packed text would wait an hour; a query must not.
    let embedder = packer(
        VoyageEmbedder::new(voyage_settings(&emulator)).unwrap(),
        Duration::from_secs(3600),
        2,
    );
    let query = vec!["what is sluice".to_string()];
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        embedder.embed(&query, InputKind::Query),
    )
    .await
    .expect("a query waited for a pack")
    .unwrap();
    assert_eq!(out.vectors.len(), 1);
    assert_eq!(emulator.stats().requests_total, 1);
}

#[tokio::test]
async fn an_input_too_long_alone_fails_only_its_caller_without_a_request() {
    let emulator = start(ApiMode::Voyage, Duration::ZERO).await;
    let embedder = packer(
        VoyageEmbedder::new(voyage_settings(&emulator)).unwrap(),
        Duration::from_millis(100),
        2,
    );
    let huge = vec!["ok".to_string(), "x".repeat(200_000)];
    let fine = doc_texts(3, 2);
    let (huge_out, fine_out) = tokio::join!(
        embedder.embed(&huge, InputKind::Document),
        embedder.embed(&fine, InputKind::Document)
    );
    assert!(
        matches!(huge_out, Err(EmbedError::InputTooLong { index: 1, .. })),
        "{huge_out:?}"
    );
    assert_vectors("voyage-3.5", &fine, &fine_out.unwrap());
    assert_eq!(emulator.stats().requests_total, 1);
}
