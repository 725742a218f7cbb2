//! The fast PDF reader: the text of each page's content stream in the order it is drawn, words and
//! lines separated where the text-positioning operators move the pen.
//!
//! pdf_oxide lays every page out geometrically (spans, a running-header pass that re-reads every
//! page, XY-cut); reading the content stream once costs a fifth of that, and on the manuals we
//! measured the drawing order is the reading order as often as pdf_oxide's layout is (README
//! "PDF engines"). lopdf's own `extract_text` reads the stream too, but glues words wherever a
//! producer spaces them with real-valued `TJ` offsets or `Td` moves, loses text in form XObjects
//! and in fonts without an encoding of their own (TeX's: [`font_text`](super::font_text)), and
//! rebuilds the page list on every call (quadratic in pages). This reader follows the pen: a
//! move past it by more than [`WORD_GAP`] is a space, a move across the line a new line, and
//! words hyphenated at a line's end are joined as pdftotext joins them. [`looks_readable`] says
//! when its text is not good enough and the next engine should read the document instead.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use pdf_extract::{Dictionary, Document, Object, ObjectId};

use crate::model::Section;

use super::content_lexer::{Operand, for_each_operation};
use super::engines::{ParsedPdf, assemble, info_title, load_lopdf, tidy_page};
use super::font_text::{FontText, GlyphNames};

/// A gap wider than this (thousandths of the font size: a `TJ` offset, or a move past the pen) is
/// a word gap; kerning is narrower. TeX's inter-word glue is ~330 and rarely shrinks below ~220;
/// the largest kerns in common fonts are ~110.
const WORD_GAP: f32 = 150.0;

/// A move across more than this share of the font size is a new line; less is a superscript,
/// a subscript or a baseline shift within the line.
const LINE_SHIFT: f32 = 0.5;

/// A move down by more than this many font sizes leaves a blank line: a paragraph or a heading
/// ends (text is set at 1.2 or so; the chunker splits at blank lines first).
const PARAGRAPH_GAP: f32 = 1.6;

/// Less than this share of the font size across the line is the same baseline.
const BASELINE_SLACK: f32 = 0.05;

/// Forms drawn inside forms deeper than this are skipped (real documents nest two or three).
const MAX_FORM_DEPTH: usize = 8;

/// Text per page, read from the content streams with lopdf. Fails on a page lopdf cannot read,
/// so that the next engine reads the whole document instead of this one skipping the page.
pub(super) fn parse_pages(bytes: &[u8]) -> Result<ParsedPdf, String> {
    let doc = load_lopdf(bytes)?;
    let mut reader = Reader {
        doc: &doc,
        fonts: HashMap::new(),
        glyphs: GlyphNames::default(),
    };
    let mut sections = Vec::new();
    // One walk of the page tree (`get_pages` per page would be quadratic in pages).
    for (page, page_id) in doc.get_pages() {
        let text = reader
            .page(page_id)
            .map_err(|e| format!("page {page}: {e}"))?;
        sections.push(Section {
            text: tidy_page(&join_hyphenated(&text)),
            page: Some(page),
        });
    }
    assemble(sections, Vec::new(), || info_title(&doc))
}

/// What a content stream's names refer to: its fonts and its forms (XObjects).
struct Resources<'a> {
    fonts: BTreeMap<Vec<u8>, &'a Dictionary>,
    xobjects: Option<&'a Dictionary>,
}

/// Reads the pages of one document.
struct Reader<'a> {
    doc: &'a Document,
    /// Each font's decoder, built once per document (building one parses its ToUnicode map or
    /// its font program's encoding). Keyed by the font dictionary's address: the document is
    /// borrowed, unchanged, for the whole read, and pages sharing a font share the dictionary.
    fonts: HashMap<*const Dictionary, Rc<FontText<'a>>>,
    glyphs: GlyphNames,
}

impl<'a> Reader<'a> {
    fn page(&mut self, page_id: ObjectId) -> Result<String, String> {
        let doc = self.doc;
        // The page's own resources first, then those it inherits from its parents.
        let (own, inherited) = doc.get_page_resources(page_id).map_err(|e| e.to_string())?;
        let resources = self.resources(
            own.into_iter().chain(
                inherited
                    .iter()
                    .filter_map(|&id| doc.get_dictionary(id).ok()),
            ),
        );
        let content = doc.get_page_content(page_id).map_err(|e| e.to_string())?;
        let mut text = PageText::default();
        let mut forms_read = HashSet::new();
        self.read(&content, &resources, &mut text, &mut forms_read, 0)?;
        Ok(text.text)
    }

