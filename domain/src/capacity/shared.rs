//! What the gate, its waiters and its slots share: the store, the
//! process's waiters and held slots, the slots given back for the gate's
//! task to send. A leaf, so the gate (`gate.rs`) and the slots
//! (`slot.rs`) need not import each other.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use super::ticket::{Finished, TicketId};
use crate::clock::Clock;
use crate::observe::CapacityObserver;
use crate::ports::CapacityStore;

/// How the gate waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatePolicy {
    /// `provider.queue_timeout_secs`: the longest a turn waits.
    pub queue_timeout: Duration,
    /// `rate_limit.tiers.<name>.weight`: a tier's share (default 1).
    pub weights: HashMap<String, u32>,
    /// How often held slots are renewed: a third of the store's ttl, so
    /// one late renewal loses none.
    pub renew_every: Duration,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) store: Arc<dyn CapacityStore>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) policy: GatePolicy,
    pub(super) observer: Arc<dyn CapacityObserver>,
    /// The tickets waiting here, and how to wake each.
    pub(super) waiters: Mutex<HashMap<TicketId, oneshot::Sender<()>>>,
    /// The slots held here, renewed by the task.
    pub(super) held: Mutex<HashSet<TicketId>>,
    /// Slots given back and tickets withdrawn, for the task to send.
    pub(super) pending: Mutex<Vec<Finished>>,
    pub(super) wake_task: Notify,
    /// Whether the store is failing (logged once per outage).
    pub(super) failing: AtomicBool,
}

pub(super) fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(super) fn waiters(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<TicketId, oneshot::Sender<()>>> {
        locked(&self.waiters)
    }

    pub(super) fn held(&self) -> std::sync::MutexGuard<'_, HashSet<TicketId>> {
        locked(&self.held)
    }

    /// Queues `done` for the task (a drop cannot await).
    pub(super) fn give_back(&self, done: Finished) {
        locked(&self.pending).push(done);
        self.wake_task.notify_one();
    }

    /// Notes a failed call to the store: logged once per outage.
    pub(super) fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "the provider's queue cannot be reached ({what}); turns go upstream unqueued until it can");
        }
    }

    pub(super) fn answered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("the provider's queue answers again");
        }
    }

    /// Wakes the waiters here of `granted` (others' are someone else's).
    pub(super) fn wake(&self, granted: &[TicketId]) {
        if granted.is_empty() {
            return;
        }
        let mut waiters = self.waiters();
        for id in granted {
            if let Some(waiter) = waiters.remove(id) {
                let _ = waiter.send(());
            }
        }
    }
}
