//! What the turn path reports as it goes, for the process's metrics: the
//! domain calls a [`TurnObserver`] at each step worth counting, and the
//! HTTP front implements it (Prometheus counters and histograms), so the
//! domain knows no metrics library. Calls are made on the request's or the
//! turn's own task and must not block.

use std::fmt::Debug;
use std::time::Duration;

use crate::capacity::CapacityStats;
use crate::limiter::Decision;
use crate::turn::{TurnStatus, Usage};

/// Which endpoint submitted a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST …/turns`: the completed turn as JSON.
    Json,
    /// `POST …/turns/stream`: the reply as Server-Sent Events.
    Stream,
}

impl Endpoint {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Stream => "stream",
        }
    }
}

/// Receives the turn path's events.
pub trait TurnObserver: Send + Sync + Debug {
    /// The limiter decided on a turn submission (peeks are not decisions).
    fn decided(&self, decision: &Decision);

    /// A turn's reply produced its first chunk, `after` its admission.
    fn first_delta(&self, endpoint: Endpoint, after: Duration);

    /// A turn ended as `status`, `after` its admission, with the usage it
    /// settled at (the provider's report, else the tokenizer's count).
    /// Called once its end is written (or handed to the retry) and before
    /// the client hears of it, so whoever saw the response finds it counted.
    fn ended(&self, endpoint: Endpoint, status: TurnStatus, after: Duration, usage: Option<&Usage>);
}

/// Receives what the limiter's store adapter measures of its round trips.
/// Called on the limiter's own task: it must not block.
pub trait LimiterObserver: Send + Sync + Debug {
    /// A pipeline of `items` (checks, peeks, lease upkeep) to one store
    /// node took `elapsed`, reconnects and redirections included.
    fn pipeline(&self, items: usize, elapsed: Duration);
}

/// Receives what the provider's queue measures. Called on the turns' tasks
/// and the gate's: it must not block.
pub trait CapacityObserver: Send + Sync + Debug {
    /// A turn waited `wait` in the queue, then got its slot (`granted`) or
    /// gave up at the timeout. A turn let through at once waited zero.
    fn waited(&self, wait: Duration, granted: bool);

    /// A slot of a turn of `tier` was given back, having used `tokens`.
    fn served(&self, tier: &str, tokens: u64);

    /// The queue's figures, read every second.
    fn stats(&self, stats: &CapacityStats);
}

/// The observer of a service nobody measures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unobserved;

impl TurnObserver for Unobserved {
    fn decided(&self, _: &Decision) {}

    fn first_delta(&self, _: Endpoint, _: Duration) {}

    fn ended(&self, _: Endpoint, _: TurnStatus, _: Duration, _: Option<&Usage>) {}
}

impl CapacityObserver for Unobserved {
    fn waited(&self, _: Duration, _: bool) {}

    fn served(&self, _: &str, _: u64) {}

    fn stats(&self, _: &CapacityStats) {}
}

impl LimiterObserver for Unobserved {
    fn pipeline(&self, _: usize, _: Duration) {}
}
