//! What the bytes of a shown string say, per font, for the content-stream reader.
//!
//! lopdf's own font decoding takes a font's `/Encoding` over its `/ToUnicode` map, drops the whole
//! `/Differences` array when one glyph name is not in its list, and uses StandardEncoding where the
//! font program's built-in encoding applies — which is how TeX embeds its Type 1 fonts, so every
//! "fi" ligature, brace and Greek letter went missing. For simple (one-byte) fonts this builds a
//! table of 256 codes in the order the PDF specification gives (9.10.2): the `/ToUnicode` map,
//! else the glyph names of `/Differences` over the base encoding, which is the named one or the
//! font program's own. lopdf still provides the named encodings, the glyph list and the ToUnicode
//! parser; composite fonts (Type0, multi-byte codes) are left to it.

use std::collections::HashMap;

use pdf_extract::{Dictionary, Document, Encoding, Object};

/// Decodes the strings shown with one font.
pub(super) enum FontText<'a> {
    /// A simple font: the text of each one-byte code, and its width if the font gives them.
    Table {
        text: Box<[Option<Box<str>>]>,
        widths: Option<Box<[f32]>>,
    },
    /// A composite font: multi-byte codes through its ToUnicode map; widths not followed.
    Composite(Encoding<'a>),
}

/// How far a shown string moves the pen, in parts of the font size plus spacing counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Advance {
    /// Sum of the glyph widths, in text space units per unit of font size.
    pub(super) ems: f32,
    /// Glyphs shown (each adds the character spacing, `Tc`).
    pub(super) glyphs: usize,
    /// Single-byte code 32s shown (each adds the word spacing, `Tw`).
    pub(super) spaces: usize,
}

impl<'a> FontText<'a> {
    pub(super) fn new(doc: &'a Document, font: &'a Dictionary, glyphs: &mut GlyphNames) -> Self {
        let subtype = font.get(b"Subtype").and_then(Object::as_name).ok();
        if subtype == Some(b"Type0") {
            return match font.get_font_encoding(doc) {
                Ok(encoding) => FontText::Composite(encoding),
                Err(_) => FontText::Table {
                    text: vec![None; 256].into(),
                    widths: None,
                },
            };
        }
        FontText::Table {
            text: simple_table(doc, font, glyphs),
            // A Type 3 font's widths are in its own glyph space, not thousandths.
            widths: (subtype != Some(b"Type3"))
                .then(|| simple_widths(doc, font))
                .flatten(),
        }
    }

    /// Appends the text of `bytes` to `out`; how far they move the pen, when the font says.
    pub(super) fn decode(&self, bytes: &[u8], out: &mut String) -> Result<Option<Advance>, String> {
        match self {
            FontText::Table { text, widths } => {
                for &byte in bytes {
                    if let Some(text) = &text[usize::from(byte)] {
                        out.push_str(text);
                    }
                }
                Ok(widths.as_ref().map(|widths| Advance {
                    ems: bytes.iter().map(|&b| widths[usize::from(b)]).sum(),
                    glyphs: bytes.len(),
                    spaces: bytes.iter().filter(|&&b| b == b' ').count(),
                }))
            }
            FontText::Composite(encoding) => {
                encoding
                    .write_to_string(bytes, out)
                    .map_err(|e| e.to_string())?;
                Ok(None)
            }
        }
    }
}