    fn read(
        &mut self,
        stream: &[u8],
        resources: &Resources<'a>,
        text: &mut PageText<'a>,
        forms_read: &mut HashSet<ObjectId>,
        depth: usize,
    ) -> Result<(), String> {
        for_each_operation(stream, |operator, operands| {
            let number_at = |i: usize| operands.get(i).and_then(Operand::number);
            match operator {
                b"BT" => text.begin(),
                // The next text object may start anywhere: at least a word ends here.
                b"ET" => text.word_break(),
                b"T*" => text.next_line(),
                b"Tf" => {
                    let font = operands
                        .first()
                        .and_then(Operand::name)
                        .and_then(|name| resources.fonts.get(name));
                    text.font = font.map(|&font| self.font(font));
                    text.font_size = number_at(1).unwrap_or(0.0).abs();
                }
                b"Tc" => text.char_spacing = number_at(0).unwrap_or(0.0),
                b"Tw" => text.word_spacing = number_at(0).unwrap_or(0.0),
                b"Tz" => text.horizontal_scale = number_at(0).map(|z| z / 100.0),
                b"TL" => text.leading = number_at(0).unwrap_or(0.0),
                b"Td" | b"TD" => {
                    if let [tx, ty] = operands {
                        let (tx, ty) = (tx.number().unwrap_or(0.0), ty.number().unwrap_or(0.0));
                        if operator == b"TD" {
                            text.leading = -ty;
                        }
                        text.move_by(tx, ty);
                    }
                }
                b"Tm" => {
                    let m: Vec<f32> = operands.iter().filter_map(Operand::number).collect();
                    if let [a, b, c, d, e, f] = m[..] {
                        text.move_to([a, b, c, d, e, f]);
                    }
                }
                b"Tj" | b"TJ" => text.show(operands)?,
                b"'" => {
                    text.next_line();
                    text.show(operands)?;
                }
                b"\"" => {
                    text.word_spacing = number_at(0).unwrap_or(0.0);
                    text.char_spacing = number_at(1).unwrap_or(0.0);
                    text.next_line();
                    text.show(operands.get(2..).unwrap_or_default())?;
                }
                b"Do" if depth < MAX_FORM_DEPTH => {
                    let form = operands
                        .first()
                        .and_then(Operand::name)
                        .and_then(|name| resources.xobjects?.get(name).ok()?.as_reference().ok());
                    // Each form once per page: a form drawing itself, or drawn a million times,
                    // costs one read.
                    if let Some(id) = form.filter(|&id| forms_read.insert(id)) {
                        self.form(id, resources, text, forms_read, depth)?;
                    }
                }
                _ => {}
            }
            Ok(())
        })
    }

    /// A form XObject's text (figures with labels, imported pages), on lines of its own. Anything
    /// else drawn by `Do` (images) has none.
    fn form(
        &mut self,
        id: ObjectId,
        outer: &Resources<'a>,
        text: &mut PageText<'a>,
        forms_read: &mut HashSet<ObjectId>,
        depth: usize,
    ) -> Result<(), String> {
        let doc = self.doc;
        let Ok(stream) = doc.get_object(id).and_then(Object::as_stream) else {
            return Ok(());
        };
        if stream.dict.get(b"Subtype").and_then(Object::as_name).ok() != Some(b"Form") {
            return Ok(());
        }
        let content = stream
            .decompressed_content()
            .unwrap_or_else(|_| stream.content.clone());
        // A form without resources of its own uses its page's.
        let own = self
            .dictionary(&stream.dict, b"Resources")
            .map(|own| self.resources([own]));
        let resources = own.as_ref().unwrap_or(outer);
        let saved = (text.line, text.pen, text.font.clone(), text.font_size);
        text.line_break();
        self.read(&content, resources, text, forms_read, depth + 1)?;
        text.line_break();
        (text.line, text.pen, text.font, text.font_size) = saved;
        Ok(())
    }

