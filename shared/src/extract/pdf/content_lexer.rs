//! A content stream as operators with their operands, for the content-stream reader.
//!
//! lopdf's `Content::decode` builds a heap object for every number and name of every drawing
//! operation and spent 58% of the reader's time on a 1,158-page manual doing it (with
//! malloc/free); text extraction needs the operands of a dozen text operators only. This lexer
//! borrows names and strings without escapes from the stream, keeps the last few operands, and
//! skips dictionaries and inline image data. One pass over the bytes, no recursion.

use std::borrow::Cow;

/// An operand the text reader can use; everything else is [`Operand::Other`].
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Operand<'a> {
    Number(f32),
    Name(Cow<'a, [u8]>),
    String(Cow<'a, [u8]>),
    /// An array's numbers and strings; nested arrays and other items become `Other`.
    Array(Vec<Operand<'a>>),
    Other,
}

impl Operand<'_> {
    pub(super) fn number(&self) -> Option<f32> {
        match self {
            Operand::Number(n) => Some(*n),
            _ => None,
        }
    }

    pub(super) fn name(&self) -> Option<&[u8]> {
        match self {
            Operand::Name(name) => Some(name),
            _ => None,
        }
    }
}

/// Operands kept before an operator: text operators take at most six (`Tm`); a stream that piles
/// up more only costs the ones dropped.
const MAX_OPERANDS: usize = 8;

/// Calls `on_operator(operator, operands)` for each operator of `stream`, in order.
pub(super) fn for_each_operation<'a, E>(
    stream: &'a [u8],
    mut on_operator: impl FnMut(&[u8], &[Operand<'a>]) -> Result<(), E>,
) -> Result<(), E> {
    let mut lexer = Lexer {
        bytes: stream,
        at: 0,
    };
    let mut operands: Vec<Operand<'a>> = Vec::with_capacity(MAX_OPERANDS);
    // The array being read, if any (arrays nested in it are not kept).
    let mut array: Option<Vec<Operand<'a>>> = None;
    let mut nested_arrays = 0usize;
    let push = |operands: &mut Vec<Operand<'a>>, array: &mut Option<Vec<_>>, nested, operand| {
        match array {
            Some(items) if nested == 0 => items.push(operand),
            Some(_) => {}
            None => {
                if operands.len() == MAX_OPERANDS {
                    operands.remove(0);
                }
                operands.push(operand);
            }
        }
    };
    while let Some(token) = lexer.next_token() {
        match token {
            Token::Operand(operand) => push(&mut operands, &mut array, nested_arrays, operand),
            Token::ArrayOpen => match array {
                Some(_) => nested_arrays += 1,
                None => array = Some(Vec::new()),
            },
            Token::ArrayClose => {
                if nested_arrays > 0 {
                    nested_arrays -= 1;
                    push(&mut operands, &mut array, 0, Operand::Other);
                } else if let Some(items) = array.take() {
                    push(&mut operands, &mut array, 0, Operand::Array(items));
                }
            }
            Token::Keyword(b"true" | b"false" | b"null") => {
                push(&mut operands, &mut array, nested_arrays, Operand::Other)
            }
            Token::Keyword(b"ID") => {
                // Inline image data: binary, up to the `EI` that ends it.
                lexer.skip_inline_image();
                operands.clear();
            }
            Token::Keyword(operator) => {
                // Operators never stand in arrays: an array still open is damaged; drop it
                // rather than let it swallow the rest of the stream.
                if array.take().is_some() {
                    nested_arrays = 0;
                    operands.clear();
                }
                on_operator(operator, &operands)?;
                operands.clear();
            }
        }
    }
    Ok(())
}

enum Token<'a> {
    Operand(Operand<'a>),
    ArrayOpen,
    ArrayClose,
    /// An operator, or `true`/`false`/`null`/`ID`.
    Keyword(&'a [u8]),
}

struct Lexer<'a> {
    bytes: &'a [u8],
    at: usize,
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b'\0' | b'\t' | b'\n' | b'\x0c' | b'\r' | b' ')
}

fn is_delimiter(b: u8) -> bool {
    matches!(
        b,
        b'(' | b')' | b'<' | b'>' | b'[' | b']' | b'{' | b'}' | b'/' | b'%'
    )
}

fn is_regular(b: u8) -> bool {
    !is_whitespace(b) && !is_delimiter(b)
}

