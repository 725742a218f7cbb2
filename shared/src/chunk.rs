//! Chunk stage: extracted sections → token-sized [`Chunk`]s with text-splitter. Markdown and
//! HTML-derived text use the Markdown-aware splitter (headings, lists and code blocks stay whole when
//! they fit); everything else the plain splitter. Sizes are counted in cl100k tokens, the tokenizer
//! OpenAI's embedding models use and a close proxy for Voyage's.
//!
//! Chunking is CPU-bound: call [`Chunker::chunk`] from a blocking thread.

use std::sync::{Arc, OnceLock};

use text_splitter::{ChunkCharIndex, ChunkConfig, MarkdownSplitter, TextSplitter};
use tiktoken_rs::CoreBPE;

use crate::model::{Chunk, ExtractedDoc};

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk settings: {0}")]
    Settings(String),
}

/// The cl100k tokenizer, built once per process (building it parses a 1.7 MB vocabulary).
pub fn cl100k() -> Arc<CoreBPE> {
    static BPE: OnceLock<Arc<CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| {
        Arc::new(tiktoken_rs::cl100k_base().expect("cl100k vocabulary ships inside tiktoken-rs"))
    })
    .clone()
}

pub struct Chunker {
    max_tokens: usize,
    overlap_tokens: usize,
    tokenizer: Arc<CoreBPE>,
    text: TextSplitter<Arc<CoreBPE>>,
    markdown: MarkdownSplitter<Arc<CoreBPE>>,
}

impl Chunker {
    pub fn new(max_tokens: usize, overlap_tokens: usize) -> Result<Self, ChunkError> {
        let tokenizer = cl100k();
        let config = || {
            ChunkConfig::new(max_tokens)
                .with_overlap(overlap_tokens)
                .map(|c| c.with_sizer(tokenizer.clone()))
                .map_err(|e| ChunkError::Settings(e.to_string()))
        };
        Ok(Chunker {
            max_tokens,
            overlap_tokens,
            text: TextSplitter::new(config()?),
            markdown: MarkdownSplitter::new(config()?),
            tokenizer,
        })
    }

    /// Identifies the chunking settings; part of the pipeline fingerprint.
    pub fn fingerprint(&self) -> String {
        format!(
            "chunker=text-splitter-0.33:cl100k:max={}:overlap={}",
            self.max_tokens, self.overlap_tokens
        )
    }

    /// Split every section; chunk indexes run across the whole document, char ranges are relative
    /// to the section (the page, for PDFs).
    pub fn chunk(&self, doc: &ExtractedDoc) -> Vec<Chunk> {
        self.chunks(doc).collect()
    }

    /// [`Chunker::chunk`] one chunk at a time, so a large document's chunks need not all be held
    /// at once (the pipeline embeds them window by window).
    pub fn chunks<'a>(&'a self, doc: &'a ExtractedDoc) -> impl Iterator<Item = Chunk> + 'a {
        let markdown = doc.format.is_markdown_like();
        doc.sections
            .iter()
            .flat_map(move |section| {
                let pieces: Box<dyn Iterator<Item = ChunkCharIndex<'a>> + 'a> = if markdown {
                    Box::new(self.markdown.chunk_char_indices(&section.text))
                } else {
                    Box::new(self.text.chunk_char_indices(&section.text))
                };
                pieces.map(move |piece| (section.page, piece))
            })
            .enumerate()
            .map(|(index, (page, piece))| {
                let len = piece.chunk.chars().count();
                Chunk {
                    index: index as u32,
                    text: piece.chunk.to_string(),
                    char_range: piece.char_offset..piece.char_offset + len,
                    page,
                    tokens: self.tokenizer.encode_ordinary(piece.chunk).len() as u32,
                }
            })
    }
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
            let chunks = chunker.chunk(&doc(format, vec![(long_text(40), None)]));
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
        let chunks = chunker.chunk(&doc(DocFormat::Text, vec![(text.clone(), None)]));
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
        assert_eq!(chunker.chunk(&d), Chunker::new(40, 5).unwrap().chunk(&d));
    }

    #[test]
    fn pages_and_indexes_follow_sections() {
        let chunker = Chunker::new(40, 0).unwrap();
        let d = doc(
            DocFormat::Pdf,
            vec![(long_text(6), Some(1)), (long_text(6), Some(2))],
        );
        let chunks = chunker.chunk(&d);
        assert_eq!(chunks.first().unwrap().page, Some(1));
        assert_eq!(chunks.last().unwrap().page, Some(2));
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.index as usize, i);
        }
    }

    #[test]
    fn overlap_must_be_smaller_than_capacity() {
        assert!(Chunker::new(10, 10).is_err());
    }
}
