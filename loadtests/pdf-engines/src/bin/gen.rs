//! `gen large <out.pdf> [bytes]`: a ~50 MB text PDF, with the generator logic of sluice's
//! `loadtests/src/corpus.rs` (`write_large_pdf`, `PdfWriter`, `paragraphs`, `sentence`, `wrap`)
//! copied verbatim.
//! `gen empty-pages <out.pdf> [count]`: a PDF with `count` (default 100,000) empty pages, all kids
//! of one flat /Pages node, with a correct xref table.

use std::io::Write;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("large") => {
            let bytes = args.get(3).map_or(50 << 20, |b| b.parse().expect("bytes"));
            let mut rng = StdRng::seed_from_u64(7);
            let written = write_large_pdf(Path::new(&args[2]), bytes, &mut rng)?;
            println!("wrote {written} bytes to {}", args[2]);
        }
        Some("empty-pages") => {
            let count: u32 = args.get(3).map_or(100_000, |c| c.parse().expect("count"));
            let written = write_empty_pages(Path::new(&args[2]), count)?;
            println!("wrote {written} bytes ({count} pages) to {}", args[2]);
        }
        _ => {
            eprintln!("usage: gen large <out.pdf> [bytes] | gen empty-pages <out.pdf> [count]");
            std::process::exit(2);
        }
    }
    Ok(())
}

fn write_empty_pages(path: &Path, count: u32) -> std::io::Result<u64> {
    let out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut w = Counting { out, written: 0, offsets: Vec::with_capacity(count as usize + 2) };
    w.emit(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", false)?;
    w.emit(b"1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n", true)?;
    let kids: Vec<String> = (0..count).map(|i| format!("{} 0 R", i + 3)).collect();
    let pages = format!(
        "2 0 obj\n<< /Type /Pages /Kids [{}] /Count {count} >>\nendobj\n",
        kids.join(" ")
    );
    w.emit(pages.as_bytes(), true)?;
    for i in 0..count {
        let page = format!(
            "{} 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>\nendobj\n",
            i + 3
        );
        w.emit(page.as_bytes(), true)?;
    }
    let xref_at = w.written;
    let size = count + 3;
    let mut xref = format!("xref\n0 {size}\n0000000000 65535 f \n");
    for off in &w.offsets {
        xref.push_str(&format!("{off:010} 00000 n \n"));
    }
    xref.push_str(&format!(
        "trailer\n<< /Size {size} /Root 1 0 R >>\nstartxref\n{xref_at}\n%%EOF\n"
    ));
    w.emit(xref.as_bytes(), false)?;
    w.out.flush()?;
    Ok(w.written)
}

struct Counting<W: Write> {
    out: W,
    written: u64,
    offsets: Vec<u64>,
}

impl<W: Write> Counting<W> {
    fn emit(&mut self, bytes: &[u8], is_object: bool) -> std::io::Result<()> {
        if is_object {
            self.offsets.push(self.written);
        }
        self.written += bytes.len() as u64;
        self.out.write_all(bytes)
    }
}

// ---- copied from sluice loadtests/src/corpus.rs ----

const WORDS: &[&str] = &[
    "ingestion", "pipeline", "vector", "chunk", "embedding", "queue", "worker", "replica",
    "latency", "throughput", "document", "retrieval", "search", "index", "payload", "cluster",
    "storage", "bucket", "policy", "refund", "glacier", "harbour", "lantern", "orchard", "meadow",
    "compass", "quartz", "saffron", "tundra", "violet", "the", "a", "of", "and", "to", "in", "is",
    "for", "with", "on", "that", "by", "as", "at", "from", "every", "rapid", "steady", "careful",
    "bounded", "durable", "idempotent", "eventual", "partial", "complete", "fresh",
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

struct PdfWriter<W: Write> {
    out: W,
    written: u64,
    offsets: Vec<(u32, u64)>,
    pages: Vec<u32>,
    next_id: u32,
}

impl<W: Write> PdfWriter<W> {
    fn new(out: W) -> Self {
        let mut w = PdfWriter { out, written: 0, offsets: Vec::new(), pages: Vec::new(), next_id: 4 };
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
            let escaped = line.replace('\\', "\\\\").replace('(', "\\(").replace(')', "\\)");
            content.push_str(&format!("({escaped}) Tj T*\n"));
        }
        content.push_str("ET");
        let (content_id, page_id) = (self.next_id, self.next_id + 1);
        self.next_id += 2;
        let stream = format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len() + 1);
        self.object(content_id, stream.as_bytes())?;
        let page = format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> /Contents {content_id} 0 R >>"
        );
        self.object(page_id, page.as_bytes())?;
        self.pages.push(page_id);
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<u64> {
        self.object(1, b"<< /Type /Catalog /Pages 2 0 R >>")?;
        let kids: Vec<String> = self.pages.iter().map(|id| format!("{id} 0 R")).collect();
        let pages = format!("<< /Type /Pages /Kids [{}] /Count {} >>", kids.join(" "), self.pages.len());
        self.object(2, pages.as_bytes())?;
        self.object(3, b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")?;
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
        xref.push_str(&format!("trailer\n<< /Size {size} /Root 1 0 R >>\nstartxref\n{xref_at}\n%%EOF\n"));
        self.raw(xref.as_bytes())?;
        self.out.flush()?;
        Ok(self.written)
    }
}
