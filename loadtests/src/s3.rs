//! A real S3 server for tests: `s3s-fs` over a fresh folder (buckets are its sub-folders), on a
//! free port. `scripts/test.sh` installs it (`cargo install s3s-fs@0.14.1 --features binary`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Access key and secret the server accepts.
pub const ACCESS_KEY: &str = "AKTEST";
pub const SECRET_KEY: &str = "SKTEST";

/// A running s3s-fs; killed on drop.
pub struct S3Server {
    child: Child,
    pub port: u16,
    /// The served folder: `root/<bucket>/<key>`.
    pub root: tempfile::TempDir,
}

impl S3Server {
    /// Starts s3s-fs and waits until it listens; panics with how to install it when missing.
    pub fn start() -> S3Server {
        let root = tempfile::tempdir().expect("a temporary folder for s3s-fs");
        let port = crate::fleet::free_port();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run s3s-fs ({e}); scripts/test.sh installs it \
                     (cargo install s3s-fs@0.14.1 --features binary)"
                )
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        S3Server { child, port, root }
    }

    /// The `AWS_*` settings object_store needs to reach this server (path-style, plain HTTP).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
