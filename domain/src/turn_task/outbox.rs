//! A turn's events as every reader numbers them: `seq` 0 the commit, each
//! delta batch the next, the end the last. The task's caller numbers what
//! it receives the same way, and the journal (through the [`TurnBus`])
//! records each batch under its `seq`, so a stream resumed anywhere sends
//! the very ids and text the original one sent.
//!
//! Deltas are coalesced: a chunk goes out at once when the last batch left
//! at least `coalesce` ago, else it waits (with any that follow) until
//! then, or until [`MAX_BATCH_BYTES`] have gathered. A fast upstream then
//! costs the journal one write per interval, not one per token, and a
//! first chunk is never held back.
//!
//! A JSON turn's journal holds its start and its end only, and is kept
//! briefly after the end: no client streams it, so no ids are to be
//! repeated, its deltas would cost every JSON turn Redis writes nobody
//! reads, and once it ended its row tells a reader all its journal could.
//! A stream that follows it (a resume, a retry on the streaming endpoint)
//! gets `turn.created`, then the end with the whole output: the numbers
//! in between are a gap.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::ids::TurnId;
use crate::ports::{JournalEntry, TurnBus};
use crate::tool::ToolEvent;

/// A batch this large goes out without waiting for its interval.
pub(crate) const MAX_BATCH_BYTES: usize = 4096;

/// The numbered, coalesced events of one turn.
#[derive(Debug)]
pub(super) struct Outbox {
    turn: TurnId,
    bus: Arc<dyn TurnBus>,
    coalesce: Duration,
    /// The `seq` of the next entry.
    next: u64,
    /// Deltas not sent yet.
    pending: String,
    /// When the last batch went out.
    sent_at: Option<Instant>,
    /// Whether deltas are journaled (a streamed turn's are).
    journal_deltas: bool,
}

impl Outbox {
    /// The outbox of `turn`, just committed: its `seq` 0 is recorded.
    pub(super) fn created(
        turn: TurnId,
        bus: Arc<dyn TurnBus>,
        coalesce: Duration,
        journal_deltas: bool,
    ) -> Self {
        bus.append(turn, 0, JournalEntry::Created);
        let pending = String::new();
        Self { turn, bus, coalesce, next: 1, pending, sent_at: None, journal_deltas }
    }

    /// Adds a chunk; `true` when the batch is due now.
    pub(super) fn push(&mut self, delta: &str) -> bool {
        self.pending.push_str(delta);
        self.pending.len() >= MAX_BATCH_BYTES
            || self.sent_at.is_none_or(|at| at.elapsed() >= self.coalesce)
    }

    /// When the waiting batch is due; `None` when nothing waits.
    pub(super) fn due_at(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        Some(self.sent_at.map_or_else(Instant::now, |at| at + self.coalesce))
    }

    /// The waiting batch, recorded under its `seq`, for the caller's
    /// channel; `None` when nothing waits.
    pub(super) fn take(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let batch = std::mem::take(&mut self.pending);
        if self.journal_deltas {
            self.bus.append(self.turn, self.next, JournalEntry::Delta(batch.clone()));
        }
        self.next += 1;
        self.sent_at = Some(Instant::now());
        Some(batch)
    }

    /// Records a tool event, after the batch before it was taken.
    pub(super) fn tool(&mut self, event: ToolEvent) {
        if self.journal_deltas {
            self.bus.append(self.turn, self.next, JournalEntry::Tool(event));
        }
        self.next += 1;
    }

    /// Records the end, after the last batch was taken.
    pub(super) fn ended(&mut self, recorded: bool) {
        let resumable = self.journal_deltas;
        self.bus.append(self.turn, self.next, JournalEntry::Ended { recorded, resumable });
        self.next += 1;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::error::StorageError;
    use crate::ports::{JournalReader, NoBus};

    /// Records every append.
    #[derive(Debug, Default)]
    struct Recorded(Mutex<Vec<(u64, JournalEntry)>>);

    #[async_trait]
    impl TurnBus for Recorded {
        fn append(&self, _: TurnId, seq: u64, entry: JournalEntry) {
            self.0.lock().unwrap().push((seq, entry));
        }

        fn reader(&self, turn: TurnId) -> Box<dyn JournalReader> {
            NoBus.reader(turn)
        }

        async fn request_cancel(&self, _: TurnId) -> Result<(), StorageError> {
            Ok(())
        }
    }

    const COALESCE: Duration = Duration::from_millis(50);

    #[tokio::test(start_paused = true)]
    async fn a_first_chunk_goes_at_once_then_chunks_gather_for_the_interval() {
        let bus = Arc::new(Recorded::default());
        let mut outbox = Outbox::created(TurnId::new(), bus.clone(), COALESCE, true);
        assert!(outbox.push("a"), "the first chunk is never held back");
        assert_eq!(outbox.take().as_deref(), Some("a"));
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(!outbox.push("b"), "10 ms after a batch: it waits");
        assert!(!outbox.push("c"));
        let due = outbox.due_at().unwrap();
        assert_eq!(due - Instant::now(), Duration::from_millis(40), "due 50 ms after the last");
        tokio::time::advance(Duration::from_millis(40)).await;
        assert_eq!(outbox.take().as_deref(), Some("bc"), "the two go as one event");
        assert!(!outbox.push(&"x".repeat(MAX_BATCH_BYTES - 1)));
        assert!(outbox.push("y"), "4 KiB gathered goes at once");
        assert_eq!(outbox.take().map(|b| b.len()), Some(MAX_BATCH_BYTES));
        assert_eq!(outbox.take(), None, "nothing waits");
        assert_eq!(outbox.due_at(), None);
        outbox.ended(true);
        let seqs: Vec<u64> = bus.0.lock().unwrap().iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4], "numbered as the stream numbers them");
    }

    #[tokio::test(start_paused = true)]
    async fn a_json_turn_journals_its_start_and_end_numbered_as_a_stream_would_be() {
        let bus = Arc::new(Recorded::default());
        let mut outbox = Outbox::created(TurnId::new(), bus.clone(), Duration::ZERO, false);
        for chunk in ["a", "b", "c"] {
            assert!(outbox.push(chunk), "no coalescing at zero");
            assert_eq!(outbox.take().as_deref(), Some(chunk), "the caller still gets each");
        }
        outbox.ended(false);
        let entries = bus.0.lock().unwrap().clone();
        assert_eq!(
            entries,
            [
                (0, JournalEntry::Created),
                (4, JournalEntry::Ended { recorded: false, resumable: false })
            ]
        );
    }
}
