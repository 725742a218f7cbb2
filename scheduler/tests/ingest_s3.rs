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

/// Keys with characters a URL parser reads differently (`?`, `#`, `%`, `+`, space), each beside
/// the object a misreading would name: every object is indexed under its own URI and holds its own
/// text.
#[test]
fn keys_with_reserved_characters_index_the_object_they_name() {
    let s3 = S3Server::start();
    let folder = s3.root.path().join("weird/keys");
    std::fs::create_dir_all(&folder).unwrap();
    // (key under keys/, URI Sluice names it by, a word only that object holds)
    let objects = [
        ("what?.md", "s3://weird/keys/what%3F.md", "quokka"),
        ("what", "s3://weird/keys/what", "dingo"),
        ("c#notes.md", "s3://weird/keys/c%23notes.md", "pangolin"),
        ("c", "s3://weird/keys/c", "lemur"),
        ("100%.md", "s3://weird/keys/100%25.md", "narwhal"),
        ("50%25.md", "s3://weird/keys/50%2525.md", "axolotl"),
        ("50%.md", "s3://weird/keys/50%25.md", "okapi"),
        ("1+1 = 2.md", "s3://weird/keys/1+1 = 2.md", "capybara"),
        ("1 1 = 2.md", "s3://weird/keys/1 1 = 2.md", "wombat"),
        ("a b.md", "s3://weird/keys/a b.md", "tapir"),
        ("a%20b.md", "s3://weird/keys/a%2520b.md", "ibex"),
    ];
    for (key, _, word) in &objects {
        std::fs::write(
            folder.join(key),
            format!("# Note\n\nThis note is about the {word} and nothing else."),
        )
        .unwrap();
    }

    let mut ws = Workspace::new();
    for (key, value) in s3.env() {
        ws.set(&key, value);
    }
    let (code, s) = ws.ingest(std::path::Path::new("s3://weird/keys/"), &[]);
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["indexed"], objects.len(), "{s:#}");
    assert_eq!(s["failed"], 0, "{s:#}");

    for (key, uri, word) in &objects {
        let hits = ws.search(&format!("the {word}"), &["--top-k", "1"]);
        assert_eq!(hits[0]["source"], *uri, "{key}: {hits:#?}");
        assert!(
            hits[0]["text"].as_str().unwrap_or_default().contains(word),
            "{key}: {hits:#?}"
        );
    }
    let docs = points_per_doc(&ws.embedded_points("sluice"));
    let mut indexed: Vec<&str> = docs.keys().map(String::as_str).collect();
    let mut expected: Vec<&str> = objects.iter().map(|(_, uri, _)| *uri).collect();
    indexed.sort_unstable();
    expected.sort_unstable();
    assert_eq!(indexed, expected);
}
