//! Message headers Sluice puts on jobs (attempt count, failure reason) and reads back.
//!
//! Headers travel through the broker's own dead-lettering and TTL expiry unchanged, so a job that
//! went through a retry queue still carries its attempt count when it is back on the work queue.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// How many delayed retries this job has had (u32; absent on a fresh job = 0).
pub const ATTEMPT_HEADER: &str = "x-sluice-attempt";
/// Why the job was retried or dead-lettered (human readable, truncated to [`MAX_REASON_BYTES`]).
pub const ERROR_HEADER: &str = "x-sluice-error";
/// Machine-readable class of the failure on a dead letter (e.g. `malformed_json`).
pub const ERROR_KIND_HEADER: &str = "x-sluice-error-kind";
/// Set by quorum queues on redeliveries: how many failed deliveries the broker has counted.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// Reasons are cut to this length: a stack of nested errors must not bloat every message.
pub const MAX_REASON_BYTES: usize = 2048;

/// Headers for a job on its `attempt`-th delayed retry (0 for a fresh job).
pub fn job_headers(attempt: u32) -> FieldTable {
    let mut headers = FieldTable::default();
    set_attempt(&mut headers, attempt);
    headers
}

pub(crate) fn set_attempt(headers: &mut FieldTable, attempt: u32) {
    // Signed 64-bit: the one integer type every AMQP 0-9-1 client and the broker agree on.
    headers.insert(
        ATTEMPT_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(attempt)),
    );
}

pub(crate) fn set_string(headers: &mut FieldTable, name: &str, value: &str) {
    headers.insert(
        ShortString::from(name),
        AMQPValue::LongString(LongString::from(truncate(value, MAX_REASON_BYTES))),
    );
}

/// The attempt count of a message: 0 when the header is missing or not a non-negative integer
/// (a message published by another service).
pub fn attempt_of(headers: Option<&FieldTable>) -> u32 {
    headers
        .and_then(|h| h.inner().get(ATTEMPT_HEADER))
        .and_then(integer)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// A string header (short or long string), if present.
pub fn header_string(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// Any integer-typed header value; other types are not counts.
pub(crate) fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        AMQPValue::Boolean(_)
        | AMQPValue::Float(_)
        | AMQPValue::Double(_)
        | AMQPValue::DecimalValue(_)
        | AMQPValue::ShortString(_)
        | AMQPValue::LongString(_)
        | AMQPValue::FieldArray(_)
        | AMQPValue::FieldTable(_)
        | AMQPValue::ByteArray(_)
        | AMQPValue::Void => None,
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_round_trips_and_defaults_to_zero() {
        assert_eq!(attempt_of(Some(&job_headers(3))), 3);
        assert_eq!(attempt_of(None), 0);
        assert_eq!(attempt_of(Some(&FieldTable::default())), 0);
        let mut other = FieldTable::default();
        other.insert(ATTEMPT_HEADER.into(), AMQPValue::LongInt(-1));
        assert_eq!(attempt_of(Some(&other)), 0, "negative counts are ignored");
        other.insert(ATTEMPT_HEADER.into(), AMQPValue::ShortUInt(7));
        assert_eq!(attempt_of(Some(&other)), 7, "other integer widths are read");
    }

    #[test]
    fn long_reasons_are_truncated_on_a_char_boundary() {
        let mut headers = FieldTable::default();
        let reason = "é".repeat(MAX_REASON_BYTES);
        set_string(&mut headers, ERROR_HEADER, &reason);
        let stored = header_string(Some(&headers), ERROR_HEADER).unwrap();
        assert!(stored.len() <= MAX_REASON_BYTES);
        assert!(stored.chars().all(|c| c == 'é'));
    }
}
