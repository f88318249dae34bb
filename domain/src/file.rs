//! Uploaded files: what a user stored, as the API shows it, and what an
//! upload asks the repository to record.

use chrono::{DateTime, Utc};

use crate::ids::{FileId, SessionId};

/// A file of a user's, uploaded whole (an upload still arriving, or being
/// deleted, is never shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// Its id; its blob is stored under this id alone.
    pub id: FileId,
    /// The session it is attached to: every turn of that session may read it.
    pub session_id: Option<SessionId>,
    /// The client's name for it, sanitised: metadata only.
    pub filename: String,
    /// The type its bytes were sniffed as (one of `files.allowed_types`).
    pub content_type: String,
    /// Its size.
    pub bytes: u64,
    /// The SHA-256 of its bytes, lowercase hex.
    pub sha256: String,
    /// When the upload started.
    pub created_at: DateTime<Utc>,
}

/// An upload about to be streamed: the row is recorded `uploading` (with
/// no bytes reserved yet) before the first byte is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUpload {
    /// The new file's id.
    pub id: FileId,
    /// The session it goes with, already checked to be the caller's.
    pub session_id: Option<SessionId>,
    /// The sanitised name.
    pub filename: String,
    /// The type sniffed from its first bytes.
    pub content_type: String,
}

/// What an upload ended with: the row becomes `ready` with these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// The bytes written (the reservation's excess goes back).
    pub bytes: u64,
    /// Their SHA-256, lowercase hex.
    pub sha256: String,
}

/// A user's storage: what the exact quotas count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StorageUsage {
    /// Bytes reserved or stored.
    pub bytes: u64,
    /// Files uploading, stored, or being deleted.
    pub files: u64,
}

/// What the HTTP layer read of an upload before its bytes: the form's
/// fields and the file part's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadMeta {
    /// The form's `session_id`, when given.
    pub session_id: Option<SessionId>,
    /// The part's file name, as sent (sanitised before it is kept).
    pub filename: String,
    /// The part's `Content-Type`, as sent.
    pub part_type: Option<String>,
}

/// One piece of an upload's body, as the HTTP layer hands it over. The
/// body is complete only once [`UploadChunk::End`] came: a channel closed
/// before it means the client went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadChunk {
    /// The next bytes.
    Data(bytes::Bytes),
    /// The file part is complete.
    End,
    /// Reading the body failed.
    Fault(UploadFault),
}

/// How an upload's body failed, as the HTTP layer saw it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadFault {
    /// Not a `multipart/form-data` body of the expected parts.
    #[error("malformed form: {0}")]
    Malformed(String),
    /// The client stopped sending before the end of the body.
    #[error("the body ended before the upload was complete")]
    Incomplete,
    /// The body stalled longer than `server.body_read_timeout_ms`, or the
    /// upload took longer than `files.max_upload_secs`.
    #[error("the upload was too slow")]
    TimedOut,
}

/// The longest file name kept (in characters).
pub const MAX_FILENAME_CHARS: usize = 255;

/// The client's file name made safe to keep and to send back in a
/// `Content-Disposition`: its last path component, without control
/// characters, quotes or backslashes, at most [`MAX_FILENAME_CHARS`]
/// characters; `file` when nothing is left. Never used in a storage path.
pub fn sanitize_filename(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let kept: String = last
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '\\' | '\u{feff}'))
        .take(MAX_FILENAME_CHARS)
        .collect();
    let trimmed = kept.trim().trim_start_matches('.').trim();
    if trimmed.is_empty() { "file".to_owned() } else { trimmed.to_owned() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn filenames_lose_paths_controls_and_quotes() {
        assert_eq!(sanitize_filename("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_filename("C:\\Users\\x\\report.pdf"), "report.pdf");
        assert_eq!(sanitize_filename("a\"b\r\n.txt"), "ab.txt");
        assert_eq!(sanitize_filename(".."), "file");
        assert_eq!(sanitize_filename(""), "file");
        assert_eq!(sanitize_filename(".bashrc"), "bashrc");
        assert_eq!(sanitize_filename(&"é".repeat(400)).chars().count(), MAX_FILENAME_CHARS);
    }
}
