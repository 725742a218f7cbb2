//! cl100k token counting for the chunker, with `bpe-openai`: the same counts as tiktoken (checked
//! on real documents in tests/tokenizer.rs) in time linear in the input, where tiktoken's BPE merge
//! is quadratic in the length of one pre-token piece (a 6 MB run without spaces took minutes).
//!
//! `bpe_openai::Tokenizer::count` pre-tokenises with a `regex_automata::meta::Regex` whose
//! internal cache pool is what made tiktoken-rs contend across threads (`Pool::get_slow`), so the
//! pre-tokeniser here is the same regex searched with a cache owned by each thread instead. The
//! patterns are bpe-openai's cl100k patterns; tests/tokenizer.rs compares every count with
//! tiktoken-rs and bpe-openai's own `count`.

use std::cell::RefCell;
use std::sync::LazyLock;

use bpe_openai::byte_pair_encoding::BytePairEncoding;
use regex_automata::meta::{Cache, Regex};
use regex_automata::{Anchored, Input};
use rustc_hash::FxHashMap;

/// cl100k's pre-tokenisation, as bpe-openai writes it: tiktoken's pattern with its negative
/// look-ahead `\s+(?!\S)` rewritten as pattern 2, which consumes one look-ahead character that
/// the splitter gives back.
const PATTERNS: [&str; 3] = [
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+$",
    "\\s+\\s",
    "\\s+",
];
const LOOKAHEAD_PATTERN: usize = 1;

static PRETOKENIZER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new_many(&PATTERNS).expect("the cl100k pre-tokenisation regex is valid")
});

/// Pre-token pieces up to this many bytes have their counts remembered per thread. Words recur
/// within a document and across documents, and text-splitter sizes overlapping candidates many
/// times while it looks for each chunk's end, so most pieces are then counted by one hash lookup
/// instead of a BPE encoding (which was half of the chunk stage's CPU). Longer pieces — runs
/// without spaces, long numbers of symbols — are rare and are encoded with an early stop instead.
const REMEMBERED_PIECE_BYTES: usize = 24;
/// Pieces remembered per thread before the memory starts over: a few MB at most.
const REMEMBERED_PIECES: usize = 1 << 16;

thread_local! {
    /// This thread's search cache for [`PRETOKENIZER`]: no pool, so no contention.
    static CACHE: RefCell<Option<Cache>> = const { RefCell::new(None) };
    /// This thread's counts of short pieces (see [`REMEMBERED_PIECE_BYTES`]).
    static PIECE_COUNTS: RefCell<FxHashMap<Box<[u8]>, u32>> = RefCell::new(FxHashMap::default());
}

/// The cl100k count of one short pre-token piece, remembered.
fn remembered_count(
    counts: &mut FxHashMap<Box<[u8]>, u32>,
    bpe: &BytePairEncoding,
    piece: &[u8],
) -> usize {
    if let Some(&n) = counts.get(piece) {
        return n as usize;
    }
    let n = bpe.count(piece);
    if counts.len() >= REMEMBERED_PIECES {
        counts.clear();
    }
    counts.insert(piece.into(), n as u32);
    n
}

/// The cl100k tokenizer (OpenAI's embedding models; a close proxy for Voyage's). Free to copy and
/// share between threads: the vocabulary is a process-wide static, loaded on first use.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cl100k;

impl Cl100k {
    fn bpe() -> &'static BytePairEncoding {
        &bpe_openai::cl100k_base().bpe
    }

    /// Number of cl100k tokens in `text`, exactly as tiktoken's `encode_ordinary(text).len()`.
    pub fn count(&self, text: &str) -> usize {
        self.count_up_to(text, usize::MAX)
    }

    /// `min(count(text), limit)`, in time proportional to `limit` tokens' worth of text rather
    /// than to `text` when `text` is much larger: the chunker only needs to know that a candidate
    /// is too big, not by how much.
    pub fn count_up_to(&self, text: &str, limit: usize) -> usize {
        PIECE_COUNTS.with_borrow_mut(|counts| {
            let mut total = 0;
            for_each_piece(text, |piece| add_piece(counts, piece, &mut total, limit));
            total
        })
    }
}

