//! The per-user sliding-window rate limiter, domain side.
//!
//! - `window` and `decision`: the decision as a pure function — given a
//!   user's limits and the minute and hour counts read at one instant,
//!   whether the next request is admitted, what the `RateLimit` headers
//!   report, and when a refused client may retry. Every backend (the Redis
//!   script's atomic fits-and-increment, the in-process counters, the
//!   over-limit cache) follows this same arithmetic: integer milliseconds,
//!   window index `now_ms / W`, the weighted-previous-window estimate.
//! - `protocol` and `handle`: the port — the messages the limiter task
//!   answers and the cloneable handle that sends them;
//! - `cache`: the over-limit cache both sides share, so known refusals are
//!   answered on the caller's thread;
//! - `local`: the port to the in-process counts, which the handle decides
//!   with on the caller's thread when no Redis is configured;
//! - `lease`: a running turn's hold on one of its user's concurrency slots
//!   and its token reservation, released (and refunded) by its drop.

mod cache;
mod decision;
mod handle;
mod lease;
mod local;
mod protocol;
mod window;

pub use cache::OverLimitCache;
pub use decision::{
    CONCURRENCY_RETRY_MS, Counts, Limits, Policy, Reservation, TokenCost, TokenUsage, Verdict,
    WindowUsage, decide, retry_after_secs, token_usage, usage,
};
pub use handle::{HandleOptions, LimiterHandle, LimiterShared, limiter_channel};
pub use lease::{Lease, LeaseId, LeaseStore, Refund, Released, Releases};
pub use local::LocalLimiter;
pub use protocol::{
    Admission, Decision, Denial, Fallback, LimitTable, LimiterCommand, LimiterState, Mode,
    RateLimitStatus, SkipReason,
};
pub use window::{
    Window, WindowCounts, fits, fits_cost, remaining, wait_cost_ms, wait_ms, window_index,
};