/// The text of each code of a simple font.
fn simple_table(
    doc: &Document,
    font: &Dictionary,
    glyphs: &mut GlyphNames,
) -> Box<[Option<Box<str>>]> {
    let encoding = font
        .get(b"Encoding")
        .and_then(|object| doc.dereference(object))
        .map(|(_, object)| object);
    let (base, differences) = match encoding {
        Ok(Object::Name(name)) => (Some(name.as_slice()), None),
        Ok(Object::Dictionary(dict)) => (
            dict.get(b"BaseEncoding").and_then(Object::as_name).ok(),
            dict.get(b"Differences").and_then(Object::as_array).ok(),
        ),
        _ => (None, None),
    };
    let mut table: Vec<Option<Box<str>>> = match base {
        Some(name) => named_encoding(doc, name),
        None => match builtin_encoding(doc, font) {
            Some(codes) => {
                let mut table = vec![None; 256];
                for (code, name) in codes {
                    table[usize::from(code)] = glyphs.text(&name);
                }
                table
            }
            None => named_encoding(doc, b"StandardEncoding"),
        },
    };
    if let Some(differences) = differences {
        let mut code = 0usize;
        for entry in differences {
            match entry {
                Object::Integer(at) => code = usize::try_from(*at).unwrap_or(usize::MAX),
                Object::Name(name) => {
                    if let Some(slot) = table.get_mut(code) {
                        *slot = glyphs.text(name);
                    }
                    code = code.saturating_add(1);
                }
                _ => {}
            }
        }
    }
    if let Ok(to_unicode) = font.get(b"ToUnicode") {
        let mut probe = font_dict();
        probe.set("ToUnicode", to_unicode.clone());
        if let Ok(encoding) = probe.get_font_encoding(doc) {
            for (code, slot) in table.iter_mut().enumerate() {
                let text = encoding.bytes_to_string(&[code as u8]).unwrap_or_default();
                if !text.is_empty() && text != "\u{FFFD}" {
                    *slot = Some(text.into());
                }
            }
        }
    }
    table.into()
}

/// Each code's width in parts of the font size, from `/FirstChar` and `/Widths`; `None` when the
/// font has none (the standard 14 fonts may omit them).
fn simple_widths(doc: &Document, font: &Dictionary) -> Option<Box<[f32]>> {
    let first = usize::try_from(font.get(b"FirstChar").and_then(Object::as_i64).ok()?).ok()?;
    let widths = font.get_deref(b"Widths", doc).ok()?.as_array().ok()?;
    let mut table = vec![0.0; 256];
    for (slot, width) in table.iter_mut().skip(first).zip(widths) {
        *slot = doc
            .dereference(width)
            .ok()
            .and_then(|(_, w)| w.as_float().ok())
            .unwrap_or(0.0)
            / 1000.0;
    }
    Some(table.into())
}

/// A font dictionary with nothing in it but its type, to ask lopdf about one encoding feature.
fn font_dict() -> Dictionary {
    let mut dict = Dictionary::new();
    dict.set("Type", Object::Name(b"Font".to_vec()));
    dict
}

/// The 256 codes of a named encoding (Standard, WinAnsi, MacRoman, MacExpert) as lopdf has them.
fn named_encoding(doc: &Document, name: &[u8]) -> Vec<Option<Box<str>>> {
    let mut probe = font_dict();
    probe.set("Encoding", Object::Name(name.to_vec()));
    let encoding = probe.get_font_encoding(doc);
    (0..=255u8)
        .map(|code| {
            let text = encoding.as_ref().ok()?.bytes_to_string(&[code]).ok()?;
            (!text.is_empty()).then(|| text.into())
        })
        .collect()
}

/// The encoding built into an embedded Type 1 font program (`/FontDescriptor /FontFile`): code
/// and glyph name of each `dup <code> /<name> put` in its clear-text part.
fn builtin_encoding(doc: &Document, font: &Dictionary) -> Option<Vec<(u8, Vec<u8>)>> {
    let descriptor = font
        .get_deref(b"FontDescriptor", doc)
        .ok()?
        .as_dict()
        .ok()?;
    let file = descriptor
        .get_deref(b"FontFile", doc)
        .ok()?
        .as_stream()
        .ok()?;
    let data = file
        .decompressed_content()
        .unwrap_or_else(|_| file.content.clone());
    let clear_text = file
        .dict
        .get(b"Length1")
        .and_then(Object::as_i64)
        .ok()
        .and_then(|len| usize::try_from(len).ok())
        .map_or(data.len(), |len| len.min(data.len()));
    type1_encoding(&data[..clear_text])
}

