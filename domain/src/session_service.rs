//! Session use cases: open, list, read and delete a caller's sessions.

use std::sync::Arc;

use crate::clock::Clock;
use crate::error::TurnError;
use crate::files::FileService;
use crate::ids::{Caller, SessionId};
use crate::page::{Page, PageRequest};
use crate::ports::SessionRepository;
use crate::session::{NewSession, Session};

/// Session operations, always scoped to the caller.
#[derive(Debug, Clone)]
pub struct SessionService {
    sessions: Arc<dyn SessionRepository>,
    clock: Arc<dyn Clock>,
    /// The files deleted with a session.
    files: Option<FileService>,
}

impl SessionService {
    /// A service over a repository and a clock.
    pub fn new(sessions: Arc<dyn SessionRepository>, clock: Arc<dyn Clock>) -> Self {
        Self { sessions, clock, files: None }
    }

    /// The same service, deleting a session's files with it.
    #[must_use]
    pub fn with_files(self, files: FileService) -> Self {
        Self { files: Some(files), ..self }
    }

    /// Opens a session for the caller.
    ///
    /// # Errors
    /// [`TurnError::Storage`] when the database fails.
    pub async fn create(&self, caller: &Caller, new: NewSession) -> Result<Session, TurnError> {
        let now = self.clock.now_micros();
        Ok(self.sessions.create(&caller.user, SessionId::new(), &new, now).await?)
    }

    /// The caller's sessions, newest first.
    ///
    /// # Errors
    /// [`TurnError::Storage`] when the database fails.
    pub async fn list(
        &self,
        caller: &Caller,
        page: PageRequest<SessionId>,
    ) -> Result<Page<Session>, TurnError> {
        Ok(self.sessions.list(&caller.user, page).await?)
    }

    /// One of the caller's sessions.
    ///
    /// # Errors
    /// [`TurnError::SessionNotFound`] when it is missing or not the caller's.
    pub async fn get(&self, caller: &Caller, id: SessionId) -> Result<Session, TurnError> {
        self.sessions.get(&caller.user, id).await?.ok_or(TurnError::SessionNotFound)
    }

    /// Deletes one of the caller's sessions, its turns and its files. The
    /// repository marks the files in the session's delete; their bytes and
    /// rows go next (what a failure leaves, the files' sweep removes).
    ///
    /// # Errors
    /// [`TurnError::SessionNotFound`] when it is missing or not the caller's.
    pub async fn delete(&self, caller: &Caller, id: SessionId) -> Result<(), TurnError> {
        if !self.sessions.delete(&caller.user, id).await? {
            return Err(TurnError::SessionNotFound);
        }
        if let Some(files) = &self.files {
            files.purge_session(id).await;
        }
        Ok(())
    }
}
