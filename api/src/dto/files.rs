//! The JSON shapes of files: the resource, and its list's cursor.

use chrono::{DateTime, Utc};
use pantheon_domain::{FileId, PageRequest, SessionId, StoredFile};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{ListQuery, decode_cursor, encode_cursor, invalid_cursor, timestamp};
use crate::error::ApiError;

/// An uploaded file.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = File)]
pub struct FileBody {
    #[schema(value_type = String, format = Uuid)]
    id: FileId,
    /// The session it is attached to: every turn of that session may read it.
    #[schema(value_type = Option<String>, format = Uuid)]
    session_id: Option<SessionId>,
    /// The name it was uploaded with, sanitised (metadata only).
    filename: String,
    /// The type its bytes were recognised as (not the client's word).
    content_type: String,
    /// Its size.
    bytes: u64,
    /// The SHA-256 of its bytes, lowercase hex.
    sha256: String,
    #[serde(serialize_with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    created_at: DateTime<Utc>,
}

impl From<StoredFile> for FileBody {
    fn from(f: StoredFile) -> Self {
        Self {
            id: f.id,
            session_id: f.session_id,
            filename: f.filename,
            content_type: f.content_type,
            bytes: f.bytes,
            sha256: f.sha256,
            created_at: f.created_at,
        }
    }
}

const FILE_CURSOR: &str = "f1:";

impl ListQuery {
    /// The page of files asked for.
    ///
    /// # Errors
    /// `400` for a bad limit or cursor.
    pub fn files(&self) -> Result<PageRequest<FileId>, ApiError> {
        let after = match &self.after {
            None => None,
            Some(c) => {
                let key = decode_cursor(FILE_CURSOR, c).ok_or_else(invalid_cursor)?;
                Some(FileId::from(Uuid::parse_str(&key).map_err(|_| invalid_cursor())?))
            }
        };
        Ok(PageRequest { limit: self.limit()?, after })
    }
}

/// The cursor after a file.
pub fn file_cursor(f: &StoredFile) -> String {
    encode_cursor(FILE_CURSOR, &f.id.to_string())
}
