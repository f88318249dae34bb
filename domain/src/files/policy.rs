//! The rules uploads are held to.

use std::time::Duration;

use crate::limiter::Limits;
use crate::ports::Quota;

/// The rules of uploads, from `files.*` and `rate_limit.uploads_per_minute`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePolicy {
    /// `files.max_file_bytes`.
    pub max_file_bytes: u64,
    /// `files.quota_bytes` and `files.max_files`, per user.
    pub quota: Quota,
    /// `files.allowed_types`.
    pub allowed_types: Vec<String>,
    /// `files.max_upload_secs`: the longest an upload may take.
    pub max_upload: Duration,
    /// `files.orphan_grace_secs`: how long an unfinished upload or deletion
    /// is left before the sweep finishes it (longer than `max_upload`, so
    /// a live upload is never swept).
    pub orphan_grace: Duration,
    /// `rate_limit.uploads_per_minute`.
    pub uploads_per_minute: u32,
}

impl FilePolicy {
    /// The limits the uploads window is checked under: per minute, and per
    /// hour sixty times that (the hour never binds first), with no cap on
    /// uploads at once (the quotas bound those).
    pub(super) fn upload_limits(&self) -> Limits {
        let per_minute = self.uploads_per_minute;
        Limits::turns(per_minute, per_minute.saturating_mul(60), u32::MAX)
    }
}
