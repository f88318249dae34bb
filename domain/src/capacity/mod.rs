//! The provider's capacity, shared fairly by every user and instance.
//!
//! Per-user limits protect Pantheon from one user; they do not protect the
//! upstream account from all of them together. When `provider.max_concurrent`
//! or `provider.tokens_per_minute` is set, a turn asks the [`ProviderGate`]
//! for a slot before its first request upstream: it gets one at once, or
//! waits in the shared queue (its user's concurrency slot held meanwhile)
//! until the store dispatches it, in weighted fair order (a virtual token
//! counter per user, as in VTC), or its wait passes
//! `provider.queue_timeout_secs`.
//!
//! The order and the counts live in the [`CapacityStore`] (Redis, or the
//! process's memory), where each decision is one atomic call. This side
//! keeps what only this process knows: its waiters (woken by the store's
//! answers here and by the grants other instances publish, relayed through
//! [`ProviderGate::wake`]), its held slots (renewed so they outlive no dead
//! instance by more than the store's ttl), and the slots given back, sent
//! by [`ProviderGate::run`], the background task. A slot is given back by
//! dropping it, so a turn that ends any way at all (a panic too) frees it.
//!
//! When the store cannot be reached, turns go upstream unqueued (the
//! limiter's "warn and allow"): an outage of Redis fails no turn.

mod gate;
mod shared;
mod slot;
mod ticket;

pub use gate::{Entry, ProviderGate};
pub use shared::GatePolicy;
pub use slot::{ProviderSlot, Saturated, Waiting};
pub use ticket::{CapacityStats, Enqueued, Finished, Outcome, Ticket, TicketId};
