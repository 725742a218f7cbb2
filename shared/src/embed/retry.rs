//! Retry policy of the embed stage, kept apart from the HTTP code that sends requests.
//!
//! One request attempt ends in an [`AttemptError`]; [`AttemptOutcome::of`] classifies it once —
//! by exhaustive matching, so a new case forces a decision — and that one [`AttemptOutcome`]
//! decides the retry, labels the request metric and tells the rate limiter how the attempt went.
//! [`with_retries`] drives the attempts with `backon`'s jittered exponential backoff, stretching a
//! delay to the provider's `Retry-After` when it sent one, and turns the last failure into an
//! [`EmbedError`].

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable};
use futures::TryFutureExt;

use super::EmbedError;

/// How one HTTP attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptError {
    /// The provider answered with a non-success status.
    Status {
        status: u16,
        /// The provider's own message (already scrubbed of the API key).
        message: String,
        /// The provider's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// No complete answer within the request timeout.
    Timeout,
    /// Connection refused or reset, DNS failure, broken body stream.
    Transport(String),
    /// A 2xx answer that does not match the documented response format.
    Protocol(String),
}

impl AttemptError {
    /// The provider's `Retry-After`, when it answered with one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Status { retry_after, .. } => *retry_after,
            AttemptError::Timeout | AttemptError::Transport(_) | AttemptError::Protocol(_) => None,
        }
    }
}

/// What one attempt came to. Decided once per attempt, where it ends; the retry loop
/// ([`Self::verdict`]), the `outcome` label of `sluice_embed_requests_total` ([`Self::label`])
/// and the rate limiter all read this one value, so they cannot disagree about an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx answer in the documented format.
    Ok,
    /// HTTP 429.
    RateLimited,
    /// A 5xx the same request may well get past (500, 502, 503, 504, ...).
    ServerError,
    /// 501 Not Implemented / 505 HTTP Version Not Supported: they will not change on a retry.
    ServerUnsupported,
    /// 408: the server gave up waiting for our request; the same request may well succeed.
    RequestTimeout,
    /// Any other 4xx: 400 bad request, 401 bad key, 403 forbidden, 404 unknown model, 422 ...
    Rejected,
    /// Informational, success or redirect codes (or codes past 599) on the error path: a broken
    /// proxy.
    UnexpectedStatus,
    /// No complete answer within the request timeout.
    Timeout,
    /// Connection refused or reset, DNS failure, broken body stream.
    Transport,
    /// A 2xx answer that does not match the documented response format.
    Protocol,
}

impl AttemptOutcome {
    /// Classifies a failed attempt.
    pub fn of(error: &AttemptError) -> Self {
        match error {
            AttemptError::Status { status, .. } => Self::of_status(*status),
            AttemptError::Timeout => AttemptOutcome::Timeout,
            AttemptError::Transport(_) => AttemptOutcome::Transport,
            AttemptError::Protocol(_) => AttemptOutcome::Protocol,
        }
    }

    /// Classifies a non-success status. The ranges cover all of `u16`, so there is no catch-all
    /// arm.
    pub fn of_status(status: u16) -> Self {
        match status {
            429 => AttemptOutcome::RateLimited,
            408 => AttemptOutcome::RequestTimeout,
            501 | 505 => AttemptOutcome::ServerUnsupported,
            500..=599 => AttemptOutcome::ServerError,
            400..=407 | 409..=428 | 430..=499 => AttemptOutcome::Rejected,
            0..=399 | 600..=u16::MAX => AttemptOutcome::UnexpectedStatus,
        }
    }

