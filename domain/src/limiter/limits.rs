//! The limiter's vocabulary: a user's limits, the policies a turn can be
//! refused for, what a turn asks of the token budgets and what it reserved,
//! and what a response reports about each window.

use super::window::Window;

/// A user's allowance: requests per rolling minute and per rolling hour,
/// turns running at once, and optionally tokens per rolling minute and hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Requests allowed in any rolling minute.
    pub per_minute: u32,
    /// Requests allowed in any rolling hour.
    pub per_hour: u32,
    /// Turns that may hold a slot at once.
    pub max_concurrent: u32,
    /// Tokens (input and output) allowed in any rolling minute; `None`: no
    /// token budget over the minute.
    pub tokens_per_minute: Option<u32>,
    /// Tokens allowed in any rolling hour; `None`: none over the hour.
    pub tokens_per_hour: Option<u32>,
}

impl Limits {
    /// Turn limits with no token budget.
    pub const fn turns(per_minute: u32, per_hour: u32, max_concurrent: u32) -> Self {
        Self {
            per_minute,
            per_hour,
            max_concurrent,
            tokens_per_minute: None,
            tokens_per_hour: None,
        }
    }

    /// The turn limit that applies to `window`.
    pub fn limit(&self, window: Window) -> u32 {
        match window {
            Window::Minute => self.per_minute,
            Window::Hour => self.per_hour,
        }
    }

    /// The token budget of `window`, when there is one.
    pub fn token_limit(&self, window: Window) -> Option<u32> {
        match window {
            Window::Minute => self.tokens_per_minute,
            Window::Hour => self.tokens_per_hour,
        }
    }

    /// Whether any token budget applies: only then are tokens reserved.
    pub fn has_token_budget(&self) -> bool {
        self.tokens_per_minute.is_some() || self.tokens_per_hour.is_some()
    }

    /// The limit of `policy` (`None` for a token policy without a budget).
    pub fn of(&self, policy: Policy) -> Option<u32> {
        match policy {
            Policy::Minute | Policy::Hour => policy.window().map(|w| self.limit(w)),
            Policy::TokensMinute | Policy::TokensHour => {
                policy.window().and_then(|w| self.token_limit(w))
            }
            Policy::Concurrency => Some(self.max_concurrent),
        }
    }
}

/// A limit a request can be refused for: a turn window, a token window, or
/// the concurrency cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// The rolling minute.
    Minute,
    /// The rolling hour.
    Hour,
    /// Tokens over the rolling minute.
    TokensMinute,
    /// Tokens over the rolling hour.
    TokensHour,
    /// The turns running at once.
    Concurrency,
}

impl Policy {
    /// Every policy, in the order headers and `violated-policies` list them.
    pub const ALL: [Policy; 5] = [
        Policy::Minute,
        Policy::Hour,
        Policy::TokensMinute,
        Policy::TokensHour,
        Policy::Concurrency,
    ];

    /// The policy's name in headers and problem bodies.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Minute => "minute",
            Policy::Hour => "hour",
            Policy::TokensMinute => "tokens-minute",
            Policy::TokensHour => "tokens-hour",
            Policy::Concurrency => "concurrency",
        }
    }

    /// The window this policy limits over, `None` for concurrency.
    pub fn window(self) -> Option<Window> {
        match self {
            Policy::Minute | Policy::TokensMinute => Some(Window::Minute),
            Policy::Hour | Policy::TokensHour => Some(Window::Hour),
            Policy::Concurrency => None,
        }
    }

    /// Whether it counts tokens rather than turns.
    pub fn is_tokens(self) -> bool {
        matches!(self, Policy::TokensMinute | Policy::TokensHour)
    }

    /// The token policy of `window`.
    pub fn tokens(window: Window) -> Self {
        match window {
            Window::Minute => Policy::TokensMinute,
            Window::Hour => Policy::TokensHour,
        }
    }
}

impl Policy {
    /// The four windows a user's log measures, in the order a
    /// [`Tally`](super::Tally) carries them: turns over the minute and the
    /// hour, then tokens over the minute and the hour.
    pub const MEASURED: [Policy; 4] =
        [Policy::Minute, Policy::Hour, Policy::TokensMinute, Policy::TokensHour];
}

impl From<Window> for Policy {
    fn from(window: Window) -> Self {
        match window {
            Window::Minute => Policy::Minute,
            Window::Hour => Policy::Hour,
        }
    }
}

/// An `Idempotency-Key` claimed by a check, atomically with it: a check
/// that finds the key claimed counts nothing and answers the claim; one
/// that admits keeps `claim` under the key for `ttl_ms`; a refusal keeps
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The user's key.
    pub key: String,
    /// The turn it will name, and the request's fingerprint.
    pub claim: crate::idempotency::KeyClaim,
    /// How long the claim is kept (`turns.idempotency_ttl_secs`).
    pub ttl_ms: i64,
}

/// What a turn asks of the token budgets: its prompt's estimated tokens,
/// the fewest output tokens worth running it for, and the most it may write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TokenCost {
    /// The prompt as sent upstream, by the tokenizer.
    pub input: u64,
    /// `rate_limit.min_output_tokens`.
    pub min_output: u64,
    /// `turns.max_output_tokens`.
    pub max_output: u64,
}

impl TokenCost {
    /// The smallest reservation the turn is admitted with.
    pub fn smallest(&self) -> u64 {
        self.input.saturating_add(self.min_output)
    }
}

/// Tokens an admitted turn holds in its user's token windows until it ends,
/// and the instant its log entry carries, so that the refund finds the entry
/// it belongs to (and nothing once that entry has left every window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reservation {
    /// The prompt's estimate.
    pub input: u64,
    /// The most output the turn may produce: `min(max_output, what is left
    /// after the input in every token window)`.
    pub output_cap: u64,
    /// The log time of the admission: the entry's stamp.
    pub at_ms: i64,
}

impl Reservation {
    /// Tokens charged: `input + output_cap`.
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output_cap)
    }
}

/// What a response reports about one window (the `RateLimit` header's
/// `limit`, `r` and `t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowUsage {
    /// Which window this is.
    pub window: Window,
    /// The window's limit.
    pub limit: u32,
    /// Requests (or tokens, in a token window) that would still fit now.
    pub remaining: u64,
    /// Milliseconds until one more request (token) fits (0 when
    /// `remaining > 0`); for a refusal, until `retry_at_ms`.
    pub reset_ms: i64,
}

/// Per-window usage of the token windows, minute first; `None` where a
/// window has no budget.
pub type TokenUsage = [Option<WindowUsage>; 2];

/// Tokens to give back to the log entry a reservation charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refund {
    /// Reserved less used.
    pub tokens: u64,
    /// The entry's stamp ([`Reservation::at_ms`]).
    pub at_ms: i64,
}
