//! The request id a client may send (`x-request-id`) is echoed in the
//! response, put on every log line of the request and into problem bodies.
//! An id is a correlation token, not a payload: one that is long or carries
//! anything but visible ASCII is dropped here, before the layer that sets
//! the id, which then generates a fresh one. Without this bound, one request
//! could write a log line as long as hyper's header buffer (the log queue is
//! bounded in lines, not bytes).

use axum::http::{HeaderValue, Request};

/// The longest client-chosen request id kept, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether a client's `x-request-id` is kept: 1 to 128 visible ASCII
/// characters (`!` to `~`; no space, no control, nothing beyond ASCII).
pub fn is_usable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID_LEN
        && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// Removes every `x-request-id` unless there is exactly one and it is usable.
pub fn drop_unusable<B>(mut request: Request<B>) -> Request<B> {
    let headers = request.headers_mut();
    let mut values = headers.get_all("x-request-id").iter();
    let keep = match (values.next(), values.next()) {
        (None, _) => return request,
        (Some(value), None) => is_usable(value),
        (Some(_), Some(_)) => false,
    };
    if !keep {
        headers.remove("x-request-id");
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_ascii_ids_are_kept() {
        let usable =
            |s: &str| is_usable(&HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("")));
        assert!(usable("abc-123"));
        assert!(usable(&"x".repeat(MAX_REQUEST_ID_LEN)));
        assert!(!usable(&"x".repeat(MAX_REQUEST_ID_LEN + 1)));
        assert!(!usable("a b"));
        assert!(!usable("a\tb"));
        assert!(!usable(""));
        let latin1 = HeaderValue::from_bytes(b"caf\xe9").unwrap_or(HeaderValue::from_static(""));
        assert!(!is_usable(&latin1));
    }

    #[test]
    fn two_ids_are_both_dropped() {
        let mut request = Request::new(());
        request.headers_mut().append("x-request-id", HeaderValue::from_static("a"));
        request.headers_mut().append("x-request-id", HeaderValue::from_static("b"));
        assert!(drop_unusable(request).headers().get("x-request-id").is_none());
        let mut request = Request::new(());
        request.headers_mut().insert("x-request-id", HeaderValue::from_static("a"));
        assert_eq!(drop_unusable(request).headers()["x-request-id"], "a");
    }
}