/// Add `piece`'s count to `total`, capped at `limit`; whether there is room for more.
fn add_piece(
    counts: &mut FxHashMap<Box<[u8]>, u32>,
    piece: &str,
    total: &mut usize,
    limit: usize,
) -> bool {
    let bpe = Cl100k::bpe();
    let piece = piece.as_bytes();
    let left = limit.saturating_sub(*total);
    let n = if piece.len() <= REMEMBERED_PIECE_BYTES {
        Some(remembered_count(counts, bpe, piece)).filter(|n| *n <= left)
    } else {
        bpe.count_till_limit(piece, left)
    };
    match n {
        Some(n) => {
            *total += n;
            true
        }
        None => {
            *total = limit;
            false
        }
    }
}

/// The pre-token pieces of one text and their running token counts, so that any slice of that
/// text is counted from the table instead of pre-tokenised and encoded again: text-splitter sizes
/// many overlapping candidates for every chunk it makes, all slices of the text it was given.
///
/// Counts stay exact. Pre-tokenisation has no look-behind, so a slice that starts where a piece
/// of the whole text starts is cut into the same pieces as the whole text, up to where the end of
/// the slice changes the cut: a piece ending at or before the slice's last non-whitespace
/// character cannot be affected, because the only pattern that depends on the end of the input
/// (`\s+$`) and the look-ahead of pattern 2 both see that character. So a slice is counted as:
/// its first pieces cut on their own until one ends where a piece of the table ends, the table's
/// pieces from there up to the last one ending by its last non-whitespace character, and the rest
/// cut on its own — a piece or two each side instead of the whole candidate.
pub struct PieceTable<'t> {
    text: &'t str,
    /// Byte offsets where the table's pieces end, ascending (the first piece starts at 0).
    ends: Vec<usize>,
    /// `tokens_through[k]`: tokens in pieces `0..=k`.
    tokens_through: Vec<usize>,
}

impl<'t> PieceTable<'t> {
    pub fn new(text: &'t str) -> Self {
        let mut ends = Vec::new();
        let mut tokens_through = Vec::new();
        PIECE_COUNTS.with_borrow_mut(|counts| {
            let mut total = 0;
            for_each_piece(text, |piece| {
                add_piece(counts, piece, &mut total, usize::MAX);
                ends.push(offset_in(text, piece) + piece.len());
                tokens_through.push(total);
                true
            });
        });
        PieceTable {
            text,
            ends,
            tokens_through,
        }
    }

    /// [`Cl100k::count_up_to`] for `slice`; from the table when `slice` is part of its text.
    pub fn count_up_to(&self, slice: &str, limit: usize) -> usize {
        let Some(start) = slice_start(self.text, slice) else {
            return Cl100k.count_up_to(slice, limit);
        };
        // `trim_end` and the pre-tokeniser's `\s` both mean Unicode's White_Space.
        let content_end = start + slice.trim_end().len();
        PIECE_COUNTS.with_borrow_mut(|counts| {
            let mut total = 0;
            // The table piece where the slice's own pieces first end together with the table's.
            let mut resumed = None;
            for_each_piece(slice, |piece| {
                if !add_piece(counts, piece, &mut total, limit) {
                    return false;
                }
                let end = start + offset_in(slice, piece) + piece.len();
                if end <= content_end {
                    resumed = self.ends.binary_search(&end).ok();
                }
                resumed.is_none()
            });
            let Some(from) = resumed else {
                return total;
            };
            // The last table piece ending by `content_end` (there is one: `from`).
            let to = self.ends.partition_point(|&e| e <= content_end) - 1;
            total += self.tokens_through[to] - self.tokens_through[from];
            if total >= limit {
                return limit;
            }
            let tail = &self.text[self.ends[to]..start + slice.len()];
            for_each_piece(tail, |piece| add_piece(counts, piece, &mut total, limit));
            total
        })
    }
}

/// Byte offset of `part` in `whole`, which it is a slice of.
fn offset_in(whole: &str, part: &str) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

