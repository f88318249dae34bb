//! The turn bus (the domain's `TurnBus`): each turn's journal, so a
//! stream can be resumed on any instance, and cancel requests, so a turn
//! can be stopped from any. Over Redis when one is configured
//! (`redis_bus.rs`, `cancels.rs`, `link.rs`), else in memory for the one
//! instance (`memory.rs`). `turns.resume_ttl_secs = 0` keeps no journal.

mod cancels;
mod link;
mod memory;
mod redis_bus;
mod subscription;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use pantheon_domain::TurnId;
use pantheon_domain::ports::{NoBus, TurnBus};

pub use link::{Conn, Link, Target, timed_out};
pub use memory::MemoryBus;
pub use redis_bus::{CANCEL_CHANNEL, Lifetimes, RedisBus, journal_key};
pub use subscription::{Topic, listen};

use crate::settings::Settings;

/// A task the composition root runs.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The bus, and its tasks: the Redis writer, and a listener for cancel
/// requests that needs the turn service (`cancel_here`).
pub struct Bus {
    /// What the turn service uses.
    pub bus: Arc<dyn TurnBus>,
    /// The journal writer, which ends once the bus is dropped.
    pub writer: Option<Task>,
    /// Where to listen for cancel requests, when other instances send any.
    pub cancels: Option<Target>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("bus", &self.bus).finish_non_exhaustive()
    }
}

/// The bus `settings` configure.
///
/// # Errors
/// A Redis URL that does not parse.
pub fn turn_bus(settings: &Settings) -> Result<Bus, redis::RedisError> {
    let ttl = Duration::from_secs(settings.turns.resume_ttl_secs);
    let Some(target) = redis_target(settings)? else {
        let bus: Arc<dyn TurnBus> =
            if ttl.is_zero() { Arc::new(NoBus) } else { Arc::new(MemoryBus::new(ttl)) };
        return Ok(Bus { bus, writer: None, cancels: None });
    };
    if ttl.is_zero() {
        let bus = Arc::new(CancelsOnly(RedisBus::new(target.clone(), lifetimes(settings)).0));
        return Ok(Bus { bus, writer: None, cancels: Some(target) });
    }
    let (bus, writer) = RedisBus::new(target.clone(), lifetimes(settings));
    Ok(Bus { bus: Arc::new(bus), writer: Some(Box::pin(writer)), cancels: Some(target) })
}

/// The Redis `redis.*` configures (one node, or a cluster's seeds);
/// `None` when none is.
///
/// # Errors
/// A Redis URL that does not parse.
pub fn redis_target(settings: &Settings) -> Result<Option<Target>, redis::RedisError> {
    let redis = &settings.redis;
    if !redis.is_configured() {
        return Ok(None);
    }
    let (urls, cluster) = match &redis.url {
        Some(url) => (vec![url.clone()], false),
        None => (redis.cluster_urls.clone(), true),
    };
    Target::new(&urls, cluster, Duration::from_millis(redis.timeout_ms)).map(Some)
}

fn lifetimes(settings: &Settings) -> Lifetimes {
    let ended = Duration::from_secs(settings.turns.resume_ttl_secs);
    Lifetimes { running: Duration::from_secs(settings.turns.max_duration_secs) + ended, ended }
}

/// Listens for cancel requests on `target`, handing each to `cancel`.
pub fn cancel_listener(target: Target, cancel: impl Fn(TurnId) + Send + 'static) -> Task {
    Box::pin(cancels::listen(target, cancel))
}

/// A Redis bus that keeps no journal (`turns.resume_ttl_secs = 0`) but
/// still carries cancels.
#[derive(Debug)]
struct CancelsOnly(RedisBus);

#[async_trait::async_trait]
impl TurnBus for CancelsOnly {
    fn append(&self, _: TurnId, _: u64, _: pantheon_domain::ports::JournalEntry) {}

    fn reader(&self, turn: TurnId) -> Box<dyn pantheon_domain::ports::JournalReader> {
        NoBus.reader(turn)
    }

    async fn request_cancel(&self, turn: TurnId) -> Result<(), pantheon_domain::StorageError> {
        self.0.request_cancel(turn).await
    }
}
