//! The embed stage's Voyage and OpenAI clients against the real `provider-emulator` binary:
//! wire formats, batching, retries of 429/5xx/hung requests, fail-fast rejections, and the
//! emulator's own request validation (raw HTTP).

mod common;

use std::time::{Duration, Instant};

use common::emulator::{EmulatorProcess, start_emulator};
use serde_json::json;
use sluice_loadtests::emulator::emulated_vector;
use sluice_shared::embed::openai::EncodingFormat;
use sluice_shared::embed::{
    EmbedError, Embedder, InputKind, OpenAiEmbedder, OpenAiOptions, OpenAiSettings, VoyageEmbedder,
    VoyageOptions, VoyageSettings,
};
use sluice_shared::secret::Secret;

const KEY: &str = "sk-emulator-key-0123456789";

fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("chunk number {i} of the test document"))
        .collect()
}

fn voyage(emulator: &EmulatorProcess) -> VoyageSettings {
    VoyageSettings {
        base_url: emulator.base_url.clone(),
        api_key: Some(Secret::new(KEY)),
        request_timeout: Duration::from_secs(5),
        retry_min_delay: Duration::from_millis(10),
        retry_max_delay: Duration::from_millis(50),
        ..VoyageSettings::default()
    }
}

fn openai(emulator: &EmulatorProcess) -> OpenAiSettings {
    OpenAiSettings {
        base_url: format!("{}/v1", emulator.base_url),
        api_key: Some(Secret::new(KEY)),
        request_timeout: Duration::from_secs(5),
        retry_min_delay: Duration::from_millis(10),
        retry_max_delay: Duration::from_millis(50),
        ..OpenAiSettings::default()
    }
}

fn assert_close(actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len());
    assert!(
        actual
            .iter()
            .zip(expected)
            .all(|(a, e)| (a - e).abs() < 1e-6),
        "vectors differ"
    );
}

#[tokio::test]
async fn voyage_vectors_come_back_in_input_order_with_the_requested_dimension() {
    let emulator = start_emulator(&["--api", "voyage", "--api-key", KEY]).await;
    let embedder = VoyageEmbedder::new(VoyageSettings {
        options: VoyageOptions {
            output_dimension: Some(256),
        },
        ..voyage(&emulator)
    })
    .unwrap();
    let inputs = texts(7);
    let out = embedder.embed(&inputs, InputKind::Document).await.unwrap();
    assert_eq!(out.vectors.len(), 7);
    for (text, vector) in inputs.iter().zip(&out.vectors) {
        assert_close(vector, &emulated_vector("voyage-3.5", text, 256));
    }
    assert!(out.tokens > 0);
    let query = embedder
        .embed(&inputs[..1], InputKind::Query)
        .await
        .unwrap();
    assert_eq!(query.vectors[0].len(), 256);
}

#[tokio::test]
async fn openai_float_and_base64_encodings_give_the_same_vectors() {
    let emulator = start_emulator(&["--api", "openai", "--api-key", KEY]).await;
    let inputs = texts(5);
    let float = OpenAiEmbedder::new(OpenAiSettings {
        options: OpenAiOptions {
            dimensions: Some(64),
            encoding_format: EncodingFormat::Float,
        },
        ..openai(&emulator)
    })
    .unwrap();
    let base64 = OpenAiEmbedder::new(OpenAiSettings {
        options: OpenAiOptions {
            dimensions: Some(64),
            encoding_format: EncodingFormat::Base64,
        },
        ..openai(&emulator)
    })
    .unwrap();
    let a = float.embed(&inputs, InputKind::Document).await.unwrap();
    let b = base64.embed(&inputs, InputKind::Document).await.unwrap();
    assert_eq!(a.vectors, b.vectors);
    for (text, vector) in inputs.iter().zip(&a.vectors) {
        assert_close(vector, &emulated_vector("text-embedding-3-small", text, 64));
    }
    let default_dim = OpenAiEmbedder::new(openai(&emulator)).unwrap();
    assert_eq!(
        default_dim
            .embed(&inputs[..1], InputKind::Query)
            .await
            .unwrap()
            .vectors[0]
            .len(),
        1536
    );
}

