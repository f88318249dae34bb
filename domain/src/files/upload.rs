//! One upload's work, in its own task: the type from the first bytes, then
//! every chunk counted, hashed, reserved against the quota and written, and
//! on any failure (the client gone included) nothing kept.

use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::error::TurnError;
use crate::file::{
    NewUpload, StoredFile, UploadChunk, UploadFault, UploadMeta, Uploaded, sanitize_filename,
};
use crate::ids::{FileId, UserId};
use crate::ports::{BlobStore, BlobWriter, FileRepository};

use super::kind::{self, HEAD_BYTES, Utf8Check};
use super::policy::FilePolicy;
use super::removal;

/// Bytes gathered before they are reserved (exactly) and written: a 1 GiB
/// upload costs 1,024 reservations, not one per chunk, and never reserves
/// a byte it has not received, so concurrent uploads are never refused
/// for room another one only held for a moment.
const RESERVE_BATCH: u64 = 1024 * 1024;

/// What an upload's task needs.
pub(super) struct Upload {
    pub(super) files: Arc<dyn FileRepository>,
    pub(super) blobs: Arc<dyn BlobStore>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) policy: Arc<FilePolicy>,
    pub(super) user: UserId,
}

/// The bytes received so far, and those not yet reserved and written.
struct Progress {
    id: FileId,
    received: u64,
    hash: Sha256,
    utf8: Option<Utf8Check>,
    pending: Vec<Bytes>,
    pending_bytes: u64,
}

impl Upload {
    /// Runs the upload; whatever fails after its row was recorded removes
    /// the blob and the row (giving the reservation back) before answering.
    pub(super) async fn run(
        self,
        meta: UploadMeta,
        mut body: mpsc::Receiver<UploadChunk>,
    ) -> Result<StoredFile, TurnError> {
        let deadline = Instant::now() + self.policy.max_upload;
        let (head, ended) = self.head(&mut body, deadline).await?;
        let filename = sanitize_filename(&meta.filename);
        let declared = kind::declared(meta.part_type.as_deref(), &filename);
        let first: Vec<u8> = head.iter().flat_map(|c| c.iter().copied()).take(HEAD_BYTES).collect();
        let content_type = kind::sniff(&first, declared.as_deref(), &self.policy.allowed_types)?;
        let upload = NewUpload {
            id: FileId::new(),
            session_id: meta.session_id,
            filename,
            content_type: content_type.clone(),
        };
        let now = self.clock.now_micros();
        if !self.files.begin(&self.user, &upload, self.policy.quota, now).await? {
            return Err(TurnError::StorageQuotaExceeded {
                unit: "files",
                limit: self.policy.quota.files,
            });
        }
        let mut progress = Progress {
            id: upload.id,
            received: 0,
            hash: Sha256::new(),
            utf8: kind::is_text(&content_type).then(Utf8Check::default),
            pending: Vec::new(),
            pending_bytes: 0,
        };
        let writer = match self.blobs.create(upload.id).await {
            Ok(writer) => writer,
            Err(error) => {
                self.discard(upload.id).await;
                return Err(error.into());
            }
        };
        let written = self.write(writer, &mut progress, head, ended, body, deadline).await;
        let stored = match written {
            Ok(()) => self.complete(&progress, &content_type, declared).await,
            Err(error) => Err(error),
        };
        if stored.is_err() {
            self.discard(upload.id).await;
        }
        stored
    }

    /// Gathers the first [`HEAD_BYTES`] (or the whole body, when shorter);
    /// `true` when the body ended within them.
    async fn head(
        &self,
        body: &mut mpsc::Receiver<UploadChunk>,
        deadline: Instant,
    ) -> Result<(Vec<Bytes>, bool), TurnError> {
        let mut head = Vec::new();
        let mut size = 0u64;
        while size < HEAD_BYTES as u64 {
            match next(body, deadline).await? {
                Some(chunk) => {
                    size += chunk.len() as u64;
                    if size > self.policy.max_file_bytes {
                        return Err(TurnError::FileTooLarge { limit: self.policy.max_file_bytes });
                    }
                    head.push(chunk);
                }
                None => return Ok((head, true)),
            }
        }
        Ok((head, false))
    }

