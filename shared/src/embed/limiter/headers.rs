//! OpenAI's `x-ratelimit-*` response headers (also sent by Azure OpenAI and the emulator in
//! OpenAI mode): how much of the organisation's limit is left and when it is replenished.

use std::time::Duration;

use reqwest::header::HeaderMap;

/// What one response said about the provider's limits; each field is `None` when not sent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateHeaders {
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    /// Until the request limit is fully replenished.
    pub reset_requests: Option<Duration>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    /// Until the token limit is fully replenished.
    pub reset_tokens: Option<Duration>,
}

impl RateHeaders {
    /// Reads the headers; `None` when the response carries none of them (Voyage).
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let number = |name: &str| text(name).and_then(|v| v.trim().parse::<u64>().ok());
        let duration = |name: &str| text(name).and_then(parse_reset);
        let parsed = RateHeaders {
            limit_requests: number("x-ratelimit-limit-requests"),
            remaining_requests: number("x-ratelimit-remaining-requests"),
            reset_requests: duration("x-ratelimit-reset-requests"),
            limit_tokens: number("x-ratelimit-limit-tokens"),
            remaining_tokens: number("x-ratelimit-remaining-tokens"),
            reset_tokens: duration("x-ratelimit-reset-tokens"),
        };
        (parsed != RateHeaders::default()).then_some(parsed)
    }
}

/// Parses OpenAI's reset durations: Go-style `"20ms"`, `"1.5s"`, `"6m0s"`, `"1h2m3s"`; a bare
/// number is seconds.
pub fn parse_reset(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if let Ok(seconds) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let mut total = 0.0;
    let mut rest = value;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_durations_parse_like_go() {
        assert_eq!(parse_reset("120ms"), Some(Duration::from_millis(120)));
        assert_eq!(parse_reset("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_reset("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_reset("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(parse_reset("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_reset("soon"), None);
        assert_eq!(parse_reset("5x"), None);
    }

    #[test]
    fn headers_are_read_when_present() {
        let mut headers = HeaderMap::new();
        assert_eq!(RateHeaders::from_headers(&headers), None);
        headers.insert("x-ratelimit-remaining-tokens", "900".parse().unwrap());
        headers.insert("x-ratelimit-reset-tokens", "6s".parse().unwrap());
        let parsed = RateHeaders::from_headers(&headers).unwrap();
        assert_eq!(parsed.remaining_tokens, Some(900));
        assert_eq!(parsed.reset_tokens, Some(Duration::from_secs(6)));
        assert_eq!(parsed.limit_tokens, None);
    }
}
