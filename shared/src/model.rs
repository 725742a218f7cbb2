//! Message types passed between pipeline stages. They live in one place so every stage, the
//! worker and the CLI agree on them.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// The format a document was recognised as (by content sniffing first, extension second).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocFormat {
    Pdf,
    Markdown,
    Html,
    Text,
}

impl DocFormat {
    /// Whether the extracted text keeps Markdown structure, so the Markdown-aware splitter applies.
    pub fn is_markdown_like(self) -> bool {
        matches!(self, DocFormat::Markdown | DocFormat::Html)
    }
}

/// One contiguous piece of extracted text; PDFs yield one section per page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Section {
    pub text: String,
    /// 1-based page number, for paginated formats.
    pub page: Option<u32>,
}

/// The output of the extract stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtractedDoc {
    pub format: DocFormat,
    pub title: Option<String>,
    pub sections: Vec<Section>,
}

/// The output of the chunk stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// Position of the chunk within the document, from 0.
    pub index: u32,
    pub text: String,
    /// Character (not byte) range within the section's text.
    pub char_range: Range<usize>,
    pub page: Option<u32>,
    /// Token count under the chunker's tokenizer.
    pub tokens: u32,
}

/// A sparse vector: parallel index/value arrays, as Qdrant takes them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SparseVector {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

/// The vectors of one chunk (or one query).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Vectors {
    pub dense: Option<Vec<f32>>,
    pub sparse: SparseVector,
}

/// Everything stored with each point. Field names are the Qdrant payload keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkPayload {
    pub doc_id: String,
    pub source: String,
    pub title: Option<String>,
    pub chunk_index: u32,
    pub page: Option<u32>,
    pub char_start: u64,
    pub char_end: u64,
    pub text: String,
    pub content_hash: String,
    pub version: i64,
    pub tenant: Option<String>,
    /// RFC 3339.
    pub ingested_at: String,
    /// Caller-supplied metadata attached to every chunk (jobs may set it).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// `true` while the version is being written (see `store::STAGED_FIELD`); searches skip
    /// staged points, and publishing the version sets it to `false`.
    #[serde(default)]
    pub staged: bool,
}

/// A point ready for the vector store.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub id: uuid::Uuid,
    pub vectors: Vectors,
    pub payload: ChunkPayload,
}

/// A search result.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub id: uuid::Uuid,
    pub score: f32,
    pub payload: ChunkPayload,
}
