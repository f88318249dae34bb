//! The file use cases: upload (streamed, typed from its bytes, within the
//! user's exact quotas), list, read, delete, and the sweep that removes
//! what interrupted uploads and deletions left behind.

pub mod kind;
mod policy;
mod removal;
mod upload;

pub use policy::FilePolicy;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::error::{StorageError, TurnError};
use crate::file::{StoredFile, UploadChunk, UploadMeta};
use crate::ids::{Caller, FileId, SessionId};
use crate::limiter::{Decision, LimiterHandle};
use crate::page::{Page, PageRequest};
use crate::ports::{BlobStore, Deleting, FileRepository, SessionRepository};

/// The upload scope of a user's limiter key.
const UPLOADS: &str = "uploads";

/// Files, always scoped to the caller.
#[derive(Debug, Clone)]
pub struct FileService {
    files: Arc<dyn FileRepository>,
    blobs: Arc<dyn BlobStore>,
    sessions: Arc<dyn SessionRepository>,
    clock: Arc<dyn Clock>,
    policy: Arc<FilePolicy>,
    limiter: Option<LimiterHandle>,
    /// The uploads running: each in a task of its own, so a client that
    /// hangs up mid-upload still has its reservation and blob cleaned up.
    tasks: TaskTracker,
}

impl FileService {
    /// A service over its ports.
    pub fn new(
        files: Arc<dyn FileRepository>,
        blobs: Arc<dyn BlobStore>,
        sessions: Arc<dyn SessionRepository>,
        clock: Arc<dyn Clock>,
        policy: FilePolicy,
        limiter: Option<LimiterHandle>,
    ) -> Self {
        Self {
            files,
            blobs,
            sessions,
            clock,
            policy: Arc::new(policy),
            limiter,
            tasks: TaskTracker::new(),
        }
    }

    /// The rules this service applies.
    pub fn policy(&self) -> &FilePolicy {
        &self.policy
    }

    /// Stores the file whose bytes arrive on `body`: the uploads window
    /// first, then the session (when named), then its type from its first
    /// bytes, then its bytes, each chunk reserved against the quota before
    /// it is written. The work runs in a task of its own: if this future is
    /// dropped (the client hung up), `body` closes without its end and the
    /// task removes the blob and gives the reservation back.
    ///
    /// # Errors
    /// [`TurnError::RateLimited`], [`TurnError::SessionNotFound`], the type
    /// refusals of [`kind::sniff`], [`TurnError::FileTooLarge`],
    /// [`TurnError::StorageQuotaExceeded`], [`TurnError::Upload`],
    /// [`TurnError::Storage`]; nothing is kept after any of them.
    pub async fn upload(
        &self,
        caller: &Caller,
        meta: UploadMeta,
        body: mpsc::Receiver<UploadChunk>,
    ) -> Result<StoredFile, TurnError> {
        self.admit(caller).await?;
        if let Some(session) = meta.session_id {
            self.sessions.get(&caller.user, session).await?.ok_or(TurnError::SessionNotFound)?;
        }
        let (done, outcome) = oneshot::channel();
        let upload = upload::Upload {
            files: Arc::clone(&self.files),
            blobs: Arc::clone(&self.blobs),
            clock: Arc::clone(&self.clock),
            policy: Arc::clone(&self.policy),
            user: caller.user.clone(),
        };
        self.tasks.spawn(async move {
            let _ = done.send(upload.run(meta, body).await);
        });
        outcome.await.map_err(|_| TurnError::Internal("upload task lost".into()))?
    }

