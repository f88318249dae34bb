//! The turn bus over Redis: a turn's journal is the stream
//! `turn:{<turn_id>}:events` (the braces a hash tag: the turn's one slot),
//! entry ids `0-<seq + 1>`, fields `k` (`c` created, `d` delta, `e` ended)
//! and `v` (the delta's text, or `1`/`0`: the end recorded in the row or
//! not). An id names its entry, so an append sent twice is refused the
//! second time and nothing is doubled. `MAXLEN ~` bounds a journal; it
//! lives `max_duration + resume_ttl` from its creation and `resume_ttl`
//! from its end, so a dead instance's journals expire too.
//!
//! Appends are queued (bounded) for one writer task, which sends whatever
//! has gathered at once over the shared connection: one `XADD` per entry
//! (the first and the last also set the TTL), in one pipeline per batch
//! (on a cluster, one per turn, side by side), a turn's entries in order. Readers ask with `XREAD` on the shared
//! connection, and wait with `XREAD BLOCK` on a connection of their own.
//! Cancels are published on [`CANCEL_CHANNEL`].

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use pantheon_domain::ports::{
    ENDED_JSON_KEPT, JournalEntry, JournalReader, MAX_JOURNAL_ENTRIES, Numbered, TurnBus,
};
use pantheon_domain::{StorageError, TurnId};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{Cmd, RedisError};
use tokio::sync::mpsc;

use super::link::{Conn, Link, Target};

/// The channel every instance listens on for cancel requests.
pub const CANCEL_CHANNEL: &str = "turn:cancels";

/// Appends waiting for the writer; beyond this they are dropped (readers
/// see a gap and take the end from the row).
const QUEUE: usize = 16_384;

/// Appends the writer sends at once.
const BATCH: usize = 512;

/// The key of `turn`'s journal.
pub fn journal_key(turn: TurnId) -> String {
    format!("turn:{{{turn}}}:events")
}

/// One queued append.
#[derive(Debug)]
struct Append {
    turn: TurnId,
    seq: u64,
    entry: JournalEntry,
}

/// How long journals live.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// While the turn runs: `max_duration + resume_ttl`.
    pub running: Duration,
    /// After its end: `resume_ttl`.
    pub ended: Duration,
}

/// The Redis [`TurnBus`].
#[derive(Debug, Clone)]
pub struct RedisBus {
    queue: mpsc::Sender<Append>,
    link: Link,
}

impl RedisBus {
    /// The bus over `target`, and its writer task (the composition root
    /// runs it; it ends once every clone of the bus is dropped).
    pub fn new(
        target: Target,
        lifetimes: Lifetimes,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (queue, appends) = mpsc::channel(QUEUE);
        let link = Link::new(target);
        (Self { queue, link: link.clone() }, write(appends, link, lifetimes))
    }

    /// The shared link (the cancel listener's target).
    pub fn target(&self) -> &Target {
        self.link.target()
    }
}

#[async_trait]
impl TurnBus for RedisBus {
    fn append(&self, turn: TurnId, seq: u64, entry: JournalEntry) {
        // Full: Redis is too slow or gone; the readers fall back on the row.
        let _ = self.queue.try_send(Append { turn, seq, entry });
    }

    fn reader(&self, turn: TurnId) -> Box<dyn JournalReader> {
        Box::new(RedisReader { link: self.link.clone(), key: journal_key(turn), own: None })
    }

    async fn request_cancel(&self, turn: TurnId) -> Result<(), StorageError> {
        let publish = async {
            let mut conn = self.link.get().await?;
            conn.query::<()>(redis::cmd("PUBLISH").arg(CANCEL_CHANNEL).arg(turn.to_string())).await
        };
        publish.await.map_err(|error| {
            self.link.reset();
            StorageError::unavailable(error)
        })
    }
}

/// The writer: sends what gathered, waits for the answers, goes again.
/// A turn's entries go in one pipeline, in order (sent side by side, two
/// appends of a turn could land out of order, and the later one's id
/// would refuse the earlier); different turns' pipelines go side by side.
async fn write(mut appends: mpsc::Receiver<Append>, link: Link, lifetimes: Lifetimes) {
    let mut batch = Vec::with_capacity(BATCH);
    // Logged once per outage, where it is handled.
    let mut failing = false;
    while appends.recv_many(&mut batch, BATCH).await > 0 {
        let conn = match link.get().await {
            Ok(conn) => conn,
            Err(error) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(%error, "turn journals cannot reach Redis; resumed streams will get their turn's end from the database");
                }
                batch.clear();
                continue;
            }
        };
        let pipes = pipelines(&mut batch, matches!(conn, Conn::Cluster(_)), lifetimes);
        let sends = pipes.into_iter().map(|pipe| {
            let mut conn = conn.clone();
            async move {
                match conn.pipe(&pipe).await {
                    Err(error) if is_duplicate(&error) => Ok(()),
                    other => other,
                }
            }
        });
        let failed = futures::future::join_all(sends).await.into_iter().find_map(Result::err);
        match failed {
            Some(error) => {
                link.reset();
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(%error, "turn journal appends failed; resumed streams will get their turn's end from the database");
                }
            }
            None if failing => {
                failing = false;
                tracing::info!("turn journal appends reach Redis again");
            }
            None => {}
        }
    }
}

