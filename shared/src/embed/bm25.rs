//! Local BM25 sparse vectors, the lexical half of hybrid search. Every point gets one, with or
//! without a dense provider; no network is involved.
//!
//! The vectors come from qdrant-edge's `bm25_embed`, which runs Qdrant's own tokenizer pipeline
//! (word tokenizer, lowercasing, language stopwords, Snowball stemming) and murmur3 token ids, so
//! they are identical to what a Qdrant server computes for the `qdrant/bm25` model:
//! - documents carry the BM25 term-frequency weight `tf·(k+1) / (tf + k·(1 − b + b·len/avg_len))`;
//! - queries carry 1.0 per distinct term (no TF or length weighting);
//! - the IDF half is applied by Qdrant at search time, so the collection's sparse vector must be
//!   created with the `idf` modifier.
//!
//! Encoding is CPU work: callers on async threads run [`SparseEncoder::encode_documents`] in
//! `spawn_blocking`.

use std::str::FromStr;

use qdrant_edge::bm25_embed::{EdgeBm25, EdgeBm25Config};
use qdrant_edge::external::ordered_float::NotNan;

use super::{EmbedError, SparseEncoder};
use crate::model::SparseVector;

/// The `provider` label of BM25 errors.
pub const PROVIDER: &str = "bm25";

/// BM25 parameters. Defaults are Qdrant's: k = 1.2, b = 0.75, avg_len = 256, English.
#[derive(Debug, Clone, PartialEq)]
pub struct Bm25Settings {
    /// Term-frequency saturation; higher lets repeated terms count more.
    pub k: f64,
    /// Length normalisation, 0 (none) to 1 (full).
    pub b: f64,
    /// Expected average document length in tokens; chunk-sized text is near the default.
    pub avg_len: f64,
    /// Language for stopwords and stemming (`english`, `german`, ... or ISO codes like `en`).
    pub language: String,
}

impl Default for Bm25Settings {
    fn default() -> Self {
        Bm25Settings {
            k: 1.2,
            b: 0.75,
            avg_len: 256.0,
            language: "english".to_string(),
        }
    }
}

/// BM25 encoder with Qdrant-identical output.
#[derive(Debug)]
pub struct Bm25Encoder {
    model: EdgeBm25,
    fingerprint: String,
}

impl Bm25Encoder {
    /// Validates the parameters (k ≥ 0, b in [0, 1], avg_len > 0, a known language).
    pub fn new(settings: Bm25Settings) -> Result<Self, EmbedError> {
        let invalid = |message: String| EmbedError::InvalidSettings {
            provider: PROVIDER,
            message,
        };
        let not_nan = |name: &str, v: f64| {
            NotNan::new(v).map_err(|_| invalid(format!("{name} must be a number")))
        };
        // Normalise aliases ("en" → "english") so equal settings give equal fingerprints.
        let language = qdrant_edge::Language::from_str(settings.language.trim())
            .map_err(|_| invalid(format!("unsupported BM25 language {:?}", settings.language)))?
            .to_string();
        let config = EdgeBm25Config {
            k: not_nan("k", settings.k)?,
            b: not_nan("b", settings.b)?,
            avg_len: not_nan("avg_len", settings.avg_len)?,
            language: Some(language.clone()),
            ..EdgeBm25Config::default()
        };
        let model = EdgeBm25::new(config).map_err(|e| invalid(e.to_string()))?;
        let fingerprint = format!(
            "bm25:qdrant-edge-0.7.2:k={}:b={}:avg_len={}:lang={language}:tokenizer=word",
            settings.k, settings.b, settings.avg_len
        );
        Ok(Bm25Encoder { model, fingerprint })
    }
}

impl SparseEncoder for Bm25Encoder {
    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    fn encode_documents(&self, texts: &[String]) -> Vec<SparseVector> {
        texts
            .iter()
            .map(|text| {
                let v = self.model.embed_document(text);
                SparseVector {
                    indices: v.indices,
                    values: v.values,
                }
            })
            .collect()
    }

