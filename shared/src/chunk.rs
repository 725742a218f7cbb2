//! Chunk stage: extracted sections → token-sized [`Chunk`]s with text-splitter. Markdown and
//! HTML-derived text use the Markdown-aware splitter (headings, lists and code blocks stay whole when
//! they fit); everything else the plain splitter. Sizes are counted in cl100k tokens, the tokenizer
//! OpenAI's embedding models use and a close proxy for Voyage's.
//!
//! Chunking is CPU-bound: call [`Chunker::chunk`] from a blocking thread.

mod tokenizer;

use text_splitter::{ChunkCharIndex, ChunkConfig, ChunkSizer, MarkdownSplitter, TextSplitter};

pub use tokenizer::Cl100k;
use tokenizer::PieceTable;

use crate::model::{Chunk, ExtractedDoc};

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk settings: {0}")]
    Settings(String),
    #[error(
        "the document makes more than {limit} chunks (SLUICE_MAX_CHUNKS_PER_DOCUMENT); split it \
         or raise the limit"
    )]
    TooManyChunks { limit: usize },
}

/// Largest piece of a section handed to text-splitter at once. text-splitter's work per chunk
/// grows with the text left in what it is given (it re-sorts the remaining semantic ranges, and
/// re-segments an unbreakable run from the cursor), so a 50 MB section in one call is quadratic;
/// pieces of bounded size keep the whole linear. Sections up to this size are split exactly as
/// before; longer ones are cut at a paragraph break, else a line break, else a space, near the
/// end of each piece.
pub const MAX_PIECE_BYTES: usize = 32 * 1024;

/// Piece size for text with no whitespace at all to cut at (a base64 blob, minified JSON): small,
/// because text-splitter rescans such a run word- and sentence-wise for every chunk.
const RUN_PIECE_BYTES: usize = 8 * 1024;

/// text-splitter's sizer: cl100k counts of slices of one piece, from that piece's table, capped.
/// The splitter only compares a candidate's size with the capacity (and, probing ahead, with
/// 1.25 × capacity), so counting a candidate far larger than a chunk past twice the capacity is
/// wasted work.
struct TableSizer<'t> {
    table: &'t PieceTable<'t>,
    cap: usize,
}

impl ChunkSizer for TableSizer<'_> {
    fn size(&self, chunk: &str) -> usize {
        self.table.count_up_to(chunk, self.cap)
    }
}

pub struct Chunker {
    max_tokens: usize,
    overlap_tokens: usize,
    max_chunks: usize,
}

impl Chunker {
    /// Default for [`Chunker::with_max_chunks`] (`SLUICE_MAX_CHUNKS_PER_DOCUMENT`).
    pub const DEFAULT_MAX_CHUNKS: usize = 50_000;

    pub fn new(max_tokens: usize, overlap_tokens: usize) -> Result<Self, ChunkError> {
        ChunkConfig::new(max_tokens)
            .with_overlap(overlap_tokens)
            .map_err(|e| ChunkError::Settings(e.to_string()))?;
        Ok(Chunker {
            max_tokens,
            overlap_tokens,
            max_chunks: Self::DEFAULT_MAX_CHUNKS,
        })
    }

    /// text-splitter's chunks of one piece (at most [`MAX_PIECE_BYTES`] of text, so a bounded
    /// number), each with its token count; the splitter is made per piece around its table.
    fn split_piece<'a>(&self, piece: &'a str, markdown: bool) -> Vec<(ChunkCharIndex<'a>, usize)> {
        let table = PieceTable::new(piece);
        let sizer = TableSizer {
            table: &table,
            cap: self.max_tokens.saturating_mul(2).saturating_add(2),
        };
        let config = ChunkConfig::new(self.max_tokens)
            .with_sizer(sizer)
            .with_overlap(self.overlap_tokens)
            .expect("Chunker::new checked the overlap against the capacity");
        let chunks: Vec<ChunkCharIndex<'a>> = if markdown {
            MarkdownSplitter::new(config)
                .chunk_char_indices(piece)
                .collect()
        } else {
            TextSplitter::new(config)
                .chunk_char_indices(piece)
                .collect()
        };
        chunks
            .into_iter()
            .map(|chunk| {
                let tokens = table.count_up_to(chunk.chunk, usize::MAX);
                (chunk, tokens)
            })
            .collect()
    }

    /// Fail a document that makes more than `max_chunks` chunks ([`ChunkError::TooManyChunks`]).
    pub fn with_max_chunks(mut self, max_chunks: usize) -> Self {
        self.max_chunks = max_chunks;
        self
    }

    /// Identifies the chunking settings; part of the pipeline fingerprint. `pieces` marks the
    /// bounded pieces (sections longer than [`MAX_PIECE_BYTES`] chunk differently from before).
    pub fn fingerprint(&self) -> String {
        format!(
            "chunker=text-splitter-0.33:cl100k:max={}:overlap={}:pieces={}",
            self.max_tokens, self.overlap_tokens, MAX_PIECE_BYTES
        )
    }

    /// Split every section; chunk indexes run across the whole document, char ranges are relative
    /// to the section (the page, for PDFs).
    pub fn chunk(&self, doc: &ExtractedDoc) -> Result<Vec<Chunk>, ChunkError> {
        self.chunks(doc).collect()
    }

    /// [`Chunker::chunk`] one chunk at a time, so a large document's chunks need not all be held
    /// at once (the pipeline embeds them window by window), and a caller can stop between chunks:
    /// each step costs at most one piece's worth of work. Past `max_chunks` it yields
    /// [`ChunkError::TooManyChunks`] once and ends.
    pub fn chunks<'a>(
        &'a self,
        doc: &'a ExtractedDoc,
    ) -> impl Iterator<Item = Result<Chunk, ChunkError>> + 'a {
        let markdown = doc.format.is_markdown_like();
        let limit = self.max_chunks;
        doc.sections
            .iter()
            .flat_map(move |section| {
                pieces(&section.text).flat_map(move |(piece_chars, piece)| {
                    self.split_piece(piece, markdown)
                        .into_iter()
                        .map(move |chunk| (section.page, piece_chars, chunk))
                })
            })
            .enumerate()
            .map_while(move |(index, (page, piece_chars, (piece, tokens)))| {
                if index > limit {
                    return None;
                }
                if index == limit {
                    return Some(Err(ChunkError::TooManyChunks { limit }));
                }
                let start = piece_chars + piece.char_offset;
                let len = piece.chunk.chars().count();
                Some(Ok(Chunk {
                    index: index as u32,
                    text: piece.chunk.to_string(),
                    char_range: start..start + len,
                    page,
                    tokens: tokens as u32,
                }))
            })
    }
}

