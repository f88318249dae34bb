//! What a turn's first request needs besides its input: its history, the
//! files it may read, and the output cap and prompt that fit its
//! reservation.

use crate::error::TurnError;
use crate::file::StoredFile;
use crate::ids::{FileId, SessionId, UserId};
use crate::limiter::Reservation;
use crate::tool::FileRef;
use crate::turn::Turn;
use crate::validation::ValidationError;

use super::context::TurnContext;

/// A turn's first request, prepared.
pub(super) struct Prepared {
    /// The earlier turns sent as context.
    pub(super) history: Vec<(String, String)>,
    /// The files the model may read.
    pub(super) files: Vec<FileRef>,
    /// The first round's output cap.
    pub(super) cap: u64,
    /// The first round's prompt tokens, when the admission counted them.
    pub(super) prompt: Option<u64>,
}

fn file_ref(file: StoredFile) -> FileRef {
    FileRef {
        id: file.id,
        filename: file.filename,
        content_type: file.content_type,
        bytes: file.bytes,
    }
}

impl TurnContext {
    /// The files a turn may read when it names `named`: those (each must
    /// be the caller's and stored whole) and its session's. Asked before
    /// the turn is committed, so a turn naming a file it may not read is
    /// refused with nothing written.
    ///
    /// # Errors
    /// [`TurnError::Invalid`] on `files` naming the first file that is not
    /// readable; [`TurnError::Storage`] when the database fails.
    pub(super) async fn named_files(
        &self,
        user: &UserId,
        session: SessionId,
        named: &[FileId],
    ) -> Result<Vec<FileRef>, TurnError> {
        let Some(files) = &self.files else {
            return Err(ValidationError::new("files", "files are not enabled").into());
        };
        let readable = files.readable(user, session, named).await?;
        if let Some(missing) = named.iter().find(|id| !readable.iter().any(|f| f.id == **id)) {
            return Err(ValidationError::new("files", format!("no such file: {missing}")).into());
        }
        Ok(readable.into_iter().map(file_ref).collect())
    }

    /// The history, the readable files (`named`, when they were resolved
    /// before the commit, else the session's when it has any), and the
    /// first round's cap. The two reads run at once; a failed one leaves
    /// its part empty (logged): a reply without them beats no reply.
    pub(super) async fn prepare(
        &self,
        user: &UserId,
        turn: &Turn,
        named: Option<Vec<FileRef>>,
        session_files: bool,
        reservation: Option<Reservation>,
    ) -> Prepared {
        let files = async {
            match (named, &self.files) {
                (Some(named), _) => named,
                (None, None) => Vec::new(),
                (None, Some(_)) if !session_files => Vec::new(),
                (None, Some(files)) => match files.readable(user, turn.session_id, &[]).await {
                    Ok(readable) => readable.into_iter().map(file_ref).collect(),
                    Err(error) => {
                        tracing::warn!(turn.id = %turn.id, error = %error, "no files for the provider");
                        Vec::new()
                    }
                },
            }
        };
        let (mut history, files) = tokio::join!(self.history(turn), files);
        let (cap, prompt) = self.output_cap(reservation, &mut history);
        Prepared { history, files, cap, prompt }
    }
}
