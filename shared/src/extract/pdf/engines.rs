//! The PDF parsers the child runs (only ever called in the child process), tried in order until
//! one reads the document:
//!
//! 1. the content-stream reader ([`content_text`](super::content_text)): a thirteenth of
//!    pdf_oxide's CPU, the same words on the manuals we measured and mostly a better order; used
//!    unless it fails, or its text is empty or looks glued
//!    ([`looks_readable`](super::content_text::looks_readable));
//! 2. pdf_oxide: reads truncated and damaged files the lopdf-based readers refuse, 100,000 pages in
//!    seconds, and lays out pages geometrically;
//! 3. pdf-extract, for what pdf_oxide cannot read.
//!
//! Measured on 20 real manuals plus broken and hostile files (README "PDF engines"). A parser can
//! overflow its stack on absurdly nested objects, which ends the child: the child names each
//! parser on stderr before it starts ([`STARTING`]), and the parent runs the document again from
//! the parser after the one that crashed ([`Engine::after_crash`]).

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::model::{DocFormat, ExtractedDoc, Section};

use super::{ChildReply, content_text};

/// Where in the chain of parsers the child starts; the parent passes it in [`ENGINE_ENV`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// All three parsers, the fast reader first.
    Auto,
    /// pdf_oxide, then pdf-extract: for a document whose fast read crashed the child.
    PdfOxide,
    /// pdf-extract alone: for a document whose pdf_oxide run crashed the child.
    PdfExtract,
}

/// The child's engine, set by the parent.
pub const ENGINE_ENV: &str = "SLUICE_PDF_CHILD_ENGINE";

/// What the child writes on stderr before it starts a parser, followed by the parser's name.
pub const STARTING: &str = "pdf child: reading with ";

/// The parsers in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Parser {
    ContentStream,
    PdfOxide,
    PdfExtract,
}

impl Parser {
    const CHAIN: [Parser; 3] = [Parser::ContentStream, Parser::PdfOxide, Parser::PdfExtract];

    pub(super) fn name(self) -> &'static str {
        match self {
            Parser::ContentStream => "lopdf-content",
            Parser::PdfOxide => "pdf_oxide",
            Parser::PdfExtract => "pdf-extract",
        }
    }
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Auto => "auto",
            Engine::PdfOxide => "pdf_oxide",
            Engine::PdfExtract => "pdf-extract",
        }
    }

    /// What the parent asked for; anything else is [`Engine::Auto`].
    pub fn from_env() -> Self {
        match std::env::var(ENGINE_ENV).as_deref() {
            Ok("pdf_oxide") => Engine::PdfOxide,
            Ok("pdf-extract") => Engine::PdfExtract,
            _ => Engine::Auto,
        }
    }

    pub(super) fn parsers(self) -> &'static [Parser] {
        let first = match self {
            Engine::Auto => 0,
            Engine::PdfOxide => 1,
            Engine::PdfExtract => 2,
        };
        &Parser::CHAIN[first..]
    }

    /// The engine to run after a child started as `self` crashed, given what it said (the crash
    /// detail): the parser after the last one it started, or none when that was the last. A
    /// crash before any parser started is put down to the first, so the retry skips it.
    pub fn after_crash(self, detail: &str) -> Option<Engine> {
        let crashed = detail
            .rfind(STARTING)
            .and_then(|at| {
                let name = detail[at + STARTING.len()..].split([';', '\n']).next()?;
                Parser::CHAIN.into_iter().find(|p| p.name() == name.trim())
            })
            .unwrap_or(self.parsers()[0]);
        match crashed {
            Parser::ContentStream => Some(Engine::PdfOxide),
            Parser::PdfOxide => Some(Engine::PdfExtract),
            Parser::PdfExtract => None,
        }
    }
}

/// Text per page and the pages the parser rejected.
pub(super) type ParsedPdf = (ExtractedDoc, Vec<(u32, String)>);

