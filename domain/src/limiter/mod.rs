//! The per-user rate limiter (exact rolling windows), domain side.
//!
//! - `window`, `limits`: the vocabulary — the two windows, a user's limits,
//!   the policies a turn is refused for, what it costs and reserves;
//! - `log`: a user's log of admitted turns, which every window is read from
//!   exactly ("at most L in any W"), and the decision on it as a [`Tally`];
//!   the Redis script runs the same steps, the in-process backend this code;
//! - `decision`: the [`Verdict`] a tally stands for — what the `RateLimit`
//!   headers report and when a refused client may retry;
//! - `protocol` and `handle`: the port — the messages the limiter task
//!   answers and the cloneable handle that sends them;
//! - `cache`: the over-limit cache both sides share, so known refusals are
//!   answered on the caller's thread;
//! - `local`: the port to the in-process counts, which the handle decides
//!   with on the caller's thread when no Redis is configured;
//! - `lease`: a running turn's hold on one of its user's concurrency slots
//!   and its token reservation, released (and refunded) by its drop.

mod answer;
mod cache;
mod decision;
mod handle;
mod lease;
mod limits;
mod local;
mod log;
mod protocol;
mod window;

pub use answer::{Decision, Denial, RateLimitStatus, SkipReason};
pub use cache::OverLimitCache;
pub use decision::{CONCURRENCY_RETRY_MS, Verdict, retry_after_secs};
pub use handle::{HandleOptions, LimiterHandle, LimiterShared, limiter_channel};
pub use lease::{Lease, LeaseId, LeaseStore, Released, Releases};
pub use limits::{Claim, Limits, Policy, Refund, Reservation, TokenCost, TokenUsage, WindowUsage};
pub use local::LocalLimiter;
pub use log::{Entry, Tally, UsageLog};
pub use protocol::{Admission, Fallback, LimitTable, LimiterCommand, LimiterState, Mode};
pub use window::Window;