/// Byte offset of `slice` in `text` if `slice` lies within `text`'s bytes.
fn slice_start(text: &str, slice: &str) -> Option<usize> {
    let start = (slice.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    (start + slice.len() <= text.len()).then_some(start)
}

/// Call `f` with each pre-token piece of `text` (slices of it, in order) while it returns true.
fn for_each_piece(text: &str, mut f: impl FnMut(&str) -> bool) {
    let regex = &*PRETOKENIZER;
    CACHE.with_borrow_mut(|cache| {
        let cache = cache.get_or_insert_with(|| regex.create_cache());
        let mut last = 0;
        while last < text.len() {
            let input = Input::new(&text[last..]).anchored(Anchored::Yes);
            let Some(m) = regex.search_with(cache, &input) else {
                break;
            };
            let start = last;
            let mut end = last + m.range().end;
            if m.pattern().as_usize() == LOOKAHEAD_PATTERN {
                // Give back the look-ahead character (pattern 2 always matches at least two).
                let lookahead = text[start..end]
                    .chars()
                    .next_back()
                    .map_or(0, char::len_utf8);
                end -= lookahead;
            }
            if end == start {
                break;
            }
            last = end;
            if !f(&text[start..end]) {
                break;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_match_bpe_openai_and_known_values() {
        let tok = Cl100k;
        for text in [
            "",
            "An apple a",
            "Hello, world!",
            "  leading spaces and trailing   ",
            "line\r\n\r\nbreaks\n\n\n  indented",
            "ünïcödé, 世界, emoji 🦀🦀 and numbers 1234567",
            "don't you'll I'M",
        ] {
            assert_eq!(
                tok.count(text),
                bpe_openai::cl100k_base().count(text),
                "{text:?}"
            );
        }
        assert_eq!(tok.count("An apple a"), 3);
    }

    #[test]
    fn count_up_to_caps_without_changing_small_counts() {
        let tok = Cl100k;
        let text = "word ".repeat(1000);
        let full = tok.count(&text);
        assert!(full >= 1000);
        assert_eq!(tok.count_up_to(&text, 5000), full);
        assert_eq!(tok.count_up_to(&text, 100), 100);
        assert_eq!(tok.count_up_to(&text, 0), 0);
    }

    #[test]
    fn remembered_counts_stay_exact_when_the_memory_starts_over() {
        // More distinct short pieces than a thread remembers, counted cold and then warm.
        let text: String = (0..REMEMBERED_PIECES + 5000)
            .map(|i| format!(" zq{i}x."))
            .collect();
        let reference = bpe_openai::cl100k_base().count(&text);
        assert_eq!(Cl100k.count(&text), reference);
        assert_eq!(Cl100k.count(&text), reference);
        assert_eq!(Cl100k.count_up_to(&text, 7), 7);
        assert_eq!(Cl100k.count_up_to(&text, reference + 1), reference);
    }

    /// Every slice of `text` between char boundaries `step` apart, counted from the table and on
    /// its own, with and without a cap.
    fn assert_table_counts_every_slice(text: &str, step: usize) {
        let table = PieceTable::new(text);
        let bounds: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .step_by(step)
            .chain([text.len()])
            .collect();
        for &start in &bounds {
            for &end in bounds.iter().filter(|&&e| e >= start) {
                let slice = &text[start..end];
                let expected = Cl100k.count(slice);
                assert_eq!(table.count_up_to(slice, usize::MAX), expected, "{slice:?}");
                let cap = expected / 2;
                assert_eq!(
                    table.count_up_to(slice, cap),
                    cap,
                    "{slice:?} capped at {cap}"
                );
            }
        }
    }

    #[test]
    fn table_counts_equal_counting_each_slice_alone() {
        // Slices that start inside a piece, end inside one, end in whitespace runs (the only
        // place the end of the input changes the cut), cross newlines, contractions, digits.
        let text = "Hello, world!  It's 12345678 o'clock;\n\n  \tindented  \r\n\
                    don'T  ünïcödé 世界 🦀🦀 --->  [x](y)\u{a0}\u{a0} \u{3000}a\u{85}\n   \n end.   ";
        assert_table_counts_every_slice(text, 1);
        let long = "word, another word.\n\n- item one\n- item two  \n".repeat(12);
        assert_table_counts_every_slice(&long, 5);
    }

    #[test]
    fn table_counts_slices_of_other_text_on_their_own() {
        let table = PieceTable::new("some text");
        let other = String::from("other text, not in the table");
        assert_eq!(table.count_up_to(&other, usize::MAX), Cl100k.count(&other));
        assert_eq!(table.count_up_to("", usize::MAX), 0);
    }

    #[test]
    fn threads_share_the_tokenizer() {
        let text = "Some text to count, again and again. ".repeat(50);
        let expected = Cl100k.count(&text);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20 {
                        assert_eq!(Cl100k.count(&text), expected);
                    }
                });
            }
        });
    }
}
