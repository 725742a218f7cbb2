//! Keeping secrets (API keys, passwords in URLs, the contents of `*_FILE` secrets) out of logs,
//! errors and metrics. Two tools:
//! - [`Secret`] holds a value whose `Debug` and `Display` never show it;
//! - [`redact`] scrubs any text about to be shown (an error from a client library that echoes
//!   its connection URL, a dead-letter reason): URL passwords, credential query parameters and
//!   every secret value the settings loaded.

use std::fmt;
use std::sync::RwLock;

/// A secret string. `Debug` and `Display` print `[redacted]`; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value` and remembers it, so [`redact`] scrubs it from any text later.
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        remember(&value);
        Secret(value)
    }

    /// The secret itself: call only where it is handed to the service that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Query or DSN parameters that carry credentials (`postgres://h/db?password=…`,
/// `host=h password=…`, `sslpassword=` for a client key).
const CREDENTIAL_PARAMS: [&str; 8] = [
    "password",
    "pass",
    "passwd",
    "sslpassword",
    "secret",
    "token",
    "api_key",
    "apikey",
];

/// Shorter values are not scrubbed as plain text: "guest" or "1234" would mangle every message
/// that happens to contain the word, and they are scrubbed where they appear as credentials
/// (URL userinfo, `password=`) anyway.
const MIN_REMEMBERED_LEN: usize = 6;

static REMEMBERED: RwLock<Vec<String>> = RwLock::new(Vec::new());

fn remember(value: &str) {
    let mut known = REMEMBERED.write().unwrap_or_else(|e| e.into_inner());
    // A whole URL is scrubbed piecewise by the URL rules; remember its password instead.
    let value = match url::Url::parse(value) {
        Ok(url) if url.has_host() => match url.password() {
            Some(pw) => percent_encoding::percent_decode_str(pw)
                .decode_utf8_lossy()
                .into_owned(),
            None => return,
        },
        _ => value.to_string(),
    };
    if value.len() >= MIN_REMEMBERED_LEN && !known.contains(&value) {
        known.push(value);
    }
}

/// `text` with every credential replaced: the password of any `scheme://user:password@host`, the
/// value of any [`CREDENTIAL_PARAMS`] parameter, and every secret value loaded by the settings
/// (including `*_FILE` contents). Call it on any text from outside that may echo a URL or a key
/// before it reaches a log line, an error, a dead-letter reason or an HTTP answer.
pub fn redact(text: &str) -> String {
    let mut out = redact_userinfo(text);
    out = redact_params(&out);
    let known = REMEMBERED.read().unwrap_or_else(|e| e.into_inner());
    for value in known.iter() {
        if out.contains(value.as_str()) {
            out = out.replace(value.as_str(), "[redacted]");
        }
    }
    out
}

/// Strips the password from a URL (`postgres://user:pw@host/db` → `postgres://user:***@host/db`,
/// `?password=pw` → `?password=***`) so connection strings can be logged and put in errors.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(_) => redact(url),
        Err(_) => "<unparseable url>".to_string(),
    }
}

/// Characters that end a URL's authority (or the URL) inside running text.
fn ends_authority(c: char) -> bool {
    matches!(
        c,
        '/' | '?' | '#' | '"' | '\'' | '`' | '<' | '>' | '(' | ')' | ','
    ) || c.is_whitespace()
}

fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after.find(ends_authority).unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    // A lone token in the user part (`https://TOKEN@host`) is a credential too.
                    None if !userinfo.is_empty() && userinfo.len() >= 20 => out.push_str("***"),
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn redact_params(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    // Byte ranges of values to hide, found on the lower-cased copy (same byte offsets: ASCII
    // lower-casing keeps every length).
    let mut hide: Vec<(usize, usize)> = Vec::new();
    for name in CREDENTIAL_PARAMS {
        let pattern = format!("{name}=");
        let mut from = 0;
        while let Some(found) = lower[from..].find(&pattern) {
            let start = from + found;
            let value_start = start + pattern.len();
            from = value_start;
            // Only a whole parameter name: `?pass=` but not `?bypass=`.
            let boundary = start == 0
                || matches!(
                    bytes[start - 1],
                    b'?' | b'&' | b';' | b' ' | b'\t' | b'\n' | b'"' | b'\'' | b',' | b'('
                );
            if !boundary {
                continue;
            }
            let value_end = text[value_start..]
                .find(|c: char| {
                    matches!(c, '&' | '#' | '"' | '\'' | ';' | ',' | ')') || c.is_whitespace()
                })
                .map_or(text.len(), |e| value_start + e);
            if value_end > value_start {
                hide.push((value_start, value_end));
            }
        }
    }
    if hide.is_empty() {
        return text.to_string();
    }
    hide.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in hide {
        if start < at {
            continue;
        }
        out.push_str(&text[at..start]);
        out.push_str("***");
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_formats_its_value() {
        let s = Secret::new("sk-live-123");
        assert!(!format!("{s:?} {s}").contains("sk-live-123"));
        assert_eq!(s.expose(), "sk-live-123");
    }

    #[test]
    fn redact_url_hides_password_only() {
        assert_eq!(
            redact_url("postgres://bob:hunter2@db:5432/x"),
            "postgres://bob:***@db:5432/x"
        );
        assert_eq!(redact_url("amqp://localhost:5672"), "amqp://localhost:5672");
        assert_eq!(redact_url("not a url"), "<unparseable url>");
    }

    #[test]
    fn every_credential_form_is_scrubbed_from_running_text() {
        let cases = [
            (
                "cannot connect to amqp://sluice:Amqp-Pw-1@mq:5672/%2f: refused",
                "Amqp-Pw-1",
            ),
            (
                "error: postgres://app@db/sluice?sslmode=require&password=Pg-Pw-2 failed",
                "Pg-Pw-2",
            ),
            ("dsn host=db user=app PASSWORD=Pg-Pw-3 dbname=x", "Pg-Pw-3"),
            ("postgresql://db/x?pass=Pg-Pw-4", "Pg-Pw-4"),
            ("postgresql://db/x?sslpassword=Key-Pw-5&x=1", "Key-Pw-5"),
            ("\"postgres://u:Pg%40Pw-6@db/x\"", "Pg%40Pw-6"),
        ];
        for (text, secret) in cases {
            let shown = redact(text);
            assert!(!shown.contains(secret), "{text} → {shown}");
            assert!(shown.contains("***"), "{shown}");
        }
        // Ordinary text and look-alike parameter names are left alone.
        let plain = "s3://bucket/bypass=1/a.pdf: 3 chunks, https://example.com/x?a=b";
        assert_eq!(redact(plain), plain);
    }

    #[test]
    fn loaded_secret_values_are_scrubbed_wherever_they_appear() {
        let _key = Secret::new("file-secret-7f3a9c");
        let _url = Secret::new("amqp://u:Url-Pw-8c1d@mq/");
        let shown = redact("provider said: bad key file-secret-7f3a9c; login Url-Pw-8c1d refused");
        assert!(
            !shown.contains("file-secret-7f3a9c") && !shown.contains("Url-Pw-8c1d"),
            "{shown}"
        );
        // Short values are not scrubbed as plain words.
        let _short = Secret::new("guest");
        assert_eq!(redact("guest login"), "guest login");
    }
}