    fn encode_query(&self, text: &str) -> SparseVector {
        let v = self.model.embed_query(text);
        SparseVector {
            indices: v.indices,
            values: v.values,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoder() -> Bm25Encoder {
        Bm25Encoder::new(Bm25Settings::default()).unwrap()
    }

    fn doc(e: &Bm25Encoder, text: &str) -> SparseVector {
        e.encode_documents(&[text.to_string()]).remove(0)
    }

    /// Qdrant's token id: murmur3-32 (seed 0) as i32, absolute value.
    fn token_id(token: &str) -> u32 {
        // murmur3 x86_32, written out so the test does not trust the code under test.
        let data = token.as_bytes();
        let (c1, c2) = (0xcc9e_2d51u32, 0x1b87_3593u32);
        let mut h = 0u32;
        let chunks = data.chunks_exact(4);
        let tail = chunks.remainder();
        for chunk in chunks {
            let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            k = k.wrapping_mul(c1).rotate_left(15).wrapping_mul(c2);
            h = (h ^ k)
                .rotate_left(13)
                .wrapping_mul(5)
                .wrapping_add(0xe654_6b64);
        }
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= u32::from(*b) << (8 * i);
        }
        if !tail.is_empty() {
            h ^= k.wrapping_mul(c1).rotate_left(15).wrapping_mul(c2);
        }
        h ^= data.len() as u32;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^= h >> 16;
        (h as i32).unsigned_abs()
    }

    #[test]
    fn same_text_gives_the_same_vector() {
        let (a, b) = (encoder(), encoder());
        let text = "Sluice chunks documents and embeds them.";
        assert_eq!(doc(&a, text), doc(&b, text));
        assert_eq!(a.encode_query(text), b.encode_query(text));
    }

    #[test]
    fn queries_are_unit_weighted_documents_are_tf_weighted() {
        let e = encoder();
        let q = e.encode_query("rivers rivers flood");
        assert_eq!(q.indices.len(), 2);
        assert!(q.values.iter().all(|&v| v == 1.0));

        let d = doc(&e, "rivers rivers flood");
        assert_eq!(d.indices, q.indices);
        let river = d
            .indices
            .iter()
            .position(|&i| i == token_id("river"))
            .expect("stemmed term present");
        let flood = d
            .indices
            .iter()
            .position(|&i| i == token_id("flood"))
            .expect("term present");
        // tf=2 outweighs tf=1; both follow k=1.2, b=0.75, avg_len=256 with a 3-token document.
        let weight = |tf: f64| (tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * 3.0 / 256.0))) as f32;
        assert!(
            (d.values[river] - weight(2.0)).abs() < 1e-5,
            "{:?}",
            d.values
        );
        assert!(
            (d.values[flood] - weight(1.0)).abs() < 1e-5,
            "{:?}",
            d.values
        );
    }

    #[test]
    fn stemming_lowercasing_and_stopwords_match_qdrant() {
        let e = encoder();
        // "The" and "are" are English stopwords; "Running"/"runs" stem to "run".
        let q = e.encode_query("The Running dogs are barking");
        let mut expected: Vec<u32> = ["run", "dog", "bark"].iter().map(|t| token_id(t)).collect();
        expected.sort_unstable();
        assert_eq!(q.indices, expected);
        assert_eq!(e.encode_query("runs"), e.encode_query("running"));
        assert!(e.encode_query("the and of").indices.is_empty());
    }

    #[test]
    fn parameters_are_validated_and_fingerprinted() {
        assert!(
            Bm25Encoder::new(Bm25Settings {
                b: 1.5,
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            Bm25Encoder::new(Bm25Settings {
                avg_len: 0.0,
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            Bm25Encoder::new(Bm25Settings {
                language: "klingon".into(),
                ..Default::default()
            })
            .is_err()
        );
        let en = Bm25Encoder::new(Bm25Settings {
            language: "en".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(en.fingerprint(), encoder().fingerprint());
        let other = Bm25Encoder::new(Bm25Settings {
            k: 1.5,
            ..Default::default()
        })
        .unwrap();
        assert_ne!(other.fingerprint(), encoder().fingerprint());
        assert!(encoder().fingerprint().contains("k=1.2:b=0.75:avg_len=256"));
    }
}
