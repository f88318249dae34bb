//! `object_store`'s errors and our deadlines become a domain
//! [`StorageError`] here and nowhere else.

use std::future::Future;
use std::time::Duration;

use object_store::client::{HttpError, HttpErrorKind};
use pantheon_domain::StorageError;

/// The longest one call to the store may take (a request, a part, one
/// chunk of a read): a store that hangs fails the upload or the read as
/// unavailable instead of holding it, and its memory, forever.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one call to the store under [`CALL_TIMEOUT`].
pub(super) async fn bounded<T>(
    what: &'static str,
    call: impl Future<Output = object_store::Result<T>>,
) -> Result<T, StorageError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.map_err(store_error),
        Err(_) => Err(timed_out(what)),
    }
}

/// The store took longer than [`CALL_TIMEOUT`] to answer `what`.
pub(super) fn timed_out(what: &str) -> StorageError {
    StorageError::unavailable(format!(
        "the file store did not answer {what} within {} s",
        CALL_TIMEOUT.as_secs()
    ))
}

/// Converts an `object_store` error, keeping it as the cause for the log.
pub(super) fn store_error(error: object_store::Error) -> StorageError {
    if is_outage(&error) { StorageError::unavailable(error) } else { StorageError::other(error) }
}

/// Whether the store could not be reached or was overloaded, as opposed to
/// refusing the request: these are answered `503` and may be retried.
fn is_outage(error: &object_store::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if let Some(http) = error.downcast_ref::<HttpError>() {
            return matches!(
                http.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            );
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return is_network_io(io.kind());
        }
        if is_server_busy(&error.to_string()) {
            return true;
        }
        cause = error.source();
    }
    false
}

fn is_network_io(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::{
        BrokenPipe, ConnectionAborted, ConnectionRefused, ConnectionReset, HostUnreachable,
        NetworkUnreachable, NotConnected, TimedOut,
    };
    matches!(
        kind,
        BrokenPipe
            | ConnectionAborted
            | ConnectionRefused
            | ConnectionReset
            | HostUnreachable
            | NetworkUnreachable
            | NotConnected
            | TimedOut
    )
}

/// A `5xx` or `429` the store still answered once its retries ran out. The
/// error that carries the status is private to `object_store`; its text is
/// the one place the status shows.
fn is_server_busy(text: &str) -> bool {
    const MARK: &str = "status code: ";
    text.match_indices(MARK).any(|(at, _)| {
        let status = &text[at + MARK.len()..];
        status.starts_with('5') || status.starts_with("429")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_servers_are_outages() {
        let text = "Error performing PUT http://x/b/files/1 in 2s - Server returned non-2xx \
                    status code: 503 Service Unavailable: SlowDown";
        assert!(is_server_busy(text));
        assert!(is_server_busy("status code: 429 Too Many Requests"));
        assert!(!is_server_busy("status code: 400 Bad Request"));
        assert!(!is_server_busy("Object at location files/1 not found"));
    }

    #[test]
    fn a_missing_object_is_not_an_outage() {
        let missing =
            object_store::Error::NotFound { path: "files/1".into(), source: "gone".into() };
        assert!(!store_error(missing).is_unavailable());
        let refused = object_store::Error::Generic {
            store: "S3",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        };
        assert!(store_error(refused).is_unavailable());
    }
}
