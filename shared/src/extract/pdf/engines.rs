//! The PDF parsers the child runs (only ever called in the child process).
//!
//! pdf_oxide first, pdf-extract as the fallback for what pdf_oxide cannot read. Measured on 20 real
//! manuals plus broken and hostile files (README "PDF engines"): pdf_oxide needs 1.4–1.8× less
//! CPU, recovers text from truncated and damaged files that pdf-extract refuses, reads a 50 MB PDF
//! within the default timeout and 100,000 pages in seconds (pdf-extract's per-page calls rebuild the
//! page list each time: quadratic in pages), and never lost a producer's text (pdf-extract
//! recovered 19% of one Ghostscript file). It reads multi-column pages in a slightly worse order,
//! and it can overflow its stack on absurdly nested objects — the parent then runs the document
//! again with pdf-extract alone ([`Engine::PdfExtract`]).

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::model::{DocFormat, ExtractedDoc, Section};

use super::ChildReply;

/// Which parser(s) the child uses; the parent passes it in [`ENGINE_ENV`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// pdf_oxide, then pdf-extract if pdf_oxide fails or panics.
    Auto,
    /// pdf-extract alone: for a document whose pdf_oxide run crashed the child.
    PdfExtract,
}

/// The child's engine, set by the parent.
pub const ENGINE_ENV: &str = "SLUICE_PDF_CHILD_ENGINE";

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Auto => "auto",
            Engine::PdfExtract => "pdf-extract",
        }
    }

    /// What the parent asked for; anything else is [`Engine::Auto`].
    pub fn from_env() -> Self {
        match std::env::var(ENGINE_ENV).as_deref() {
            Ok("pdf-extract") => Engine::PdfExtract,
            _ => Engine::Auto,
        }
    }
}

/// Text per page and the pages the parser rejected.
type ParsedPdf = (ExtractedDoc, Vec<(u32, String)>);

/// Parses `bytes` with `engine`, never panicking.
pub(super) fn parse(bytes: &[u8], engine: Engine) -> ChildReply {
    let extract = || catching_panics("pdf-extract", || parse_pages(bytes));
    let result = match engine {
        Engine::PdfExtract => extract(),
        Engine::Auto => match catching_panics("pdf_oxide", || parse_pages_oxide(bytes)) {
            Ok(parsed) => Ok(parsed),
            Err(oxide) => extract().map_err(|other| format!("{oxide}; {other}")),
        },
    };
    match result {
        Ok((doc, failed_pages)) => ChildReply::Ok { doc, failed_pages },
        Err(detail) => ChildReply::Corrupt { detail },
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
fn assemble(
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
    let mut doc = pdf_extract::Document::load_mem(bytes).map_err(|e| e.to_string())?;
    if doc.is_encrypted() {
        doc.decrypt("")
            .map_err(|e| format!("encrypted and not readable without a password: {e}"))?;
    }
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

/// The `/Title` of the document information dictionary, if present and non-empty.
fn info_title(doc: &pdf_extract::Document) -> Option<String> {
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
fn tidy_page(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    lines.join("\n").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_corrupt_naming_both_engines_not_a_panic() {
        match parse(b"%PDF-1.4\nnot really", Engine::Auto) {
            ChildReply::Corrupt { detail } => {
                assert!(
                    detail.contains("pdf_oxide: ") && detail.contains("pdf-extract: "),
                    "{detail}"
                );
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(matches!(
            parse(b"%PDF-1.4\nnot really", Engine::PdfExtract),
            ChildReply::Corrupt { .. }
        ));
    }
}