#[tokio::test]
async fn azure_style_api_key_header_is_accepted() {
    let emulator = start_emulator(&["--api", "openai", "--api-key", KEY]).await;
    let embedder = OpenAiEmbedder::new(OpenAiSettings {
        api_key_header: Some("api-key".into()),
        ..openai(&emulator)
    })
    .unwrap();
    assert_eq!(
        embedder
            .embed(&texts(2), InputKind::Document)
            .await
            .unwrap()
            .vectors
            .len(),
        2
    );
}

#[tokio::test]
async fn large_input_lists_are_split_by_input_count_and_token_sum() {
    let emulator = start_emulator(&["--api", "auto"]).await;
    let by_count = VoyageEmbedder::new(VoyageSettings {
        max_inputs_per_request: Some(10),
        ..voyage(&emulator)
    })
    .unwrap();
    let inputs = texts(35);
    let out = by_count.embed(&inputs, InputKind::Document).await.unwrap();
    for (text, vector) in inputs.iter().zip(&out.vectors) {
        assert_close(vector, &emulated_vector("voyage-3.5", text, 1024));
    }
    let mut sizes = emulator.stats().await.batch_sizes;
    sizes.sort_unstable();
    assert_eq!(sizes, vec![5, 10, 10, 10]);

    // 90-byte texts are estimated at 30 tokens: three fit under 100.
    let emulator = start_emulator(&["--api", "auto"]).await;
    let by_tokens = OpenAiEmbedder::new(OpenAiSettings {
        max_tokens_per_request: Some(100),
        ..openai(&emulator)
    })
    .unwrap();
    let long: Vec<String> = (0..7).map(|i| format!("{i:0>90}")).collect();
    let out = by_tokens.embed(&long, InputKind::Document).await.unwrap();
    assert_eq!(out.vectors.len(), 7);
    let stats = emulator.stats().await;
    assert_eq!((stats.requests_total, stats.inputs_served), (3, 7));
    assert!(stats.batch_sizes.iter().all(|&n| n <= 3));
    assert_eq!(
        out.tokens, stats.tokens_served,
        "usage tokens are summed over requests"
    );
}

#[tokio::test]
async fn concurrent_requests_are_capped() {
    let emulator = start_emulator(&["--latency-ms", "150"]).await;
    let embedder = VoyageEmbedder::new(VoyageSettings {
        max_inputs_per_request: Some(2),
        max_concurrent_requests: 3,
        ..voyage(&emulator)
    })
    .unwrap();
    let out = embedder
        .embed(&texts(24), InputKind::Document)
        .await
        .unwrap();
    assert_eq!(out.vectors.len(), 24);
    let stats = emulator.stats().await;
    assert_eq!(stats.requests_total, 12);
    assert!(
        stats.max_in_flight <= 3 && stats.max_in_flight >= 2,
        "max in flight {}",
        stats.max_in_flight
    );
}

#[tokio::test]
async fn rate_limits_are_retried_after_the_retry_after_delay() {
    let emulator = start_emulator(&[
        "--fail-first",
        "2",
        "--fail-status",
        "429",
        "--retry-after-secs",
        "1",
    ])
    .await;
    let embedder = OpenAiEmbedder::new(openai(&emulator)).unwrap();
    let started = Instant::now();
    let out = embedder
        .embed(&texts(3), InputKind::Document)
        .await
        .unwrap();
    assert_eq!(out.vectors.len(), 3);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited only {:?}",
        started.elapsed()
    );
    let stats = emulator.stats().await;
    assert_eq!((stats.rate_limited, stats.succeeded), (2, 1));
}

