//! The provider's shared capacity (the domain's `CapacityStore`): slots in
//! flight, the minute's tokens, and the tickets waiting for them in fair
//! order. Over Redis (`redis_store.rs` and its script `dispatch.lua`: every
//! instance shares one queue, its keys in one cluster slot), or in the
//! process's memory for the one instance (`memory.rs`).
//!
//! Both follow the same steps, so one suite of tests holds them together:
//! every call first drops what expired (slots not renewed within `ttl`,
//! waiting tickets past their deadline or not renewed, minute entries older
//! than 60 s), then does its work, then dispatches. Dispatch is weighted
//! fair queuing after VTC (Virtual Token Counter, OSDI 2024): the backlogged
//! user with the smallest counter (ties, as when a user has just been lifted
//! to it: the cheaper next ticket, then the smaller user id) sends its
//! oldest ticket, and its counter grows by `cost / weight`; a user who
//! becomes backlogged is lifted to the smallest counter among the
//! backlogged, or to the counter the last dispatched user had when nobody
//! is, so a user idle for an hour has banked nothing. The effective
//! concurrency backs off by half on a `Throttled` reply (at most once a
//! second, since a burst of 429s reports one overload) and creeps back by
//! `1 / eff` per `Served` one (AIMD). The minute's tokens are checked at
//! the head of the line only: a ticket that does not fit waits, and the
//! ones behind it wait too, so a big ticket cannot be starved by small ones;
//! one bigger than the whole budget goes once the minute is empty.
//!
//! A user's counter is kept after its tickets are gone (a user back soon
//! must not restart from below the others); counters are never pruned.

mod build;
mod config;
mod memory;
mod redis_store;
mod zset;

pub use build::{CAPACITY_PREFIX, Capacity, capacity_store};
pub use config::{CapacityConfig, QueueOrder};
pub use memory::MemoryCapacity;
pub use redis_store::{Grants, RedisCapacity, grants_channel, listen_grants};
