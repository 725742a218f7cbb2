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
        let bpe = Self::bpe();
        PIECE_COUNTS.with_borrow_mut(|counts| {
            for_each_piece(text, |piece, total: &mut usize| {
                let piece = piece.as_bytes();
                let left = limit - *total;
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
            })
        })
    }
}

/// Fold over the pre-token pieces of `text` with this thread's cache; `f` returns whether to go on.
fn for_each_piece(text: &str, mut f: impl FnMut(&str, &mut usize) -> bool) -> usize {
    let regex = &*PRETOKENIZER;
    CACHE.with_borrow_mut(|cache| {
        let cache = cache.get_or_insert_with(|| regex.create_cache());
        let mut total = 0;
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
            if !f(&text[start..end], &mut total) {
                break;
            }
        }
        total
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
