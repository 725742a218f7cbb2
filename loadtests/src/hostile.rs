//! Hostile-input generator: writes files that have broken text pipelines elsewhere (or ours, see
//! issue 10) — a 6 MB single line, a 50 MB text file, 100k nested HTML elements, 1 MB of HTML
//! entities, Markdown with a 5 MB `data:` URI, UTF-16 without a byte-order mark, 0- and 1-byte
//! files, a PDF whose one content stream inflates to 1 GiB and a PDF of 100,000 empty pages —
//! each with what Sluice must do with it. Deterministic: the same files every run.

use std::path::{Path, PathBuf};

use base64::Engine;
use rand::{Rng, SeedableRng};

use crate::corpus::PdfWriter;

/// What Sluice must do with a hostile file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Extracted, chunked and indexed (bounded time and memory).
    Indexed,
    /// Refused with this error kind (`ExtractError::kind`), the error naming the file.
    Fails(&'static str),
}

#[derive(Debug, Clone)]
pub struct HostileFile {
    /// File name, unique in the directory.
    pub name: String,
    pub path: PathBuf,
    /// What it is, for reports.
    pub what: &'static str,
    pub expect: Expect,
    /// A word that must appear in the indexed text (`None`: nothing to check).
    pub must_contain: Option<&'static str>,
}

/// Write every hostile file into `dir` (which must exist).
pub fn write_hostile_files(dir: &Path) -> std::io::Result<Vec<HostileFile>> {
    let mut files = text_cases(dir)?;
    files.extend(pdf_cases(dir)?);
    Ok(files)
}

/// The PDF cases: what the PDF child's limits are for.
pub fn pdf_cases(dir: &Path) -> std::io::Result<Vec<HostileFile>> {
    let bomb = dir.join("deflate-bomb.pdf");
    let mut writer = PdfWriter::new(std::io::BufWriter::new(std::fs::File::create(&bomb)?));
    writer.content_page("/Filter /FlateDecode", &zlib_of_spaces(1 << 30))?;
    writer.finish()?;

    let empty = dir.join("empty-pages-100k.pdf");
    let mut writer = PdfWriter::new(std::io::BufWriter::new(std::fs::File::create(&empty)?));
    for _ in 0..100_000 {
        writer.empty_page()?;
    }
    writer.finish()?;

    Ok(vec![
        HostileFile {
            name: "deflate-bomb.pdf".into(),
            path: bomb,
            what: "1 MB PDF whose one content stream inflates to 1 GiB of spaces",
            expect: Expect::Fails("no_text"),
            must_contain: None,
        },
        HostileFile {
            name: "empty-pages-100k.pdf".into(),
            path: empty,
            what: "PDF of 100,000 pages without content",
            expect: Expect::Fails("no_text"),
            must_contain: None,
        },
    ])
}

/// A zlib stream of `len` spaces (a multiple of 1 MiB), built without compressing `len` bytes: one
/// MiB deflated and fully flushed is a byte-aligned block that inflates the same wherever it
/// stands, so the stream is that block repeated, an empty final block and the Adler-32 of the
/// whole, computed in closed form.
fn zlib_of_spaces(len: u64) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    const BLOCK: usize = 1 << 20;
    assert_eq!(len % BLOCK as u64, 0, "whole mebibytes only");
    let mut deflate = Compress::new(Compression::best(), false);
    let mut block = Vec::with_capacity(BLOCK);
    deflate
        .compress_vec(&[b' '; BLOCK], &mut block, FlushCompress::Full)
        .expect("deflating into a Vec");
    // Zlib header for the best compression level.
    let mut out = vec![0x78, 0xDA];
    for _ in 0..len / BLOCK as u64 {
        out.extend_from_slice(&block);
    }
    // BFINAL=1, fixed Huffman codes, end of block: 10 bits.
    out.extend_from_slice(&[0x03, 0x00]);
    // Adler-32 of n bytes of value c: A = 1 + n·c, B = n + c·n(n+1)/2, both mod 65521.
    let (n, c, m) = (u128::from(len), u128::from(b' '), 65_521u128);
    let a = (1 + n * c) % m;
    let b = (n + c * n * (n + 1) / 2) % m;
    out.extend_from_slice(&((b << 16 | a) as u32).to_be_bytes());
    out
}

