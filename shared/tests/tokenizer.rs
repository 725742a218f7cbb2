//! The chunker's tokenizer (bpe-openai's cl100k with a per-thread pre-tokeniser cache) counts
//! exactly what tiktoken counts, on real documents: the demo corpus, the README, the licence texts
//! Debian ships, a sample of Markdown READMEs from the cargo registry and chapters of the Rust
//! book. And for a section no longer than one piece, the chunks are exactly those text-splitter
//! made with tiktoken as its sizer (the chunker before this change), so indexed chunks keep their
//! meaning.

use std::path::{Path, PathBuf};

use sluice_shared::chunk::{Chunker, Cl100k, MAX_PIECE_BYTES};
use sluice_shared::model::{DocFormat, ExtractedDoc, Section};
use text_splitter::{ChunkConfig, ChunkSizer, MarkdownSplitter, TextSplitter};
use tiktoken_rs::CoreBPE;

fn files_under(dir: &Path, ext: &[&str], limit: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                stack.push(path);
            } else if ext.is_empty()
                || path
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| ext.contains(&e))
            {
                found.push(path);
            }
        }
    }
    found.truncate(limit);
    found
}

/// Real text of several kinds; what this machine lacks is skipped, but the repository's own
/// files are always there.
fn corpus() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut paths = files_under(&root.join("examples"), &["md", "txt", "html"], 100);
    paths.push(root.join("README.md"));
    paths.extend(files_under(
        Path::new("/usr/share/common-licenses"),
        &[],
        40,
    ));
    if let Some(home) = std::env::var_os("HOME") {
        let registry = Path::new(&home).join(".cargo/registry/src");
        let mut readmes: Vec<PathBuf> = files_under(&registry, &["md"], 5000)
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n == "README.md"))
            .collect();
        readmes.truncate(60);
        paths.extend(readmes);
        let toolchains = Path::new(&home).join(".rustup/toolchains");
        let book = std::fs::read_dir(&toolchains)
            .into_iter()
            .flatten()
            .flatten()
            .find_map(|t| {
                let book = t.path().join("share/doc/rust/html/book");
                book.is_dir().then_some(book)
            });
        if let Some(book) = book {
            let mut chapters = files_under(&book, &["html"], 400);
            chapters.retain(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("ch"))
            });
            chapters.truncate(12);
            paths.extend(chapters);
        }
    }
    let docs: Vec<(String, String)> = paths
        .into_iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            Some((p.display().to_string(), text))
        })
        .collect();
    assert!(docs.len() >= 5, "corpus too small: {}", docs.len());
    docs
}

#[test]
fn counts_equal_tiktoken_on_real_documents() {
    let tiktoken = tiktoken_rs::cl100k_base().unwrap();
    let mut total = 0usize;
    let mut docs = 0;
    for (name, text) in corpus() {
        let expected = tiktoken.encode_ordinary(&text).len();
        assert_eq!(Cl100k.count(&text), expected, "whole of {name}");
        assert_eq!(
            bpe_openai::cl100k_base().count(text.as_str()),
            expected,
            "{name}"
        );
        // And on every line, the kind of slice the splitter sizes.
        for line in text.lines().take(400) {
            assert_eq!(
                Cl100k.count(line),
                tiktoken.encode_ordinary(line).len(),
                "{name}: {line:?}"
            );
        }
        total += expected;
        docs += 1;
    }
    println!("{docs} documents, {total} cl100k tokens, counts identical");
}

#[test]
fn counts_equal_tiktoken_on_awkward_text() {
    let tiktoken = tiktoken_rs::cl100k_base().unwrap();
    for text in [
        " ".repeat(1000),
        "\n\n\n  \t\r\n".repeat(50),
        "a".repeat(5000),
        "1234567890".repeat(300),
        "ünïcödé 世界 🦀 ".repeat(200),
        "e\u{301}".repeat(500),
        "QUJD+/z9".repeat(500),
        "it's THEY'LL we'VE".repeat(100),
        "\u{feff}\u{200b}zero width".to_string(),
    ] {
        assert_eq!(
            Cl100k.count(&text),
            tiktoken.encode_ordinary(&text).len(),
            "{text:?}"
        );
    }
}

struct Tiktoken(CoreBPE);

impl ChunkSizer for Tiktoken {
    fn size(&self, chunk: &str) -> usize {
        self.0.encode_ordinary(chunk).len()
    }
}

#[test]
fn chunks_equal_the_tiktoken_chunker_for_sections_within_one_piece() {
    let (max, overlap) = (512, 64);
    let config = || {
        ChunkConfig::new(max)
            .with_overlap(overlap)
            .unwrap()
            .with_sizer(Tiktoken(tiktoken_rs::cl100k_base().unwrap()))
    };
    let old_text = TextSplitter::new(config());
    let old_markdown = MarkdownSplitter::new(config());
    let tiktoken = tiktoken_rs::cl100k_base().unwrap();
    let chunker = Chunker::new(max, overlap).unwrap();
    let mut compared = 0;
    for (name, text) in corpus() {
        // The pieces only make a difference beyond one piece; compare what must be equal.
        let text = &text[..text.floor_char_boundary(MAX_PIECE_BYTES)];
        for format in [DocFormat::Text, DocFormat::Markdown] {
            let doc = ExtractedDoc {
                format,
                title: None,
                sections: vec![Section {
                    text: text.to_string(),
                    page: None,
                }],
            };
            // The chunker sizes candidates from one table per piece; each chunk's token count too.
            let new: Vec<(usize, String, usize)> = chunker
                .chunks(&doc)
                .map(|c| {
                    let c = c.unwrap();
                    (c.char_range.start, c.text, c.tokens as usize)
                })
                .collect();
            let with_tokens = |c: text_splitter::ChunkCharIndex| {
                let tokens = tiktoken.encode_ordinary(c.chunk).len();
                (c.char_offset, c.chunk.to_string(), tokens)
            };
            let old: Vec<(usize, String, usize)> = if format == DocFormat::Markdown {
                old_markdown
                    .chunk_char_indices(text)
                    .map(with_tokens)
                    .collect()
            } else {
                old_text.chunk_char_indices(text).map(with_tokens).collect()
            };
            assert_eq!(new, old, "{name} as {format:?}");
            compared += new.len();
        }
    }
    println!("{compared} chunks identical to the tiktoken chunker's");
}