/// The batch as pipelines: on one Redis all of it in one (a pipeline runs
/// in order, so each turn's entries do), on a cluster one per turn (its
/// key's slot; redis-rs routes a pipeline by its first key).
fn pipelines(batch: &mut Vec<Append>, cluster: bool, lifetimes: Lifetimes) -> Vec<redis::Pipeline> {
    if !cluster {
        let mut pipe = redis::pipe();
        for append in batch.drain(..) {
            add(&mut pipe, append, lifetimes);
        }
        return vec![pipe];
    }
    let mut by_turn: HashMap<TurnId, redis::Pipeline> = HashMap::new();
    for append in batch.drain(..) {
        add(by_turn.entry(append.turn).or_insert_with(redis::pipe), append, lifetimes);
    }
    by_turn.into_values().collect()
}

/// Adds one append's commands to its turn's pipeline: the `XADD`, and for
/// the first and the last entry the journal's TTL.
fn add(pipe: &mut redis::Pipeline, append: Append, lifetimes: Lifetimes) {
    let key = journal_key(append.turn);
    let mut xadd = redis::cmd("XADD");
    xadd.arg(&key)
        .arg("MAXLEN")
        .arg("~")
        .arg(MAX_JOURNAL_ENTRIES)
        .arg(format!("0-{}", append.seq + 1));
    let ttl = match &append.entry {
        JournalEntry::Created => {
            xadd.arg("k").arg("c");
            Some(lifetimes.running)
        }
        JournalEntry::Delta(text) => {
            xadd.arg("k").arg("d").arg("v").arg(text.as_str());
            None
        }
        JournalEntry::Tool(event) => {
            let json = serde_json::to_string(event).unwrap_or_default();
            xadd.arg("k").arg("t").arg("v").arg(json);
            None
        }
        JournalEntry::Ended { recorded, resumable } => {
            xadd.arg("k").arg("e").arg("v").arg(if *recorded { "1" } else { "0" });
            Some(if *resumable { lifetimes.ended } else { ENDED_JSON_KEPT.min(lifetimes.ended) })
        }
    };
    pipe.add_command(xadd).ignore();
    if let Some(ttl) = ttl {
        pipe.add_command(pexpire(&key, ttl)).ignore();
    }
}

fn pexpire(key: &str, ttl: Duration) -> Cmd {
    let mut cmd = redis::cmd("PEXPIRE");
    cmd.arg(key).arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    cmd
}

/// Redis refuses an id at or below the stream's last: the entry is there
/// (a pipeline sent again after an answer was lost).
fn is_duplicate(error: &RedisError) -> bool {
    error.to_string().contains("equal or smaller")
}

/// Reads one journal; waits on a connection of its own.
#[derive(Debug)]
struct RedisReader {
    link: Link,
    key: String,
    /// Opened for the first wait, kept for the next.
    own: Option<Conn>,
}

#[async_trait]
impl JournalReader for RedisReader {
    async fn read(
        &mut self,
        after: Option<u64>,
        wait: Duration,
    ) -> Result<Vec<Numbered>, StorageError> {
        let from = after.map_or_else(|| "0-0".to_owned(), |after| format!("0-{}", after + 1));
        let mut options = StreamReadOptions::default().count(MAX_JOURNAL_ENTRIES);
        let (mut conn, own) = if wait.is_zero() {
            (self.link.get().await.map_err(StorageError::unavailable)?, false)
        } else {
            options = options.block(usize::try_from(wait.as_millis()).unwrap_or(usize::MAX));
            let conn = match self.own.clone() {
                Some(conn) => conn,
                None => {
                    let response =
                        wait + self.link.target().timeout().max(Duration::from_millis(250));
                    let conn = self
                        .link
                        .target()
                        .connect(response)
                        .await
                        .map_err(StorageError::unavailable)?;
                    self.own = Some(conn.clone());
                    conn
                }
            };
            (conn, true)
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg(&options).arg("STREAMS").arg(&self.key).arg(&from);
        let reply: Option<StreamReadReply> = conn.query(&cmd).await.map_err(|error| {
            if own {
                self.own = None;
            } else {
                self.link.reset();
            }
            StorageError::unavailable(error)
        })?;
        Ok(reply.map(entries).unwrap_or_default())
    }

    async fn exists(&mut self) -> Result<bool, StorageError> {
        let mut conn = self.link.get().await.map_err(StorageError::unavailable)?;
        let found: bool =
            conn.query(redis::cmd("EXISTS").arg(&self.key)).await.map_err(|error| {
                self.link.reset();
                StorageError::unavailable(error)
            })?;
        Ok(found)
    }
}

/// The entries of an `XREAD` reply; one that does not parse is skipped
/// (a reader then sees a gap, and takes the end from the row).
fn entries(reply: StreamReadReply) -> Vec<Numbered> {
    let ids = reply.keys.into_iter().flat_map(|key| key.ids);
    ids.filter_map(|id| {
        let seq = id.id.strip_prefix("0-")?.parse::<u64>().ok()?.checked_sub(1)?;
        let kind: String = id.get("k")?;
        let entry = match kind.as_str() {
            "c" => JournalEntry::Created,
            "d" => JournalEntry::Delta(id.get("v")?),
            "t" => JournalEntry::Tool(serde_json::from_str(&id.get::<String>("v")?).ok()?),
            // A reader does not need to know how long the journal is kept.
            "e" => JournalEntry::Ended { recorded: id.get::<String>("v")? == "1", resumable: true },
            _ => return None,
        };
        Some((seq, entry))
    })
    .collect()
}
