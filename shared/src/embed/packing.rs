//! Token-packed embedding requests across documents: the embed stage's front door when a dense
//! provider is configured.
//!
//! Every document in flight in one process calls [`PackingEmbedder::embed`] with its chunks. The
//! texts go to one background dispatcher that fills requests up to the provider's per-request
//! input and token limits (the same estimates and limits as [`super::batch`]), waiting at most a
//! short *linger* after the first waiting text so a trickle of small documents still shares
//! requests. Each pack is sent through the inner provider client (retries, rate limiting and
//! too-large splitting live there) and each caller gets exactly its vectors back, in order. A
//! caller larger than one request is spread over several packs.
//!
//! Bounds: the submission queue holds [`SUBMISSION_QUEUE`] calls (callers wait when it is full);
//! the dispatcher takes texts only until one request is full; at most
//! [`PackingSettings::max_packs_in_flight`] packs are sent at once. While all of them are busy the
//! dispatcher keeps filling the next pack, so a saturated provider gets full requests.
//!
//! Queries (search) bypass the packer: a user is waiting on them, and one short text gains
//! nothing from company.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::batch::{BatchLimits, estimate_tokens};
use super::{DenseEmbeddings, EmbedError, Embedder, InputKind};

/// The `provider` label of errors raised by the packer itself (not by a provider).
pub const PROVIDER: &str = "packer";
/// Default linger: long enough for chunks of documents finishing together to meet, short
/// against a provider round trip (hundreds of milliseconds).
pub const DEFAULT_LINGER: Duration = Duration::from_millis(20);
/// Default ceiling of packed requests in flight per process.
pub const DEFAULT_MAX_PACKS_IN_FLIGHT: usize = 8;
/// `embed` calls waiting for the dispatcher. Calls come from documents in flight, which the
/// pipeline already bounds (`SLUICE_CONCURRENCY`), so this is rarely reached; when it is, callers
/// wait instead of piling texts up in memory.
pub const SUBMISSION_QUEUE: usize = 64;

/// How the packer fills and sends requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackingSettings {
    /// The provider's per-request limits packs are filled to (the inner client's
    /// `batch_limits()`), measured with [`estimate_tokens`], which over-estimates typical text;
    /// a provider that still refuses a pack as too large gets it in halves.
    pub limits: BatchLimits,
    /// How long the first waiting text waits for company before its pack is sent anyway. Zero
    /// still packs whatever is already queued.
    pub linger: Duration,
    /// Packed requests in flight at once. The inner client's rate limiter decides how many
    /// actually reach the provider; this is the ceiling on memory held in sealed packs.
    pub max_packs_in_flight: usize,
}

/// An [`Embedder`] that packs the texts of concurrent callers into shared requests.
pub struct PackingEmbedder {
    inner: Arc<dyn Embedder>,
    limits: BatchLimits,
    submissions: mpsc::Sender<Submission>,
}

impl PackingEmbedder {
    /// Wraps `inner` and starts the dispatcher on the current Tokio runtime. The dispatcher stops
    /// once the embedder is dropped and the texts already submitted are sent.
    pub fn new(inner: Arc<dyn Embedder>, settings: PackingSettings) -> Result<Self, EmbedError> {
        let invalid = |message: &str| EmbedError::InvalidSettings {
            provider: PROVIDER,
            message: message.to_string(),
        };
        let limits = settings.limits;
        if limits.max_inputs == 0 || limits.max_tokens == 0 || settings.max_packs_in_flight == 0 {
            return Err(invalid(
                "max_inputs, max_tokens and max_packs_in_flight must be at least 1",
            ));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| invalid("the packing embedder must be created inside a Tokio runtime"))?;
        let (submissions, receiver) = mpsc::channel(SUBMISSION_QUEUE);
        runtime.spawn(dispatch(receiver, inner.clone(), settings));
        Ok(PackingEmbedder {
            inner,
            limits,
            submissions,
        })
    }

    /// The per-request limits packs are filled to.
    pub fn limits(&self) -> BatchLimits {
        self.limits
    }
}

#[async_trait]
impl Embedder for PackingEmbedder {
    fn fingerprint(&self) -> String {
        // Packing changes which request a text travels in, never its vector.
        self.inner.fingerprint()
    }