impl<'a> Lexer<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next_token(&mut self) -> Option<Token<'a>> {
        loop {
            let b = self.peek()?;
            match b {
                _ if is_whitespace(b) => self.at += 1,
                b'%' => self.skip_while(|b| b != b'\n' && b != b'\r'),
                b'[' => {
                    self.at += 1;
                    return Some(Token::ArrayOpen);
                }
                b']' => {
                    self.at += 1;
                    return Some(Token::ArrayClose);
                }
                b'(' => return Some(Token::Operand(Operand::String(self.literal_string()))),
                b'<' if self.bytes.get(self.at + 1) == Some(&b'<') => {
                    self.skip_dictionary();
                    return Some(Token::Operand(Operand::Other));
                }
                b'<' => return Some(Token::Operand(Operand::String(self.hex_string()))),
                b'/' => {
                    self.at += 1;
                    let name = self.regular_run();
                    return Some(Token::Operand(Operand::Name(decode_name(name))));
                }
                // Stray closers and procedure braces (PostScript calculator functions) carry no
                // text.
                b')' | b'>' | b'{' | b'}' => self.at += 1,
                _ => {
                    let word = self.regular_run();
                    return Some(match parse_number(word) {
                        Some(n) => Token::Operand(Operand::Number(n)),
                        None => Token::Keyword(word),
                    });
                }
            }
        }
    }

    fn skip_while(&mut self, keep: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&keep) {
            self.at += 1;
        }
    }

    fn regular_run(&mut self) -> &'a [u8] {
        let start = self.at;
        self.skip_while(is_regular);
        &self.bytes[start..self.at]
    }

    /// `(...)`: balanced parentheses, backslash escapes. Borrowed when there are none.
    fn literal_string(&mut self) -> Cow<'a, [u8]> {
        self.at += 1;
        let start = self.at;
        let mut depth = 0usize;
        let mut escaped = false;
        while let Some(b) = self.peek() {
            match b {
                b'\\' => {
                    escaped = true;
                    self.at += 2;
                    continue;
                }
                b'(' => depth += 1,
                b')' if depth == 0 => break,
                b')' => depth -= 1,
                _ => {}
            }
            self.at += 1;
        }
        let end = self.at.min(self.bytes.len());
        self.at = end.saturating_add(1);
        let raw = &self.bytes[start..end];
        if escaped {
            Cow::Owned(unescape(raw))
        } else {
            Cow::Borrowed(raw)
        }
    }

    /// `<...>`: hex digits, whitespace ignored, an odd last digit followed by 0.
    fn hex_string(&mut self) -> Cow<'a, [u8]> {
        self.at += 1;
        let mut out = Vec::new();
        let mut high: Option<u8> = None;
        while let Some(b) = self.peek() {
            self.at += 1;
            if b == b'>' {
                break;
            }
            let Some(digit) = (b as char).to_digit(16) else {
                continue;
            };
            let digit = digit as u8;
            match high.take() {
                Some(h) => out.push(h << 4 | digit),
                None => high = Some(digit),
            }
        }
        if let Some(h) = high {
            out.push(h << 4);
        }
        Cow::Owned(out)
    }

    /// `<< ... >>`, nested dictionaries and strings in it included (marked-content properties).
    fn skip_dictionary(&mut self) {
        let mut depth = 0usize;
        while let Some(b) = self.peek() {
            match b {
                b'<' if self.bytes.get(self.at + 1) == Some(&b'<') => {
                    depth += 1;
                    self.at += 2;
                }
                b'>' if self.bytes.get(self.at + 1) == Some(&b'>') => {
                    self.at += 2;
                    depth -= 1;
                    if depth == 0 {
                        return;
                    }
                }
                b'(' => {
                    self.literal_string();
                }
                b'<' => {
                    self.hex_string();
                }
                _ => self.at += 1,
            }
        }
    }

    /// After `ID`: one whitespace byte, then data up to `EI` between whitespace (or the end).
    fn skip_inline_image(&mut self) {
        self.at += 1;
        while self.at < self.bytes.len() {
            let rest = &self.bytes[self.at..];
            let Some(found) = rest.windows(2).position(|w| w == b"EI") else {
                self.at = self.bytes.len();
                return;
            };
            let ei = self.at + found;
            let before = ei.checked_sub(1).and_then(|i| self.bytes.get(i));
            let after = self.bytes.get(ei + 2);
            self.at = ei + 2;
            if before.is_none_or(|&b| is_whitespace(b)) && after.is_none_or(|&b| is_whitespace(b)) {
                return;
            }
        }
    }
}

/// The bytes of a literal string's escapes (PDF 32000-1 §7.3.4.2).
fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&next) = raw.get(i) else { break };
        i += 1;
        match next {
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'b' => out.push(b'\x08'),
            b'f' => out.push(b'\x0c'),
            b'0'..=b'7' => {
                let mut value = u32::from(next - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(value as u8);
            }
            // A backslash at a line's end continues the string on the next line.
            b'\r' => {
                if raw.get(i) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => {}
            other => out.push(other),
        }
    }
    out
}

