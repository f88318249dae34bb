//! The journals of one instance that runs alone (no Redis): in memory, a
//! streamed turn's kept `turns.resume_ttl_secs` after its turn ended (a
//! JSON turn's, ten seconds), all of them
//! within [`MAX_BYTES`] (the oldest ended ones go first when it is
//! reached). A cancel needs no delivery: every turn runs here.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use pantheon_domain::StorageError;
use pantheon_domain::TurnId;
use pantheon_domain::ports::{
    ENDED_JSON_KEPT, JournalEntry, JournalReader, MAX_JOURNAL_ENTRIES, Numbered, TurnBus,
};
use pantheon_domain::tool::ToolEvent;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The most text all journals hold together.
pub const MAX_BYTES: usize = 64 << 20;

#[derive(Debug)]
struct Journal {
    entries: VecDeque<Numbered>,
    bytes: usize,
    /// Wakes the readers waiting for an entry.
    appended: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Journals {
    by_turn: HashMap<TurnId, Journal>,
    /// Ended turns, oldest first, with when their journal expires: JSON
    /// turns' (kept briefly), then streamed ones' (kept for resumes), each
    /// queue in the order of its expiries.
    ended: [VecDeque<(Instant, TurnId)>; 2],
    bytes: usize,
}

impl Journals {
    /// Drops the journals that expired, then the oldest ended ones (JSON
    /// turns' first) while over [`MAX_BYTES`].
    fn evict(&mut self, now: Instant) {
        for queue in 0..2 {
            while let Some(&(expires, turn)) = self.ended[queue].front() {
                if expires > now && self.bytes <= MAX_BYTES {
                    break;
                }
                self.ended[queue].pop_front();
                if let Some(journal) = self.by_turn.remove(&turn) {
                    self.bytes -= journal.bytes;
                }
            }
        }
    }
}

/// The in-memory [`TurnBus`].
#[derive(Debug, Clone)]
pub struct MemoryBus {
    journals: Arc<Mutex<Journals>>,
    ttl: Duration,
}

impl MemoryBus {
    /// Journals kept `ttl` after their turn ended.
    pub fn new(ttl: Duration) -> Self {
        Self { journals: Arc::default(), ttl }
    }

    fn lock(&self) -> MutexGuard<'_, Journals> {
        self.journals.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The bytes an entry holds.
fn size(entry: &JournalEntry) -> usize {
    match entry {
        JournalEntry::Delta(text) => text.len(),
        JournalEntry::Tool(ToolEvent::Call { name, arguments }) => name.len() + arguments.len(),
        JournalEntry::Tool(ToolEvent::Result { name, error, .. }) => {
            name.len() + error.as_ref().map_or(0, String::len)
        }
        JournalEntry::Created | JournalEntry::Ended { .. } => 0,
    }
}

#[async_trait]
impl TurnBus for MemoryBus {
    fn append(&self, turn: TurnId, seq: u64, entry: JournalEntry) {
        let now = Instant::now();
        let mut journals = self.lock();
        let kept = match entry {
            JournalEntry::Ended { resumable: false, .. } => {
                Some((0, ENDED_JSON_KEPT.min(self.ttl)))
            }
            JournalEntry::Ended { resumable: true, .. } => Some((1, self.ttl)),
            JournalEntry::Created | JournalEntry::Delta(_) | JournalEntry::Tool(_) => None,
        };
        let bytes = size(&entry);
        let journal = journals.by_turn.entry(turn).or_insert_with(|| Journal {
            entries: VecDeque::new(),
            bytes: 0,
            appended: Arc::new(Notify::new()),
        });
        journal.entries.push_back((seq, entry));
        journal.bytes += bytes;
        let mut freed = 0;
        while journal.entries.len() > MAX_JOURNAL_ENTRIES {
            if let Some((_, dropped)) = journal.entries.pop_front() {
                freed += size(&dropped);
            }
        }
        journal.bytes -= freed;
        journal.appended.notify_waiters();
        journals.bytes = journals.bytes + bytes - freed;
        if let Some((queue, kept)) = kept {
            journals.ended[queue].push_back((now + kept, turn));
        }
        journals.evict(now);
    }