    /// Whether the attempt is worth another: 429, transient 5xx, timeouts and connection errors
    /// are; a request that is itself wrong (or an answer that is nonsense) is not.
    pub fn verdict(self) -> Verdict {
        match self {
            AttemptOutcome::RateLimited => Verdict::Retry(RetryReason::RateLimited),
            AttemptOutcome::ServerError => Verdict::Retry(RetryReason::ServerError),
            AttemptOutcome::RequestTimeout | AttemptOutcome::Timeout => {
                Verdict::Retry(RetryReason::Timeout)
            }
            AttemptOutcome::Transport => Verdict::Retry(RetryReason::Transport),
            AttemptOutcome::Ok
            | AttemptOutcome::ServerUnsupported
            | AttemptOutcome::Rejected
            | AttemptOutcome::UnexpectedStatus
            | AttemptOutcome::Protocol => Verdict::Fail,
        }
    }

    /// The `outcome` label of `sluice_embed_requests_total`: the status class the provider
    /// answered with, or how the attempt failed without one.
    pub fn label(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::RateLimited => "rate_limited",
            AttemptOutcome::ServerError | AttemptOutcome::ServerUnsupported => "server_error",
            AttemptOutcome::RequestTimeout
            | AttemptOutcome::Rejected
            | AttemptOutcome::UnexpectedStatus => "rejected",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::Transport => "transport",
            AttemptOutcome::Protocol => "protocol",
        }
    }
}

/// A failed attempt with its [`AttemptOutcome`], classified once where it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    outcome: AttemptOutcome,
    error: AttemptError,
}

impl Failed {
    pub fn outcome(&self) -> AttemptOutcome {
        self.outcome
    }

    pub fn error(&self) -> &AttemptError {
        &self.error
    }
}

impl From<AttemptError> for Failed {
    fn from(error: AttemptError) -> Self {
        Failed {
            outcome: AttemptOutcome::of(&error),
            error,
        }
    }
}

/// Why an attempt is retried (the `reason` label of `sluice_embed_retries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    RateLimited,
    ServerError,
    Timeout,
    Transport,
}

impl RetryReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::RateLimited => "rate_limited",
            RetryReason::ServerError => "server_error",
            RetryReason::Timeout => "timeout",
            RetryReason::Transport => "transport",
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Retry(RetryReason),
    /// Retrying cannot help: the request itself is wrong (or the provider answered nonsense).
    Fail,
}

/// Whether a failed attempt is retried: [`AttemptOutcome::verdict`] of its classification.
pub fn classify(error: &AttemptError) -> Verdict {
    AttemptOutcome::of(error).verdict()
}

