//! Deterministic fake embeddings and the emulator's token count.
//!
//! A vector is a pure function of (model, text): the same text always gets the same unit vector,
//! so re-ingesting a document is observable, and a query equal to a chunk's text finds that chunk
//! with cosine 1. Lower dimensions are prefixes of the full vector, renormalised, like Voyage's and
//! OpenAI's Matryoshka embeddings.

use base64::Engine as _;
use serde::Serialize;

/// The emulator's token count: UTF-8 bytes / 4, rounded up (at least 1 for non-empty text).
///
/// Sluice's client estimates bytes / 3, so its plans always fit the emulator's limits, as they
/// are meant to fit the real tokenizers'.
pub fn count_tokens(text: &str) -> usize {
    text.len().div_ceil(4)
}

fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    bytes.iter().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The unit vector of `text` under `model`, `dimension` long.
pub fn embed(model: &str, text: &str, dimension: usize) -> Vec<f32> {
    let mut state = fnv1a(text.as_bytes(), fnv1a(model.as_bytes(), 0));
    let mut v: Vec<f32> = (0..dimension)
        .map(|_| {
            // 24 random bits → uniform in [-1, 1).
            let bits = (splitmix(&mut state) >> 40) as f32;
            bits / (1u32 << 23) as f32 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// An `embedding` value in a response.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EmbeddingValue {
    Float(Vec<f32>),
    Int(Vec<i32>),
    Base64(String),
}

/// How vectors are encoded: OpenAI's `encoding_format` and Voyage's `output_dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Float,
    /// OpenAI `base64`: little-endian f32 bytes.
    Base64,
    /// Voyage `int8`: round(v·127).
    Int8,
    /// Voyage `uint8`: round(v·127) + 128.
    Uint8,
    /// Voyage `binary`: sign bits packed 8 per byte, offset to i8.
    Binary,
    /// Voyage `ubinary`: sign bits packed 8 per byte.
    Ubinary,
}

/// Encodes one vector.
pub fn encode(vector: Vec<f32>, encoding: Encoding) -> EmbeddingValue {
    let quantise = |x: f32| (x * 127.0).round().clamp(-128.0, 127.0) as i32;
    let packed = |v: &[f32]| -> Vec<i32> {
        v.chunks(8)
            .map(|bits| {
                bits.iter()
                    .enumerate()
                    .fold(0i32, |acc, (i, &x)| acc | (i32::from(x > 0.0) << (7 - i)))
            })
            .collect()
    };
    match encoding {
        Encoding::Float => EmbeddingValue::Float(vector),
        Encoding::Base64 => {
            let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
            EmbeddingValue::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        Encoding::Int8 => EmbeddingValue::Int(vector.into_iter().map(quantise).collect()),
        Encoding::Uint8 => {
            EmbeddingValue::Int(vector.into_iter().map(|x| quantise(x) + 128).collect())
        }
        Encoding::Binary => {
            EmbeddingValue::Int(packed(&vector).into_iter().map(|b| b - 128).collect())
        }
        Encoding::Ubinary => EmbeddingValue::Int(packed(&vector)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_deterministic_unit_and_text_specific() {
        let a = embed("m", "hello", 64);
        assert_eq!(a, embed("m", "hello", 64));
        assert_ne!(a, embed("m", "hellp", 64));
        assert_ne!(a, embed("other", "hello", 64));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }

    #[test]
    fn smaller_dimensions_are_renormalised_prefixes() {
        let full = embed("m", "text", 32);
        let short = embed("m", "text", 8);
        let ratio = short[0] / full[0];
        assert!(
            short
                .iter()
                .zip(&full)
                .all(|(s, f)| (s / f - ratio).abs() < 1e-4)
        );
    }

    #[test]
    fn tokens_are_a_quarter_of_the_bytes() {
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("abcde"), 2);
        // Never more than the client's bytes/3 estimate.
        for s in ["a", "hello world", "ééé", &"x".repeat(1001)] {
            assert!(count_tokens(s) <= s.len().div_ceil(3));
        }
    }

    #[test]
    fn encodings() {
        let v = vec![0.5, -0.5, 1.0, -1.0, 0.1, 0.1, -0.1, 0.0];
        assert_eq!(
            encode(v.clone(), Encoding::Int8),
            EmbeddingValue::Int(vec![64, -64, 127, -127, 13, 13, -13, 0])
        );
        assert_eq!(
            encode(v.clone(), Encoding::Ubinary),
            EmbeddingValue::Int(vec![0b1010_1100])
        );
        assert_eq!(
            encode(v, Encoding::Binary),
            EmbeddingValue::Int(vec![0b1010_1100 - 128])
        );
        let EmbeddingValue::Base64(b) = encode(vec![1.5], Encoding::Base64) else {
            panic!()
        };
        assert_eq!(
            b,
            base64::engine::general_purpose::STANDARD.encode(1.5f32.to_le_bytes())
        );
    }
}
