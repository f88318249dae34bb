//! What the upstream's refusals and our own transport errors mean for a
//! turn (`docs/API.md`, "Provider failures"): credentials refused and other errors are `Failed`
//! (`502`: our user is not at fault), out of capacity (`429`, `503`) is
//! `Unavailable` with the upstream's `Retry-After`, a timeout is `Timeout`.
//!
//! The messages are for logs only (the client sees a fixed wording), and
//! any upstream text in them has the API key scrubbed: some upstreams quote
//! the key they refused.

use std::time::{Duration, SystemTime};

use pantheon_domain::ProviderError;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Response, StatusCode};

/// The most of an error body that is read, and of upstream text that is kept.
const ERROR_BODY_BYTES: usize = 4_096;
const DETAIL_CHARS: usize = 300;
/// The longest an error body may take to arrive; it only feeds a log line.
const ERROR_BODY_WAIT: Duration = Duration::from_secs(2);

/// The API key, kept out of `Debug` and out of logged upstream text.
#[derive(Clone)]
pub(super) struct Secret {
    key: String,
    bearer: HeaderValue,
}

impl Secret {
    /// `None` when the key cannot be sent as a header (it is not quoted).
    pub(super) fn new(key: String) -> Option<Self> {
        let mut bearer = HeaderValue::from_str(&format!("Bearer {key}")).ok()?;
        bearer.set_sensitive(true);
        Some(Self { key, bearer })
    }

    /// The `Authorization` value, marked sensitive.
    pub(super) fn bearer(&self) -> HeaderValue {
        self.bearer.clone()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Upstream text fit for a log line: the key scrubbed, whitespace folded,
/// cut to a few hundred characters.
pub(super) fn scrub(text: &str, secret: Option<&Secret>) -> String {
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let scrubbed = match secret.filter(|s| !s.key.is_empty()) {
        Some(secret) => folded.replace(&secret.key, "<redacted>"),
        None => folded,
    };
    match scrubbed.char_indices().nth(DETAIL_CHARS) {
        Some((cut, _)) => format!("{}…", &scrubbed[..cut]),
        None => scrubbed,
    }
}

/// A request that got no response: timed out, refused, reset…
pub(super) fn transport(error: &reqwest::Error) -> ProviderError {
    if error.is_timeout() {
        return ProviderError::Timeout;
    }
    let mut cause = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        cause = format!("{cause}: {inner}");
        source = inner.source();
    }
    ProviderError::Failed(format!("cannot reach the upstream: {cause}"))
}

/// A non-success response, before any of the reply.
pub(super) async fn refusal(
    response: Response,
    secret: Option<&Secret>,
    wait: Duration,
) -> ProviderError {
    let status = response.status();
    let retry_after = retry_after(response.headers(), SystemTime::now());
    let detail = scrub(&error_text(response, wait.min(ERROR_BODY_WAIT)).await, secret);
    match status {
        // Logged where the turn's failure is answered, with this cause.
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            let wait = retry_after.map_or_else(String::new, |d| format!(", retry after {d:?}"));
            ProviderError::Unavailable {
                retry_after,
                cause: format!("the upstream answered {status}{wait}: {detail}"),
            }
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProviderError::Failed(format!(
            "the upstream refused our credentials ({status}); check provider.openai.api_key: {detail}"
        )),
        _ => ProviderError::Failed(format!("the upstream answered {status}: {detail}")),
    }
}

/// A `2xx` that is not a stream (an upstream that ignored `stream: true`).
pub(super) fn expect_event_stream(response: &Response) -> Result<(), ProviderError> {
    let kind = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    match kind {
        Some(kind) if !kind.contains("text/event-stream") => {
            Err(ProviderError::Failed(format!("the upstream answered {kind}, not an event stream")))
        }
        _ => Ok(()),
    }
}

/// `Retry-After` (seconds or an HTTP date), else OpenAI's `retry-after-ms`.
pub(super) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(raw) = value("retry-after") {
        if let Ok(secs) = raw.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(secs) = raw.parse::<f64>() {
            return Duration::try_from_secs_f64(secs).ok();
        }
        if let Ok(at) = httpdate::parse_http_date(raw) {
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    value("retry-after-ms").and_then(|ms| ms.parse::<u64>().ok()).map(Duration::from_millis)
}

/// The upstream's explanation: `error.message` of a JSON body, else the
/// start of the body as text. Bounded in size and time.
async fn error_text(mut response: Response, wait: Duration) -> String {
    let mut body = Vec::new();
    let read = async {
        while body.len() < ERROR_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
    };
    let _ = tokio::time::timeout(wait, read).await;
    body.truncate(ERROR_BODY_BYTES);
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let message = json.as_ref().and_then(|v| v.pointer("/error/message").or(v.get("error")));
    match message {
        Some(serde_json::Value::String(message)) => message.clone(),
        Some(other) => other.to_string(),
        None => String::from_utf8_lossy(&body).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (header::HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn retry_after_reads_seconds_dates_and_milliseconds() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT")
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let cases = [
            (headers(&[("retry-after", "7")]), Some(Duration::from_secs(7))),
            (headers(&[("retry-after", "1.5")]), Some(Duration::from_millis(1_500))),
            (
                headers(&[("retry-after", "Sun, 06 Nov 1994 08:50:37 GMT")]),
                Some(Duration::from_secs(60)),
            ),
            (headers(&[("retry-after", "Sun, 06 Nov 1994 08:00:00 GMT")]), Some(Duration::ZERO)),
            (headers(&[("retry-after-ms", "250")]), Some(Duration::from_millis(250))),
            (headers(&[("retry-after", "-1")]), None),
            (headers(&[("retry-after", "soon")]), None),
            (headers(&[]), None),
        ];
        for (given, expected) in cases {
            assert_eq!(retry_after(&given, now), expected, "{given:?}");
        }
    }

    #[test]
    fn scrub_removes_the_key_and_bounds_the_text() {
        let secret = Secret::new("sk-secret".into()).unwrap_or_else(|| unreachable!());
        let text = "Incorrect API key provided:\n sk-secret. See docs.";
        assert_eq!(scrub(text, Some(&secret)), "Incorrect API key provided: <redacted>. See docs.");
        assert_eq!(scrub(&"é".repeat(1_000), None).chars().count(), DETAIL_CHARS + 1);
        assert_eq!(format!("{secret:?}"), "<redacted>");
    }
}
