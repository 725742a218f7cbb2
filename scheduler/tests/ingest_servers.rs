//! The same CLI against the server-side stores — PostgreSQL (real) and Qdrant over gRPC (the
//! stand-in) — and with a dense embedding provider (the emulator), i.e. hybrid search.

mod common;

use common::*;
use sluice_loadtests::emulator::EmulatorConfig;

fn server_workspace(servers: &Servers, db: &sluice_shared::testing::TestDatabase) -> Workspace {
    let mut ws = Workspace::new();
    ws.set("SLUICE_QDRANT_URL", servers.qdrant_url.clone())
        .set("SLUICE_DATABASE_URL", db.url.clone());
    ws
}

#[test]
fn postgres_and_qdrant_idempotency_and_reindex() {
    let servers = Servers::start();
    let db = test_database(&servers);
    let mut ws = server_workspace(&servers, &db);
    ws.set("SLUICE_COLLECTION", "servers_idem")
        .set("SLUICE_CHUNK_MAX_TOKENS", "48")
        .set("SLUICE_CHUNK_OVERLAP_TOKENS", "0");
    copy_examples(&ws);
    ws.write(
        "notes/otters.md",
        format!("# Otters\n\n{}", paragraphs("otter", 25)),
    );
    let (code, first) = ws.ingest(&ws.docs(), &[]);
    assert_eq!(code, 0, "{first:#}");
    let points = servers.points("servers_idem");
    assert_eq!(points.len() as u64, first["chunks"].as_u64().unwrap());
    assert_one_version_per_doc(&points);

    let (code, again) = ws.ingest(&ws.docs(), &[]);
    assert_eq!(
        (code, again["unchanged"].clone()),
        (0, first["indexed"].clone()),
        "{again:#}"
    );
    assert_eq!(servers.points("servers_idem").len(), points.len());

    ws.write(
        "notes/otters.md",
        format!("# Otters\n\n{}", paragraphs("beaver", 5)),
    );
    let (code, edited) = ws.ingest(&ws.docs(), &[]);
    assert_eq!(
        (code, edited["indexed"].as_u64()),
        (0, Some(1)),
        "{edited:#}"
    );
    let after = servers.points("servers_idem");
    assert_one_version_per_doc(&after);
    let otter_uri = file_uri(&ws.docs().join("notes/otters.md"));
    let otter_points = after.iter().filter(|p| p.1 == otter_uri).count();
    assert!(otter_points > 0 && otter_points < points.iter().filter(|p| p.1 == otter_uri).count());

    let hits = ws.search(
        "how many days do I have to return an item for a refund",
        &["--top-k", "1"],
    );
    assert!(
        hits[0]["source"]
            .as_str()
            .unwrap()
            .ends_with("refund-policy.pdf"),
        "{hits:#?}"
    );
}

#[test]
fn concurrent_ingests_of_one_document_converge_to_one_version() {
    let servers = Servers::start();
    let db = test_database(&servers);
    let mut ws = server_workspace(&servers, &db);
    ws.set("SLUICE_COLLECTION", "servers_race");
    let file = ws.write("race.md", format!("# Race\n\n{}", paragraphs("heron", 60)));
    let children: Vec<_> = (0..3)
        .map(|_| ws.spawn_ingest(&file, &["--force"]))
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "status {:?}\nsummary: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let points = servers.points("servers_race");
    assert!(!points.is_empty());
    assert_one_version_per_doc(&points);
    let status = json_stdout(
        "status",
        &ws.sluice().args(["status", "--json"]).output().unwrap(),
    );
    assert_eq!(
        status["total_chunks"].as_u64(),
        Some(points.len() as u64),
        "{status:#}"
    );
}

#[test]
fn hybrid_search_with_a_dense_provider() {
    let servers = Servers::start();
    let db = test_database(&servers);
    let emulator = servers.emulator(EmulatorConfig {
        api_key: Some("vk-test-secret".into()),
        ..Default::default()
    });
    let mut ws = server_workspace(&servers, &db);
    ws.set("SLUICE_COLLECTION", "servers_hybrid")
        .set("SLUICE_EMBED_PROVIDER", "voyage")
        .set("SLUICE_EMBED_BASE_URL", emulator.clone())
        .set("SLUICE_EMBED_API_KEY", "vk-test-secret");
    copy_examples(&ws);
    let (code, s) = ws.ingest(&ws.docs(), &[]);
    assert_eq!(code, 0, "{s:#}");
    let hits = ws.search(
        "how many days do I have to return an item for a refund",
        &["--top-k", "3"],
    );
    assert!(
        hits[0]["source"]
            .as_str()
            .unwrap()
            .ends_with("refund-policy.pdf"),
        "{hits:#?}"
    );

    // A wrong key fails fast with the provider's message and never prints the key.
    ws.set("SLUICE_EMBED_API_KEY", "vk-wrong-key");
    ws.write("new.md", "# New\n\nA new document needs embedding.");
    let out = ws
        .sluice()
        .arg("ingest")
        .arg(ws.docs())
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("401"), "{all}");
    assert!(
        !all.contains("vk-wrong-key") && !all.contains("vk-test-secret"),
        "key leaked: {all}"
    );
}

#[test]
fn a_document_slower_than_its_lease_keeps_it_by_renewing() {
    let servers = Servers::start();
    let db = test_database(&servers);
    // Every embedding request takes longer than the whole lease.
    let emulator = servers.emulator(EmulatorConfig {
        latency: std::time::Duration::from_secs(4),
        ..Default::default()
    });
    let mut ws = server_workspace(&servers, &db);
    ws.set("SLUICE_COLLECTION", "servers_slow")
        .set("SLUICE_LEASE_SECS", "3")
        .set("SLUICE_EMBED_PROVIDER", "openai")
        .set("SLUICE_EMBED_BASE_URL", emulator)
        .set("SLUICE_EMBED_API_KEY", "k");
    let file = ws.write(
        "slow.md",
        format!("# Slow\n\n{}", paragraphs("tortoise", 10)),
    );
    let spawn = || ws.spawn_ingest(&file, &["--force"]);
    let first = spawn();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // Without renewal the second run would take the document over once the first lease ran out
    // and the first run's commit would be refused.
    let second = spawn();
    for child in [first, second] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert_one_version_per_doc(&servers.points("servers_slow"));
}
