//! The ports: what the domain needs from the outside world, named as domain
//! nouns. Adapters (SeaORM repositories, model providers) live in
//! `infrastructure` and are named by technology.

mod bus;
mod capacity;
mod files;

pub use bus::{
    ENDED_JSON_KEPT, JournalEntry, JournalReader, MAX_JOURNAL_ENTRIES, NoBus, Numbered, TurnBus,
};
pub use capacity::CapacityStore;
pub use files::{BlobStore, BlobWriter, Deleting, FileRepository, Quota, Tools};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

use crate::error::{ProviderError, StorageError};
use crate::ids::{SessionId, TurnId, UserId};
use crate::page::{Page, PageRequest};
use crate::session::{NewSession, Session};
use crate::tokens::TokenCounter;
use crate::tool::{FileRef, ToolCall, ToolRound, ToolSpec};
use crate::turn::{FinishReason, Turn, TurnEnd, TurnStatus, Usage};

/// Persistence of sessions. Every read and write is scoped to the owner: a
/// session of another user behaves exactly as a missing one.
#[async_trait]
pub trait SessionRepository: Send + Sync + std::fmt::Debug {
    /// Creates a session (and its owner's user row when it is the first).
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn create(
        &self,
        user: &UserId,
        id: SessionId,
        new: &NewSession,
        now: DateTime<Utc>,
    ) -> Result<Session, StorageError>;

    /// The owner's sessions, newest first.
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn list(
        &self,
        user: &UserId,
        page: PageRequest<SessionId>,
    ) -> Result<Page<Session>, StorageError>;

    /// One session of the owner's, or `None`.
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn get(&self, user: &UserId, id: SessionId) -> Result<Option<Session>, StorageError>;

    /// Deletes a session of the owner's with all its turns; `false` when
    /// there was none.
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn delete(&self, user: &UserId, id: SessionId) -> Result<bool, StorageError>;
}

/// What [`TurnRepository::begin`] needs to commit a turn.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnStart<'a> {
    /// The caller, who must own the session.
    pub user: &'a UserId,
    /// The session the turn goes into.
    pub session_id: SessionId,
    /// The new turn's id.
    pub turn_id: TurnId,
    /// The validated input.
    pub input: &'a str,
    /// The client's `Idempotency-Key` and the request's fingerprint, kept
    /// on the row; a second row with the key for the user is refused.
    pub idempotency: Option<(&'a str, &'a str)>,
    /// The turn's `created_at`: the clock's reading when the begin was
    /// asked for. Not its heartbeat: a begin can wait on the database for
    /// longer than a heartbeat may be old (see [`TurnRepository::begin`]).
    pub now: DateTime<Utc>,
}

impl TurnStart<'_> {
    /// The turn as [`TurnRepository::begin`] commits it, numbered `seq`.
    pub fn begun(&self, seq: i64) -> Turn {
        Turn {
            id: self.turn_id,
            session_id: self.session_id,
            seq,
            input: self.input.to_owned(),
            output: String::new(),
            status: TurnStatus::InProgress,
            finish_reason: None,
            usage: None,
            error: None,
            created_at: self.now,
            completed_at: None,
            tool_calls: Vec::new(),
        }
    }
}

/// A turn [`TurnRepository::begin`] committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// The turn, `in_progress`.
    pub turn: Turn,
    /// Whether files are attached to its session (stored whole): only then
    /// does the turn ask which. Told by the begin itself, so the many turns
    /// of sessions without files cost no read more.
    pub session_files: bool,
}

/// A generating turn's checkpoint: its heartbeat, and its output so far
/// when that grew since the last one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The turn.
    pub turn_id: TurnId,
    /// The whole output so far; `None`: unchanged, stamp the heartbeat only.
    pub output: Option<String>,
}

