//! The provider's capacity, shared by every instance: a store of the
//! slots in flight, the minute's tokens, the waiting tickets in fair
//! order and each user's virtual counter. Redis (one node or a cluster,
//! every key in one slot) or the process's memory.
//!
//! Each call is atomic (one script on Redis) and ends by dispatching what
//! fits: while a slot is free (fewer in flight than the effective
//! capacity) and the minute has room for the next ticket's cost, the
//! waiting ticket of the user with the smallest counter goes (its oldest),
//! its user's counter grows by `cost / weight`. A user who becomes
//! backlogged starts at the smallest counter among the backlogged (or, when
//! none is, the counter of the last dispatch), so no credit is banked
//! while idle. Dispatching moves a ticket into the slots in flight, which
//! expire `ttl` after their last renewal (a dead instance's slots free by
//! themselves), and returns it: the caller wakes its waiter, and the Redis
//! store also publishes it to the other instances.

use async_trait::async_trait;

use crate::capacity::{CapacityStats, Enqueued, Finished, Ticket, TicketId};
use crate::error::StorageError;
use crate::ids::UserId;

/// The shared capacity. `now_ms` is the caller's clock (tests move it);
/// every instance must agree on it to within a small fraction of `ttl`.
#[async_trait]
pub trait CapacityStore: Send + Sync + std::fmt::Debug {
    /// Queues `ticket` (behind its user's earlier tickets), then dispatches.
    /// Queuing a ticket already known changes nothing but dispatches.
    ///
    /// # Errors
    /// [`StorageError::Unavailable`] when the store cannot be reached.
    async fn enqueue(&self, ticket: &Ticket, now_ms: i64) -> Result<Enqueued, StorageError>;

    /// Gives back slots and withdraws tickets, then dispatches. A
    /// [`Finished`] whose ticket still waits withdraws it; one in flight
    /// frees its slot, corrects its user's counter and the minute's tokens
    /// by `used - reserved`, and moves the effective capacity by its
    /// outcome; one unknown (expired) changes nothing.
    ///
    /// # Errors
    /// [`StorageError::Unavailable`] when the store cannot be reached.
    async fn finish(&self, done: &[Finished], now_ms: i64) -> Result<Vec<TicketId>, StorageError>;

    /// Keeps `held` (slots in flight and tickets waiting on this instance)
    /// alive for another `ttl`, drops what expired, then dispatches (a slot
    /// that expired, or tokens that left the minute, make room).
    ///
    /// # Errors
    /// [`StorageError::Unavailable`] when the store cannot be reached.
    async fn renew(&self, held: &[TicketId], now_ms: i64) -> Result<Vec<TicketId>, StorageError>;

    /// Whether `ticket` is in flight: a waiter that missed its wake-up (a
    /// lost message) learns it here.
    ///
    /// # Errors
    /// [`StorageError::Unavailable`] when the store cannot be reached.
    async fn granted(&self, ticket: TicketId) -> Result<bool, StorageError>;

    /// The place in line of `user`'s first waiting ticket (1: next), `None`
    /// when none waits.
    ///
    /// # Errors
    /// [`StorageError::Unavailable`] when the store cannot be reached.
    async fn place(&self, user: &UserId) -> Result<Option<u64>, StorageError>;

    /// The queue's figures.
    ///
    /// # Errors
    /// [`StorageError::Unavailable`] when the store cannot be reached.
    async fn stats(&self, now_ms: i64) -> Result<CapacityStats, StorageError>;
}