#[tokio::test]
async fn sliding_window_rate_limit_is_waited_out() {
    let emulator = start_emulator(&["--rpm", "2", "--rate-window-secs", "1"]).await;
    let embedder = VoyageEmbedder::new(VoyageSettings {
        max_inputs_per_request: Some(1),
        max_concurrent_requests: 1,
        ..voyage(&emulator)
    })
    .unwrap();
    let out = embedder
        .embed(&texts(4), InputKind::Document)
        .await
        .unwrap();
    assert_eq!(out.vectors.len(), 4);
    let stats = emulator.stats().await;
    assert!(
        stats.rate_limited >= 1,
        "the third request within a second must be limited"
    );
    assert_eq!(stats.succeeded, 4);
}

#[tokio::test]
async fn server_errors_are_retried_until_the_budget_is_spent() {
    let emulator = start_emulator(&["--fail-first", "2", "--fail-status", "503"]).await;
    let embedder = VoyageEmbedder::new(voyage(&emulator)).unwrap();
    assert_eq!(
        embedder
            .embed(&texts(2), InputKind::Document)
            .await
            .unwrap()
            .vectors
            .len(),
        2
    );

    emulator
        .inject(json!({"kind": "status", "status": 502, "count": 10}))
        .await;
    let limited = VoyageEmbedder::new(VoyageSettings {
        max_retries: 2,
        ..voyage(&emulator)
    })
    .unwrap();
    let err = limited
        .embed(&texts(2), InputKind::Document)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EmbedError::Server {
                status: 502,
                attempts: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_retryable());
    assert_eq!(emulator.stats().await.server_errors, 2 + 3);
}

#[tokio::test]
async fn wrong_api_key_fails_fast_without_leaking_the_key() {
    let secret = "sk-wrong-secret-key-abcdefghij";
    for api in ["voyage", "openai"] {
        let emulator = start_emulator(&["--api", api, "--api-key", KEY]).await;
        let err = if api == "voyage" {
            let settings = VoyageSettings {
                api_key: Some(Secret::new(secret)),
                ..voyage(&emulator)
            };
            VoyageEmbedder::new(settings)
                .unwrap()
                .embed(&texts(1), InputKind::Document)
                .await
                .unwrap_err()
        } else {
            let settings = OpenAiSettings {
                api_key: Some(Secret::new(secret)),
                ..openai(&emulator)
            };
            OpenAiEmbedder::new(settings)
                .unwrap()
                .embed(&texts(1), InputKind::Document)
                .await
                .unwrap_err()
        };
        assert!(
            matches!(err, EmbedError::Rejected { status: 401, .. }),
            "{api}: {err}"
        );
        let text = format!("{err} {err:?}");
        assert!(!text.contains(secret), "{api}: key leaked: {text}");
        let expected = if api == "voyage" {
            "Provided API key is invalid."
        } else {
            "Incorrect API key provided"
        };
        assert!(
            text.contains(expected),
            "{api}: provider message missing: {text}"
        );
        assert!(!err.is_retryable());
        assert_eq!(
            emulator.stats().await.requests_total,
            1,
            "{api}: a 401 must not be retried"
        );
    }
}

#[tokio::test]
async fn bad_requests_fail_fast_with_the_provider_message() {
    let emulator = start_emulator(&[]).await;
    let unknown = VoyageEmbedder::new(VoyageSettings {
        model: "voyage-9".into(),
        ..voyage(&emulator)
    })
    .unwrap();
    let err = unknown
        .embed(&texts(1), InputKind::Document)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EmbedError::Rejected { status: 400, message, .. } if message.contains("voyage-9 is not supported")),
        "{err}"
    );

    let missing = OpenAiEmbedder::new(OpenAiSettings {
        model: "no-such-model".into(),
        ..openai(&emulator)
    })
    .unwrap();
    let err = missing
        .embed(&texts(1), InputKind::Document)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EmbedError::Rejected { status: 404, message, .. } if message.contains("does not exist")),
        "{err}"
    );

    emulator
        .inject(json!({"kind": "status", "status": 422}))
        .await;
    let err = VoyageEmbedder::new(voyage(&emulator))
        .unwrap()
        .embed(&texts(1), InputKind::Document)
        .await
        .unwrap_err();
    assert!(
        matches!(err, EmbedError::Rejected { status: 422, .. }),
        "{err}"
    );
    assert_eq!(
        emulator.stats().await.requests_total,
        3,
        "rejections are not retried"
    );
}

