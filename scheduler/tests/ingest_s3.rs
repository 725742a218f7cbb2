//! `sluice ingest s3://...` against a real S3 server (s3s-fs, installed by scripts/test.sh).

mod common;

use common::*;
use sluice_loadtests::s3::S3Server;

#[test]
fn ingests_search_and_prunes_an_s3_prefix() {
    let s3 = S3Server::start();
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
    for (key, value) in s3.env() {
        ws.set(&key, value);
    }
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