    async fn embed(
        &self,
        texts: &[String],
        kind: InputKind,
    ) -> Result<DenseEmbeddings, EmbedError> {
        if kind == InputKind::Query || texts.is_empty() {
            return self.inner.embed(texts, kind).await;
        }
        let per_input = self
            .limits
            .max_tokens_per_input
            .min(self.limits.max_tokens)
            .max(1);
        let mut tokens = 0;
        for text in texts {
            let estimate = estimate_tokens(text);
            if estimate > per_input {
                // The inner client refuses it before sending anything, naming the input; in a
                // pack it would fail its neighbours too.
                return self.inner.embed(texts, kind).await;
            }
            tokens += estimate;
        }
        let (reply, answer) = oneshot::channel();
        let submission = Submission {
            caller: Arc::new(Caller::new(texts.len(), reply)),
            offset: 0,
            texts: texts.to_vec(),
            tokens,
            arrived: Instant::now(),
        };
        if self.submissions.send(submission).await.is_err() {
            // The dispatcher is gone (runtime shutting down): unpacked still works.
            return self.inner.embed(texts, kind).await;
        }
        answer.await.unwrap_or_else(|_| {
            Err(EmbedError::Transport {
                provider: PROVIDER,
                attempts: 0,
                message: "the packed request carrying these texts was abandoned (shutting down)"
                    .to_string(),
            })
        })
    }
}

/// One caller's `embed` call, gathering vectors from however many packs its texts went into.
struct Caller {
    state: Mutex<CallerState>,
}

struct CallerState {
    vectors: Vec<Vec<f32>>,
    missing: usize,
    tokens: u64,
    /// `None` once answered.
    reply: Option<oneshot::Sender<Result<DenseEmbeddings, EmbedError>>>,
}

