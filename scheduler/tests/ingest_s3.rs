//! `sluice ingest s3://...` against a real S3 server (s3s-fs, installed by scripts/test.sh).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct S3Server {
    child: Child,
    port: u16,
    root: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_s3() -> S3Server {
    let root = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("s3s-fs")
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "AKTEST", "--secret-key", "SKTEST"])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run s3s-fs ({e}); scripts/test.sh installs it (cargo install s3s-fs@0.14.1 --features binary)"));
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

#[test]
fn ingests_search_and_prunes_an_s3_prefix() {
    let s3 = start_s3();
    let bucket = s3.root.path().join("handbook");
    std::fs::create_dir_all(bucket.join("policies")).unwrap();
    std::fs::copy(
        examples_dir().join("refund-policy.pdf"),
        bucket.join("policies/refund-policy.pdf"),
    )
    .unwrap();
    std::fs::write(
        bucket.join("policies/travel.md"),
        "# Travel\n\nBook flights through the travel desk at least two weeks ahead.",
    )
    .unwrap();
    std::fs::write(
        bucket.join("other.txt"),
        "Not under the prefix: the cafeteria opens at eight.",
    )
    .unwrap();

    let mut ws = Workspace::new();
    ws.set("AWS_ENDPOINT", format!("http://127.0.0.1:{}", s3.port))
        .set("AWS_ALLOW_HTTP", "true")
        .set("AWS_ACCESS_KEY_ID", "AKTEST")
        .set("AWS_SECRET_ACCESS_KEY", "SKTEST")
        .set("AWS_REGION", "us-east-1")
        .set("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false");
    let location = std::path::Path::new("s3://handbook/policies");
    let (code, s) = ws.ingest(location, &[]);
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["indexed"], 2, "only the prefix is ingested: {s:#}");

    let hits = ws.search(
        "how many days do I have to return an item for a refund",
        &["--top-k", "1"],
    );
    assert_eq!(
        hits[0]["source"], "s3://handbook/policies/refund-policy.pdf",
        "{hits:#?}"
    );

    std::fs::remove_file(bucket.join("policies/travel.md")).unwrap();
    let (code, s) = ws.ingest(location, &["--prune"]);
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(
        (s["pruned"].as_u64(), s["unchanged"].as_u64()),
        (Some(1), Some(1)),
        "{s:#}"
    );
    let docs = points_per_doc(&ws.embedded_points("sluice"));
    assert_eq!(
        docs.keys().collect::<Vec<_>>(),
        vec!["s3://handbook/policies/refund-policy.pdf"]
    );
}