/// `/A#20B` is the name "A B".
fn decode_name(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.contains(&b'#') {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (raw[i], hex) {
            (b'#', Some(value)) => {
                out.push(value);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// `12`, `-3.5`, `.5`, `+4.`: a PDF number (no exponents in PDF).
fn parse_number(word: &[u8]) -> Option<f32> {
    let (negative, digits) = match word.first()? {
        b'-' => (true, &word[1..]),
        b'+' => (false, &word[1..]),
        _ => (false, word),
    };
    let (mut value, mut scale, mut seen_digit, mut seen_point) = (0f64, 1f64, false, false);
    for &b in digits {
        match b {
            b'0'..=b'9' => {
                seen_digit = true;
                let digit = f64::from(b - b'0');
                if seen_point {
                    scale /= 10.0;
                    value += digit * scale;
                } else {
                    value = value * 10.0 + digit;
                }
            }
            b'.' if !seen_point => seen_point = true,
            _ => return None,
        }
    }
    seen_digit.then_some((if negative { -value } else { value }) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operations(stream: &[u8]) -> Vec<(String, Vec<Operand<'_>>)> {
        let mut seen = Vec::new();
        for_each_operation::<()>(stream, |operator, operands| {
            seen.push((
                String::from_utf8_lossy(operator).into_owned(),
                operands.to_vec(),
            ));
            Ok(())
        })
        .unwrap();
        seen
    }

    fn string(s: &[u8]) -> Operand<'_> {
        Operand::String(Cow::Borrowed(s))
    }

    #[test]
    fn operators_get_their_operands() {
        use Operand::*;
        let ops = operations(
            b"BT /F1#2Ax 9.96 Tf 1 0 0 1 -72.5 .5 Tm [(Uni)27.8(v)-250(x)]TJ (a\\(b\\)c \\101\\\n!) ' ET",
        );
        assert_eq!(ops[0], ("BT".into(), vec![]));
        assert_eq!(
            ops[1],
            (
                "Tf".into(),
                vec![Name(Cow::Borrowed(b"F1*x")), Number(9.96)]
            )
        );
        assert_eq!(
            ops[2],
            (
                "Tm".into(),
                vec![
                    Number(1.0),
                    Number(0.0),
                    Number(0.0),
                    Number(1.0),
                    Number(-72.5),
                    Number(0.5)
                ]
            )
        );
        assert_eq!(
            ops[3],
            (
                "TJ".into(),
                vec![Array(vec![
                    string(b"Uni"),
                    Number(27.8),
                    string(b"v"),
                    Number(-250.0),
                    string(b"x")
                ])]
            )
        );
        assert_eq!(ops[4], ("'".into(), vec![string(b"a(b)c A!")]));
        assert_eq!(ops[5].0, "ET");
    }

    #[test]
    fn strings_dictionaries_and_images_are_skipped_where_they_hold_no_text() {
        let ops = operations(
            b"% a comment (not a string)\n/Span <</ActualText (x) /MCID 3 <</N <41>>> >> BDC \
              (nested (parens) kept) Tj <48 65 6c6C 6> Tj EMC \
              BI /W 2 /H 1 /BPC 8 /CS /G ID \x00EI\xffEI\x01 EI Q [[1 2] (s) [3]] TJ",
        );
        let names: Vec<&str> = ops.iter().map(|(o, _)| o.as_str()).collect();
        assert_eq!(names, ["BDC", "Tj", "Tj", "EMC", "BI", "Q", "TJ"]);
        assert_eq!(
            ops[0].1,
            vec![Operand::Name(Cow::Borrowed(b"Span")), Operand::Other]
        );
        assert_eq!(ops[1].1, vec![string(b"nested (parens) kept")]);
        assert_eq!(
            ops[2].1,
            vec![Operand::String(Cow::Owned(b"Hell`".to_vec()))]
        );
        assert_eq!(
            ops[6].1,
            vec![Operand::Array(vec![
                Operand::Other,
                string(b"s"),
                Operand::Other
            ])]
        );
    }

    #[test]
    fn truncated_and_hostile_streams_end_without_panicking() {
        for stream in [
            &b"(unterminated \\"[..],
            b"<4",
            b"<<",
            b"<< >> >>",
            b"[[[[[[",
            b"]]]] Tj",
            b"BI ID",
            b"/",
            b"-",
            b".",
            b"1.2.3 Tj",
        ] {
            operations(stream);
        }
        assert_eq!(parse_number(b"-"), None);
        assert_eq!(parse_number(b"4."), Some(4.0));
        assert_eq!(parse_number(b"1.2.3"), None);
        // More operands than any text operator takes: the last ones are kept.
        let many = operations(b"1 2 3 4 5 6 7 8 9 10 Tm");
        assert_eq!(many[0].1.len(), MAX_OPERANDS);
        assert_eq!(many[0].1.last(), Some(&Operand::Number(10.0)));
    }
}