/// `text` cut into pieces of at most [`MAX_PIECE_BYTES`], each with its char offset in `text`.
fn pieces(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut rest = text;
    let mut chars_before = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = piece_end(rest);
        let (piece, tail) = rest.split_at(cut);
        let offset = chars_before;
        chars_before += piece.chars().count();
        rest = tail;
        Some((offset, piece))
    })
}

/// Byte length of the next piece of `text`: all of it if short, else up to and including the last
/// paragraph break in the second half of the window, else the last line break there, else the
/// last whitespace anywhere in the window, else [`RUN_PIECE_BYTES`] of an unbreakable run.
fn piece_end(text: &str) -> usize {
    if text.len() <= MAX_PIECE_BYTES {
        return text.len();
    }
    let window = &text[..text.floor_char_boundary(MAX_PIECE_BYTES)];
    let half = window.ceil_char_boundary(window.len() / 2);
    if let Some(i) = window[half..].rfind("\n\n") {
        return half + i + 2;
    }
    if let Some(i) = window[half..].rfind('\n') {
        return half + i + 1;
    }
    if let Some((i, c)) = window.char_indices().rev().find(|(_, c)| c.is_whitespace())
        && i > 0
    {
        return i + c.len_utf8();
    }
    text.floor_char_boundary(RUN_PIECE_BYTES)
        .max(text.ceil_char_boundary(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DocFormat, Section};

    fn long_text(paragraphs: usize) -> String {
        (0..paragraphs)
            .map(|i| {
                format!(
                    "Paragraph {i} talks about topic {} with some détails, numbers like {} and punctuation! \
                     It continues for a while so that several paragraphs fill a chunk; ünïcödé is kept intact.",
                    i % 7,
                    i * 31
                )
            })
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    fn doc(format: DocFormat, sections: Vec<(String, Option<u32>)>) -> ExtractedDoc {
        ExtractedDoc {
            format,
            title: None,
            sections: sections
                .into_iter()
                .map(|(text, page)| Section { text, page })
                .collect(),
        }
    }

    #[test]
    fn chunks_respect_the_token_limit() {
        let chunker = Chunker::new(64, 8).unwrap();
        for format in [DocFormat::Text, DocFormat::Markdown] {
            let chunks = chunker
                .chunk(&doc(format, vec![(long_text(40), None)]))
                .unwrap();
            assert!(chunks.len() > 5);
            for c in &chunks {
                assert!(
                    c.tokens as usize <= 64,
                    "chunk {} has {} tokens",
                    c.index,
                    c.tokens
                );
                assert!(c.tokens > 0);
            }
        }
    }

    #[test]
    fn chunks_cover_the_text_and_ranges_point_at_it() {
        let chunker = Chunker::new(50, 10).unwrap();
        let text = long_text(30);
        let chars: Vec<char> = text.chars().collect();
        let chunks = chunker
            .chunk(&doc(DocFormat::Text, vec![(text.clone(), None)]))
            .unwrap();
        let mut covered = vec![false; chars.len()];
        for c in &chunks {
            let slice: String = chars[c.char_range.clone()].iter().collect();
            assert_eq!(
                slice, c.text,
                "char range of chunk {} does not match its text",
                c.index
            );
            covered[c.char_range.clone()]
                .iter_mut()
                .for_each(|x| *x = true);
        }
        // Only whitespace between chunks may be left out (chunks are trimmed).
        for (i, ch) in chars.iter().enumerate() {
            assert!(
                covered[i] || ch.is_whitespace(),
                "char {i} ({ch:?}) is in no chunk"
            );
        }
        // Overlap means neighbours may share text, but each chunk starts after the previous start.
        for w in chunks.windows(2) {
            assert!(w[1].char_range.start > w[0].char_range.start);
        }
    }

    #[test]
    fn chunking_is_deterministic() {
        let chunker = Chunker::new(40, 5).unwrap();
        let d = doc(
            DocFormat::Markdown,
            vec![(format!("# Title\n\n{}", long_text(20)), None)],
        );
        assert_eq!(
            chunker.chunk(&d).unwrap(),
            Chunker::new(40, 5).unwrap().chunk(&d).unwrap()
        );
    }

    #[test]
    fn pages_and_indexes_follow_sections() {
        let chunker = Chunker::new(40, 0).unwrap();
        let d = doc(
            DocFormat::Pdf,
            vec![(long_text(6), Some(1)), (long_text(6), Some(2))],
        );
        let chunks = chunker.chunk(&d).unwrap();
        assert_eq!(chunks.first().unwrap().page, Some(1));
        assert_eq!(chunks.last().unwrap().page, Some(2));
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.index as usize, i);
        }
    }

    /// Every char of `text` that is not whitespace lies in a chunk whose range points at it.
    fn assert_covers(text: &str, chunks: &[Chunk]) {
        let chars: Vec<char> = text.chars().collect();
        let mut covered = vec![false; chars.len()];
        for c in chunks {
            let slice: String = chars[c.char_range.clone()].iter().collect();
            assert_eq!(slice, c.text, "chunk {} range", c.index);
            covered[c.char_range.clone()]
                .iter_mut()
                .for_each(|x| *x = true);
        }
        let missed = (0..chars.len()).find(|&i| !covered[i] && !chars[i].is_whitespace());
        assert_eq!(missed, None, "a char is in no chunk");
    }

    #[test]
    fn long_sections_are_chunked_in_pieces_that_keep_ranges_right() {
        let chunker = Chunker::new(128, 16).unwrap();
        // Paragraphs, then an unbreakable run (a base64 blob), then multibyte text, all in one
        // section several pieces long.
        let text = format!(
            "{}\n\n{}\n{}",
            long_text(400),
            "QUJD+/z9".repeat(20_000),
            "ünïcödé 世界 ".repeat(5_000)
        );
        assert!(text.len() > 6 * MAX_PIECE_BYTES);
        for format in [DocFormat::Text, DocFormat::Markdown] {
            let chunks = chunker
                .chunk(&doc(format, vec![(text.clone(), None)]))
                .unwrap();
            assert_covers(&text, &chunks);
            for c in &chunks {
                assert!(
                    c.tokens as usize <= 128 && c.tokens > 0,
                    "{} tokens",
                    c.tokens
                );
            }
        }
    }

    #[test]
    fn pieces_tile_the_text() {
        for text in [
            String::new(),
            "short".to_string(),
            "x".repeat(100_000),
            "é".repeat(50_001),
            "🦀∉ é\n".repeat(10_000),
            format!("{}\n\n{}", "a b ".repeat(10_000), "y".repeat(70_000)),
        ] {
            let mut joined = String::new();
            let mut chars = 0;
            for (offset, piece) in pieces(&text) {
                assert_eq!(offset, chars);
                assert!(!piece.is_empty() && piece.len() <= MAX_PIECE_BYTES);
                chars += piece.chars().count();
                joined.push_str(piece);
            }
            assert_eq!(joined, text);
        }
    }

    #[test]
    fn too_many_chunks_is_an_error_after_the_limit() {
        let chunker = Chunker::new(20, 0).unwrap().with_max_chunks(3);
        let items: Vec<_> = chunker
            .chunks(&doc(DocFormat::Text, vec![(long_text(10), None)]))
            .collect();
        assert_eq!(items.len(), 4);
        assert!(items[..3].iter().all(Result::is_ok));
        let err = items[3].as_ref().unwrap_err();
        assert!(matches!(err, ChunkError::TooManyChunks { limit: 3 }));
        assert!(err.to_string().contains("SLUICE_MAX_CHUNKS_PER_DOCUMENT"));
        // Exactly at the limit is fine.
        let few = Chunker::new(20, 0).unwrap();
        let n = few
            .chunk(&doc(DocFormat::Text, vec![(long_text(2), None)]))
            .unwrap()
            .len();
        let exact = Chunker::new(20, 0).unwrap().with_max_chunks(n);
        assert_eq!(
            exact
                .chunk(&doc(DocFormat::Text, vec![(long_text(2), None)]))
                .unwrap()
                .len(),
            n
        );
    }

    #[test]
    fn overlap_must_be_smaller_than_capacity() {
        assert!(Chunker::new(10, 10).is_err());
    }
}
