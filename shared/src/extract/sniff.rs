//! Format detection, the first step of the extract stage: decides which extractor a document goes
//! to. Content wins over the file name — a `%PDF-` header makes a PDF whatever the name, and an
//! HTML page saved as `report.pdf` is extracted as HTML — and the name only breaks ties between
//! textual formats (Markdown vs plain text). Binary content that is not a PDF is rejected here,
//! naming the file, so no extractor ever sees it.

use std::path::Path;

use encoding_rs::Encoding;

use super::ExtractError;
use crate::model::DocFormat;

/// How many leading bytes are inspected. Enough for any doctype/header and a few lines of text,
/// small enough that sniffing a large file costs nothing.
const SNIFF_LEN: usize = 8 * 1024;

/// PDF readers accept the `%PDF-` header anywhere in the first 1,024 bytes (some generators emit
/// junk before it); we only look that far when the name also says PDF.
const PDF_HEADER_WINDOW: usize = 1024;

/// Share of control characters above which a sample is considered binary. Real text has almost
/// none besides tab/newline/CR/form feed; random bytes have about 11%.
const MAX_CONTROL_RATIO: f64 = 0.02;

/// Decide the format of `bytes`; `name` (a file name, path or URI) is a hint and names the input in
/// errors.
pub fn detect(name: &str, bytes: &[u8]) -> Result<DocFormat, ExtractError> {
    if bytes.is_empty() {
        return Err(ExtractError::Empty {
            name: name.to_string(),
        });
    }
    let ext = extension(name);
    let head = &bytes[..bytes.len().min(SNIFF_LEN)];

    let trimmed = trim_leading_whitespace(head);
    if trimmed.starts_with(b"%PDF-") {
        return Ok(DocFormat::Pdf);
    }
    if ext.as_deref() == Some("pdf") && find(&head[..head.len().min(PDF_HEADER_WINDOW)], b"%PDF-") {
        return Ok(DocFormat::Pdf);
    }

    // A BOM settles that the content is text (UTF-16 is full of NUL bytes, so check it first), and
    // so does the zero-byte pattern of UTF-16 without one.
    let utf16 = utf16_without_bom(head);
    let has_bom = encoding_rs::Encoding::for_bom(head).is_some();
    if !has_bom
        && utf16.is_none()
        && let Some(detail) = binary_reason(head)
    {
        return Err(ExtractError::Unsupported {
            name: name.to_string(),
            detail,
        });
    }

    let text_head = decode_head(head, utf16);
    let lower = text_head.trim_start().to_ascii_lowercase();
    if looks_like_html(&lower)
        || (matches!(ext.as_deref(), Some("html" | "htm" | "xhtml")) && lower.starts_with('<'))
    {
        return Ok(DocFormat::Html);
    }
    match ext.as_deref() {
        // Text that merely carries a PDF name is most likely a broken export (PDF syntax without
        // its header); indexing it as prose would store garbage, so refuse it.
        Some("pdf") => Err(ExtractError::Unsupported {
            name: name.to_string(),
            detail: "named .pdf but has no %PDF- header and is neither HTML nor binary".into(),
        }),
        Some("md" | "markdown" | "mdown" | "mkd") => Ok(DocFormat::Markdown),
        Some("html" | "htm" | "xhtml") => Ok(DocFormat::Html),
        Some("txt" | "text") => Ok(DocFormat::Text),
        _ if looks_like_markdown(&text_head) => Ok(DocFormat::Markdown),
        _ => Ok(DocFormat::Text),
    }
}

