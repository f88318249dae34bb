//! What bounds the provider, as both stores read it: a leaf.

use std::time::Duration;

/// What bounds the provider, shared by every instance.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityConfig {
    /// `provider.max_concurrent`: turns in flight upstream at once.
    pub max_concurrent: Option<u32>,
    /// `provider.tokens_per_minute`: tokens dispatched per sliding minute.
    pub tokens_per_minute: Option<u64>,
    /// How long a slot or a waiting ticket lives without a renewal: what a
    /// dead instance leaves behind frees itself after this.
    pub ttl: Duration,
    /// Which waiting ticket goes next.
    pub order: QueueOrder,
}

/// Which waiting ticket goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueOrder {
    /// The backlogged user with the smallest virtual counter (VTC).
    #[default]
    Fair,
    /// First come, first served across all users: the baseline the
    /// benchmark compares fairness with (counters are still kept).
    Fifo,
}

/// The minute the tokens are counted over.
pub(super) const MINUTE_MS: i64 = 60_000;

/// The ttl in ms, as the stores' clocks count.
pub(super) fn ttl_ms(config: &CapacityConfig) -> i64 {
    i64::try_from(config.ttl.as_millis()).unwrap_or(i64::MAX / 4)
}