#[tokio::test]
async fn hung_requests_time_out_and_are_retried() {
    let emulator = start_emulator(&[]).await;
    emulator.inject(json!({"kind": "hang", "secs": 30})).await;
    let embedder = VoyageEmbedder::new(VoyageSettings {
        request_timeout: Duration::from_millis(500),
        ..voyage(&emulator)
    })
    .unwrap();
    let started = Instant::now();
    let out = embedder
        .embed(&texts(2), InputKind::Document)
        .await
        .unwrap();
    assert_eq!(out.vectors.len(), 2);
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(started.elapsed() < Duration::from_secs(10));
    let stats = emulator.stats().await;
    assert_eq!((stats.hung, stats.succeeded), (1, 1));
}

#[tokio::test]
async fn oversize_input_is_refused_before_sending() {
    let emulator = start_emulator(&[]).await;
    let embedder = OpenAiEmbedder::new(openai(&emulator)).unwrap();
    let inputs = vec!["short".to_string(), "x".repeat(30_000)];
    let err = embedder
        .embed(&inputs, InputKind::Document)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EmbedError::InputTooLong {
                index: 1,
                limit: 8192,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(emulator.stats().await.requests_total, 0);
}

#[tokio::test]
async fn emulator_validates_voyage_requests_like_the_api() {
    let emulator = start_emulator(&["--api", "voyage", "--api-key", KEY]).await;
    let e = &emulator;
    let post = |body| async move { e.post_embeddings(Some(KEY), &body).await };

    let (status, _, body) = post(json!({"input": vec!["a"; 1001], "model": "voyage-3.5"})).await;
    assert_eq!(status, 400);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("batch size limit is 1000"),
        "{body}"
    );

    // voyage-3-large: 120K tokens per request; 121 inputs of 1,000 tokens (4,000 bytes).
    let big = vec!["y".repeat(4000); 121];
    let (status, _, body) = post(json!({"input": big, "model": "voyage-3-large"})).await;
    assert_eq!(status, 400);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("max allowed tokens per submitted batch is 120000"),
        "{body}"
    );

    let long = "z".repeat(4 * 32_000 + 40);
    let (status, _, body) =
        post(json!({"input": [long.clone()], "model": "voyage-3.5", "truncation": false})).await;
    assert_eq!(status, 400, "{body}");
    let (status, _, body) = post(json!({"input": [long], "model": "voyage-3.5"})).await;
    assert_eq!(
        (status, body["usage"]["total_tokens"].as_u64()),
        (200, Some(32_000)),
        "truncation defaults to true"
    );

    let (status, _, body) = post(json!({"model": "voyage-3.5"})).await;
    assert_eq!(status, 422);
    assert!(body["detail"].is_string());
    let (status, _, _) =
        post(json!({"input": "a", "model": "voyage-3.5", "output_dimension": 300})).await;
    assert_eq!(status, 400);

    let (status, _, body) = post(json!({"input": ["a", "b"], "model": "voyage-3.5", "output_dimension": 512, "input_type": "query"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(body["data"][1]["object"], "embedding");
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 512);
    assert_eq!(body["model"], "voyage-3.5");

    let (status, _, body) = emulator
        .post_embeddings(None, &json!({"input": "a", "model": "voyage-3.5"}))
        .await;
    assert_eq!(status, 401);
    assert!(body["detail"].is_string());
}

#[tokio::test]
async fn emulator_validates_openai_requests_like_the_api() {
    let emulator = start_emulator(&[
        "--api",
        "openai",
        "--tpm",
        "1000",
        "--rate-window-secs",
        "60",
    ])
    .await;
    let e = &emulator;
    let post = |body| async move { e.post_embeddings(None, &body).await };
    let error_shape = |body: &serde_json::Value| {
        let e = &body["error"];
        e["message"].is_string()
            && e["type"].is_string()
            && e.get("param").is_some()
            && e.get("code").is_some()
    };

    let (status, _, body) =
        post(json!({"input": vec!["a"; 2049], "model": "text-embedding-3-small"})).await;
    assert_eq!(status, 400);
    assert!(error_shape(&body), "{body}");

    let (status, _, body) =
        post(json!({"input": ["q".repeat(4 * 8192 + 4)], "model": "text-embedding-3-small"})).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length is 8192 tokens"),
        "{body}"
    );

    let (status, _, body) = post(json!({"input": [""], "model": "text-embedding-3-small"})).await;
    assert_eq!(status, 400);
    assert!(error_shape(&body));

    let (status, _, body) =
        post(json!({"input": "a", "model": "text-embedding-3-small", "dimensions": 0})).await;
    assert_eq!(status, 400, "{body}");

    let (status, headers, body) = post(json!({"input": ["abcd", "efgh"], "model": "text-embedding-3-small", "encoding_format": "base64"})).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 2, "total_tokens": 2})
    );
    assert!(body["data"][0]["embedding"].is_string());
    assert_eq!(headers["x-ratelimit-limit-tokens"], "1000");
    assert_eq!(headers["x-ratelimit-remaining-tokens"], "998");

    // 1,000 tokens per window: 1,200 more tokens cannot fit → 429 with the documented headers.
    let (status, headers, body) = post(
        json!({"input": ["w".repeat(4000), "v".repeat(800)], "model": "text-embedding-3-small"}),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    for name in [
        "retry-after",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
    ] {
        assert!(headers.contains_key(name), "429 without {name}");
    }
}