/// Parses `bytes` with the parsers of `engine` in turn, never panicking. `before_each` runs as each
/// parser starts (the child's fault injection).
pub(super) fn parse(bytes: &[u8], engine: Engine, before_each: impl Fn(Parser)) -> ChildReply {
    let mut errors = Vec::new();
    // The fast reader's text when it looked glued: better than nothing if no other parser reads
    // the file.
    let mut glued = None;
    for &parser in engine.parsers() {
        // Written before the parser runs, so that a crash is put down to the right one.
        let _ = writeln!(std::io::stderr(), "{STARTING}{}", parser.name());
        before_each(parser);
        let result = catching_panics(parser.name(), || match parser {
            Parser::ContentStream => content_text::parse_pages(bytes).and_then(|parsed| {
                if content_text::looks_readable(&parsed.0.sections) {
                    Ok(parsed)
                } else {
                    glued = Some(parsed);
                    Err("no text, or words glued together".into())
                }
            }),
            Parser::PdfOxide => parse_pages_oxide(bytes),
            Parser::PdfExtract => parse_pages(bytes),
        });
        match result {
            Ok((doc, failed_pages)) => return ChildReply::Ok { doc, failed_pages },
            Err(error) => errors.push(error),
        }
    }
    match glued {
        Some((doc, failed_pages)) => ChildReply::Ok { doc, failed_pages },
        None => ChildReply::Corrupt {
            detail: errors.join("; "),
        },
    }
}

/// Runs one parser, turning a panic into an error; both name the engine.
fn catching_panics(
    engine: &str,
    parse: impl FnOnce() -> Result<ParsedPdf, String>,
) -> Result<ParsedPdf, String> {
    match catch_unwind(AssertUnwindSafe(parse)) {
        Ok(Ok(parsed)) => Ok(parsed),
        Ok(Err(detail)) => Err(format!("{engine}: {detail}")),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            Err(format!("{engine}: parser panicked: {message}"))
        }
    }
}

/// The document from its pages, or why there is none.
pub(super) fn assemble(
    sections: Vec<Section>,
    failed_pages: Vec<(u32, String)>,
    title: impl FnOnce() -> Option<String>,
) -> Result<ParsedPdf, String> {
    if sections.is_empty() {
        return match failed_pages.first() {
            Some((page, error)) => Err(format!("no readable page (page {page}: {error})")),
            None => Err("the document has no pages".into()),
        };
    }
    Ok((
        ExtractedDoc {
            format: DocFormat::Pdf,
            title: title(),
            sections,
        },
        failed_pages,
    ))
}

/// pdf_oxide, page by page, without its table detector (same recall and order on the measured
/// corpus, a fifth less CPU: it lays out as tables what are mostly lists).
fn parse_pages_oxide(bytes: &[u8]) -> Result<ParsedPdf, String> {
    let options = pdf_oxide::converters::ConversionOptions {
        extract_tables: false,
        ..Default::default()
    };
    let doc = pdf_oxide::PdfDocument::from_bytes(bytes.to_vec()).map_err(|e| e.to_string())?;
    if doc.is_encrypted() {
        // Many "encrypted" PDFs only restrict printing and open with the empty password.
        match doc.authenticate(b"") {
            Ok(true) => {}
            Ok(false) => return Err("encrypted and not readable without a password".into()),
            Err(e) => {
                return Err(format!(
                    "encrypted and not readable without a password: {e}"
                ));
            }
        }
    }
    let count = doc.page_count().map_err(|e| e.to_string())?;
    let mut sections = Vec::new();
    let mut failed_pages = Vec::new();
    for index in 0..count {
        let page = u32::try_from(index + 1).unwrap_or(u32::MAX);
        match doc.extract_text_with_options(index, &options) {
            Ok(text) => sections.push(Section {
                text: tidy_page(&text),
                page: Some(page),
            }),
            Err(error) => failed_pages.push((page, error.to_string())),
        }
    }
    assemble(sections, failed_pages, || oxide_info_title(&doc))
}

