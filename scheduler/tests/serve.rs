//! `sluice serve` as a process against the real RabbitMQ and PostgreSQL (and a real worker with the
//! Qdrant stand-in): jobs accepted over HTTP reach the workers, documents and statistics can be
//! read back, invalid jobs and missing API keys are refused, SIGTERM stops it cleanly.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice_loadtests::fleet::{Fleet, paragraphs, stop};
use sluice_shared::metadata::DocStatus;

/// A running `sluice serve` with its stderr going to a file (a pipe nobody reads could fill up and
/// block the process).
struct Serve {
    child: Option<Child>,
    url: String,
    log: tempfile::NamedTempFile,
}

impl Serve {
    /// Starts `sluice serve` on a free port and waits until `/readyz` answers 200.
    async fn start(fleet: &mut Fleet) -> Serve {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        fleet
            .env
            .insert("SLUICE_API_LISTEN".into(), format!("127.0.0.1:{port}"));
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = fleet
            .sluice()
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("spawn sluice serve");
        let mut serve = Serve {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = serve.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "sluice serve exited during start-up ({status}); is RabbitMQ running? \
                     stderr:\n{}",
                    serve.stderr()
                );
            }
            if let Ok(r) = reqwest::get(format!("{}/readyz", serve.url)).await
                && r.status() == StatusCode::OK
            {
                return serve;
            }
            assert!(
                Instant::now() < deadline,
                "sluice serve not ready within 60 s; stderr:\n{}",
                serve.stderr()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// SIGTERM, then the exit code and everything it logged.
    fn terminate(mut self, within: Duration) -> (i32, String) {
        let mut child = self.child.take().unwrap();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), self.stderr());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "sluice serve did not exit within {within:?} of SIGTERM; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every byte outside `[A-Za-z0-9._~-]` percent-encoded, for a document id in a URL path.
fn encode(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'~' | b'-' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn post_job(
    client: &reqwest::Client,
    serve: &Serve,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let response = client
        .post(format!("{}/v1/jobs", serve.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn get_json(client: &reqwest::Client, url: String) -> (StatusCode, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// The text of a process's `/metrics`.
async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn index_job(source: &str) -> String {
    json!({"schema_version": 1, "kind": "index", "source": source}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_accepts_jobs_that_workers_index_and_shows_the_document() {
    let mut fleet = Fleet::new().await;
    let serve = Serve::start(&mut fleet).await;
    let worker = fleet.worker();
    let client = reqwest::Client::new();
    let uri = fleet.write(
        "handbook.md",
        format!("# Handbook\n\n{}", paragraphs("expenses", 30)),
    );

    let (status, body) = post_job(&client, &serve, index_job(&uri)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["kind"], "index");
    assert!(body["job_id"].as_str().is_some_and(|id| !id.is_empty()));

    fleet
        .wait_for(Duration::from_secs(60), "the document indexed", |c| {
            c.get(&DocStatus::Indexed) == Some(&1)
        })
        .await;
    // The job names no doc_id, so the document is known by its source URI.
    let (status, doc) = get_json(
        &client,
        format!("{}/v1/documents/{}", serve.url, encode(&uri)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["status"], "indexed");
    assert_eq!(doc["doc_id"], uri.as_str());
    assert_eq!(doc["collection"], "fleet");
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["attempts"], 1);
    assert!(doc["chunks"].as_i64().unwrap() > 0, "{doc}");
    assert!(doc["tokens"].as_i64().unwrap() > 0, "{doc}");
    assert!(doc["last_error"].is_null());
    assert!(doc["indexed_at"].is_string(), "{doc}");

    // Another collection does not have it; an unknown id is a JSON 404.
    let (status, _) = get_json(
        &client,
        format!(
            "{}/v1/documents/{}?collection=elsewhere",
            serve.url,
            encode(&uri)
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = get_json(&client, format!("{}/v1/documents/nope", serve.url)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("nope"), "{body}");

    let (code, stderr) = stop(worker, Duration::from_secs(30));
    assert_eq!(code, 0, "worker: {stderr}");
    let (code, stderr) = serve.terminate(Duration::from_secs(30));
    assert_eq!(code, 0, "sluice serve exit code; stderr:\n{stderr}");
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_jobs_are_refused_with_the_reason_and_never_queued() {
    let mut fleet = Fleet::new().await;
    let serve = Serve::start(&mut fleet).await;
    let client = reqwest::Client::new();

    let cases = [
        ("{not json", "malformed JSON"),
        (
            r#"{"schema_version":2,"kind":"index","source":"file:///a.md"}"#,
            "unsupported schema_version 2",
        ),
        (r#"{"schema_version":1,"kind":"explode"}"#, "unknown kind"),
        (r#"{"schema_version":1,"kind":"index"}"#, "source"),
        (
            r#"{"schema_version":1,"kind":"index","source":"file:///a.md","focre":true}"#,
            "focre",
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = post_job(&client, &serve, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(expected),
            "{body}: error {error:?} should mention {expected:?}"
        );
    }
    // Sources outside SLUICE_ALLOWED_SOURCES (the fleet's docs folder): 403, never queued.
    let docs = url::Url::from_directory_path(fleet.docs.path()).unwrap();
    for source in [
        "file:///etc/passwd".to_string(),
        format!("{docs}../elsewhere/secret.md"),
        "s3://someone-elses-bucket/payroll.pdf".to_string(),
    ] {
        let (status, answer) = post_job(&client, &serve, index_job(&source)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{source} → {answer}");
        assert_eq!(answer["error_kind"], "forbidden_source", "{answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("SLUICE_ALLOWED_SOURCES"),
            "{answer}"
        );
    }
    // Over the caps: metadata (400, naming the setting) and the whole body (413 before parsing).
    let body = format!(
        r#"{{"schema_version":1,"kind":"index","source":"{docs}a.md","metadata":{{"x":"{}"}}}}"#,
        "m".repeat(9 << 10)
    );
    let (status, answer) = post_job(&client, &serve, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error_kind"], "job_too_large", "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("SLUICE_MAX_METADATA_BYTES"),
        "{answer}"
    );
    let huge = client
        .post(format!("{}/v1/jobs", serve.url))
        .header("content-type", "application/json")
        .body(vec![b' '; 65 << 10])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (status, stats) = get_json(&client, format!("{}/v1/stats", serve.url)).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(
        stats["work_queue"]["depth"], 0,
        "nothing was queued: {stats}"
    );

    let metrics = metrics_text(&serve.url).await;
    for counted in [
        r#"sluice_api_requests_total{route="/v1/jobs",status="400"} 6"#,
        r#"sluice_api_requests_total{route="/v1/jobs",status="403"} 3"#,
        r#"sluice_api_requests_total{route="/v1/jobs",status="413"} 1"#,
    ] {
        assert!(metrics.contains(counted), "{counted} in {metrics}");
    }

    let (code, stderr) = serve.terminate(Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_show_queue_depth_then_rates_and_failures_by_reason() {
    let mut fleet = Fleet::new().await;
    let serve = Serve::start(&mut fleet).await;
    let client = reqwest::Client::new();

    // No worker yet: the three jobs wait in the work queue.
    for i in 0..3 {
        let uri = fleet.write(
            &format!("doc-{i}.md"),
            format!("# Doc {i}\n\n{}", paragraphs(&format!("t{i}"), 5)),
        );
        let (status, body) = post_job(&client, &serve, index_job(&uri)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let (status, stats) = get_json(&client, format!("{}/v1/stats", serve.url)).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(stats["work_queue"]["depth"], 3, "{stats}");
    assert_eq!(stats["work_queue"]["consumers"], 0, "{stats}");
    assert_eq!(stats["dead_letter_queue"]["depth"], 0, "{stats}");
    assert_eq!(
        stats["retry_queues"].as_array().unwrap().len(),
        2,
        "{stats}"
    );
    assert_eq!(stats["documents"]["indexed"], 0, "{stats}");

    // A poison job (the object does not exist), then a worker.
    let missing = format!("file://{}/missing.md", fleet.docs.path().display());
    let (status, _) = post_job(&client, &serve, index_job(&missing)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let worker = fleet.worker();
    fleet
        .wait_for(Duration::from_secs(60), "3 indexed, 1 failed", |c| {
            c.get(&DocStatus::Indexed) == Some(&3) && c.get(&DocStatus::Failed) == Some(&1)
        })
        .await;

    // The worker dead-letters the poison job after recording the failure; wait for both.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let (status, stats) = get_json(&client, format!("{}/v1/stats", serve.url)).await;
        assert_eq!(status, StatusCode::OK, "{stats}");
        if stats["dead_letter_queue"]["depth"] == 1 {
            break stats;
        }
        assert!(Instant::now() < deadline, "no dead letter: {stats}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(stats["work_queue"]["depth"], 0, "{stats}");
    assert_eq!(stats["documents"]["indexed"], 3, "{stats}");
    assert_eq!(stats["documents"]["failed"], 1, "{stats}");
    assert_eq!(stats["rates"]["indexed_last_5m"], 3, "{stats}");
    assert_eq!(
        stats["failures_by_reason"],
        json!([{"reason": "no such file or object", "documents": 1}]),
        "{stats}"
    );

    let (code, stderr) = stop(worker, Duration::from_secs(30));
    assert_eq!(code, 0, "worker: {stderr}");
    let (code, stderr) = serve.terminate(Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_key_guards_v1_but_not_the_probes_and_is_never_logged() {
    let mut fleet = Fleet::new().await;
    let key = format!("sk-test-{}", uuid::Uuid::new_v4().simple());
    fleet.env.insert("SLUICE_API_KEY".into(), key.clone());
    let serve = Serve::start(&mut fleet).await; // /readyz answered without a key
    let client = reqwest::Client::new();
    let uri = fleet.write("a.md", "# A\n\nSome text.");
    let jobs = format!("{}/v1/jobs", serve.url);

    let (status, body) = post_job(&client, &serve, index_job(&uri)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("API key"),
        "{body}"
    );
    let wrong = client
        .post(&jobs)
        .bearer_auth("sk-test-wrong")
        .body(index_job(&uri))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let stats = client
        .get(format!("{}/v1/stats", serve.url))
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), StatusCode::UNAUTHORIZED);

    let bearer = client
        .post(&jobs)
        .bearer_auth(&key)
        .body(index_job(&uri))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::ACCEPTED);
    let header = client
        .post(&jobs)
        .header("x-api-key", &key)
        .body(index_job(&uri))
        .send()
        .await
        .unwrap();
    assert_eq!(header.status(), StatusCode::ACCEPTED);
    let stats = client
        .get(format!("{}/v1/stats", serve.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), StatusCode::OK);
    let metrics = client
        .get(format!("{}/metrics", serve.url))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK, "metrics stay open");
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains(r#"sluice_jobs_published_total{kind="index",source="api"} 2"#),
        "{metrics}"
    );
    assert!(!metrics.contains(&key));

    let (code, stderr) = serve.terminate(Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.is_empty(), "serve logs to stderr");
    assert!(!stderr.contains(&key), "the API key leaked into the log");
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_refuses_to_listen_beyond_loopback_without_a_key() {
    let fleet = Fleet::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = fleet
        .sluice()
        .arg("serve")
        .env("SLUICE_API_LISTEN", format!("0.0.0.0:{port}"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "sluice serve started without a key");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SLUICE_API_KEY") && stderr.contains("SLUICE_API_ALLOW_ANONYMOUS"),
        "{stderr}"
    );
    fleet.finish().await;
}

/// A fleet whose `sluice serve` polls the folder `inbox` every second.
async fn fleet_watching_inbox() -> (Fleet, std::path::PathBuf) {
    let mut fleet = Fleet::new().await;
    let watched = fleet.docs.path().join("inbox");
    std::fs::create_dir(&watched).unwrap();
    fleet
        .env
        .insert("SLUICE_WATCH".into(), watched.display().to_string());
    fleet
        .env
        .insert("SLUICE_WATCH_INTERVAL_SECS".into(), "1".into());
    (fleet, watched)
}

/// Writes `dropped.md` into the watched folder and waits until a worker indexed it.
async fn drop_and_wait_indexed(fleet: &Fleet, watched: &std::path::Path, word: &str) {
    std::fs::write(
        watched.join("dropped.md"),
        format!("# Dropped\n\n{}", paragraphs(word, 12)),
    )
    .unwrap();
    fleet
        .wait_for(Duration::from_secs(60), "the dropped file indexed", |c| {
            c.get(&DocStatus::Indexed) == Some(&1)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_watches_the_configured_locations() {
    let (mut fleet, watched) = fleet_watching_inbox().await;
    let serve = Serve::start(&mut fleet).await;
    let worker = fleet.worker();

    drop_and_wait_indexed(&fleet, &watched, "kayaks").await;
    std::fs::remove_file(watched.join("dropped.md")).unwrap();
    fleet
        .wait_for(Duration::from_secs(60), "the removed file deleted", |c| {
            c.get(&DocStatus::Deleted) == Some(&1) && c.get(&DocStatus::Indexed) == Some(&0)
        })
        .await;
    assert!(fleet.points().await.is_empty(), "its chunks are gone");

    let (code, stderr) = stop(worker, Duration::from_secs(30));
    assert_eq!(code, 0, "worker: {stderr}");
    let (code, stderr) = serve.terminate(Duration::from_secs(30));
    assert_eq!(code, 0, "sluice serve exit code; stderr:\n{stderr}");
    fleet.finish().await;
}

/// SLUICE_SERVE_ROLE splits one `sluice serve` into an API (many replicas) and a watcher (exactly
/// one): `watch` polls and keeps the probes but serves no `/v1` API; `api` serves the API and
/// leaves the watched folder alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_roles_split_the_api_from_the_watchers() {
    let (mut fleet, watched) = fleet_watching_inbox().await;
    fleet.env.insert("SLUICE_SERVE_ROLE".into(), "api".into());
    let api = Serve::start(&mut fleet).await;
    fleet.env.insert("SLUICE_SERVE_ROLE".into(), "watch".into());
    let watch = Serve::start(&mut fleet).await;
    let client = reqwest::Client::new();

    let (status, _) = get_json(&client, format!("{}/v1/stats", api.url)).await;
    assert_eq!(status, StatusCode::OK, "the api role serves /v1");
    let status = client
        .get(format!("{}/v1/stats", watch.url))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the watch role has no /v1 API"
    );
    let metrics = client
        .get(format!("{}/metrics", watch.url))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK, "both roles keep /metrics");

    let worker = fleet.worker();
    drop_and_wait_indexed(&fleet, &watched, "canoes").await;
    // Only the watch process listed the folder: the api process published nothing from it.
    let api_metrics = metrics_text(&api.url).await;
    assert!(
        !api_metrics.contains("sluice_watch_objects_total{"),
        "the api role must not run the watchers:\n{api_metrics}"
    );
    let watch_metrics = metrics_text(&watch.url).await;
    assert!(
        watch_metrics.contains(r#"sluice_jobs_published_total{kind="index",source="watch"} "#),
        "the watcher's jobs count as published:\n{watch_metrics}"
    );

    let (code, stderr) = stop(worker, Duration::from_secs(30));
    assert_eq!(code, 0, "worker: {stderr}");
    for serve in [api, watch] {
        let (code, stderr) = serve.terminate(Duration::from_secs(30));
        assert_eq!(code, 0, "sluice serve exit code; stderr:\n{stderr}");
    }
    fleet.finish().await;
}