    /// `dict[key]` as a dictionary, following a reference.
    fn dictionary(&self, dict: &'a Dictionary, key: &[u8]) -> Option<&'a Dictionary> {
        dict.get_deref(key, self.doc).ok()?.as_dict().ok()
    }

    /// What resource dictionaries name, the first naming a font or holding forms winning (a page's
    /// own resources before its parents').
    fn resources(&self, dicts: impl IntoIterator<Item = &'a Dictionary>) -> Resources<'a> {
        let mut resources = Resources {
            fonts: BTreeMap::new(),
            xobjects: None,
        };
        for dict in dicts {
            if let Some(fonts) = self.dictionary(dict, b"Font") {
                for (name, font) in fonts {
                    if let Ok((_, Object::Dictionary(font))) = self.doc.dereference(font) {
                        resources.fonts.entry(name.clone()).or_insert(font);
                    }
                }
            }
            resources.xobjects = resources
                .xobjects
                .or_else(|| self.dictionary(dict, b"XObject"));
        }
        resources
    }

    fn font(&mut self, font: &'a Dictionary) -> Rc<FontText<'a>> {
        let (doc, glyphs) = (self.doc, &mut self.glyphs);
        self.fonts
            .entry(std::ptr::from_ref(font))
            .or_insert_with(|| Rc::new(FontText::new(doc, font, glyphs)))
            .clone()
    }
}

/// Whether `sections` read like text rather than words glued together (a producer spacing words
/// in a way this reader does not follow). Words in running text average 4–7 letters in European
/// languages; glued text measured 17.
pub(super) fn looks_readable(sections: &[Section]) -> bool {
    const MAX_MEAN_WORD: usize = 12;
    let (mut letters, mut words) = (0usize, 0usize);
    for section in sections {
        let mut in_word = false;
        for c in section.text.chars() {
            let letter = c.is_alphabetic();
            letters += usize::from(letter);
            words += usize::from(letter && !in_word);
            in_word = letter;
        }
    }
    // No text at all: another engine may read what this one cannot (Type 3 fonts, forms).
    words > 0 && letters <= words * MAX_MEAN_WORD
}

/// One page's text as it is assembled, with as much of the text state as word breaks need.
#[derive(Default)]
struct PageText<'a> {
    text: String,
    font: Option<Rc<FontText<'a>>>,
    font_size: f32,
    /// `Tc`, `Tw`, `TL` (text space units) and `Tz` (as a factor).
    char_spacing: f32,
    word_spacing: f32,
    leading: f32,
    horizontal_scale: Option<f32>,
    /// The text line matrix `[a b c d e f]` where text was last placed; `None` before any.
    line: Option<[f32; 6]>,
    /// A text object began: the next position is relative to the identity, not to `line`
    /// (which stays, to compare the new position with).
    fresh: bool,
    /// How far the pen is from the start of the line, in text space units; `None` once text in
    /// a font without widths was shown.
    pen: Option<f32>,
    /// How far down the lines moved since text was last shown, in text space units.
    drop: f32,
}

impl PageText<'_> {
    const IDENTITY: [f32; 6] = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0];

    fn begin(&mut self) {
        self.fresh = true;
    }

    /// `Td`/`TD`/`T*`: the next line starts at (tx, ty) in the current line's coordinates.
    fn move_by(&mut self, tx: f32, ty: f32) {
        let base = match self.line {
            Some(line) if !self.fresh => line,
            _ => Self::IDENTITY,
        };
        let [a, b, c, d, e, f] = base;
        self.move_to([a, b, c, d, e + tx * a + ty * c, f + tx * b + ty * d]);
    }

    /// A new line matrix (`Tm`, or one a move made), compared with where the pen was in page
    /// coordinates and brought back to text space units, as the font size is.
    fn move_to(&mut self, matrix: [f32; 6]) {
        if let Some([a, _, _, _, e, f]) = self.line {
            let [new_a, _, _, new_d, new_e, new_f] = matrix;
            let (scale_x, scale_y) = (new_a.abs().max(f32::EPSILON), new_d.abs().max(f32::EPSILON));
            let gap = self.pen.map(|pen| (new_e - (e + pen * a)) / scale_x);
            self.separate((new_f - f).abs() / scale_y, gap, (new_e - e) / scale_x);
        } else {
            self.line_break();
        }
        self.line = Some(matrix);
        self.fresh = false;
        self.pen = Some(0.0);
    }

    /// A move of `across` text space units across the line, leaving `gap` after the pen (or,
    /// when where the pen is is not known, `along` from the line's start): a blank line, a line
    /// break, a word gap, or nothing — a move that overprints (accents, bold by double printing)
    /// or continues the word (a sub- or superscript: `x2`, as pdftotext reads it).
    fn separate(&mut self, across: f32, gap: Option<f32>, along: f32) {
        let size = self.font_size.max(1.0);
        self.drop += across;
        if self.drop > PARAGRAPH_GAP * size {
            self.paragraph_break();
        } else if across > LINE_SHIFT * size {
            self.line_break();
        } else if match gap {
            Some(gap) => gap > WORD_GAP / 1000.0 * size,
            None => along > 0.0 && across < BASELINE_SLACK * size,
        } {
            self.word_break();
        }
    }

    /// `T*`: the start of the next line, `TL` below.
    fn next_line(&mut self) {
        self.move_by(0.0, -self.leading);
    }

