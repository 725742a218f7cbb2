//! `sluice ingest` / `search` / `status` on the embedded default (qdrant-edge + SQLite): the
//! idempotency rules, bad input, and a PDF parser that kills its process.

mod common;

use common::*;

const REFUND_QUERY: &str = "how many days do I have to return an item for a refund";

#[test]
fn examples_ingest_then_search_finds_the_refund_policy_first() {
    let ws = Workspace::new();
    let names = copy_examples(&ws);
    let (code, summary) = ws.ingest(&ws.docs(), &[]);
    assert_eq!(code, 0, "{summary:#}");
    assert_eq!(summary["indexed"], names.len() as u64, "{summary:#}");
    assert_eq!(summary["failed"], 0);
    let hits = ws.search(REFUND_QUERY, &["--top-k", "3"]);
    let first = hits.first().expect("at least one hit");
    assert!(
        first["source"]
            .as_str()
            .unwrap()
            .ends_with("refund-policy.pdf"),
        "{hits:#?}"
    );
    assert!(
        first["page"].as_u64().is_some(),
        "PDF hits carry their page: {first:#}"
    );
}

#[test]
fn ingesting_twice_changes_nothing() {
    let ws = Workspace::new();
    copy_examples(&ws);
    let (code, first) = ws.ingest(&ws.docs(), &[]);
    assert_eq!(code, 0, "{first:#}");
    let points_before = ws.embedded_points("sluice");
    let (code, second) = ws.ingest(&ws.docs(), &[]);
    assert_eq!(code, 0, "{second:#}");
    assert_eq!(second["unchanged"], first["indexed"], "{second:#}");
    assert_eq!(second["indexed"], 0);
    let mut points_after = ws.embedded_points("sluice");
    let mut before = points_before.clone();
    before.sort();
    points_after.sort();
    assert_eq!(before, points_after, "a re-run must not touch the points");
    assert_eq!(points_after.len() as u64, first["chunks"].as_u64().unwrap());
}

#[test]
fn an_edited_document_replaces_its_chunks_and_a_deleted_one_is_pruned() {
    let mut ws = Workspace::new();
    ws.set("SLUICE_CHUNK_MAX_TOKENS", "64")
        .set("SLUICE_CHUNK_OVERLAP_TOKENS", "8");
    ws.write(
        "glaciers.md",
        format!("# Glaciers\n\n{}", paragraphs("glacier", 30)),
    );
    ws.write("volcano.txt", paragraphs("volcano", 30));
    let doomed = ws.write("sub/tides.txt", paragraphs("tide", 10));
    let (code, s) = ws.ingest(&ws.docs(), &[]);
    assert_eq!((code, s["indexed"].as_u64()), (0, Some(3)), "{s:#}");
    let glacier_uri = file_uri(&ws.docs().join("glaciers.md"));
    let before = ws.embedded_points("sluice");
    let old_glacier: Vec<_> = before
        .iter()
        .filter(|p| p.1 == glacier_uri)
        .cloned()
        .collect();
    assert!(old_glacier.len() > 3);

    // Shorter content: fewer chunks, so stale chunks would be visible as leftovers.
    ws.write(
        "glaciers.md",
        format!("# Glaciers\n\n{}", paragraphs("moraine", 8)),
    );
    let (code, s) = ws.ingest(&ws.docs(), &[]);
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(
        (s["indexed"].as_u64(), s["unchanged"].as_u64()),
        (Some(1), Some(2)),
        "{s:#}"
    );
    let after = ws.embedded_points("sluice");
    assert_one_version_per_doc(&after);
    let new_glacier: Vec<_> = after.iter().filter(|p| p.1 == glacier_uri).collect();
    assert!(
        new_glacier.iter().all(|p| p.2 > old_glacier[0].2),
        "old version's chunks remain"
    );
    assert!(
        old_glacier
            .iter()
            .all(|old| !after.iter().any(|p| p.0 == old.0)),
        "stale chunk ids remain"
    );
    let hits = ws.search("moraine", &["--top-k", "1"]);
    assert_eq!(hits[0]["source"], glacier_uri.as_str());
    assert!(
        ws.search("glacier detail", &["--top-k", "20"])
            .iter()
            .all(|h| !h["text"].as_str().unwrap().contains("glacier detail"))
    );

    std::fs::remove_file(&doomed).unwrap();
    let (code, s) = ws.ingest(&ws.docs(), &[]);
    assert_eq!(
        (code, s["pruned"].as_u64()),
        (0, Some(0)),
        "without --prune nothing is removed: {s:#}"
    );
    let tide_uri = file_uri(&ws.docs()).to_string() + "/sub/tides.txt";
    assert!(ws.embedded_points("sluice").iter().any(|p| p.1 == tide_uri));
    let (code, s) = ws.ingest(&ws.docs(), &["--prune"]);
    assert_eq!((code, s["pruned"].as_u64()), (0, Some(1)), "{s:#}");
    let remaining = ws.embedded_points("sluice");
    assert!(
        !remaining.iter().any(|p| p.1 == tide_uri),
        "pruned document's points remain"
    );
    assert_eq!(points_per_doc(&remaining).len(), 2);
    let status = ws.sluice().args(["status", "--json"]).output().unwrap();
    let status = json_stdout("status", &status);
    assert!(
        status["counts"].to_string().contains("deleted"),
        "{status:#}"
    );
}

