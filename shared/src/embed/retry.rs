//! Retry policy of the embed stage, kept apart from the HTTP code that sends requests.
//!
//! One request attempt ends in an [`AttemptError`]; [`classify`] decides — by exhaustive matching,
//! so a new case forces a decision — whether it is worth another attempt. [`with_retries`] drives
//! the attempts with `backon`'s jittered exponential backoff, stretching a delay to the provider's
//! `Retry-After` when it sent one, and turns the last failure into an [`EmbedError`].

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable};

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

/// Decides whether a failed attempt is retried.
pub fn classify(error: &AttemptError) -> Verdict {
    match error {
        AttemptError::Status { status, .. } => classify_status(*status),
        AttemptError::Timeout => Verdict::Retry(RetryReason::Timeout),
        AttemptError::Transport(_) => Verdict::Retry(RetryReason::Transport),
        AttemptError::Protocol(_) => Verdict::Fail,
    }
}

/// 429 and transient 5xx are retried; every other status fails at once. The ranges cover all of
/// `u16`, so there is no catch-all arm.
pub fn classify_status(status: u16) -> Verdict {
    match status {
        429 => Verdict::Retry(RetryReason::RateLimited),
        // 408: the server gave up waiting for our request; the same request may well succeed.
        408 => Verdict::Retry(RetryReason::Timeout),
        // 501 Not Implemented / 505 HTTP Version Not Supported will not change on a retry.
        501 | 505 => Verdict::Fail,
        500..=599 => Verdict::Retry(RetryReason::ServerError),
        // 400 bad request, 401 bad key, 403 forbidden, 404 unknown model, 422 malformed body, ...
        400..=407 | 409..=428 | 430..=499 => Verdict::Fail,
        // Informational, success or redirect codes reaching the error path mean a broken proxy.
        0..=399 | 600..=u16::MAX => Verdict::Fail,
    }
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
    let retry_after = match error {
        AttemptError::Status { retry_after, .. } => *retry_after,
        AttemptError::Timeout | AttemptError::Transport(_) | AttemptError::Protocol(_) => None,
    };
    Some(match retry_after {
        Some(wait) => wait.min(policy.max_retry_after).max(backoff),
        None => backoff,
    })
}

/// Runs `attempt` until it succeeds, fails for good, or the retry budget is spent.
pub async fn with_retries<T, F, Fut>(
    provider: &'static str,
    policy: &RetryPolicy,
    mut attempt: F,
) -> Result<T, EmbedError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AttemptError>>,
{
    let attempts = AtomicU32::new(0);
    let backoff = ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_max_times(policy.max_retries as usize);
    let result = (|| {
        attempts.fetch_add(1, Ordering::Relaxed);
        attempt()
    })
    .retry(backoff)
    .sleep(tokio::time::sleep)
    .when(|error| matches!(classify(error), Verdict::Retry(_)))
    .adjust(|error, backoff| next_delay(policy, error, backoff))
    .notify(|error, delay| {
        let reason = match classify(error) {
            Verdict::Retry(reason) => reason.as_str(),
            Verdict::Fail => "none",
        };
        crate::metrics::embed_retries_total(provider, reason).increment(1);
        tracing::warn!(
            provider,
            reason,
            attempt = attempts.load(Ordering::Relaxed),
            delay_ms = delay.as_millis() as u64,
            error = %describe(error),
            "embedding request failed, retrying"
        );
    })
    .await;
    result.map_err(|error| into_embed_error(provider, attempts.load(Ordering::Relaxed), error))
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
pub fn into_embed_error(provider: &'static str, attempts: u32, error: AttemptError) -> EmbedError {
    match error {
        AttemptError::Status {
            status, message, ..
        } => match classify_status(status) {
            Verdict::Retry(RetryReason::RateLimited) => EmbedError::RateLimited {
                provider,
                attempts,
                message,
            },
            Verdict::Retry(RetryReason::ServerError) => EmbedError::Server {
                provider,
                status,
                attempts,
                message,
            },
            Verdict::Retry(RetryReason::Timeout | RetryReason::Transport) => {
                EmbedError::Transport {
                    provider,
                    attempts,
                    message: format!("HTTP {status}: {message}"),
                }
            }
            Verdict::Fail if (400..500).contains(&status) => EmbedError::Rejected {
                provider,
                status,
                message,
            },
            Verdict::Fail if (500..600).contains(&status) => EmbedError::Server {
                provider,
                status,
                attempts,
                message,
            },
            Verdict::Fail => EmbedError::Protocol {
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