    fn reader(&self, turn: TurnId) -> Box<dyn JournalReader> {
        Box::new(MemoryReader { bus: self.clone(), turn })
    }

    async fn request_cancel(&self, _: TurnId) -> Result<(), StorageError> {
        Ok(())
    }
}

#[derive(Debug)]
struct MemoryReader {
    bus: MemoryBus,
    turn: TurnId,
}

impl MemoryReader {
    /// The entries after `after`, and what wakes a wait for more; `None`
    /// when there is no journal.
    fn newer(&self, after: Option<u64>) -> Option<(Vec<Numbered>, Arc<Notify>)> {
        let journals = self.bus.lock();
        let journal = journals.by_turn.get(&self.turn)?;
        let newer = journal
            .entries
            .iter()
            .filter(|(seq, _)| after.is_none_or(|after| *seq > after))
            .cloned()
            .collect();
        Some((newer, Arc::clone(&journal.appended)))
    }
}

#[async_trait]
impl JournalReader for MemoryReader {
    async fn read(
        &mut self,
        after: Option<u64>,
        wait: Duration,
    ) -> Result<Vec<Numbered>, StorageError> {
        let Some((newer, appended)) = self.newer(after) else {
            // Expired, or never kept: only the row can tell.
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        };
        if !newer.is_empty() || wait.is_zero() {
            return Ok(newer);
        }
        let notified = appended.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Enabled first, then looked again: an append in between is seen.
        if let Some((newer, _)) = self.newer(after).filter(|(newer, _)| !newer.is_empty()) {
            return Ok(newer);
        }
        let _ = tokio::time::timeout(wait, notified).await;
        Ok(self.newer(after).map(|(newer, _)| newer).unwrap_or_default())
    }

    async fn exists(&mut self) -> Result<bool, StorageError> {
        Ok(self.bus.lock().by_turn.contains_key(&self.turn))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pantheon_domain::TurnId;
    use pantheon_domain::ports::{JournalEntry, TurnBus};

    use super::MemoryBus;

    fn ended(resumable: bool) -> JournalEntry {
        JournalEntry::Ended { recorded: true, resumable }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_gets_what_is_after_its_seq_and_wakes_for_what_comes() {
        let bus = MemoryBus::new(Duration::from_secs(600));
        let turn = TurnId::new();
        bus.append(turn, 0, JournalEntry::Created);
        bus.append(turn, 1, JournalEntry::Delta("a".into()));
        let mut reader = bus.reader(turn);
        let all = reader.read(None, Duration::ZERO).await.unwrap_or_default();
        assert_eq!(all.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), [0, 1]);
        let writer = bus.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            writer.append(turn, 2, JournalEntry::Delta("b".into()));
        });
        let started = tokio::time::Instant::now();
        let next = reader.read(Some(1), Duration::from_secs(1)).await.unwrap_or_default();
        assert_eq!(next, [(2, JournalEntry::Delta("b".into()))]);
        assert_eq!(started.elapsed(), Duration::from_millis(30), "woken by the append");
        let none = reader.read(Some(2), Duration::from_millis(100)).await.unwrap_or_default();
        assert!(none.is_empty(), "nothing new within the wait");
    }

    #[tokio::test(start_paused = true)]
    async fn a_json_turn_s_journal_goes_after_ten_seconds_a_streamed_one_after_its_ttl() {
        let bus = MemoryBus::new(Duration::from_secs(600));
        let (json, streamed) = (TurnId::new(), TurnId::new());
        for (turn, resumable) in [(json, false), (streamed, true)] {
            bus.append(turn, 0, JournalEntry::Created);
            bus.append(turn, 1, ended(resumable));
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        // Expiries are applied as journals are appended.
        bus.append(TurnId::new(), 0, JournalEntry::Created);
        assert!(!bus.reader(json).exists().await.unwrap_or(true), "a JSON turn's is gone");
        assert!(bus.reader(streamed).exists().await.unwrap_or(false), "a streamed one's stays");
        tokio::time::advance(Duration::from_secs(590)).await;
        bus.append(TurnId::new(), 0, JournalEntry::Created);
        assert!(!bus.reader(streamed).exists().await.unwrap_or(true), "gone after its TTL");
    }
}
