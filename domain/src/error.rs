//! The errors of the domain. Adapters convert their own errors (`DbErr`,
//! HTTP client errors) into these at the seam, so the API maps one closed set
//! of cases to statuses.

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::limiter::{Denial, Policy};
use crate::turn::{FailureKind, Turn};

pub use crate::validation::ValidationError;

/// The cause of a [`StorageError`], kept whole (shared: one batch failure
/// answers every turn of the batch) so a log line can show its chain.
pub type StorageCause = Arc<dyn std::error::Error + Send + Sync>;

/// The storage behind a repository failed. The cause is for logs only.
#[derive(Debug, Clone, Error)]
pub enum StorageError {
    /// The database could not be reached: refused, lost mid-query, the pool
    /// timed out, the server shutting down. Answered `503`; retrying later
    /// may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(#[source] StorageCause),
    /// Any other database failure.
    #[error("storage failure: {0}")]
    Other(#[source] StorageCause),
}

impl StorageError {
    /// An outage, caused by `cause`.
    pub fn unavailable(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Unavailable(Arc::from(cause.into()))
    }

    /// Another failure, caused by `cause` (an error, or a message).
    pub fn other(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Other(Arc::from(cause.into()))
    }

    /// Whether this is an outage that a later attempt may get past.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// A model provider failed to produce a reply.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProviderError {
    /// The provider answered with an error or broke off its reply.
    #[error("provider failed: {0}")]
    Failed(String),
    /// The provider took longer than allowed.
    #[error("provider timed out")]
    Timeout,
    /// The provider is temporarily out of capacity.
    #[error("provider unavailable: {cause}")]
    Unavailable {
        /// How long the provider asked us to wait, when it said.
        retry_after: Option<Duration>,
        /// What it answered, for the log.
        cause: String,
    },
    /// The turn waited `provider.queue_timeout_secs` for the provider's
    /// shared capacity and none came: nothing was sent upstream.
    #[error("the provider's capacity stayed taken for {}s", waited.as_secs())]
    Saturated {
        /// How long it waited.
        waited: Duration,
    },
}

impl ProviderError {
    /// The kind recorded on a turn this error ended.
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Failed(_) => FailureKind::UpstreamError,
            Self::Timeout => FailureKind::UpstreamTimeout,
            Self::Unavailable { .. } => FailureKind::UpstreamUnavailable,
            Self::Saturated { .. } => FailureKind::UpstreamSaturated,
        }
    }
}

/// How a session or turn operation can fail.
#[derive(Debug, Error)]
pub enum TurnError {
    /// The session does not exist or belongs to someone else (the two are
    /// indistinguishable on purpose: no enumeration).
    #[error("session not found")]
    SessionNotFound,
    /// The turn does not exist in that session of the caller's.
    #[error("turn not found")]
    TurnNotFound,
    /// The caller is over a turn limit; nothing was looked up or written.
    #[error("rate limited until {}", .0.retry_at_ms)]
    RateLimited(Box<Denial>),
    /// The turn's input can never fit a token budget: its estimate plus
    /// `rate_limit.min_output_tokens` exceeds the limit of `policy`. Nothing
    /// was counted or written; retrying cannot help.
    #[error("input of {input_tokens} tokens exceeds the {} budget of {limit}", policy.name())]
    InputExceedsTokenBudget {
        /// The prompt's tokens as counted; for an input ruled out by its
        /// size alone (never tokenized), the fewest it can have.
        input_tokens: u64,
        /// The smallest reservation it would need.
        requested: u64,
        /// The token budget it exceeds.
        limit: u32,
        /// Which one.
        policy: Policy,
    },
    /// The limiter cannot decide and `rate_limit.fallback = deny`.
    #[error("rate limiter unavailable")]
    LimiterUnavailable,
    /// The request broke a rule of the product.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The provider failed; the turn was persisted as `failed` with whatever
    /// output it had produced.
    #[error("turn {} failed: {source}", turn.id)]
    Provider {
        /// The failed turn, as persisted.
        turn: Box<Turn>,
        /// Why the provider failed.
        source: ProviderError,
    },
    /// The turn was cut short by a shutdown; persisted `incomplete`.
    #[error("turn {} interrupted by shutdown", turn.id)]
    Interrupted {
        /// The turn, as persisted.
        turn: Box<Turn>,
    },
    /// The turn asked to be cancelled had already ended.
    #[error("turn {} is not in progress", .0.id)]
    TurnNotInProgress(Box<Turn>),
    /// A cancel was asked for, but the turn's end was not seen in time (its
    /// instance unreachable); the turn may still end either way.
    #[error("the cancel of turn {0} is not confirmed")]
    CancelUnconfirmed(crate::ids::TurnId),
    /// The `Idempotency-Key` was sent before with another request (another
    /// input or session).
    #[error("the idempotency key was used for another request")]
    IdempotencyKeyReused,
    /// The `Idempotency-Key`'s first attempt holds the key but its turn was
    /// not committed in time (it is still committing, or failed to).
    #[error("the idempotency key's first request is not committed")]
    IdempotencyKeyInUse,
    /// No such file of the caller's (another user's behaves the same).
    #[error("file not found")]
    FileNotFound,
    /// An upload crossed `files.max_file_bytes`; nothing was kept.
    #[error("the file exceeds {limit} bytes")]
    FileTooLarge {
        /// The limit.
        limit: u64,
    },
    /// An upload would take the caller past a storage quota; nothing was
    /// kept.
    #[error("storage quota exceeded: {limit} {unit}")]
    StorageQuotaExceeded {
        /// `bytes` (`files.quota_bytes`) or `files` (`files.max_files`).
        unit: &'static str,
        /// The quota.
        limit: u64,
    },
    /// The bytes are of another type than the client declared.
    #[error("declared {declared}, but the content is {detected}")]
    FileTypeMismatch {
        /// What the client said (the part's type, or its name's extension).
        declared: String,
        /// What the bytes are.
        detected: String,
    },
    /// The bytes are of a type not in `files.allowed_types`.
    #[error("files of type {detected} are not accepted")]
    FileTypeNotAllowed {
        /// What the bytes are (`application/octet-stream` when unknown).
        detected: String,
    },
    /// The upload's body broke off, arrived too slowly, or was not the
    /// form it must be; nothing was kept.
    #[error("upload failed: {0}")]
    Upload(#[from] crate::file::UploadFault),
    /// The process is shutting down and takes no new turns.
    #[error("shutting down")]
    ShuttingDown,
    /// A bug or a lost task; the cause is in the message, for logs only.
    #[error("internal error: {0}")]
    Internal(String),
}
