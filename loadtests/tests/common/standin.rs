//! Start the real `qdrant-standin` binary on a random port over its own (or a given) data
//! directory, and stop it when the guard drops.
#![allow(dead_code)] // Each test file uses a different subset of the helpers.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running stand-in process. Dropping it kills the process.
pub struct StandinProcess {
    child: Child,
    /// gRPC URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    pub data_dir: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
}

impl StandinProcess {
    /// Kill the process with SIGKILL (no chance to flush) and wait for it to exit.
    pub async fn kill_hard(mut self) {
        self.child.start_kill().expect("kill qdrant-standin");
        self.child.wait().await.expect("reap qdrant-standin");
    }
}

/// Start a stand-in over a fresh temporary directory.
pub async fn start_standin() -> StandinProcess {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut process = start_standin_in(dir.path()).await;
    process._tempdir = Some(dir);
    process
}

/// Start a stand-in over `data_dir` (which outlives it).
pub async fn start_standin_in(data_dir: &Path) -> StandinProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qdrant-standin"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        // qdrant-edge warns about feature flags it expects a Qdrant server to initialise.
        .env("RUST_LOG", "warn,qdrant_edge=error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn qdrant-standin");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("qdrant-standin did not print its address within 60 s")
        .expect("read qdrant-standin stdout")
        .expect("qdrant-standin exited before printing its address");
    let url = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from qdrant-standin: {line:?}"))
        .to_string();
    StandinProcess {
        child,
        url,
        data_dir: data_dir.to_path_buf(),
        _tempdir: None,
    }
}
