//! Start the real `provider-emulator` binary on a random port and talk to its admin endpoints;
//! the process is killed when the guard drops.
#![allow(dead_code)] // Each test file uses a different subset of the helpers.

use std::process::Stdio;
use std::time::Duration;

use sluice_loadtests::emulator::StatsSnapshot;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running emulator process. Dropping it kills the process.
pub struct EmulatorProcess {
    _child: Child,
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub base_url: String,
    client: reqwest::Client,
}

/// Starts `provider-emulator --listen 127.0.0.1:0 <args>` and waits for its address line.
pub async fn start_emulator(args: &[&str]) -> EmulatorProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_provider-emulator"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn provider-emulator");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("provider-emulator did not print its address within 30 s")
        .expect("read provider-emulator stdout")
        .expect("provider-emulator exited before printing its address");
    let base_url = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from provider-emulator: {line:?}"))
        .to_string();
    EmulatorProcess {
        _child: child,
        base_url,
        client: reqwest::Client::new(),
    }
}

impl EmulatorProcess {
    /// `GET /admin/stats`.
    pub async fn stats(&self) -> StatsSnapshot {
        self.client
            .get(format!("{}/admin/stats", self.base_url))
            .send()
            .await
            .expect("GET /admin/stats")
            .json()
            .await
            .expect("stats JSON")
    }

    /// `POST /admin/faults` with one spec or a list.
    pub async fn inject(&self, spec: serde_json::Value) {
        let response = self
            .client
            .post(format!("{}/admin/faults", self.base_url))
            .json(&spec)
            .send()
            .await
            .expect("POST /admin/faults");
        assert!(
            response.status().is_success(),
            "fault rejected: {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// Raw `POST /v1/embeddings` with optional bearer key: (status, headers, JSON body).
    pub async fn post_embeddings(
        &self,
        key: Option<&str>,
        body: &serde_json::Value,
    ) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
        let mut request = self
            .client
            .post(format!("{}/v1/embeddings", self.base_url))
            .json(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("POST /v1/embeddings");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json().await.expect("JSON body");
        (status, headers, body)
    }
}