/// Many concurrent `embed` calls through one embedder with a process-wide limiter. Returns the
/// emulator's 429 count; every call must succeed.
async fn embed_under_a_rate_limit(tokens_per_window: Option<u64>) -> u64 {
    // 20,000 emulator tokens (bytes/4) per 2-second window; the load below is about 60,000.
    let emulator = start_emulator(&[
        "--api",
        "voyage",
        "--tpm",
        "20000",
        "--rate-window-secs",
        "2",
    ])
    .await;
    let limiter = std::sync::Arc::new(sluice_shared::embed::EmbedLimiter::new(
        "voyage",
        sluice_shared::embed::LimiterSettings {
            initial_concurrency: 16,
            max_concurrency: 16,
            tokens_per_window,
            window: Duration::from_secs(2),
            ..Default::default()
        },
    ));
    let embedder = VoyageEmbedder::new(VoyageSettings {
        max_retries: 20,
        limiter: Some(limiter),
        ..voyage(&emulator)
    })
    .unwrap();
    let calls: Vec<Vec<String>> = (0..30)
        .map(|call| {
            (0..8)
                .map(|i| format!("call {call} input {i} {}", "x".repeat(1000)))
                .collect()
        })
        .collect();
    let results = futures::future::join_all(
        calls
            .iter()
            .map(|texts| embedder.embed(texts, InputKind::Document)),
    )
    .await;
    for result in results {
        assert_eq!(result.expect("every call succeeds").vectors.len(), 8);
    }
    let stats = emulator.stats().await;
    assert_eq!(stats.succeeded, 30);
    stats.rate_limited
}

#[tokio::test]
async fn a_local_tpm_budget_under_the_providers_limit_avoids_429s() {
    // SLUICE_EMBED_TPM at 95% of the provider's limit.
    assert_eq!(embed_under_a_rate_limit(Some(19_000)).await, 0);
}

#[tokio::test]
async fn without_a_local_tpm_budget_429s_are_retried_to_success() {
    let rate_limited = embed_under_a_rate_limit(None).await;
    assert!(rate_limited > 0, "the load exceeds the emulator's limit");
}