/// The text, HTML and Markdown cases.
pub fn text_cases(dir: &Path) -> std::io::Result<Vec<HostileFile>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(10);
    let mut files = Vec::new();
    let mut add = |name: &str,
                   what: &'static str,
                   expect: Expect,
                   must_contain: Option<&'static str>,
                   bytes: &[u8]|
     -> std::io::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, bytes)?;
        files.push(HostileFile {
            name: name.to_string(),
            path,
            what,
            expect,
            must_contain,
        });
        Ok(())
    };

    let mut random = vec![0u8; 4_500_000];
    rng.fill(&mut random[..]);
    let base64 = base64::engine::general_purpose::STANDARD.encode(&random);
    add(
        "single-line-base64.txt",
        "6 MB base64 blob on one line, no whitespace",
        Expect::Indexed,
        None,
        base64.as_bytes(),
    )?;

    add(
        "one-letter-run.txt",
        "2 MB of one letter: a single pre-token and word (quadratic for tiktoken's BPE)",
        Expect::Indexed,
        None,
        &vec![b'a'; 2 << 20],
    )?;

    add(
        "large-50mb.txt",
        "50 MB plain text file of ordinary prose",
        Expect::Indexed,
        Some("lighthouse"),
        &prose(&mut rng, 50 << 20),
    )?;

    let depth = 100_000;
    let lists = format!(
        "<!doctype html><html><body>{}deepest{}</body></html>",
        "<ul><li>item ".repeat(depth),
        "</li></ul>".repeat(depth)
    );
    add(
        "nested-lists.html",
        "100k nested <ul><li> (N² bytes of indentation, N² parser work)",
        Expect::Fails("unsupported_format"),
        None,
        lists.as_bytes(),
    )?;

    let shallow = format!(
        "<!doctype html><html><body>{}bottom{}</body></html>",
        "<ul><li>item ".repeat(400),
        "</li></ul>".repeat(400)
    );
    add(
        "nested-lists-400.html",
        "400 nested lists: within the nesting limit, indentation capped",
        Expect::Indexed,
        Some("bottom"),
        shallow.as_bytes(),
    )?;

    let divs = format!(
        "<!doctype html><html><body>{}deep text{}</body></html>",
        "<div><span>".repeat(depth / 2),
        "</span></div>".repeat(depth / 2)
    );
    add(
        "nested-divs.html",
        "100k nested <div>/<span> elements",
        Expect::Fails("unsupported_format"),
        None,
        divs.as_bytes(),
    )?;

    let mut entities = String::from("<!doctype html><html><body><p>");
    let pool = [
        "&amp;",
        "&lt;",
        "&gt;",
        "&#x1F980;",
        "&eacute;",
        "&nbsp;",
        "&#8212;",
        "&notin;",
    ];
    while entities.len() < 1 << 20 {
        entities.push_str(pool[rng.random_range(0..pool.len())]);
    }
    entities.push_str("</p><p>entities end</p></body></html>");
    add(
        "entities.html",
        "1 MB of HTML character references in one paragraph",
        Expect::Indexed,
        Some("entities"),
        entities.as_bytes(),
    )?;

    let mut image = vec![0u8; 3_750_000];
    rng.fill(&mut image[..]);
    let markdown = format!(
        "# Report with an inline image\n\nSome text before.\n\n![chart](data:image/png;base64,{})\n\nSome text after.\n",
        base64::engine::general_purpose::STANDARD.encode(&image)
    );
    add(
        "data-uri.md",
        "Markdown with a 5 MB data: URI image",
        Expect::Indexed,
        Some("Report"),
        markdown.as_bytes(),
    )?;

    let utf16 = String::from_utf8(prose(&mut rng, 20_000)).expect("prose is ASCII");
    let le: Vec<u8> = utf16.encode_utf16().flat_map(u16::to_le_bytes).collect();
    add(
        "utf16-no-bom.txt",
        "UTF-16LE text without a byte-order mark",
        Expect::Indexed,
        Some("lighthouse"),
        &le,
    )?;

    add(
        "empty.txt",
        "0-byte file",
        Expect::Fails("empty"),
        None,
        b"",
    )?;
    add(
        "one-byte.txt",
        "1-byte file",
        Expect::Indexed,
        Some("x"),
        b"x",
    )?;
    add(
        "one-newline.md",
        "1-byte file that is only a line break",
        Expect::Fails("no_text"),
        None,
        b"\n",
    )?;
    Ok(files)
}

/// About `len` bytes of English-like prose in paragraphs: the 50 MB case must be ordinary text,
/// so that what is measured is size, not shape.
fn prose(rng: &mut impl Rng, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "lighthouse",
        "keeper",
        "logged",
        "every",
        "ship",
        "that",
        "passed",
        "during",
        "storm",
        "season",
        "and",
        "wrote",
        "weather",
        "notes",
        "in",
        "a",
        "small",
        "book",
        "with",
        "numbered",
        "pages",
        "harbour",
        "tide",
        "lamp",
        "oil",
        "north",
        "wind",
        "fog",
        "bell",
    ];
    let mut out = Vec::with_capacity(len + 200);
    while out.len() < len {
        let sentences = rng.random_range(2..8);
        for _ in 0..sentences {
            let words = rng.random_range(5..20);
            for w in 0..words {
                let word = WORDS[rng.random_range(0..WORDS.len())];
                if w == 0 {
                    let mut chars = word.chars();
                    if let Some(first) = chars.next() {
                        out.extend(first.to_uppercase().to_string().bytes());
                        out.extend(chars.as_str().bytes());
                    }
                } else {
                    out.push(b' ');
                    out.extend(word.bytes());
                }
            }
            out.extend_from_slice(b". ");
        }
        out.pop();
        out.extend_from_slice(b"\n\n");
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// The hand-assembled stream inflates to exactly the spaces it claims, checksum included.
    #[test]
    fn zlib_of_spaces_inflates_to_spaces_with_a_valid_checksum() {
        let len = 3 << 20;
        let stream = zlib_of_spaces(len);
        assert!(stream.len() < 16 << 10, "{} bytes", stream.len());
        let mut inflated = Vec::new();
        flate2::read::ZlibDecoder::new(&stream[..])
            .read_to_end(&mut inflated)
            .expect("a valid zlib stream");
        assert_eq!(inflated.len() as u64, len);
        assert!(inflated.iter().all(|&b| b == b' '));

        let mut corrupt = stream.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert!(
            flate2::read::ZlibDecoder::new(&corrupt[..])
                .read_to_end(&mut Vec::new())
                .is_err(),
            "the decoder checks the Adler-32"
        );
    }
}
