//! Text decoding for the extract stage: turns the bytes of every textual format (plain text,
//! Markdown, HTML) into a Rust string before the format-specific extractor runs, and builds the
//! [`ExtractedDoc`] for plain text and Markdown.
//!
//! Order of evidence: a byte-order mark (UTF-8, UTF-16LE/BE) decides; then the zero bytes of
//! UTF-16 without a mark ([`super::sniff::utf16_without_bom`]); otherwise valid UTF-8 is
//! UTF-8; otherwise `chardetng` guesses a legacy encoding (Windows-1252, Shift_JIS, GBK, …) and
//! `encoding_rs` decodes it. A decode that needs replacement characters or yields control-character
//! soup is refused rather than indexed as mojibake.

use std::borrow::Cow;

use super::ExtractError;
use crate::model::{DocFormat, ExtractedDoc, Section};

/// Share of control characters (other than tab, newline, CR, form feed) above which decoded text is
/// considered binary rather than prose.
const MAX_CONTROL_RATIO: f64 = 0.02;

/// Decode `bytes` to a string with Unix newlines. `name` names the input in errors.
pub fn decode(name: &str, bytes: &[u8]) -> Result<String, ExtractError> {
    let encoding_error = |detail: String| ExtractError::Encoding {
        name: name.to_string(),
        detail,
    };
    let text: Cow<'_, str> =
        if let Some((encoding, bom_len)) = encoding_rs::Encoding::for_bom(bytes) {
            encoding
                .decode_without_bom_handling_and_without_replacement(&bytes[bom_len..])
                .ok_or_else(|| {
                    encoding_error(format!(
                        "invalid {} after its byte-order mark",
                        encoding.name()
                    ))
                })?
        } else if let Some(encoding) = super::sniff::utf16_without_bom(bytes) {
            // Before UTF-8: ASCII text in UTF-16 is valid UTF-8 too, NULs and all.
            encoding
                .decode_without_bom_handling_and_without_replacement(bytes)
                .ok_or_else(|| {
                    encoding_error(format!(
                        "looks like {} without a byte-order mark but is not valid",
                        encoding.name()
                    ))
                })?
        } else if let Ok(utf8) = std::str::from_utf8(bytes) {
            Cow::Borrowed(utf8)
        } else {
            let mut detector = chardetng::EncodingDetector::new();
            detector.feed(bytes, true);
            // Not valid UTF-8 (checked above), so do not let the detector pick it.
            let encoding = detector.guess(None, false);
            encoding
                .decode_without_bom_handling_and_without_replacement(bytes)
                .ok_or_else(|| {
                    encoding_error(format!(
                        "not valid UTF-8, and not valid {} either (best guess)",
                        encoding.name()
                    ))
                })?
        };
    // Decoding "without replacement" already refused any input that would need U+FFFD; what is
    // left to catch is input that decodes "validly" but is not prose (every byte is a
    // Windows-1252 character, so binary junk decodes fine).
    let controls = text
        .chars()
        .filter(|&c| c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\x0c' | '\x1b'))
        .count();
    let total = text.chars().count().max(1);
    if controls as f64 > total as f64 * MAX_CONTROL_RATIO {
        return Err(encoding_error(format!(
            "decoded text is mostly not text ({controls} control characters in {total})"
        )));
    }
    Ok(normalize_newlines(&text))
}

/// CRLF and lone CR (old Mac) become LF, so offsets and splitting behave the same everywhere.
fn normalize_newlines(text: &str) -> String {
    if !text.contains('\r') {
        return text.to_string();
    }
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// A Markdown document, kept as Markdown so the chunker can split on its structure. The title is
/// the first level-1 ATX heading outside fenced code.
pub fn markdown(text: String) -> ExtractedDoc {
    let title = markdown_title(&text);
    ExtractedDoc {
        format: DocFormat::Markdown,
        title,
        sections: vec![Section { text, page: None }],
    }
}

fn markdown_title(text: &str) -> Option<String> {
    let mut in_fence = false;
    for line in text.lines() {
        let l = line.trim_start();
        if l.starts_with("```") || l.starts_with("~~~") {
            in_fence = !in_fence;
        } else if !in_fence && let Some(rest) = l.strip_prefix("# ") {
            // A closing sequence of #s is optional ATX syntax, not part of the title.
            let title = rest.trim().trim_end_matches('#').trim();
            if !title.is_empty() {
                return Some(title.to_string());
            }
        }
    }
    None
}

/// A plain-text document: one section, no title (callers fall back to the file name).
pub fn plain(text: String) -> ExtractedDoc {
    ExtractedDoc {
        format: DocFormat::Text,
        title: None,
        sections: vec![Section { text, page: None }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_bom_is_stripped_and_crlf_normalised() {
        let text = decode("a.txt", b"\xEF\xBB\xBFline one\r\nline two\rline three").unwrap();
        assert_eq!(text, "line one\nline two\nline three");
    }

    #[test]
    fn utf16_be_with_bom() {
        let mut bytes = vec![0xFE, 0xFF];
        for u in "Grüße, 世界".encode_utf16() {
            bytes.extend_from_slice(&u.to_be_bytes());
        }
        assert_eq!(decode("b.txt", &bytes).unwrap(), "Grüße, 世界");
    }

    #[test]
    fn utf16_without_bom_is_decoded() {
        let text = "Grüße aus Köln — plain words without a byte-order mark.";
        let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert_eq!(decode("le.txt", &le).unwrap(), text);
        assert_eq!(decode("be.txt", &be).unwrap(), text);
        // Odd length: not valid UTF-16, refused with the name.
        let err = decode("odd.txt", &le[..le.len() - 1]).unwrap_err();
        assert!(err.to_string().contains("odd.txt"), "{err}");
    }

    #[test]
    fn windows_1252_is_detected() {
        // "Café – déjà vu" with an en dash (0x96) that only Windows-1252 has.
        let bytes =
            b"Le caf\xe9 \x96 d\xe9j\xe0 vu, na\xefve r\xe9sum\xe9 \xe0 la cr\xe8me br\xfbl\xe9e.";
        let text = decode("c.txt", bytes).unwrap();
        assert_eq!(text, "Le café – déjà vu, naïve résumé à la crème brûlée.");
    }

    #[test]
    fn invalid_utf16_after_bom_is_an_encoding_error() {
        // An unpaired high surrogate.
        let err = decode("bad.txt", &[0xFF, 0xFE, 0x00, 0xD8, 0x41, 0x00]).unwrap_err();
        assert!(matches!(err, ExtractError::Encoding { .. }), "{err}");
        assert!(err.to_string().contains("bad.txt"));
    }

    #[test]
    fn control_soup_is_an_encoding_error() {
        let bytes: Vec<u8> = (0..100u8)
            .map(|i| if i % 3 == 0 { 0x01 } else { b'a' })
            .collect();
        assert!(matches!(
            decode("soup.txt", &bytes),
            Err(ExtractError::Encoding { .. })
        ));
    }

    #[test]
    fn markdown_title_skips_code_and_subheadings() {
        let md = "```\n# not a title\n```\n## Sub\n# The Title #\n# Second\n".to_string();
        let doc = markdown(md.clone());
        assert_eq!(doc.title.as_deref(), Some("The Title"));
        assert_eq!(doc.sections[0].text, md);
        assert_eq!(doc.format, DocFormat::Markdown);
    }
}
