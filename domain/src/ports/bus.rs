//! The port that carries a turn's journal and cancel requests between
//! instances, and the bus of a process that runs alone.

use async_trait::async_trait;

use crate::error::StorageError;
use crate::ids::TurnId;
use crate::tool::ToolEvent;

/// One entry of a turn's journal: the turn's events as its own stream sent
/// them, numbered alike (`seq` 0 is [`JournalEntry::Created`], each delta
/// the next, [`JournalEntry::Ended`] the last), so a stream resumed
/// anywhere carries the same ids and the same text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalEntry {
    /// The turn was committed (`seq` 0).
    Created,
    /// A chunk of the reply, as one `turn.delta` carried it.
    Delta(String),
    /// A `turn.tool_call` or `turn.tool_result`.
    Tool(ToolEvent),
    /// The turn ended. `recorded`: its row holds the end (`false`: the
    /// database refused it then; the end is written when it is back).
    Ended {
        /// Whether the row holds the end.
        recorded: bool,
        /// Whether the journal is kept for resumes (`turns.resume_ttl_secs`:
        /// a streamed turn's), or only briefly, for the readers waiting on
        /// the end ([`ENDED_JSON_KEPT`]: a JSON turn's, whose row tells a
        /// later reader all the journal could).
        resumable: bool,
    },
}

/// The most entries one journal keeps (older ones go first; a reader
/// then sees a gap): a turn coalesced every 50 ms for its whole default
/// `max_duration` (300 s) makes 6,000.
pub const MAX_JOURNAL_ENTRIES: usize = 10_000;

/// How long a JSON turn's journal is kept after its end: long enough for
/// the readers already waiting on it (a cancel, a retry) to read the end.
pub const ENDED_JSON_KEPT: std::time::Duration = std::time::Duration::from_secs(10);

/// One numbered entry of a turn's journal.
pub type Numbered = (u64, JournalEntry);

/// What instances tell each other about a turn: its journal, so a stream
/// can be resumed on any instance, and requests to cancel it, so it can be
/// stopped from any. Best effort by design: an entry that is lost (the
/// store down, the writer's queue full) shows to readers as a gap in the
/// `seq`s, and the reader then serves the turn's end from its row.
#[async_trait]
pub trait TurnBus: Send + Sync + std::fmt::Debug {
    /// Queues entry `seq` of `turn`'s journal; never waits. One turn's
    /// entries are appended in the order given.
    fn append(&self, turn: TurnId, seq: u64, entry: JournalEntry);

    /// A reader of `turn`'s journal (it may keep a connection of its own
    /// for waiting).
    fn reader(&self, turn: TurnId) -> Box<dyn JournalReader>;

    /// Asks the instance that runs `turn`, whichever it is, to cancel it.
    ///
    /// # Errors
    /// [`StorageError`] when the request could not be sent.
    async fn request_cancel(&self, turn: TurnId) -> Result<(), StorageError>;
}

/// Reads one turn's journal.
#[async_trait]
pub trait JournalReader: Send + std::fmt::Debug {
    /// The entries numbered above `after` (from the first when `None`), in
    /// order; when there is none yet, waits up to `wait` for one. Empty
    /// when none came, or the journal holds nothing for the turn (never
    /// written, expired, lost).
    ///
    /// # Errors
    /// [`StorageError`] when the journal's store cannot be read.
    async fn read(
        &mut self,
        after: Option<u64>,
        wait: std::time::Duration,
    ) -> Result<Vec<Numbered>, StorageError>;

    /// Whether the journal holds anything for the turn (asked when a first
    /// look finds nothing new: an expired journal is told from a writer
    /// still sending).
    ///
    /// # Errors
    /// [`StorageError`] when the journal's store cannot be read.
    async fn exists(&mut self) -> Result<bool, StorageError>;
}

/// The bus of a process that keeps no journal and runs alone: nothing is
/// recorded, a cancel reaches only this process's turns (which the service
/// cancels itself).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoBus;

#[derive(Debug)]
struct NoJournal;

#[async_trait]
impl JournalReader for NoJournal {
    async fn read(
        &mut self,
        _: Option<u64>,
        wait: std::time::Duration,
    ) -> Result<Vec<Numbered>, StorageError> {
        tokio::time::sleep(wait).await;
        Ok(Vec::new())
    }

    async fn exists(&mut self) -> Result<bool, StorageError> {
        Ok(false)
    }
}

#[async_trait]
impl TurnBus for NoBus {
    fn append(&self, _: TurnId, _: u64, _: JournalEntry) {}

    fn reader(&self, _: TurnId) -> Box<dyn JournalReader> {
        Box::new(NoJournal)
    }

    async fn request_cancel(&self, _: TurnId) -> Result<(), StorageError> {
        Ok(())
    }
}