/// The `/Encoding` array of a Type 1 font's clear text; `None` for `StandardEncoding` or none.
fn type1_encoding(clear_text: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
    let start = clear_text
        .windows(b"/Encoding".len())
        .position(|w| w == b"/Encoding")?;
    let mut codes = Vec::new();
    let mut previous: [&[u8]; 3] = [b"", b"", b""];
    for token in clear_text[start..]
        .split(|b| b.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
    {
        match token {
            b"put" => {
                if let [b"dup", code, name] = previous
                    && let (Some(code), Some(name)) = (
                        std::str::from_utf8(code)
                            .ok()
                            .and_then(|c| c.parse::<u8>().ok()),
                        name.strip_prefix(b"/"),
                    )
                {
                    codes.push((code, name.to_vec()));
                }
            }
            // The array ends with `readonly def` (or `def`); `StandardEncoding def` has none.
            b"def" | b"readonly" => break,
            _ => {}
        }
        previous = [previous[1], previous[2], token];
    }
    (!codes.is_empty()).then_some(codes)
}

/// Glyph names to text: `uniXXXX` and `uXXXX[XX]` by their code points, the rest through
/// lopdf's Adobe Glyph List; remembered per document.
#[derive(Default)]
pub(super) struct GlyphNames {
    known: HashMap<Vec<u8>, Option<Box<str>>>,
    /// lopdf resolves names inside a document; any one will do.
    empty: Document,
}

impl GlyphNames {
    fn text(&mut self, name: &[u8]) -> Option<Box<str>> {
        if let Some(text) = self.known.get(name) {
            return text.clone();
        }
        let text = code_point_name(name).or_else(|| {
            // A one-entry /Differences encoding decodes code 0 as the glyph; lopdf falls back
            // to StandardEncoding (nothing at 0) for a name it does not know.
            let mut encoding = Dictionary::new();
            encoding.set("Type", Object::Name(b"Encoding".to_vec()));
            encoding.set(
                "Differences",
                vec![Object::Integer(0), Object::Name(name.to_vec())],
            );
            let mut probe = font_dict();
            probe.set("Encoding", encoding);
            let text = probe
                .get_font_encoding(&self.empty)
                .ok()?
                .bytes_to_string(&[0])
                .ok()?;
            (!text.is_empty()).then(|| text.into())
        });
        self.known.insert(name.to_vec(), text.clone());
        text
    }
}

/// `uni0041` or `u1F600`: the glyph of that code point.
fn code_point_name(name: &[u8]) -> Option<Box<str>> {
    let hex = name
        .strip_prefix(b"uni")
        .filter(|h| h.len() == 4)
        .or_else(|| {
            name.strip_prefix(b"u")
                .filter(|h| (4..=6).contains(&h.len()))
        })?;
    let code = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    char::from_u32(code).map(|c| c.to_string().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyph_names_become_text() {
        let mut glyphs = GlyphNames::default();
        assert_eq!(glyphs.text(b"fi").as_deref(), Some("\u{FB01}"));
        assert_eq!(glyphs.text(b"braceleft").as_deref(), Some("{"));
        assert_eq!(glyphs.text(b"alpha").as_deref(), Some("α"));
        assert_eq!(glyphs.text(b"uni00E9").as_deref(), Some("é"));
        assert_eq!(glyphs.text(b"u1F600").as_deref(), Some("😀"));
        assert_eq!(glyphs.text(b"g37"), None);
    }

    #[test]
    fn a_type1_programs_own_encoding_is_read() {
        let clear_text = b"%!PS-AdobeFont-1.0: CMR10\n/FontName /CMR10 def\n\
            /Encoding 256 array\n0 1 255 {1 index exch /.notdef put} for\n\
            dup 12 /fi put\ndup 102 /f put\nreadonly def\ncurrentdict end";
        assert_eq!(
            type1_encoding(clear_text),
            Some(vec![(12, b"fi".to_vec()), (102, b"f".to_vec())])
        );
        assert_eq!(type1_encoding(b"/Encoding StandardEncoding def"), None);
        assert_eq!(type1_encoding(b"no encoding here"), None);
    }
}