/// Parses a `Retry-After` value: delta-seconds (`"3"`) or an HTTP date
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`, relative to `now`). A date in the past means "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    // Some gateways send fractional seconds; accept them rather than ignore the hint.
    if let Ok(seconds) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(u64::try_from(date.timestamp()).ok()?))?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Backoff settings for one request (a batch of inputs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts after the first one.
    pub max_retries: u32,
    /// First backoff delay; doubles per attempt, with random jitter of up to the same amount.
    pub min_delay: Duration,
    /// Ceiling of the exponential delay.
    pub max_delay: Duration,
    /// Ceiling on an honoured `Retry-After`, so one odd header cannot park a worker for an hour.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

/// The delay before the next attempt: the backoff's (already jittered) delay, stretched to the
/// provider's `Retry-After` when that is longer. `None` when the retry budget is spent.
pub fn next_delay(
    policy: &RetryPolicy,
    error: &AttemptError,
    backoff: Option<Duration>,
) -> Option<Duration> {
    let backoff = backoff?;
    Some(match error.retry_after() {
        Some(wait) => wait.min(policy.max_retry_after).max(backoff),
        None => backoff,
    })
}

/// Runs `attempt` until it succeeds, fails for good, or the retry budget is spent. Each failed
/// attempt is classified once (an [`AttemptError`] is classified as it comes in; a [`Failed`]
/// already carries its classification) and every decision after it reads that classification.
pub async fn with_retries<T, E, F, Fut>(
    provider: &'static str,
    policy: &RetryPolicy,
    mut attempt: F,
) -> Result<T, EmbedError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Into<Failed>,
{
    let attempts = AtomicU32::new(0);
    let backoff = ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_max_times(policy.max_retries as usize);
    let result = (|| {
        attempts.fetch_add(1, Ordering::Relaxed);
        attempt().map_err(Into::into)
    })
    .retry(backoff)
    .sleep(tokio::time::sleep)
    .when(|failed: &Failed| matches!(failed.outcome.verdict(), Verdict::Retry(_)))
    .adjust(|failed, backoff| next_delay(policy, &failed.error, backoff))
    .notify(|failed, delay| {
        let reason = match failed.outcome.verdict() {
            Verdict::Retry(reason) => reason.as_str(),
            Verdict::Fail => "none",
        };
        crate::metrics::embed_retries_total(provider, reason).increment(1);
        tracing::warn!(
            provider,
            reason,
            attempt = attempts.load(Ordering::Relaxed),
            delay_ms = delay.as_millis() as u64,
            error = %describe(&failed.error),
            "embedding request failed, retrying"
        );
    })
    .await;
    result.map_err(|failed| into_embed_error(provider, attempts.load(Ordering::Relaxed), failed))
}

fn describe(error: &AttemptError) -> String {
    match error {
        AttemptError::Status {
            status, message, ..
        } => format!("HTTP {status}: {message}"),
        AttemptError::Timeout => "timed out".to_string(),
        AttemptError::Transport(message) | AttemptError::Protocol(message) => message.clone(),
    }
}

/// The error a caller sees once retrying is over.
pub fn into_embed_error(
    provider: &'static str,
    attempts: u32,
    failed: impl Into<Failed>,
) -> EmbedError {
    let Failed { outcome, error } = failed.into();
    match error {
        AttemptError::Status {
            status, message, ..
        } => match outcome {
            AttemptOutcome::RateLimited => EmbedError::RateLimited {
                provider,
                attempts,
                message,
            },
            AttemptOutcome::ServerError | AttemptOutcome::ServerUnsupported => EmbedError::Server {
                provider,
                status,
                attempts,
                message,
            },
            AttemptOutcome::RequestTimeout => EmbedError::Transport {
                provider,
                attempts,
                message: format!("HTTP {status}: {message}"),
            },
            AttemptOutcome::Rejected => EmbedError::Rejected {
                provider,
                status,
                message,
            },
            // The last four cannot come from a status; they are listed so the match stays total.
            AttemptOutcome::UnexpectedStatus
            | AttemptOutcome::Ok
            | AttemptOutcome::Timeout
            | AttemptOutcome::Transport
            | AttemptOutcome::Protocol => EmbedError::Protocol {
                provider,
                message: format!("unexpected HTTP {status}: {message}"),
            },
        },
        AttemptError::Timeout => EmbedError::Transport {
            provider,
            attempts,
            message: "request timed out".to_string(),
        },
        AttemptError::Transport(message) => EmbedError::Transport {
            provider,
            attempts,
            message,
        },
        AttemptError::Protocol(message) => EmbedError::Protocol { provider, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, retry_after: Option<Duration>) -> AttemptError {
        AttemptError::Status {
            status,
            message: "m".into(),
            retry_after,
        }
    }

    #[test]
    fn rate_limits_server_errors_and_timeouts_are_retried() {
        assert_eq!(
            classify(&status(429, None)),
            Verdict::Retry(RetryReason::RateLimited)
        );
        for code in [500, 502, 503, 504] {
            assert_eq!(
                classify(&status(code, None)),
                Verdict::Retry(RetryReason::ServerError),
                "{code}"
            );
        }
        assert_eq!(
            classify(&AttemptError::Timeout),
            Verdict::Retry(RetryReason::Timeout)
        );
        assert_eq!(
            classify(&AttemptError::Transport("reset".into())),
            Verdict::Retry(RetryReason::Transport)
        );
    }

    #[test]
    fn client_errors_fail_fast() {
        for code in [400, 401, 403, 404, 422] {
            assert_eq!(classify(&status(code, None)), Verdict::Fail, "{code}");
            assert!(matches!(
                into_embed_error("p", 1, status(code, None)),
                EmbedError::Rejected { .. }
            ));
        }
        assert_eq!(
            classify(&AttemptError::Protocol("bad json".into())),
            Verdict::Fail
        );
    }

    #[test]
    fn one_outcome_decides_the_retry_the_metric_label_and_the_error() {
        use RetryReason::{RateLimited, ServerError, Timeout, Transport};
        let (retry, fail) = (Verdict::Retry, Verdict::Fail);
        let errors = [
            status(429, None),
            status(503, None),
            status(501, None),
            status(408, None),
            status(404, None),
            status(302, None),
            AttemptError::Timeout,
            AttemptError::Transport("reset".into()),
            AttemptError::Protocol("bad json".into()),
        ];
        let outcomes: Vec<_> = errors.iter().map(AttemptOutcome::of).collect();
        let verdicts: Vec<_> = outcomes.iter().map(|o| o.verdict()).collect();
        #[rustfmt::skip]
        let expected = [
            retry(RateLimited), retry(ServerError), fail, retry(Timeout), fail, fail,
            retry(Timeout), retry(Transport), fail,
        ];
        assert_eq!(verdicts, expected);
        let labels: Vec<_> = outcomes.iter().map(|o| o.label()).collect();
        #[rustfmt::skip]
        let expected = [
            "rate_limited", "server_error", "server_error", "rejected", "rejected", "rejected",
            "timeout", "transport", "protocol",
        ];
        assert_eq!(labels, expected);
        let kinds: Vec<_> = errors
            .into_iter()
            .map(|e| into_embed_error("p", 1, e).kind())
            .collect();
        #[rustfmt::skip]
        let expected = [
            "embed_rate_limited", "embed_server_error", "embed_server_error", "embed_transport",
            "embed_rejected", "embed_protocol", "embed_transport", "embed_transport",
            "embed_protocol",
        ];
        assert_eq!(kinds, expected);
        assert_eq!(AttemptOutcome::Ok.label(), "ok");
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470); // 07:27:50 GMT
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after(" 0.5 ", now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn retry_after_stretches_the_backoff_but_is_capped() {
        let policy = RetryPolicy {
            max_retry_after: Duration::from_secs(10),
            ..RetryPolicy::default()
        };
        let short = Some(Duration::from_millis(300));
        assert_eq!(
            next_delay(&policy, &status(429, Some(Duration::from_secs(2))), short),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            next_delay(&policy, &status(429, Some(Duration::from_secs(600))), short),
            Some(Duration::from_secs(10))
        );
        assert_eq!(next_delay(&policy, &status(503, None), short), short);
        // A spent budget stays spent whatever the provider suggests.
        assert_eq!(
            next_delay(&policy, &status(429, Some(Duration::from_secs(1))), None),
            None
        );
    }

    #[tokio::test]
    async fn with_retries_counts_attempts_and_stops_on_fail_fast() {
        let policy = RetryPolicy {
            max_retries: 3,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            ..RetryPolicy::default()
        };
        let calls = AtomicU32::new(0);
        let err = with_retries("p", &policy, || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(status(503, None))
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::Relaxed), 4);
        assert!(
            matches!(
                err,
                EmbedError::Server {
                    attempts: 4,
                    status: 503,
                    ..
                }
            ),
            "{err}"
        );

        let calls = AtomicU32::new(0);
        let err = with_retries("p", &policy, || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(status(401, None))
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(matches!(err, EmbedError::Rejected { status: 401, .. }));

        let calls = AtomicU32::new(0);
        let ok = with_retries("p", &policy, || async {
            if calls.fetch_add(1, Ordering::Relaxed) < 2 {
                Err(AttemptError::Timeout)
            } else {
                Ok(7)
            }
        })
        .await
        .unwrap();
        assert_eq!(ok, 7);
    }
}
