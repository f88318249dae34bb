//! What the provider's queue holds and answers: a turn's [`Ticket`], how a
//! held slot ended ([`Finished`]), and the queue's figures. A leaf, shared
//! by the gate, its slots and the store port.

use std::fmt;

use crate::ids::UserId;

/// A turn's place in the provider's queue, then its slot: a UUIDv7 of
/// its own per attempt, unique across instances. Not the turn's id: a turn
/// the upstream refused goes back in the queue with a new ticket while its
/// old slot's release may still be on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TicketId(pub uuid::Uuid);

impl TicketId {
    /// A new ticket id.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }
}

impl Default for TicketId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TicketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A turn asking for the provider: who, how much, and until when it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The turn's id.
    pub id: TicketId,
    /// Whose turn: the fair order is between users.
    pub user: UserId,
    /// The user's share (`rate_limit.tiers.<name>.weight`, at least 1): its
    /// counter grows by `cost / weight`.
    pub weight: u32,
    /// The tokens the turn may use (its prompt and output cap): what its
    /// user's counter and the minute's tokens are charged at dispatch.
    pub cost: u64,
    /// When it stops waiting (ms since the epoch): a ticket still queued
    /// then is never dispatched.
    pub deadline_ms: i64,
}

/// How a held slot's reply went, for the effective capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered (or the turn ended for a reason of its own).
    Served,
    /// The upstream refused for its capacity (`429`/`503`): multiplicative
    /// decrease.
    Throttled,
    /// Nothing reached the upstream (cancelled while granted): the slot
    /// goes back and the capacity is left alone.
    Unused,
}

/// A slot given back (or a ticket withdrawn), waiting to be sent to the
/// store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The ticket.
    pub id: TicketId,
    /// Whose it was.
    pub user: UserId,
    /// Its weight at dispatch.
    pub weight: u32,
    /// What dispatch charged.
    pub reserved: u64,
    /// What the turn used (prompt and output, every round): the counter
    /// and the minute are corrected by `used - reserved`.
    pub used: u64,
    /// How the reply went.
    pub outcome: Outcome,
}

/// What an enqueue answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enqueued {
    /// The tickets the store dispatched meanwhile (any instance's, maybe
    /// this one).
    pub granted: Vec<TicketId>,
    /// The ticket's place in line when it waits (1: next), `None` when
    /// granted at once.
    pub place: Option<u64>,
}

/// The queue's figures, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CapacityStats {
    /// Tickets waiting, over all instances.
    pub queued: u64,
    /// Slots held, over all instances.
    pub in_flight: u64,
    /// The effective concurrency (after back-pressure); `None` when
    /// `provider.max_concurrent` is unset.
    pub effective: Option<f64>,
    /// Tokens dispatched in the last minute.
    pub tokens_last_minute: u64,
}
