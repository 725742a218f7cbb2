//! `pdfcmp <engine> <file>`: extract a PDF's text page by page with one engine and print one JSON
//! object to stdout: {engine, file, bytes, pages, chars, title, failed_pages, text_per_page, error,
//! panicked, wall_ms}. Engines: `pdf-extract` (mirrors sluice's `parse_pages` exactly), `pdf_oxide`
//! (`PdfDocument::from_bytes` + `extract_text(i)` per page) and `lopdf` (lopdf's own
//! `Document::extract_text(&[page])`, the crate pdf-extract sits on).
//!
//! Resource limits (address space, CPU) are applied by the driver (`driver.py`), which runs every
//! engine/file pair in its own process and measures CPU time and peak RSS with wait4().

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use serde_json::json;

/// (pages as (1-based number, text), title, failed pages as (number, reason)).
type Parsed = (Vec<(u32, String)>, Option<String>, Vec<(u32, String)>);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: pdfcmp <pdf-extract|pdf_oxide|pdf_oxide_notables|lopdf> <file.pdf>");
        std::process::exit(2);
    }
    let (engine, path) = (args[1].as_str(), args[2].as_str());
    // Keep fd 1 for the reply; anything a library prints goes to stderr.
    let mut reply = take_stdout_for_reply();
    let bytes = std::fs::read(path).unwrap_or_else(|e| {
        eprintln!("cannot read {path}: {e}");
        std::process::exit(2)
    });
    let parser: fn(&[u8]) -> Result<Parsed, String> = match engine {
        "pdf-extract" => parse_pages_pdf_extract,
        "pdf_oxide" => parse_pages_oxide,
        "pdf_oxide_notables" => parse_pages_oxide_notables,
        "lopdf" => parse_pages_lopdf,
        other => {
            eprintln!("unknown engine {other}");
            std::process::exit(2)
        }
    };
    let started = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| parser(&bytes)));
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    // Measured before the reply is built: the reply copies the text once more.
    let (parse_peak_kib, cpu_s) = (peak_rss_kib(), self_cpu_s());
    let mut out = json!({
        "engine": engine, "file": path, "bytes": bytes.len(), "wall_ms": wall_ms,
        "parse_peak_rss_kib": parse_peak_kib, "parse_cpu_s": cpu_s,
        "pages": 0, "chars": 0, "title": null, "failed_pages": [], "text_per_page": [],
        "error": null, "panicked": false,
    });
    match outcome {
        Ok(Ok((pages, title, failed))) => {
            out["pages"] = json!(pages.len());
            out["chars"] = json!(pages.iter().map(|(_, t)| t.chars().count()).sum::<usize>());
            out["title"] = json!(title);
            out["failed_pages"] = json!(failed);
            out["text_per_page"] = json!(pages);
        }
        Ok(Err(error)) => out["error"] = json!(error),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            out["error"] = json!(format!("parser panicked: {message}"));
            out["panicked"] = json!(true);
        }
    }
    let mut reply = std::io::BufWriter::new(&mut reply);
    serde_json::to_writer(&mut reply, &out).expect("write reply");
    reply.flush().expect("flush reply");
}

/// VmHWM of this process (peak resident set since exec), in KiB. Unlike the ru_maxrss a parent
/// sees, it does not inherit the RSS of the process that forked us.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU time of this process so far, in seconds.
fn self_cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

fn take_stdout_for_reply() -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: plain fd syscalls on the process's own standard descriptors.
    unsafe {
        let fd = libc::dup(1);
        assert!(fd >= 0 && libc::dup2(2, 1) >= 0, "dup failed");
        std::fs::File::from_raw_fd(fd)
    }
}

/// Exactly sluice's `shared/src/extract/pdf.rs::parse_pages` (returning plain tuples).
fn parse_pages_pdf_extract(bytes: &[u8]) -> Result<Parsed, String> {
    let doc = load_pdf_extract(bytes)?;
    let mut sections = Vec::new();
    let mut failed_pages = Vec::new();
    for &page in doc.get_pages().keys() {
        let mut text = String::new();
        let result = {
            let mut output = pdf_extract::PlainTextOutput::new(&mut text);
            pdf_extract::output_doc_page(&doc, &mut output, page)
        };
        match result {
            Ok(()) => sections.push((page, tidy_page(&text))),
            Err(error) => failed_pages.push((page, error.to_string())),
        }
    }
    assemble(sections, failed_pages, || info_title(&doc))
}

