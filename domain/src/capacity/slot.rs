//! A turn's hold on the provider ([`ProviderSlot`]) and its wait for one
//! ([`Waiting`]). Both give themselves back on drop: the turn's task owns
//! them, so a turn that ends any way at all (cancelled while it waits, a
//! panic) frees its place.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::shared::Shared;
use super::ticket::{Finished, Outcome, Ticket};

/// While a ticket waits, how often it asks the store whether it was
/// dispatched: only a grant whose published message was lost (the
/// subscription down) is learnt this way.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The turn waited `provider.queue_timeout_secs` without a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saturated {
    /// How long it waited.
    pub waited: Duration,
}

/// A turn's slot at the provider, from its first request upstream to the
/// end of its reply.
#[derive(Debug)]
pub struct ProviderSlot {
    shared: Arc<Shared>,
    done: Finished,
    tier: String,
}

impl ProviderSlot {
    pub(super) fn new(shared: Arc<Shared>, ticket: &Ticket, tier: Option<&str>) -> Self {
        shared.held().insert(ticket.id);
        Self {
            shared,
            done: Finished {
                id: ticket.id,
                user: ticket.user.clone(),
                weight: ticket.weight,
                reserved: ticket.cost,
                // Unsettled (a panic): charged what was reserved.
                used: ticket.cost,
                outcome: Outcome::Served,
            },
            tier: tier.unwrap_or("default").to_owned(),
        }
    }

    /// Records what the reply used and how the upstream answered, for the
    /// release: the user's counter is corrected to `used`.
    pub fn settle(&mut self, used: u64, outcome: Outcome) {
        self.done.used = used;
        self.done.outcome = outcome;
    }
}

impl Drop for ProviderSlot {
    fn drop(&mut self) {
        self.shared.held().remove(&self.done.id);
        if self.done.outcome != Outcome::Unused {
            self.shared.observer.served(&self.tier, self.done.used);
        }
        self.shared.give_back(self.done.clone());
    }
}

/// A turn waiting in the provider's queue.
#[derive(Debug)]
pub struct Waiting {
    shared: Arc<Shared>,
    ticket: Ticket,
    tier: Option<String>,
    woken: oneshot::Receiver<()>,
    place: Option<u64>,
    since: Instant,
    deadline: Instant,
    /// Still in the queue: a drop withdraws it.
    queued: bool,
}

impl Waiting {
    pub(super) fn new(
        shared: Arc<Shared>,
        ticket: Ticket,
        tier: Option<&str>,
        woken: oneshot::Receiver<()>,
        place: Option<u64>,
        deadline: Instant,
    ) -> Self {
        Self {
            shared,
            ticket,
            tier: tier.map(str::to_owned),
            woken,
            place,
            since: Instant::now(),
            deadline,
            queued: true,
        }
    }

    /// The place in line when the ticket was queued (1: next).
    pub fn place(&self) -> Option<u64> {
        self.place
    }

    /// Waits for the slot until the queue's timeout; `None` when the store
    /// stopped answering meanwhile (the turn goes without a slot, as it
    /// would have had the store been down when it asked).
    ///
    /// # Errors
    /// [`Saturated`] when none came in time; the ticket is withdrawn.
    pub async fn granted(mut self) -> Result<Option<ProviderSlot>, Saturated> {
        let deadline = self.deadline;
        // Set once the wake-up channel closed unsent (never polled again).
        let mut deaf = false;
        loop {
            let check = Instant::now() + CHECK_EVERY;
            let woken = async {
                if deaf {
                    std::future::pending::<bool>().await
                } else {
                    (&mut self.woken).await.is_ok()
                }
            };
            let granted = tokio::select! {
                woken = woken => {
                    deaf = !woken;
                    woken
                }
                () = tokio::time::sleep_until(check.min(deadline)) => {
                    match self.shared.store.granted(self.ticket.id).await {
                        Ok(granted) => granted,
                        Err(error) => {
                            self.shared.failed("a waiting turn's check", &error);
                            return Ok(None);
                        }
                    }
                }
            };
            if granted {
                return Ok(Some(self.into_slot()));
            }
            if Instant::now() >= deadline {
                let waited = self.since.elapsed();
                self.shared.observer.waited(waited, false);
                return Err(Saturated { waited });
            }
        }
    }

    fn into_slot(mut self) -> ProviderSlot {
        self.queued = false;
        self.shared.waiters().remove(&self.ticket.id);
        self.shared.observer.waited(self.since.elapsed(), true);
        ProviderSlot::new(Arc::clone(&self.shared), &self.ticket, self.tier.as_deref())
    }
}

impl Drop for Waiting {
    /// Withdraws the ticket: a timeout, a cancel, the turn gone. Had it
    /// been dispatched meanwhile, the store frees the slot, unused.
    fn drop(&mut self) {
        if !self.queued {
            return;
        }
        self.shared.waiters().remove(&self.ticket.id);
        self.shared.give_back(Finished {
            id: self.ticket.id,
            user: self.ticket.user.clone(),
            weight: self.ticket.weight,
            reserved: self.ticket.cost,
            used: 0,
            outcome: Outcome::Unused,
        });
    }
}