/// The lowercase extension of the last path segment of `name` (works for URIs such as
/// `s3://bucket/a/b.PDF?versionId=1` too).
fn extension(name: &str) -> Option<String> {
    let without_query = name.split(['?', '#']).next().unwrap_or(name);
    let last = without_query.rsplit('/').next().unwrap_or(without_query);
    Path::new(last)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

fn trim_leading_whitespace(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Why `sample` looks binary, if it does.
fn binary_reason(sample: &[u8]) -> Option<String> {
    if sample.contains(&0) {
        return Some("binary content (NUL bytes) that is not a PDF".into());
    }
    let controls = sample
        .iter()
        .filter(|&&b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0c | 0x1b)) || b == 0x7f)
        .count();
    if controls as f64 > sample.len() as f64 * MAX_CONTROL_RATIO {
        return Some(format!(
            "binary content ({controls} control bytes in the first {} bytes) that is not a PDF",
            sample.len()
        ));
    }
    None
}

/// Good-enough text of the sample for marker checks: all markers are ASCII, so a lossy decode (or
/// the BOM's encoding for UTF-16) is fine here; the real decode happens in [`super::text`].
fn decode_head(head: &[u8], utf16: Option<&'static Encoding>) -> String {
    match (encoding_rs::Encoding::for_bom(head), utf16) {
        (Some((encoding, bom_len)), _) => encoding
            .decode_without_bom_handling(&head[bom_len..])
            .0
            .into_owned(),
        (None, Some(encoding)) => encoding.decode_without_bom_handling(head).0.into_owned(),
        (None, None) => String::from_utf8_lossy(head).into_owned(),
    }
}

/// UTF-16 without a byte-order mark, recognised in the first bytes of `bytes` by its zero bytes:
/// text in a Latin script has a zero high byte in most code units (the odd bytes in little-endian,
/// the even ones in big-endian) and almost never a zero low byte. Binary data that happens to match
/// is still refused by the decoder's control-character check.
pub fn utf16_without_bom(bytes: &[u8]) -> Option<&'static Encoding> {
    let sample = &bytes[..bytes.len().min(SNIFF_LEN) & !1];
    let units = sample.len() / 2;
    if units < 2 {
        return None;
    }
    let (mut even, mut odd) = (0, 0);
    for unit in sample.chunks_exact(2) {
        even += usize::from(unit[0] == 0);
        odd += usize::from(unit[1] == 0);
    }
    // At least two zero bytes: one NUL in a short sample is binary, not UTF-16.
    let many = (units * 3 / 10).max(2);
    let few = units / 20;
    if odd >= many && even <= few {
        Some(encoding_rs::UTF_16LE)
    } else if even >= many && odd <= few {
        Some(encoding_rs::UTF_16BE)
    } else {
        None
    }
}

/// `lower` is the lowercased, left-trimmed start of the document.
fn looks_like_html(lower: &str) -> bool {
    if lower.starts_with("<!doctype html") || lower.starts_with("<html") {
        return true;
    }
    // XML prolog or leading comments before <html>, or a page without <html> but with its usual
    // structural tags near the top.
    lower.starts_with('<')
        && ["<html", "<head", "<body", "<title", "<meta "]
            .iter()
            .any(|tag| lower.contains(tag))
}