#[test]
fn bad_files_fail_cleanly_and_the_rest_is_indexed() {
    let mut ws = Workspace::new();
    ws.set("SLUICE_MAX_FILE_SIZE", "64KiB");
    let pdf = std::fs::read(examples_dir().join("refund-policy.pdf")).unwrap();
    ws.write("good.pdf", &pdf);
    ws.write("truncated.pdf", &pdf[..pdf.len() / 3]);
    ws.write(
        "random.pdf",
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
    );
    ws.write("actually-html.pdf", "<!doctype html><html><head><title>Disguised</title></head><body><h1>Hello</h1><p>Plain web page about lighthouses.</p></body></html>");
    ws.write("empty.txt", "");
    ws.write("huge.txt", "x".repeat(100 * 1024));
    ws.write(
        "notes.md",
        "# Notes\n\nLighthouse keepers trimmed the wicks every night.",
    );
    let (code, s) = ws.ingest(&ws.docs(), &[]);
    assert_eq!(code, 3, "failures give the documented exit status: {s:#}");
    assert_eq!(
        s["indexed"], 3,
        "good.pdf, actually-html.pdf and notes.md: {s:#}"
    );
    let failures = s["failures"].as_array().unwrap();
    let reason_of = |name: &str| {
        let f = failures
            .iter()
            .find(|f| f["source"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("{name} not among failures: {s:#}"));
        assert!(
            f["error"].as_str().unwrap().contains(name),
            "error must name the file: {f}"
        );
        f["reason"].as_str().unwrap().to_string()
    };
    // pdf_oxide reads what survives of a cut PDF; here that is no text at all.
    assert!(["corrupt", "no_text"].contains(&reason_of("truncated.pdf").as_str()));
    assert!(["corrupt", "unsupported_format"].contains(&reason_of("random.pdf").as_str()));
    assert_eq!(reason_of("empty.txt"), "empty");
    assert_eq!(reason_of("huge.txt"), "too_large");
    assert_eq!(failures.len(), 4);

    let status = json_stdout(
        "status",
        &ws.sluice().args(["status", "--json"]).output().unwrap(),
    );
    let failed = status["recent_failures"].as_array().unwrap();
    assert_eq!(failed.len(), 4, "{status:#}");
    assert!(
        failed
            .iter()
            .all(|d| d["last_error"].as_str().is_some_and(|e| !e.is_empty()))
    );
}

#[test]
fn a_pdf_parser_that_kills_its_process_does_not_kill_sluice() {
    for fault in ["abort", "stack-overflow"] {
        let mut ws = Workspace::new();
        ws.set("SLUICE_PDF_CHILD_FAULT", fault);
        ws.write(
            "doomed.pdf",
            std::fs::read(examples_dir().join("refund-policy.pdf")).unwrap(),
        );
        ws.write(
            "fine.txt",
            "Kites fly best in a steady breeze of about fifteen knots.",
        );
        let (code, s) = ws.ingest(&ws.docs(), &[]);
        assert_eq!(code, 3, "{fault}: {s:#}");
        assert_eq!(s["indexed"], 1, "{fault}: {s:#}");
        let failure = &s["failures"][0];
        assert_eq!(failure["reason"], "extract_crashed", "{fault}: {s:#}");
        assert!(failure["error"].as_str().unwrap().contains("doomed.pdf"));
    }
}

#[test]
fn two_concurrent_ingests_of_one_document_leave_one_version() {
    let ws = Workspace::new();
    let file = ws.write(
        "shared.md",
        format!("# Shared\n\n{}", paragraphs("harbour", 40)),
    );
    let spawn = || ws.spawn_ingest(&file, &["--force"]);
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "status {:?}\nsummary: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let points = ws.embedded_points("sluice");
    assert!(!points.is_empty());
    assert_one_version_per_doc(&points);
}

#[test]
fn configuration_errors_name_the_setting() {
    let mut ws = Workspace::new();
    ws.set("SLUICE_CHUNK_OVERLAP_TOKENS", "9000");
    let out = ws.sluice().arg("ingest").arg(ws.docs()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SLUICE_CHUNK_OVERLAP_TOKENS"), "{err}");
}

#[test]
fn a_missing_location_is_a_clear_error() {
    let ws = Workspace::new();
    let out = ws
        .sluice()
        .args(["ingest", "/definitely/not/here"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/definitely/not/here"), "{err}");
}