/// The `/Title` of the document information dictionary, if present and non-empty.
fn oxide_info_title(doc: &pdf_oxide::PdfDocument) -> Option<String> {
    let info = doc.trailer().as_dict()?.get("Info")?;
    let info = doc.resolve_object(info).ok()?;
    let title = doc.resolve_object(info.as_dict()?.get("Title")?).ok()?;
    one_line(&pdf_oxide::optional_content::decode_pdf_text_string(
        title.as_string()?,
    ))
}

/// pdf-extract. One section per page, 1-based page numbers as in the document's page tree. A page
/// the parser rejects is skipped and reported rather than silently ending the document (which is
/// what pdf-extract's own by-pages helper does).
fn parse_pages(bytes: &[u8]) -> Result<ParsedPdf, String> {
    let doc = load_lopdf(bytes)?;
    let mut sections = Vec::new();
    let mut failed_pages = Vec::new();
    for &page in doc.get_pages().keys() {
        let mut text = String::new();
        let result = {
            let mut output = pdf_extract::PlainTextOutput::new(&mut text);
            pdf_extract::output_doc_page(&doc, &mut output, page)
        };
        match result {
            Ok(()) => sections.push(Section {
                text: tidy_page(&text),
                page: Some(page),
            }),
            Err(error) => failed_pages.push((page, error.to_string())),
        }
    }
    assemble(sections, failed_pages, || info_title(&doc))
}

/// The document as lopdf (pdf-extract's parser) reads it, opened with the empty password if it is
/// encrypted (many "encrypted" PDFs only restrict printing).
pub(super) fn load_lopdf(bytes: &[u8]) -> Result<pdf_extract::Document, String> {
    let mut doc = pdf_extract::Document::load_mem(bytes).map_err(|e| e.to_string())?;
    if doc.is_encrypted() {
        doc.decrypt("")
            .map_err(|e| format!("encrypted and not readable without a password: {e}"))?;
    }
    Ok(doc)
}

/// The `/Title` of the document information dictionary, if present and non-empty.
pub(super) fn info_title(doc: &pdf_extract::Document) -> Option<String> {
    let info = doc.trailer.get_deref(b"Info", doc).ok()?.as_dict().ok()?;
    one_line(&pdf_extract::decode_text_string(info.get_deref(b"Title", doc).ok()?).ok()?)
}

/// A title on one line with single spaces; `None` when nothing is left.
fn one_line(title: &str) -> Option<String> {
    let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
    (!title.is_empty()).then_some(title)
}

/// Parsers pad pages with blank lines and trailing spaces; keep the line structure, drop the
/// padding.
pub(super) fn tidy_page(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    lines.join("\n").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_corrupt_naming_every_parser_not_a_panic() {
        match parse(b"%PDF-1.4\nnot really", Engine::Auto, |_| {}) {
            ChildReply::Corrupt { detail } => {
                for parser in Parser::CHAIN {
                    assert!(detail.contains(&format!("{}: ", parser.name())), "{detail}");
                }
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(matches!(
            parse(b"%PDF-1.4\nnot really", Engine::PdfExtract, |_| {}),
            ChildReply::Corrupt { .. }
        ));
    }

    #[test]
    fn a_crash_moves_on_to_the_parser_after_the_one_that_crashed() {
        let crash = |parser: &str| {
            format!("killed by signal 6 (SIGABRT): {STARTING}{parser}; fatal runtime error")
        };
        assert_eq!(
            Engine::Auto.after_crash(&crash("lopdf-content")),
            Some(Engine::PdfOxide)
        );
        assert_eq!(
            Engine::Auto.after_crash(&crash("pdf_oxide")),
            Some(Engine::PdfExtract)
        );
        assert_eq!(Engine::PdfOxide.after_crash(&crash("pdf-extract")), None);
        // Nothing started yet: the first parser of the chain is skipped.
        assert_eq!(
            Engine::Auto.after_crash("killed by signal 6 (SIGABRT)"),
            Some(Engine::PdfOxide)
        );
        assert_eq!(Engine::PdfExtract.after_crash("killed by signal 9"), None);
    }
}
