//! `sluice search`: ranked hits with source, page, score and a snippet.

use std::process::ExitCode;

use serde::Serialize;
use sluice_shared::config::{Settings, validate_collection_name};
use sluice_shared::wiring;

#[derive(clap::Args)]
pub struct SearchArgs {
    /// What to look for.
    pub query: String,
    /// Number of hits.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    #[arg(long)]
    pub collection: Option<String>,
    /// Only hits of this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Print hits as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Hit {
    rank: usize,
    score: f32,
    source: String,
    doc_id: String,
    title: Option<String>,
    page: Option<u32>,
    chunk_index: u32,
    text: String,
}

pub async fn run(settings: Settings, args: SearchArgs) -> anyhow::Result<ExitCode> {
    let collection = args
        .collection
        .clone()
        .unwrap_or_else(|| settings.collection.clone());
    validate_collection_name("--collection", &collection)?;
    if args.query.trim().is_empty() {
        anyhow::bail!("the search query is empty");
    }
    let pipeline = wiring::build_pipeline(&settings, true).await?;
    let hits = pipeline
        .search(
            &collection,
            &args.query,
            args.top_k.max(1),
            args.tenant.or(settings.tenant.clone()),
        )
        .await?;
    let hits: Vec<Hit> = hits
        .into_iter()
        .enumerate()
        .map(|(i, h)| Hit {
            rank: i + 1,
            score: h.score,
            source: h.payload.source,
            doc_id: h.payload.doc_id,
            title: h.payload.title,
            page: h.payload.page,
            chunk_index: h.payload.chunk_index,
            text: h.payload.text,
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&hits)?);
        return Ok(ExitCode::SUCCESS);
    }
    if hits.is_empty() {
        println!("no results in collection {collection:?}");
    }
    for h in &hits {
        let page = h.page.map(|p| format!(" (page {p})")).unwrap_or_default();
        let title = h
            .title
            .as_deref()
            .map(|t| format!(" — {t}"))
            .unwrap_or_default();
        println!("{}. [{:.4}] {}{}{}", h.rank, h.score, h.source, page, title);
        println!("   {}", snippet(&h.text, 240));
    }
    Ok(ExitCode::SUCCESS)
}

/// The first `max` characters on one line.
fn snippet(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max).collect();
    format!("{cut}…")
}
