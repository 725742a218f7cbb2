//! Request planning for the dense embedders: splits one call's inputs into provider requests that
//! respect the documented per-request limits (inputs and summed tokens) before anything is sent.
//!
//! Token counts are estimated, not computed with the provider's tokenizer: Voyage's tokenizer is
//! not public and running cl100k on every chunk twice would cost more CPU than the request. The
//! estimate is deliberately high so a planned request is never refused for size.

use std::ops::Range;

use super::{DenseEmbeddings, EmbedError};

/// A cheap, conservative token estimate: UTF-8 bytes / 3, rounded up.
///
/// English prose averages about 4 bytes per cl100k or Voyage token, code and numbers about 3, so
/// this over-estimates both for typical text. (Text of mostly emoji or rare scripts can exceed it;
/// the provider's 400 then surfaces as [`super::EmbedError::Rejected`].)
pub fn estimate_tokens(text: &str) -> usize {
    text.len().div_ceil(3)
}

/// The per-request limits a plan must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most inputs in one request (Voyage 1,000; OpenAI 2,048).
    pub max_inputs: usize,
    /// Most estimated tokens summed over one request's inputs.
    pub max_tokens: usize,
    /// Most estimated tokens of a single input (the model's context length).
    pub max_tokens_per_input: usize,
}

/// Why a planned request ended where it did (useful in logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchClose {
    /// Adding the next input would exceed `max_inputs`.
    InputLimit,
    /// Adding the next input would exceed `max_tokens`.
    TokenLimit,
    /// It holds the last input.
    EndOfInput,
}

/// One planned request: a contiguous range of the caller's inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub range: Range<usize>,
    pub estimated_tokens: usize,
    pub closed_by: BatchClose,
}

/// An input that cannot be sent at all, whatever the batching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OversizeInput {
    pub index: usize,
    pub tokens: usize,
    pub limit: usize,
}

/// Splits `texts` greedily, in order, into requests within `limits`. Contiguous ranges keep the
/// reassembly trivial and the order of vectors equal to the order of inputs.
pub fn plan_batches(texts: &[String], limits: &BatchLimits) -> Result<Vec<Batch>, OversizeInput> {
    // Zero limits would plan nothing forever; treat them as 1 (settings validation rejects them).
    let max_inputs = limits.max_inputs.max(1);
    let per_input = limits.max_tokens_per_input.min(limits.max_tokens).max(1);
    let mut batches = Vec::new();
    let mut start = 0;
    let mut tokens = 0;
    for (index, text) in texts.iter().enumerate() {
        let estimate = estimate_tokens(text);
        if estimate > per_input {
            return Err(OversizeInput {
                index,
                tokens: estimate,
                limit: per_input,
            });
        }
        let closed_by = if index - start == max_inputs {
            Some(BatchClose::InputLimit)
        } else if tokens + estimate > limits.max_tokens {
            Some(BatchClose::TokenLimit)
        } else {
            None
        };
        if let Some(closed_by) = closed_by {
            batches.push(Batch {
                range: start..index,
                estimated_tokens: tokens,
                closed_by,
            });
            start = index;
            tokens = 0;
        }
        tokens += estimate;
    }
    if start < texts.len() {
        batches.push(Batch {
            range: start..texts.len(),
            estimated_tokens: tokens,
            closed_by: BatchClose::EndOfInput,
        });
    }
    Ok(batches)
}

/// Sends `texts` as one request with `send`; when the provider refuses it as too big for one
/// request (`too_big` — our token estimate is only an approximation of its tokenizer), splits it in
/// half and sends each half, recursively, so the documents never fail for the batching's sake.
/// Only a single input the provider refuses on its own is an error (the provider's, unchanged).
///
/// The halves go one after the other: the split is rare, and sending them at once would double
/// the request rate exactly when the provider is telling us we misjudged its limits.
pub(crate) async fn send_splitting<'t, F, Fut>(
    provider: &'static str,
    texts: &'t [String],
    too_big: fn(&EmbedError) -> bool,
    mut send: F,
) -> Result<DenseEmbeddings, EmbedError>
where
    F: FnMut(&'t [String]) -> Fut,
    Fut: Future<Output = Result<DenseEmbeddings, EmbedError>>,
{
    let mut out = DenseEmbeddings {
        vectors: Vec::with_capacity(texts.len()),
        tokens: 0,
    };
    // Ranges still to send, the next one on top; halves are pushed right first so vectors come
    // back in input order.
    let mut todo: Vec<Range<usize>> = Vec::with_capacity(1);
    todo.push(0..texts.len());
    while let Some(range) = todo.pop() {
        match send(&texts[range.clone()]).await {
            Ok(part) => {
                out.vectors.extend(part.vectors);
                out.tokens += part.tokens;
            }
            Err(error) if range.len() > 1 && too_big(&error) => {
                let mid = range.start + range.len() / 2;
                tracing::warn!(
                    provider,
                    inputs = range.len(),
                    %error,
                    "provider refused the batch as too large, splitting it in half"
                );
                todo.push(mid..range.end);
                todo.push(range.start..mid);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(lens: &[usize]) -> Vec<String> {
        lens.iter().map(|&n| "a".repeat(n)).collect()
    }

    #[test]
    fn estimate_rounds_up_and_counts_bytes() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("ab"), 1);
        assert_eq!(estimate_tokens("abcd"), 2);
        assert_eq!(estimate_tokens("é"), 1); // 2 bytes
    }

    #[test]
    fn splits_on_input_count() {
        let limits = BatchLimits {
            max_inputs: 2,
            max_tokens: 1000,
            max_tokens_per_input: 100,
        };
        let plan = plan_batches(&texts(&[3, 3, 3, 3, 3]), &limits).unwrap();
        let ranges: Vec<_> = plan.iter().map(|b| b.range.clone()).collect();
        assert_eq!(ranges, vec![0..2, 2..4, 4..5]);
        assert_eq!(plan[0].closed_by, BatchClose::InputLimit);
        assert_eq!(plan[2].closed_by, BatchClose::EndOfInput);
    }

    #[test]
    fn splits_on_token_sum_without_exceeding_it() {
        let limits = BatchLimits {
            max_inputs: 100,
            max_tokens: 10,
            max_tokens_per_input: 10,
        };
        // Estimates: 4, 4, 4, 10, 1.
        let plan = plan_batches(&texts(&[12, 12, 12, 30, 3]), &limits).unwrap();
        let ranges: Vec<_> = plan.iter().map(|b| b.range.clone()).collect();
        assert_eq!(ranges, vec![0..2, 2..3, 3..4, 4..5]);
        assert!(plan.iter().all(|b| b.estimated_tokens <= 10));
        assert_eq!(plan[0].closed_by, BatchClose::TokenLimit);
    }

    #[test]
    fn oversize_input_is_reported_with_its_index() {
        let limits = BatchLimits {
            max_inputs: 100,
            max_tokens: 1000,
            max_tokens_per_input: 10,
        };
        let err = plan_batches(&texts(&[3, 31]), &limits).unwrap_err();
        assert_eq!(
            err,
            OversizeInput {
                index: 1,
                tokens: 11,
                limit: 10
            }
        );
    }

    #[test]
    fn empty_input_plans_no_request() {
        let limits = BatchLimits {
            max_inputs: 1,
            max_tokens: 1,
            max_tokens_per_input: 1,
        };
        assert!(plan_batches(&[], &limits).unwrap().is_empty());
    }
}