    /// Writes the head, then the rest of the body, each batch reserved
    /// before it is written.
    async fn write(
        &self,
        mut writer: Box<dyn BlobWriter>,
        progress: &mut Progress,
        head: Vec<Bytes>,
        ended: bool,
        mut body: mpsc::Receiver<UploadChunk>,
        deadline: Instant,
    ) -> Result<(), TurnError> {
        let mut head = head.into_iter();
        let written = loop {
            let chunk = match head.next() {
                Some(chunk) => chunk,
                None if ended => break Ok(()),
                None => match next(&mut body, deadline).await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break Ok(()),
                    Err(error) => break Err(error),
                },
            };
            if let Err(error) = self.accept(progress, chunk) {
                break Err(error);
            }
            if progress.pending_bytes >= RESERVE_BATCH
                && let Err(error) = self.flush(&mut writer, progress).await
            {
                break Err(error);
            }
        };
        let flushed = match written {
            Ok(()) => self.flush(&mut writer, progress).await,
            Err(error) => Err(error),
        };
        if let Err(error) = flushed {
            writer.abort().await;
            return Err(error);
        }
        Ok(writer.finish().await?)
    }

    /// Counts and hashes `chunk`, and keeps it for the next batch.
    fn accept(&self, progress: &mut Progress, chunk: Bytes) -> Result<(), TurnError> {
        let limit = self.policy.max_file_bytes;
        progress.received += chunk.len() as u64;
        if progress.received > limit {
            return Err(TurnError::FileTooLarge { limit });
        }
        progress.hash.update(&chunk);
        if let Some(utf8) = progress.utf8.as_mut() {
            utf8.push(&chunk);
        }
        progress.pending_bytes += chunk.len() as u64;
        progress.pending.push(chunk);
        Ok(())
    }

    /// Reserves exactly the gathered batch, then writes it: the user's
    /// bytes never pass the quota, even for a moment.
    async fn flush(
        &self,
        writer: &mut Box<dyn BlobWriter>,
        progress: &mut Progress,
    ) -> Result<(), TurnError> {
        if progress.pending_bytes == 0 {
            return Ok(());
        }
        if !self.reserve(progress.id, progress.pending_bytes).await? {
            let limit = self.policy.quota.bytes;
            return Err(TurnError::StorageQuotaExceeded { unit: "bytes", limit });
        }
        progress.pending_bytes = 0;
        for chunk in progress.pending.drain(..) {
            writer.write(chunk).await?;
        }
        Ok(())
    }

    async fn reserve(&self, id: FileId, bytes: u64) -> Result<bool, TurnError> {
        let now = self.clock.now_micros();
        Ok(self.files.reserve(&self.user, id, bytes, self.policy.quota, now).await?)
    }

    /// Makes the row `ready`: text must have been UTF-8 to its end.
    async fn complete(
        &self,
        progress: &Progress,
        content_type: &str,
        declared: Option<String>,
    ) -> Result<StoredFile, TurnError> {
        if progress.utf8.as_ref().is_some_and(|utf8| !utf8.is_valid()) {
            return Err(TurnError::FileTypeMismatch {
                declared: declared.unwrap_or_else(|| content_type.to_owned()),
                detected: "application/octet-stream".to_owned(),
            });
        }
        let done = Uploaded {
            bytes: progress.received,
            sha256: progress.hash.clone().finalize().iter().map(|b| format!("{b:02x}")).collect(),
        };
        let now = self.clock.now_micros();
        Ok(self.files.complete(&self.user, progress.id, &done, now).await?)
    }

    /// Removes what a failed upload left: its blob, then its row with the
    /// reservation. A failure here leaves both to the sweep.
    async fn discard(&self, id: FileId) {
        let now = self.clock.now_micros();
        if let Err(error) = removal::remove(self.blobs.as_ref(), self.files.as_ref(), id, now).await
        {
            tracing::warn!(file.id = %id, error = %error, "a failed upload is left to the sweep");
        }
    }
}

/// The next chunk of the body, `None` at its end.
async fn next(
    body: &mut mpsc::Receiver<UploadChunk>,
    deadline: Instant,
) -> Result<Option<Bytes>, TurnError> {
    match tokio::time::timeout_at(deadline, body.recv()).await {
        Err(_) => Err(UploadFault::TimedOut.into()),
        Ok(None) => Err(UploadFault::Incomplete.into()),
        Ok(Some(UploadChunk::Data(chunk))) => Ok(Some(chunk)),
        Ok(Some(UploadChunk::End)) => Ok(None),
        Ok(Some(UploadChunk::Fault(fault))) => Err(fault.into()),
    }
}
