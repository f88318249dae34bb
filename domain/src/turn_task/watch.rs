//! What a turn's rounds share: the [`Watch`] every wait is under, the
//! [`Reply`] gathered across rounds, and what one [`Round`] produced.

use std::pin::Pin;

use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::error::ProviderError;
use crate::tool::ToolCall;

use super::ending::Ending;
use super::outbox::Outbox;

/// Sleeps until `due`; never wakes when there is none.
pub(super) async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// What stops a turn's waits.
pub(super) struct Watch {
    pub(super) cancel: CancellationToken,
    pub(super) abort: CancellationToken,
    pub(super) deadline: Pin<Box<Sleep>>,
}

impl Watch {
    /// Resolves when the turn must stop, with how it ends.
    pub(super) async fn stopped(&mut self) -> Ending {
        tokio::select! {
            () = self.cancel.cancelled() => Ending::Cancelled,
            () = self.abort.cancelled() => Ending::ShutDown,
            () = &mut self.deadline => Ending::Failed(ProviderError::Timeout),
        }
    }
}

/// The reply across rounds: its whole output and its numbered events.
pub(super) struct Reply {
    pub(super) output: String,
    pub(super) outbox: Outbox,
    /// Reported once, even when a first chunk is cut to nothing at the cap.
    pub(super) first_delta: bool,
}

/// What one round produced.
pub(super) struct Round {
    /// Its text (also appended to the reply's output).
    pub(super) text: String,
    /// The tools it called.
    pub(super) calls: Vec<ToolCall>,
    /// How its stream ended.
    pub(super) ending: Ending,
}