/// Markdown markers strong enough to tell Markdown from prose: an ATX heading plus any other
/// Markdown construct, two headings, or a fenced code block.
fn looks_like_markdown(text: &str) -> bool {
    let mut headings = 0;
    let mut other = 0;
    for line in text.lines() {
        let l = line.trim_start();
        let hashes = l.bytes().take_while(|&b| b == b'#').count();
        if (1..=6).contains(&hashes) && l[hashes..].starts_with(' ') {
            headings += 1;
        } else if l.starts_with("```") || l.starts_with("~~~") {
            return true;
        } else if l.starts_with("- ")
            || l.starts_with("* ")
            || l.starts_with("> ")
            || l.contains("](")
        {
            other += 1;
        }
    }
    headings >= 2 || (headings == 1 && other >= 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(name: &str, bytes: &[u8]) -> DocFormat {
        detect(name, bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn pdf_header_wins_over_name() {
        assert_eq!(fmt("notes.txt", b"%PDF-1.7\n..."), DocFormat::Pdf);
        assert_eq!(fmt("x.pdf", b"garbage line\n%PDF-1.4\n"), DocFormat::Pdf);
        // Without the PDF name, a header buried in text is not enough.
        assert_eq!(
            fmt("x.txt", b"see the string %PDF-1.4 below\n"),
            DocFormat::Text
        );
    }

    #[test]
    fn html_is_recognised_by_content() {
        assert_eq!(
            fmt("report.pdf", b"<!DOCTYPE html><html><p>hi</p></html>"),
            DocFormat::Html
        );
        assert_eq!(
            fmt("a", b"  <html lang=en><body>x</body></html>"),
            DocFormat::Html
        );
        assert_eq!(
            fmt("a", b"<!-- c --><head><title>t</title></head>"),
            DocFormat::Html
        );
        assert_eq!(fmt("frag.html", b"<p>fragment</p>"), DocFormat::Html);
    }

    #[test]
    fn markdown_by_extension_or_markers() {
        assert_eq!(fmt("README.MD", b"plain words"), DocFormat::Markdown);
        assert_eq!(
            fmt("notes", b"# Title\n\nSee [docs](http://x).\n"),
            DocFormat::Markdown
        );
        assert_eq!(
            fmt("notes", b"```rust\nfn main() {}\n```\n"),
            DocFormat::Markdown
        );
        assert_eq!(
            fmt("notes", b"Just a line of prose.\nAnother.\n"),
            DocFormat::Text
        );
        assert_eq!(fmt("notes.txt", b"# Title\n## Sub\n"), DocFormat::Text);
    }

    #[test]
    fn binary_is_rejected_with_the_name() {
        let err = detect("blob.bin", b"abc\0def").unwrap_err();
        assert!(matches!(err, ExtractError::Unsupported { .. }));
        assert!(err.to_string().contains("blob.bin"), "{err}");
        let controls: Vec<u8> = (0..200u8).map(|i| i % 8 + 1).collect();
        assert!(matches!(
            detect("c", &controls),
            Err(ExtractError::Unsupported { .. })
        ));
    }

    #[test]
    fn utf16_with_bom_is_text_not_binary() {
        let mut bytes = vec![0xFF, 0xFE];
        for u in "hello world".encode_utf16() {
            bytes.extend_from_slice(&u.to_le_bytes());
        }
        assert_eq!(fmt("u16.txt", &bytes), DocFormat::Text);
    }

    #[test]
    fn utf16_without_bom_is_recognised() {
        let text = "Plain words in UTF-16, no byte-order mark.\n# Not markdown\n";
        let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert_eq!(utf16_without_bom(&le), Some(encoding_rs::UTF_16LE));
        assert_eq!(utf16_without_bom(&be), Some(encoding_rs::UTF_16BE));
        assert_eq!(fmt("le.txt", &le), DocFormat::Text);
        let html: Vec<u8> = "<!doctype html><p>hi</p>"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(fmt("page", &html), DocFormat::Html);
        assert_eq!(utf16_without_bom(b"plain ascii"), None);
        assert_eq!(utf16_without_bom(b"a"), None);
        assert!(matches!(
            detect("blob", &[0u8; 64]),
            Err(ExtractError::Unsupported { .. })
        ));
    }

    #[test]
    fn text_named_pdf_is_refused() {
        let err = detect("scan.pdf", b"1 0 obj << /Type /Catalog >> endobj").unwrap_err();
        assert!(matches!(err, ExtractError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("scan.pdf"));
    }

    #[test]
    fn empty_is_empty() {
        assert!(matches!(
            detect("e.txt", b""),
            Err(ExtractError::Empty { .. })
        ));
    }

    #[test]
    fn extension_of_uris() {
        assert_eq!(
            extension("s3://b/dir.v2/File.PDF?versionId=3").as_deref(),
            Some("pdf")
        );
        assert_eq!(extension("dir.d/noext"), None);
    }
}
