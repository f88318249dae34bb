//! The open connections, for the two moments that need all of them: room
//! at the connection cap, and shutdown. Touched once when a connection
//! opens and once when it closes, never per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::state::ConnState;

/// At most this many connections are closed per call to make room, as
/// nginx does when it runs out of connections (`ngx_drain_connections`).
const RECLAIM_BATCH: usize = 32;

#[derive(Debug)]
struct Entry {
    state: Arc<ConnState>,
    close: CancellationToken,
}

/// Every open connection's state and the token that asks it to close.
#[derive(Debug, Default)]
pub(super) struct Registry {
    open: Mutex<Open>,
    /// Cancelled at the end of a shutdown: every connection still open is
    /// dropped at once, its response unfinished.
    dropped: CancellationToken,
}

#[derive(Debug, Default)]
struct Open {
    next_id: u64,
    entries: HashMap<u64, Entry>,
}

impl Registry {
    fn open(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a connection just accepted; it is removed when the
    /// returned [`Registration`] drops, which also frees its `slot`.
    pub(super) fn register(self: &Arc<Self>, slot: OwnedSemaphorePermit) -> Registration {
        let state = Arc::new(ConnState::new());
        let close = CancellationToken::new();
        let mut open = self.open();
        let id = open.next_id;
        open.next_id += 1;
        open.entries.insert(id, Entry { state: state.clone(), close: close.clone() });
        drop(open);
        let dropped = self.dropped.clone();
        Registration { registry: self.clone(), id, state, close, dropped, _slot: slot }
    }

    /// Asks the connections that have been waiting longest without a
    /// request (idle keep-alive ones, and fresh ones that sent nothing) to
    /// close: an eighth of them, at least one, at most [`RECLAIM_BATCH`].
    /// Returns how many were asked.
    pub(super) fn reclaim_idle(&self) -> usize {
        let mut idle: Vec<(Instant, CancellationToken)> = self
            .open()
            .entries
            .values()
            .filter(|e| !e.close.is_cancelled())
            .filter_map(|e| e.state.reclaimable_since().map(|since| (since, e.close.clone())))
            .collect();
        let batch = (idle.len() / 8).clamp(1, RECLAIM_BATCH).min(idle.len());
        if batch < idle.len() {
            idle.select_nth_unstable_by_key(batch, |(since, _)| *since);
        }
        for (_, close) in &idle[..batch] {
            close.cancel();
        }
        batch
    }

    /// Asks every connection to close (shutdown).
    pub(super) fn close_all(&self) {
        let tokens: Vec<CancellationToken> =
            self.open().entries.values().map(|e| e.close.clone()).collect();
        for token in tokens {
            token.cancel();
        }
    }

    /// Drops every connection still open, whatever it is doing: the last
    /// step of a shutdown, once every turn is persisted, for clients that
    /// are not reading what is left of their responses (a stalled write
    /// would otherwise hold the process for up to `write_timeout`).
    pub(super) fn drop_all(&self) {
        self.dropped.cancel();
    }
}

/// One open connection's place in the [`Registry`] and the connection cap.
#[derive(Debug)]
pub(super) struct Registration {
    registry: Arc<Registry>,
    id: u64,
    /// The connection's state, shared with its I/O and service.
    pub state: Arc<ConnState>,
    /// Cancelled when the connection should close.
    pub close: CancellationToken,
    /// Cancelled when the connection must go now (see [`Registry::drop_all`]).
    pub dropped: CancellationToken,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.open().entries.remove(&self.id);
    }
}
