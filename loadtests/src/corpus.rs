//! Synthetic corpora for benchmarks: a reproducible mix of PDF, Markdown, HTML and text documents
//! of configurable count and size, written to a folder. Text is drawn from a fixed vocabulary with a
//! seeded RNG, so the same settings always give the same bytes (and the same chunk counts).

use std::io::Write;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What to generate.
#[derive(Debug, Clone)]
pub struct CorpusSpec {
    pub documents: usize,
    /// Typical document size in bytes (actual sizes vary from half to one and a half times this).
    pub doc_bytes: usize,
    /// Share of each format, in percent: pdf, markdown, html, text (need not sum to 100; normalised).
    pub mix: [u32; 4],
    /// Extra large PDFs of this many bytes each (e.g. 50 MB), added to the corpus.
    pub large_pdfs: usize,
    pub large_pdf_bytes: usize,
    pub seed: u64,
}

impl Default for CorpusSpec {
    fn default() -> Self {
        CorpusSpec {
            documents: 200,
            doc_bytes: 8_000,
            mix: [25, 25, 25, 25],
            large_pdfs: 0,
            large_pdf_bytes: 50 << 20,
            seed: 7,
        }
    }
}

/// Totals of what was written.
#[derive(Debug, Clone, Default)]
pub struct CorpusStats {
    pub files: usize,
    pub bytes: u64,
}

pub(crate) const WORDS: &[&str] = &[
    "ingestion",
    "pipeline",
    "vector",
    "chunk",
    "embedding",
    "queue",
    "worker",
    "replica",
    "latency",
    "throughput",
    "document",
    "retrieval",
    "search",
    "index",
    "payload",
    "cluster",
    "storage",
    "bucket",
    "policy",
    "refund",
    "glacier",
    "harbour",
    "lantern",
    "orchard",
    "meadow",
    "compass",
    "quartz",
    "saffron",
    "tundra",
    "violet",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "with",
    "on",
    "that",
    "by",
    "as",
    "at",
    "from",
    "every",
    "rapid",
    "steady",
    "careful",
    "bounded",
    "durable",
    "idempotent",
    "eventual",
    "partial",
    "complete",
    "fresh",
];

fn sentence(rng: &mut StdRng) -> String {
    let n = rng.random_range(8..20);
    let mut words: Vec<&str> = (0..n)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect();
    let first = words[0].to_string();
    let mut s = first[..1].to_uppercase() + &first[1..];
    words.remove(0);
    for w in words {
        s.push(' ');
        s.push_str(w);
    }
    s.push('.');
    s
}

fn paragraphs(rng: &mut StdRng, bytes: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut total = 0;
    while total < bytes {
        let p: Vec<String> = (0..rng.random_range(3..7)).map(|_| sentence(rng)).collect();
        let p = p.join(" ");
        total += p.len() + 2;
        out.push(p);
    }
    out
}

/// Write the corpus into `dir` (created if needed).
pub fn generate(dir: &Path, spec: &CorpusSpec) -> std::io::Result<CorpusStats> {
    std::fs::create_dir_all(dir)?;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let total: u32 = spec.mix.iter().sum::<u32>().max(1);
    let mut stats = CorpusStats::default();
    for i in 0..spec.documents {
        let size = rng
            .random_range(spec.doc_bytes / 2..=spec.doc_bytes * 3 / 2)
            .max(64);
        let paras = paragraphs(&mut rng, size);
        let pick = rng.random_range(0..total);
        let (name, bytes) = if pick < spec.mix[0] {
            (format!("doc-{i:06}.pdf"), pdf(&paras))
        } else if pick < spec.mix[0] + spec.mix[1] {
            (format!("doc-{i:06}.md"), markdown(i, &paras).into_bytes())
        } else if pick < spec.mix[0] + spec.mix[1] + spec.mix[2] {
            (format!("doc-{i:06}.html"), html(i, &paras).into_bytes())
        } else {
            (format!("doc-{i:06}.txt"), paras.join("\n\n").into_bytes())
        };
        std::fs::write(dir.join(&name), &bytes)?;
        stats.files += 1;
        stats.bytes += bytes.len() as u64;
    }
    for i in 0..spec.large_pdfs {
        let path = dir.join(format!("large-{i:03}.pdf"));
        let written = write_large_pdf(&path, spec.large_pdf_bytes, &mut rng)?;
        stats.files += 1;
        stats.bytes += written;
    }
    Ok(stats)
}

fn markdown(i: usize, paras: &[String]) -> String {
    let mut s = format!("# Document {i}\n\n");
    for (n, p) in paras.iter().enumerate() {
        if n % 4 == 3 {
            s.push_str(&format!("## Part {}\n\n", n / 4 + 1));
        }
        s.push_str(p);
        s.push_str("\n\n");
    }
    s
}

fn html(i: usize, paras: &[String]) -> String {
    let mut s = format!(
        "<!doctype html><html><head><title>Document {i}</title><style>p{{margin:0}}</style></head><body>\
         <nav><a href=\"/\">Home</a></nav><h1>Document {i}</h1>"
    );
    for p in paras {
        s.push_str("<p>");
        s.push_str(p);
        s.push_str("</p>\n");
    }
    s.push_str("<footer>generated</footer></body></html>");
    s
}

/// A valid PDF (Helvetica, WinAnsi, one content stream per page) with the paragraphs as text.
pub fn pdf(paras: &[String]) -> Vec<u8> {
    let lines: Vec<String> = paras
        .iter()
        .flat_map(|p| {
            wrap(p, 90)
                .into_iter()
                .chain(std::iter::once(String::new()))
        })
        .collect();
    let mut out = Vec::new();
    let mut writer = PdfWriter::new(&mut out);
    for page in lines.chunks(45) {
        writer.page(page).expect("writing to a Vec cannot fail");
    }
    writer.finish().expect("writing to a Vec cannot fail");
    out
}

