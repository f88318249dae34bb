//! The per-user sliding-window rate limiter's decision, as a pure function:
//! given a user's limits and the minute and hour counts read at one instant,
//! whether the next request is admitted, what the `RateLimit` headers report,
//! and when a refused client may retry. This module owns the arithmetic only;
//! reading and incrementing the counts atomically is the store adapter's job,
//! and it must follow the same contract (integer milliseconds, window index
//! `now_ms / W`, the weighted-previous-window estimate) so both agree.

mod decision;
mod window;

pub use decision::{Counts, Limits, Verdict, WindowUsage, decide, retry_after_secs};
pub use window::{Window, WindowCounts, fits, remaining, wait_ms, window_index};
