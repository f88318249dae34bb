//! The gate: what this process holds of the shared queue, and the task
//! that sends its slots back.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::shared::{GatePolicy, Shared, locked};
use super::slot::{ProviderSlot, Waiting};
use super::ticket::{Ticket, TicketId};
use crate::clock::Clock;
use crate::ids::UserId;
use crate::observe::CapacityObserver;
use crate::ports::CapacityStore;

/// While a ticket waits, how often the process makes the store look
/// again: tokens leave the minute and dead instances' slots expire with
/// nobody's call to notice, and a grant published while the subscription
/// was down is missed. One call per process, not per waiter.
const WAITING_TICK: Duration = Duration::from_millis(100);

/// How often the queue's figures are read for the metrics.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// What a turn got from [`ProviderGate::enter`].
#[derive(Debug)]
pub enum Entry {
    /// A slot, at once.
    Granted(ProviderSlot),
    /// A place in the queue.
    Queued(Waiting),
    /// The store cannot be reached: go without a slot.
    Open,
}

/// The process's side of the provider's queue; clones share it.
#[derive(Debug, Clone)]
pub struct ProviderGate {
    pub(super) shared: Arc<Shared>,
}

impl ProviderGate {
    /// A gate over `store`.
    pub fn new(
        store: Arc<dyn CapacityStore>,
        clock: Arc<dyn Clock>,
        policy: GatePolicy,
        observer: Arc<dyn CapacityObserver>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                clock,
                policy,
                observer,
                waiters: Mutex::default(),
                held: Mutex::default(),
                pending: Mutex::default(),
                wake_task: Notify::new(),
                failing: AtomicBool::new(false),
            }),
        }
    }

    /// The weight of `tier`.
    fn weight(&self, tier: Option<&str>) -> u32 {
        tier.and_then(|t| self.shared.policy.weights.get(t)).copied().unwrap_or(1).max(1)
    }

    /// `provider.queue_timeout_secs`: how long a turn may wait in all.
    pub fn queue_timeout(&self) -> Duration {
        self.shared.policy.queue_timeout
    }

    /// Asks for a slot for a turn of `user`, which may use `cost` tokens,
    /// waiting at most until `until` (a turn sent back to the queue keeps
    /// the deadline of its first wait).
    pub async fn enter(
        &self,
        user: &UserId,
        tier: Option<&str>,
        cost: u64,
        until: Instant,
    ) -> Entry {
        let shared = &self.shared;
        let now = shared.clock.now_ms();
        let left = until.saturating_duration_since(Instant::now());
        let ticket = Ticket {
            id: TicketId::new(),
            user: user.clone(),
            weight: self.weight(tier),
            cost,
            deadline_ms: now.saturating_add(i64::try_from(left.as_millis()).unwrap_or(i64::MAX)),
        };
        // Listening before asking: a grant can be published before the
        // store's answer arrives.
        let (tx, rx) = oneshot::channel();
        shared.waiters().insert(ticket.id, tx);
        let enqueued = match shared.store.enqueue(&ticket, now).await {
            Ok(enqueued) => {
                shared.answered();
                enqueued
            }
            Err(error) => {
                shared.waiters().remove(&ticket.id);
                shared.failed("enqueue", &error);
                return Entry::Open;
            }
        };
        shared.wake(&enqueued.granted);
        if enqueued.granted.contains(&ticket.id) {
            shared.observer.waited(Duration::ZERO, true);
            return Entry::Granted(ProviderSlot::new(Arc::clone(shared), &ticket, tier));
        }
        shared.wake_task.notify_one();
        Entry::Queued(Waiting::new(Arc::clone(shared), ticket, tier, rx, enqueued.place, until))
    }

    /// Wakes the waiters here of tickets another instance's call
    /// dispatched (the grants it published).
    pub fn wake(&self, granted: &[TicketId]) {
        self.shared.wake(granted);
    }

    /// The place in line of `user`'s first waiting turn; `None` when none
    /// waits, or the store cannot tell.
    pub async fn place(&self, user: &UserId) -> Option<u64> {
        self.shared.store.place(user).await.ok().flatten()
    }

    /// The gate's task, until `stop`: sends the slots given back (and
    /// wakes what they let through), renews the slots held here, makes the
    /// store look again while tickets wait here, and reports the queue's
    /// figures. On `stop` it sends what is pending, so a clean shutdown
    /// frees its slots at once.
    pub async fn run(self, stop: CancellationToken) {
        let shared = &self.shared;
        let mut last_renew = Instant::now();
        let mut last_stats = last_renew;
        // The figures from the start, not a second later.
        if let Ok(stats) = shared.store.stats(shared.clock.now_ms()).await {
            shared.observer.stats(&stats);
        }
        loop {
            let waiting = !shared.waiters().is_empty();
            let tick =
                if waiting { WAITING_TICK } else { shared.policy.renew_every.min(STATS_EVERY) };
            let stopping = tokio::select! {
                () = shared.wake_task.notified() => false,
                () = tokio::time::sleep(tick) => false,
                () = stop.cancelled() => true,
            };
            let done = std::mem::take(&mut *locked(&shared.pending));
            let now = shared.clock.now_ms();
            if !done.is_empty() {
                match shared.store.finish(&done, now).await {
                    Ok(granted) => {
                        shared.answered();
                        shared.wake(&granted);
                    }
                    // Left to expire in the store, after its ttl.
                    Err(error) => shared.failed("give back", &error),
                }
            }
            if stopping {
                return;
            }
            let at = Instant::now();
            let renew_due = if waiting { WAITING_TICK } else { shared.policy.renew_every };
            if at.duration_since(last_renew) >= renew_due {
                last_renew = at;
                let mut held: Vec<TicketId> = shared.held().iter().copied().collect();
                held.extend(shared.waiters().keys().copied());
                match shared.store.renew(&held, now).await {
                    Ok(granted) => {
                        shared.answered();
                        shared.wake(&granted);
                    }
                    Err(error) => shared.failed("renew", &error),
                }
            }
            if at.duration_since(last_stats) >= STATS_EVERY {
                last_stats = at;
                if let Ok(stats) = shared.store.stats(now).await {
                    shared.observer.stats(&stats);
                }
            }
        }
    }
}