    fn paragraph_break(&mut self) {
        self.line_break();
        if !self.text.is_empty() && !self.text.ends_with("\n\n") {
            self.text.push('\n');
        }
    }

    fn line_break(&mut self) {
        match self.text.chars().last() {
            None | Some('\n') => {}
            Some(c) if c.is_whitespace() => {
                self.text.pop();
                self.text.push('\n');
            }
            Some(_) => self.text.push('\n'),
        }
    }

    fn word_break(&mut self) {
        if self.text.chars().last().is_some_and(|c| !c.is_whitespace()) {
            self.text.push(' ');
        }
    }

    /// `Tj`/`TJ` operands: strings decoded with the current font, large negative offsets as word
    /// gaps. Text in a font without a usable encoding is skipped. A `TJ` array holds strings and
    /// numbers only; anything nested deeper is ignored.
    fn show(&mut self, operands: &[Operand]) -> Result<(), String> {
        for operand in operands {
            match operand {
                Operand::Array(items) => {
                    for item in items {
                        self.show_item(item)?;
                    }
                }
                other => self.show_item(other)?,
            }
        }
        Ok(())
    }

    fn show_item(&mut self, item: &Operand) -> Result<(), String> {
        let scale = self.horizontal_scale.unwrap_or(1.0);
        match item {
            Operand::String(bytes) => {
                if self.fresh {
                    self.move_to(Self::IDENTITY);
                }
                self.drop = 0.0;
                let Some(font) = &self.font else {
                    self.pen = None;
                    return Ok(());
                };
                let advance = font.decode(bytes, &mut self.text)?;
                self.pen = self.pen.zip(advance).map(|(pen, advance)| {
                    pen + (advance.ems * self.font_size
                        + advance.glyphs as f32 * self.char_spacing
                        + advance.spaces as f32 * self.word_spacing)
                        * scale
                });
            }
            Operand::Number(offset) => {
                if *offset < -WORD_GAP {
                    self.word_break();
                }
                self.pen = self
                    .pen
                    .map(|pen| pen - offset / 1000.0 * self.font_size * scale);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Joins words hyphenated across lines ("con-" / "struction"), as pdftotext does: a line ending
/// in a letter and a hyphen, followed by a line starting with a lower-case letter.
fn join_hyphenated(text: &str) -> String {
    let mut joined = String::with_capacity(text.len());
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        let next = lines.peek().and_then(|next| next.chars().next());
        let stem = line.strip_suffix(['-', '\u{AD}']);
        match stem {
            Some(stem)
                if next.is_some_and(char::is_lowercase)
                    && stem.chars().last().is_some_and(char::is_alphabetic) =>
            {
                joined.push_str(stem);
            }
            _ => {
                joined.push_str(line);
                if lines.peek().is_some() {
                    joined.push('\n');
                }
            }
        }
    }
    joined
}

#[cfg(test)]
mod tests {
    use pdf_extract::Stream;

    use super::*;

    /// A one-page PDF drawing `content` with Helvetica (WinAnsi, every glyph half the font size
    /// wide) as /F1 and, if given, a form XObject /Fm1 drawing `form` with the page's resources.
    fn pdf_drawing(content: &str, form: Option<&str>) -> Vec<u8> {
        let name = |n: &str| Object::Name(n.as_bytes().to_vec());
        let mut doc = Document::with_version("1.5");
        let pages_id = doc.new_object_id();
        let mut font = Dictionary::new();
        font.set("Type", name("Font"));
        font.set("Subtype", name("Type1"));
        font.set("BaseFont", name("Helvetica"));
        font.set("Encoding", name("WinAnsiEncoding"));
        font.set("FirstChar", 0i64);
        font.set("Widths", vec![Object::Integer(500); 256]);
        let font_id = doc.add_object(font);
        let mut fonts = Dictionary::new();
        fonts.set("F1", Object::Reference(font_id));
        let mut resources = Dictionary::new();
        resources.set("Font", fonts);
        if let Some(form) = form {
            let mut dict = Dictionary::new();
            dict.set("Type", name("XObject"));
            dict.set("Subtype", name("Form"));
            dict.set("BBox", vec![0.into(), 0.into(), 612.into(), 792.into()]);
            let form_id = doc.add_object(Stream::new(dict, form.as_bytes().to_vec()));
            let mut xobjects = Dictionary::new();
            xobjects.set("Fm1", Object::Reference(form_id));
            resources.set("XObject", xobjects);
        }
        let content_id =
            doc.add_object(Stream::new(Dictionary::new(), content.as_bytes().to_vec()));
        let mut page = Dictionary::new();
        page.set("Type", name("Page"));
        page.set("Parent", pages_id);
        page.set("Contents", content_id);
        page.set("Resources", resources);
        let page_id = doc.add_object(page);
        let mut pages = Dictionary::new();
        pages.set("Type", name("Pages"));
        pages.set("Kids", vec![Object::Reference(page_id)]);
        pages.set("Count", 1i64);
        doc.objects.insert(pages_id, Object::Dictionary(pages));
        let mut catalog = Dictionary::new();
        catalog.set("Type", name("Catalog"));
        catalog.set("Pages", pages_id);
        let catalog_id = doc.add_object(catalog);
        doc.trailer.set("Root", catalog_id);
        let mut bytes = Vec::new();
        doc.save_to(&mut bytes).unwrap();
        bytes
    }

    fn page_text(content: &str) -> String {
        page_text_with_form(content, None)
    }

    fn page_text_with_form(content: &str, form: Option<&str>) -> String {
        let (doc, failed) = parse_pages(&pdf_drawing(content, form)).unwrap();
        assert!(failed.is_empty());
        assert_eq!(doc.sections.len(), 1);
        doc.sections[0].text.clone()
    }

    #[test]
    fn words_and_lines_follow_the_positioning_operators() {
        // Ghostscript: words spaced by real-valued TJ offsets, kerning in between.
        assert_eq!(
            page_text(
                "BT /F1 14 Tf 1 0 0 1 72 700 Tm [(Ryerson)-247.025(Uni)27.8(v)-14.87(ersity)]TJ ET"
            ),
            "Ryerson University"
        );
        // htmldoc: one text object, lines by Td, runs on one line by horizontal Td.
        assert_eq!(
            page_text(
                "BT /F1 11 Tf 13.2 TL 0 651 Td ([ )Tj 37.9 0 Td (English)Tj ( | )Tj 60 0 Td (Japanese)Tj \
                 -97.9 -13.2 Td (Table of)Tj T* (Contents)Tj 0 -13.2 Td (a) ' ET"
            ),
            // Two line moves with nothing shown between: a blank line.
            "[ English | Japanese\nTable of\nContents\n\na"
        );
        // Tm on the same baseline is a word gap, on another baseline a new line; a small shift
        // (a superscript) continues the word.
        assert_eq!(
            page_text(
                "BT /F1 10 Tf 1 0 0 1 72 700 Tm (x)Tj 1 0 0 1 76 703 Tm (2)Tj \
                 1 0 0 1 90 700 Tm (plus)Tj 1 0 0 1 72 688 Tm (next)Tj ET"
            ),
            "x2 plus\nnext"
        );
        // A font change within a word moves exactly to the pen: no gap, no space.
        assert_eq!(
            page_text("BT /F1 10 Tf 72 700 Td (con)Tj /F1 12 Tf 15 0 Td (struction)Tj ET"),
            "construction"
        );
        // A word hyphenated across lines is joined, as pdftotext does; a dash before a capital
        // is kept.
        assert_eq!(
            page_text(
                "BT /F1 10 Tf 72 700 Td (con-)Tj 0 -12 Td (struction of X-)Tj 0 -12 Td (Ray)Tj ET"
            ),
            "construction of X-\nRay"
        );
        // Text objects end words; an unknown font's text is skipped, not fatal.
        assert_eq!(
            page_text("BT /F1 9 Tf (one)Tj ET BT /F9 9 Tf (lost)Tj /F1 9 Tf (two)Tj ET"),
            "one two"
        );
    }

    #[test]
    fn forms_are_read_once_per_page() {
        // The form draws itself: read once, not until the stack runs out.
        assert_eq!(
            page_text_with_form(
                "BT /F1 9 Tf (caption)Tj ET /Fm1 Do /Fm1 Do BT /F1 9 Tf (after)Tj ET",
                Some("BT /F1 9 Tf (label)Tj ET /Fm1 Do"),
            ),
            "caption\nlabel\nafter"
        );
    }

    #[test]
    fn glued_or_empty_text_is_not_readable() {
        let section = |text: &str| Section {
            text: text.into(),
            page: Some(1),
        };
        assert!(looks_readable(&[section(
            "Department of Electrical and Computer Engineering"
        )]));
        assert!(!looks_readable(&[section(
            "DepartmentofElectricalandComputerEngineering RyersonPolytechnicUniversity"
        )]));
        assert!(!looks_readable(&[section(""), section("  12 34 ")]));
    }

    #[test]
    fn strings_may_be_literal_or_hex() {
        assert_eq!(page_text("BT /F1 12 Tf <4869> Tj (!) Tj ET"), "Hi!");
    }
}