impl Caller {
    fn new(len: usize, reply: oneshot::Sender<Result<DenseEmbeddings, EmbedError>>) -> Self {
        Caller {
            state: Mutex::new(CallerState {
                vectors: vec![Vec::new(); len],
                missing: len,
                tokens: 0,
                reply: Some(reply),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CallerState> {
        // A panic while holding this lock cannot leave it half-updated in a way that matters:
        // the caller is then answered by the dropped reply.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether nobody waits for the answer any more (answered, failed, or the caller dropped
    /// its future): its remaining texts need not be sent.
    fn abandoned(&self) -> bool {
        self.lock().reply.as_ref().is_none_or(|r| r.is_closed())
    }

    fn deliver(&self, offset: usize, vectors: Vec<Vec<f32>>, tokens: u64) {
        let mut state = self.lock();
        if state.reply.is_none() {
            return;
        }
        let count = vectors.len();
        for (slot, vector) in state.vectors[offset..offset + count]
            .iter_mut()
            .zip(vectors)
        {
            *slot = vector;
        }
        state.missing -= count;
        state.tokens += tokens;
        if state.missing == 0 {
            let done = DenseEmbeddings {
                vectors: std::mem::take(&mut state.vectors),
                tokens: state.tokens,
            };
            if let Some(reply) = state.reply.take() {
                // The caller may have gone meanwhile; nothing else waits for these vectors.
                let _ = reply.send(Ok(done));
            }
        }
    }

    fn fail(&self, error: EmbedError) {
        let mut state = self.lock();
        state.vectors = Vec::new();
        if let Some(reply) = state.reply.take() {
            let _ = reply.send(Err(error));
        }
    }
}

/// Texts of one caller waiting to be packed: all of its call, or what is left of it after earlier
/// packs took a prefix.
struct Submission {
    caller: Arc<Caller>,
    /// Index of `texts[0]` in the caller's input.
    offset: usize,
    texts: Vec<String>,
    /// Estimated tokens of `texts`.
    tokens: usize,
    arrived: Instant,
}

/// Texts waiting for the next pack, oldest first.
#[derive(Default)]
struct Pending {
    queue: VecDeque<Submission>,
    inputs: usize,
    tokens: usize,
}

impl Pending {
    fn push(&mut self, submission: Submission) {
        self.inputs += submission.texts.len();
        self.tokens += submission.tokens;
        self.queue.push_back(submission);
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn is_full(&self, limits: &BatchLimits) -> bool {
        self.inputs >= limits.max_inputs || self.tokens >= limits.max_tokens
    }

    fn oldest(&self) -> Option<Instant> {
        self.queue.front().map(|s| s.arrived)
    }

    /// Takes the next pack: whole submissions in arrival order, then as much of the next one as
    /// still fits. Texts of callers that are no longer waiting are dropped.
    fn take_pack(&mut self, limits: &BatchLimits) -> Vec<Submission> {
        let mut pack = Vec::new();
        let (mut inputs, mut tokens) = (0, 0);
        while let Some(front) = self.queue.front_mut() {
            if front.caller.abandoned() {
                self.inputs -= front.texts.len();
                self.tokens -= front.tokens;
                self.queue.pop_front();
                continue;
            }
            let (mut fit, mut fit_tokens) = (0, 0);
            for text in &front.texts {
                let estimate = estimate_tokens(text);
                if inputs + fit + 1 > limits.max_inputs
                    || tokens + fit_tokens + estimate > limits.max_tokens
                {
                    break;
                }
                fit += 1;
                fit_tokens += estimate;
            }
            if fit == 0 && pack.is_empty() {
                // Cannot happen after `embed`'s per-input check; guarantees progress anyway.
                fit = 1;
                fit_tokens = estimate_tokens(&front.texts[0]);
            }
            if fit == 0 {
                break;
            }
            self.inputs -= fit;
            self.tokens -= fit_tokens;
            inputs += fit;
            tokens += fit_tokens;
            if fit == front.texts.len() {
                pack.extend(self.queue.pop_front());
                continue;
            }
            let rest = front.texts.split_off(fit);
            let head = std::mem::replace(&mut front.texts, rest);
            pack.push(Submission {
                caller: front.caller.clone(),
                offset: front.offset,
                texts: head,
                tokens: fit_tokens,
                arrived: front.arrived,
            });
            front.offset += fit;
            front.tokens -= fit_tokens;
            break;
        }
        pack
    }
}

/// The dispatcher: collects submissions into packs and starts each pack once it is full or its
/// oldest text has lingered long enough, and a send slot is free.
async fn dispatch(
    mut submissions: mpsc::Receiver<Submission>,
    inner: Arc<dyn Embedder>,
    settings: PackingSettings,
) {
    let limits = settings.limits;
    let slots = Arc::new(Semaphore::new(settings.max_packs_in_flight));
    let mut pending = Pending::default();
    let mut open = true;
    loop {
        if pending.is_empty() {
            match submissions.recv().await {
                Some(submission) => pending.push(submission),
                None => return,
            }
        }
        // Wait for company until the pack is full or the oldest text has waited long enough.
        // `biased`: submissions already queued are taken before the deadline is looked at, so a
        // zero linger still packs them.
        let deadline = pending.oldest().unwrap_or_else(Instant::now) + settings.linger;
        while open && !pending.is_full(&limits) {
            tokio::select! {
                biased;
                next = submissions.recv() => match next {
                    Some(submission) => pending.push(submission),
                    None => open = false,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        // Wait for a send slot, still filling the pack meanwhile.
        let slot = loop {
            if !open || pending.is_full(&limits) {
                break slots.clone().acquire_owned().await;
            }
            tokio::select! {
                biased;
                slot = slots.clone().acquire_owned() => break slot,
                next = submissions.recv() => match next {
                    Some(submission) => pending.push(submission),
                    None => open = false,
                },
            }
        };
        let Ok(slot) = slot else {
            return; // The semaphore is never closed.
        };
        let pack = pending.take_pack(&limits);
        if !pack.is_empty() {
            tokio::spawn(send_pack(inner.clone(), pack, slot));
        }
    }
}

/// Sends one pack and answers its callers. A failure reaches only this pack's callers; a
/// refusal of the request's content (400/422) is retried caller by caller so one document's bad
/// input does not fail the documents that shared its request.
async fn send_pack(inner: Arc<dyn Embedder>, pack: Vec<Submission>, _slot: OwnedSemaphorePermit) {
    let inputs: usize = pack.iter().map(|s| s.texts.len()).sum();
    let mut texts = Vec::with_capacity(inputs);
    let mut parts = Vec::with_capacity(pack.len());
    for submission in pack {
        parts.push(Part {
            range: texts.len()..texts.len() + submission.texts.len(),
            caller: submission.caller,
            offset: submission.offset,
            tokens: submission.tokens,
        });
        texts.extend(submission.texts);
    }
    tracing::debug!(
        inputs,
        callers = parts.len(),
        "sending packed embedding request"
    );
    let error = match inner.embed(&texts, InputKind::Document).await {
        Ok(out) if out.vectors.len() == texts.len() => {
            distribute(&parts, out);
            return;
        }
        Ok(out) => EmbedError::Protocol {
            provider: PROVIDER,
            message: format!(
                "embedder returned {} vectors for {} inputs",
                out.vectors.len(),
                texts.len()
            ),
        },
        Err(error) => error,
    };
    let content_refused = matches!(
        error,
        EmbedError::Rejected {
            status: 400 | 422,
            ..
        }
    );
    if !content_refused || parts.len() == 1 {
        for part in &parts {
            part.caller.fail(error.clone());
        }
        return;
    }
    tracing::warn!(%error, callers = parts.len(), "packed request refused, sending each caller's texts alone");
    for part in &parts {
        if part.caller.abandoned() {
            continue;
        }
        match inner
            .embed(&texts[part.range.clone()], InputKind::Document)
            .await
        {
            Ok(out) if out.vectors.len() == part.range.len() => {
                part.caller.deliver(part.offset, out.vectors, out.tokens);
            }
            Ok(_) => part.caller.fail(EmbedError::Protocol {
                provider: PROVIDER,
                message: "embedder returned the wrong number of vectors".to_string(),
            }),
            Err(error) => part.caller.fail(error),
        }
    }
}

/// One caller's share of a pack.
struct Part {
    caller: Arc<Caller>,
    /// Where its texts sit in the pack.
    range: std::ops::Range<usize>,
    /// Where they sit in the caller's input.
    offset: usize,
    /// Their estimated tokens, for sharing out the billed tokens.
    tokens: usize,
}

/// Hands each caller its vectors and a share of the billed tokens proportional to its estimate.
fn distribute(parts: &[Part], out: DenseEmbeddings) {
    let estimated: u128 = parts.iter().map(|p| p.tokens as u128).sum::<u128>().max(1);
    let shares: Vec<u64> = parts
        .iter()
        .map(|p| (u128::from(out.tokens) * p.tokens as u128 / estimated) as u64)
        .collect();
    // Rounding leftovers go to the first caller so the shares add up to the bill.
    let leftover = out.tokens - shares.iter().sum::<u64>();
    let mut vectors = out.vectors.into_iter();
    for (index, (part, share)) in parts.iter().zip(shares).enumerate() {
        let mine: Vec<Vec<f32>> = vectors.by_ref().take(part.range.len()).collect();
        let share = if index == 0 { share + leftover } else { share };
        part.caller.deliver(part.offset, mine, share);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submission(
        lens: &[usize],
    ) -> (
        Submission,
        oneshot::Receiver<Result<DenseEmbeddings, EmbedError>>,
    ) {
        let (reply, answer) = oneshot::channel();
        let texts: Vec<String> = lens.iter().map(|&n| "a".repeat(n)).collect();
        let tokens = texts.iter().map(|t| estimate_tokens(t)).sum();
        (
            Submission {
                caller: Arc::new(Caller::new(texts.len(), reply)),
                offset: 0,
                texts,
                tokens,
                arrived: Instant::now(),
            },
            answer,
        )
    }

    const LIMITS: BatchLimits = BatchLimits {
        max_inputs: 4,
        max_tokens: 10,
        max_tokens_per_input: 10,
    };

    #[test]
    fn packs_fill_to_the_limits_and_split_a_large_caller() {
        let mut pending = Pending::default();
        let (a, _a) = submission(&[3, 3]); // 1 + 1 tokens
        let (b, _b) = submission(&[3, 3, 3, 3, 3]); // 5 × 1
        pending.push(a);
        pending.push(b);
        assert!(pending.is_full(&LIMITS));
        let first = pending.take_pack(&LIMITS);
        assert_eq!(
            first
                .iter()
                .map(|s| (s.offset, s.texts.len()))
                .collect::<Vec<_>>(),
            vec![(0, 2), (0, 2)]
        );
        let second = pending.take_pack(&LIMITS);
        assert_eq!(
            second
                .iter()
                .map(|s| (s.offset, s.texts.len()))
                .collect::<Vec<_>>(),
            vec![(2, 3)]
        );
        assert!(pending.is_empty());
        assert_eq!((pending.inputs, pending.tokens), (0, 0));
    }

    #[test]
    fn packs_respect_the_token_limit() {
        let mut pending = Pending::default();
        let (a, _a) = submission(&[18, 18]); // 6 + 6 tokens
        pending.push(a);
        assert_eq!(pending.take_pack(&LIMITS)[0].texts.len(), 1);
        assert_eq!(pending.take_pack(&LIMITS)[0].offset, 1);
    }

    #[test]
    fn texts_of_departed_callers_are_not_sent() {
        let mut pending = Pending::default();
        let (a, a_answer) = submission(&[3]);
        let (b, _b) = submission(&[3]);
        pending.push(a);
        pending.push(b);
        drop(a_answer);
        let pack = pending.take_pack(&LIMITS);
        assert_eq!(pack.len(), 1);
        assert!(!pack[0].caller.abandoned());
        assert!(pending.is_empty());
    }

    #[tokio::test]
    async fn a_caller_is_answered_once_all_its_parts_arrive() {
        let (reply, answer) = oneshot::channel();
        let caller = Caller::new(3, reply);
        caller.deliver(2, vec![vec![3.0]], 1);
        caller.deliver(0, vec![vec![1.0], vec![2.0]], 2);
        let out = answer.await.unwrap().unwrap();
        assert_eq!(out.vectors, vec![vec![1.0], vec![2.0], vec![3.0]]);
        assert_eq!(out.tokens, 3);
    }
}