/// Streams a PDF of about `bytes` bytes to disk without holding it in memory.
fn write_large_pdf(path: &Path, bytes: usize, rng: &mut StdRng) -> std::io::Result<u64> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut writer = PdfWriter::new(file);
    while writer.written < bytes as u64 {
        let paras = paragraphs(rng, 3_500);
        let lines: Vec<String> = paras.iter().flat_map(|p| wrap(p, 90)).take(45).collect();
        writer.page(&lines)?;
    }
    writer.finish()
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Minimal incremental PDF writer: objects 1 (catalog), 2 (pages), 3 (font) are written at the end
/// with the page list; each page is a content stream object plus a page object.
pub(crate) struct PdfWriter<W: Write> {
    out: W,
    written: u64,
    offsets: Vec<(u32, u64)>,
    pages: Vec<u32>,
    next_id: u32,
}

impl<W: Write> PdfWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        let mut w = PdfWriter {
            out,
            written: 0,
            offsets: Vec::new(),
            pages: Vec::new(),
            next_id: 4,
        };
        w.raw(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n").expect("header");
        w
    }

    fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn object(&mut self, id: u32, body: &[u8]) -> std::io::Result<()> {
        self.offsets.push((id, self.written));
        self.raw(format!("{id} 0 obj\n").as_bytes())?;
        self.raw(body)?;
        self.raw(b"\nendobj\n")
    }

    fn page(&mut self, lines: &[String]) -> std::io::Result<()> {
        let mut content = String::from("BT /F1 11 Tf 15 TL 72 720 Td\n");
        for line in lines {
            let escaped = line
                .replace('\\', "\\\\")
                .replace('(', "\\(")
                .replace(')', "\\)");
            content.push_str(&format!("({escaped}) Tj T*\n"));
        }
        content.push_str("ET\n");
        self.content_page("", content.as_bytes())
    }

    /// A page whose content stream is `stream` as given, with `filter` (e.g. `/Filter
    /// /FlateDecode`, or empty) in the stream's dictionary.
    pub(crate) fn content_page(&mut self, filter: &str, stream: &[u8]) -> std::io::Result<()> {
        let (content_id, page_id) = (self.next_id, self.next_id + 1);
        self.next_id += 2;
        self.offsets.push((content_id, self.written));
        self.raw(
            format!(
                "{content_id} 0 obj\n<< /Length {} {filter} >>\nstream\n",
                stream.len()
            )
            .as_bytes(),
        )?;
        self.raw(stream)?;
        self.raw(b"\nendstream\nendobj\n")?;
        let page = format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> /Contents {content_id} 0 R >>"
        );
        self.object(page_id, page.as_bytes())?;
        self.pages.push(page_id);
        Ok(())
    }

    /// A page with no content stream at all.
    pub(crate) fn empty_page(&mut self) -> std::io::Result<()> {
        let page_id = self.next_id;
        self.next_id += 1;
        self.object(
            page_id,
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
        )?;
        self.pages.push(page_id);
        Ok(())
    }

    pub(crate) fn finish(mut self) -> std::io::Result<u64> {
        self.object(1, b"<< /Type /Catalog /Pages 2 0 R >>")?;
        let kids: Vec<String> = self.pages.iter().map(|id| format!("{id} 0 R")).collect();
        let pages = format!(
            "<< /Type /Pages /Kids [{}] /Count {} >>",
            kids.join(" "),
            self.pages.len()
        );
        self.object(2, pages.as_bytes())?;
        self.object(
            3,
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        )?;
        let xref_at = self.written;
        let size = self.next_id;
        let mut offsets = vec![None; size as usize];
        for (id, off) in &self.offsets {
            offsets[*id as usize] = Some(*off);
        }
        let mut xref = format!("xref\n0 {size}\n0000000000 65535 f \n");
        for off in offsets.iter().skip(1) {
            match off {
                Some(o) => xref.push_str(&format!("{o:010} 00000 n \n")),
                None => xref.push_str("0000000000 65535 f \n"),
            }
        }
        xref.push_str(&format!(
            "trailer\n<< /Size {size} /Root 1 0 R >>\nstartxref\n{xref_at}\n%%EOF\n"
        ));
        self.raw(xref.as_bytes())?;
        self.out.flush()?;
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_is_reproducible_and_mixed() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let spec = CorpusSpec {
            documents: 40,
            doc_bytes: 2_000,
            ..Default::default()
        };
        let sa = generate(a.path(), &spec).unwrap();
        let sb = generate(b.path(), &spec).unwrap();
        assert_eq!((sa.files, sa.bytes), (sb.files, sb.bytes));
        let exts: std::collections::HashSet<String> = std::fs::read_dir(a.path())
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .path()
                    .extension()
                    .unwrap()
                    .to_string_lossy()
                    .to_string()
            })
            .collect();
        assert_eq!(exts.len(), 4, "{exts:?}");
    }

    #[test]
    fn generated_pdfs_parse_with_the_real_parser() {
        let paras = vec![
            "First paragraph about glaciers.".to_string(),
            "Second (with parens) paragraph.".to_string(),
        ];
        let bytes = pdf(&paras);
        let text = pdf_extract::extract_text_from_mem(&bytes).unwrap();
        assert!(
            text.contains("glaciers") && text.contains("(with parens)"),
            "{text}"
        );
    }
}