fn info_title(doc: &pdf_extract::Document) -> Option<String> {
    let info = doc.trailer.get_deref(b"Info", doc).ok()?.as_dict().ok()?;
    one_line(&pdf_extract::decode_text_string(info.get_deref(b"Title", doc).ok()?).ok()?)
}

/// lopdf's document, decrypted with the empty password where it is encrypted.
fn load_pdf_extract(bytes: &[u8]) -> Result<pdf_extract::Document, String> {
    let mut doc = pdf_extract::Document::load_mem(bytes).map_err(|e| e.to_string())?;
    if doc.is_encrypted() {
        doc.decrypt("")
            .map_err(|e| format!("encrypted and not readable without a password: {e}"))?;
    }
    Ok(doc)
}

/// sluice's `assemble`: the document from its pages, or why there is none.
fn assemble(
    sections: Vec<(u32, String)>,
    failed_pages: Vec<(u32, String)>,
    title: impl FnOnce() -> Option<String>,
) -> Result<Parsed, String> {
    if sections.is_empty() {
        return match failed_pages.first() {
            Some((page, error)) => Err(format!("no readable page (page {page}: {error})")),
            None => Err("the document has no pages".into()),
        };
    }
    Ok((sections, title(), failed_pages))
}

/// A title on one line with single spaces; `None` when nothing is left.
fn one_line(title: &str) -> Option<String> {
    let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
    (!title.is_empty()).then_some(title)
}

/// sluice's `tidy_page`: keep the line structure, drop trailing spaces and blank padding.
fn tidy_page(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    lines.join("\n").trim().to_string()
}

/// pdf_oxide, same contract as `parse_pages` (as `shared/src/extract/pdf/engines.rs` runs it).
fn parse_pages_oxide(bytes: &[u8]) -> Result<Parsed, String> {
    oxide_pages(bytes, true)
}

/// pdf_oxide without its table detector (`extract_text` turns it on; it renders lists it takes
/// for tables column by column, which scrambles reading order on e.g. API reference pages).
fn parse_pages_oxide_notables(bytes: &[u8]) -> Result<Parsed, String> {
    oxide_pages(bytes, false)
}

fn oxide_pages(bytes: &[u8], tables: bool) -> Result<Parsed, String> {
    let options = pdf_oxide::converters::ConversionOptions {
        extract_tables: tables,
        ..Default::default()
    };
    let doc = pdf_oxide::PdfDocument::from_bytes(bytes.to_vec()).map_err(|e| e.to_string())?;
    if doc.is_encrypted() {
        // Many "encrypted" PDFs only restrict printing and open with the empty password.
        match doc.authenticate(b"") {
            Ok(true) => {}
            Ok(false) => return Err("encrypted and not readable without a password".into()),
            Err(e) => {
                return Err(format!("encrypted and not readable without a password: {e}"));
            }
        }
    }
    let count = doc.page_count().map_err(|e| e.to_string())?;
    let mut sections = Vec::new();
    let mut failed_pages = Vec::new();
    for index in 0..count {
        let page = u32::try_from(index + 1).unwrap_or(u32::MAX);
        match doc.extract_text_with_options(index, &options) {
            Ok(text) => sections.push((page, tidy_page(&text))),
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
    one_line(&pdf_oxide::optional_content::decode_pdf_text_string(title.as_string()?))
}

/// lopdf's own text extraction, page by page (no font-metric layout, just text operators).
fn parse_pages_lopdf(bytes: &[u8]) -> Result<Parsed, String> {
    let doc = load_pdf_extract(bytes)?;
    let mut sections = Vec::new();
    let mut failed_pages = Vec::new();
    for &page in doc.get_pages().keys() {
        match doc.extract_text(&[page]) {
            Ok(text) => sections.push((page, tidy_page(&text))),
            Err(error) => failed_pages.push((page, error.to_string())),
        }
    }
    assemble(sections, failed_pages, || info_title(&doc))
}
