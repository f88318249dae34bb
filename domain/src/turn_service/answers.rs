//! What the turn service answers: a turn submitted, started or replayed,
//! an admission, the events of a followed turn. A leaf: the service's
//! files all use these, and these use none of them.

use futures::StreamExt;
use futures::stream::BoxStream;

use crate::error::TurnError;
use crate::idempotency::KeyClaim;
use crate::limiter::{Lease, RateLimitStatus};
use crate::tool::ToolEvent;
use crate::turn::Turn;
use crate::turn_run::TurnRun;

/// A turn that was admitted and completed, with the usage to report.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// The completed turn, as persisted.
    pub turn: Turn,
    /// The caller's usage after this turn; `None` when the check was skipped.
    pub rate_limit: Option<RateLimitStatus>,
}

/// One event of a followed turn, numbered as its own stream numbered it.
#[derive(Debug)]
pub enum Followed {
    /// `seq` 0: the turn as it was committed.
    Created(Turn),
    /// A chunk of the reply.
    Delta {
        /// Its number.
        seq: u64,
        /// Its text.
        text: String,
    },
    /// A tool call or result.
    Tool {
        /// Its number.
        seq: u64,
        /// What happened.
        event: ToolEvent,
    },
    /// The end; nothing follows.
    Ended {
        /// Its number: the journal's, or one past the last event the reader
        /// knew of when only the row told of the end.
        seq: u64,
        /// The turn as it ended, or why it did not complete (as the turn's
        /// own stream reported it).
        outcome: Result<Turn, TurnError>,
    },
}

/// A started turn, or the first attempt's turn when the request was a
/// retry.
pub enum Started {
    /// A new turn, generating.
    Run(TurnRun),
    /// A retry: the first attempt's turn as committed, and its events from
    /// `turn.created` on (live while it runs, then its end).
    Replay {
        /// The turn as committed.
        turn: Turn,
        /// Its events.
        events: BoxStream<'static, Followed>,
    },
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Run(run) => f.debug_tuple("Run").field(run).finish(),
            Self::Replay { turn, .. } => f.debug_struct("Replay").field("turn", turn).finish(),
        }
    }
}

impl Started {
    /// The run of a request that cannot be a retry (it has no key).
    ///
    /// # Errors
    /// [`TurnError::Internal`] for a replay, which only a key can cause.
    pub(crate) fn into_run(self) -> Result<TurnRun, TurnError> {
        match self {
            Self::Run(run) => Ok(run),
            Self::Replay { .. } => Err(TurnError::Internal("a replay without a key".into())),
        }
    }
}

/// A JSON submission with a key, answered.
#[derive(Debug)]
pub struct Answered {
    /// Whether this answers a retry (`Idempotent-Replayed: true`).
    pub replayed: bool,
    /// How the turn ended, as its first attempt was answered.
    pub outcome: Result<Submitted, TurnError>,
}

/// The limiter's answer to a turn. Moved once, from the check to the
/// start: boxing the common case would cost every turn an allocation.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Admitted {
    /// Go: the usage to report, and the slot (when one was taken).
    Go(Option<RateLimitStatus>, Option<Lease>),
    /// The turn's `Idempotency-Key` was claimed already: nothing counted.
    Claimed(KeyClaim),
}

/// The end of a followed turn: the turn, or how it did not complete.
pub(crate) async fn ended(mut events: BoxStream<'static, Followed>) -> Result<Turn, TurnError> {
    while let Some(event) = events.next().await {
        if let Followed::Ended { outcome, .. } = event {
            return outcome;
        }
    }
    Err(TurnError::Internal("a followed turn ended without its end".into()))
}