/// Persistence of turns.
#[async_trait]
pub trait TurnRepository: Send + Sync + std::fmt::Debug {
    /// Commits a new `in_progress` turn with the next `seq` of its session,
    /// atomically with the ownership check; `None` when the session is not
    /// the caller's. Safe under any number of concurrent calls for one
    /// session: no two turns get the same `seq` and none is dropped.
    ///
    /// The turn's heartbeat is stamped by the store's own clock (the one
    /// [`TurnRepository::checkpoint`] and [`TurnRepository::expire_stale`]
    /// read) once the session's row lock is held, just before the commit:
    /// however long the begin waited, the turn is as fresh as its row is
    /// new when other instances first see it.
    ///
    /// # Errors
    /// [`StorageError`] when the database fails; nothing is written then.
    async fn begin(&self, start: TurnStart<'_>) -> Result<Option<Committed>, StorageError>;

    /// Writes how a turn ended and returns it as persisted.
    ///
    /// # Errors
    /// [`StorageError`] when the database fails or the turn is gone (its
    /// session was deleted meanwhile).
    async fn finish(&self, id: TurnId, end: TurnEnd) -> Result<Turn, StorageError>;

    /// Saves the partial output of turns still generating (where
    /// [`Checkpoint::output`] is set) and stamps each one's heartbeat with
    /// the store's clock, in one statement where the database allows. A
    /// turn no longer `in_progress` is left as it is.
    ///
    /// # Errors
    /// [`StorageError`] when the database fails; nothing is written then.
    async fn checkpoint(&self, checkpoints: &[Checkpoint]) -> Result<(), StorageError>;

    /// Marks every `in_progress` turn whose heartbeat is more than
    /// `stale_after` old by the store's clock as `incomplete` (ended at
    /// `now`), keeping its checkpointed output; returns how many. Heartbeats
    /// are stamped and judged by one clock, so instances whose own clocks
    /// disagree (or a test's moved clock) never end each other's live turns.
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn expire_stale(
        &self,
        stale_after: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<u64, StorageError>;

    /// The turns of a session of the caller's in `seq` order; `None` when the
    /// session is not the caller's.
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn list(
        &self,
        user: &UserId,
        session: SessionId,
        page: PageRequest<i64>,
    ) -> Result<Option<Page<Turn>>, StorageError>;

    /// One turn of a session of the caller's, or `None`.
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn get(
        &self,
        user: &UserId,
        session: SessionId,
        turn: TurnId,
    ) -> Result<Option<Turn>, StorageError>;

    /// The turn `user` committed with the `Idempotency-Key` `key`, and the
    /// fingerprint of the request that sent it; `None` when there is none.
    /// The default finds none (for stores that keep no keys).
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn find_by_key(
        &self,
        user: &UserId,
        key: &str,
    ) -> Result<Option<(TurnId, String)>, StorageError> {
        let _ = (user, key);
        Ok(None)
    }

    /// The last `limit` `completed` turns of a session with a `seq` below
    /// `before_seq`, oldest first: the context of the turn `before_seq`.
    /// Not scoped to a user: the caller has just committed that turn into
    /// the session, which checked ownership. The default keeps no history
    /// (for stores that cannot serve it, and test doubles).
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn completed_before(
        &self,
        session: SessionId,
        before_seq: i64,
        limit: usize,
    ) -> Result<Vec<Turn>, StorageError> {
        let _ = (session, before_seq, limit);
        Ok(Vec::new())
    }
}

/// What a provider is asked to reply to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyRequest {
    /// The session, for providers that keep context.
    pub session_id: SessionId,
    /// The user's input.
    pub input: String,
    /// Earlier completed turns of the session as `(input, output)`, oldest
    /// first; at most [`ModelProvider::context_turns`] of them.
    pub history: Vec<(String, String)>,
    /// The most output tokens the reply may have: `turns.max_output_tokens`,
    /// or less when the turn's token reservation holds less. A provider asks
    /// its upstream for no more and stops there (`finish_reason` `length`).
    pub max_output_tokens: u64,
    /// The files the turn may read, for the model to name (empty: none).
    pub files: Vec<FileRef>,
    /// The tools offered (empty when the turn has no files).
    pub tools: Vec<ToolSpec>,
    /// The earlier rounds of this turn's tool use, oldest first: the
    /// model's calls and their results, sent back with the prompt.
    pub rounds: Vec<ToolRound>,
}

/// One item of a reply stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyEvent {
    /// A chunk of the reply's text.
    Delta(String),
    /// The model calls a tool. A round whose reply holds calls ends with
    /// them; the turn runs them and asks again with their results.
    ToolCall(ToolCall),
    /// The reply is over. A stream that ends without this is taken as a
    /// normal stop with unknown usage.
    Finished {
        /// Why it ended.
        finish_reason: FinishReason,
        /// Token usage, when the provider reports it.
        usage: Option<Usage>,
    },
}

/// A reply as it is produced; an `Err` item ends it.
pub type ReplyStream = BoxStream<'static, Result<ReplyEvent, ProviderError>>;

/// A model provider.
#[async_trait]
pub trait ModelProvider: Send + Sync + std::fmt::Debug {
    /// Starts a reply. Failures known before the first chunk (refused,
    /// unreachable, timed out) are returned here; later ones arrive as an
    /// `Err` item of the stream.
    ///
    /// # Errors
    /// [`ProviderError`] when the reply cannot be started.
    async fn reply(&self, request: ReplyRequest) -> Result<ReplyStream, ProviderError>;

    /// How many earlier completed turns [`ReplyRequest::history`] should
    /// carry. The default, 0, costs no query.
    fn context_turns(&self) -> usize {
        0
    }

    /// The tokens of the prompt a reply to `input` after `history` sends
    /// upstream, as `tokens` counts them: what a turn reserves for its input,
    /// and the floor under its reported input usage. Additive over the
    /// history's turns, each adding the same whatever the input (the turn's
    /// task counts each history turn on its own, with an empty input, and
    /// does not tokenize the input again). The default counts the texts
    /// alone.
    fn prompt_tokens(
        &self,
        tokens: &dyn TokenCounter,
        input: &str,
        history: &[(String, String)],
    ) -> u64 {
        let earlier: u64 = history.iter().map(|(i, o)| tokens.count(i) + tokens.count(o)).sum();
        tokens.count(input) + earlier
    }

    /// The tokens a round of tool use adds to the next round's prompt: the
    /// model's text and calls, and the results. The default counts the
    /// texts alone.
    fn round_tokens(&self, tokens: &dyn TokenCounter, round: &ToolRound) -> u64 {
        let calls: u64 = round
            .calls
            .iter()
            .map(|(call, result)| {
                tokens.count(&call.name)
                    + tokens.count(&call.arguments)
                    + tokens.count(&result.content)
            })
            .sum();
        tokens.count(&round.text) + calls
    }
}