    /// Counts an upload in the caller's uploads window.
    async fn admit(&self, caller: &Caller) -> Result<(), TurnError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let user = caller.user.scoped(UPLOADS);
        // The lease is dropped at once: the window counts uploads started,
        // not uploads running.
        match limiter.check(user, self.policy.upload_limits()).await.decision {
            Decision::Admitted(_) | Decision::Skipped(_) => Ok(()),
            Decision::Limited(denial) => Err(TurnError::RateLimited(Box::new(denial))),
            Decision::Unavailable(_) => Err(TurnError::LimiterUnavailable),
        }
    }

    /// The caller's files, newest first.
    ///
    /// # Errors
    /// [`TurnError::Storage`] when the database fails.
    pub async fn list(
        &self,
        caller: &Caller,
        page: PageRequest<FileId>,
    ) -> Result<Page<StoredFile>, TurnError> {
        Ok(self.files.list(&caller.user, page).await?)
    }

    /// One of the caller's files.
    ///
    /// # Errors
    /// [`TurnError::FileNotFound`] when it is missing or not the caller's.
    pub async fn get(&self, caller: &Caller, id: FileId) -> Result<StoredFile, TurnError> {
        self.files.get(&caller.user, id).await?.ok_or(TurnError::FileNotFound)
    }

    /// One of the caller's files with its bytes, streamed.
    ///
    /// # Errors
    /// [`TurnError::FileNotFound`]; [`TurnError::Storage`] when the blob
    /// store fails.
    pub async fn content(
        &self,
        caller: &Caller,
        id: FileId,
    ) -> Result<(StoredFile, BoxStream<'static, Result<Bytes, StorageError>>), TurnError> {
        let file = self.get(caller, id).await?;
        let bytes = self.blobs.read(id).await?;
        Ok((file, bytes))
    }

    /// Deletes one of the caller's files: it disappears from every read at
    /// once, then its blob and row go (the sweep finishes what a failure
    /// leaves). Deleting a file of the caller's again (within
    /// [`DELETIONS_KEPT`]) succeeds again.
    ///
    /// # Errors
    /// [`TurnError::FileNotFound`] when it is not the caller's (or never
    /// was); [`TurnError::Storage`] when the database fails.
    pub async fn delete(&self, caller: &Caller, id: FileId) -> Result<(), TurnError> {
        let now = self.clock.now_micros();
        match self.files.mark_deleting(&caller.user, id, now).await? {
            Deleting::Marked => self.purge(id).await,
            Deleting::AlreadyDeleted => {}
            Deleting::NotFound => return Err(TurnError::FileNotFound),
        }
        Ok(())
    }

    /// Removes the files of a session the caller just deleted (the session's
    /// delete marked them).
    pub async fn purge_session(&self, session: SessionId) {
        match self.files.deleting_in_session(session).await {
            Ok(ids) => {
                for id in ids {
                    self.purge(id).await;
                }
            }
            Err(error) => {
                tracing::warn!(session.id = %session, error = %error, "the session's files are left to the sweep");
            }
        }
    }

    /// Removes the blob, then the row, of a file no longer `ready`; a
    /// failure leaves it to the sweep (logged here, its one handler).
    async fn purge(&self, id: FileId) {
        let now = self.clock.now_micros();
        if let Err(error) = removal::remove(self.blobs.as_ref(), self.files.as_ref(), id, now).await
        {
            tracing::warn!(file.id = %id, error = %error, "a file is left to the sweep");
        }
    }

    /// Finishes what interrupted uploads and deletions left: files neither
    /// `ready` nor touched for `files.orphan_grace_secs`, and files of
    /// sessions that are gone; returns how many it removed.
    ///
    /// # Errors
    /// [`TurnError::Storage`] when the database fails.
    pub async fn sweep(&self) -> Result<usize, TurnError> {
        let grace =
            chrono::Duration::from_std(self.policy.orphan_grace).unwrap_or(chrono::Duration::MAX);
        let now = self.clock.now_micros();
        let stale = self.files.stale(now - grace, SWEEP_BATCH).await?;
        let mut removed = 0;
        for id in stale {
            self.blobs.delete(id).await?;
            if self.files.remove(id, now).await? {
                removed += 1;
            }
        }
        let kept = chrono::Duration::from_std(DELETIONS_KEPT).unwrap_or(chrono::Duration::MAX);
        self.files.forget_deleted(now - kept).await?;
        if removed > 0 {
            tracing::warn!(
                files = removed,
                "removed files left by interrupted uploads or deletions"
            );
        }
        Ok(removed)
    }

    /// Stops taking uploads and waits up to `grace` for those running.
    pub async fn drain(&self, grace: Duration) {
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
    }
}

/// How long a deletion is remembered, so that deleting the file again
/// answers as the first time did.
pub const DELETIONS_KEPT: Duration = Duration::from_secs(24 * 3600);

/// The most files one sweep removes; the next sweep takes the rest.
const SWEEP_BATCH: u64 = 500;
