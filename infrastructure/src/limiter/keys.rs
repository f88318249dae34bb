//! The Redis key layout: `ratelimit:{<user_id>}:turns:<bucket>:<window_index>`
//! for the window counters, `ratelimit:{<user_id>}:turns:active` for the
//! leases of running turns and `ratelimit:{<user_id>}:tokens:<bucket>:<window_index>`
//! for the tokens charged under a budget. The braces are literal, a Redis
//! Cluster hash tag: one user's keys share a slot, so the script may touch
//! all nine.

use pantheon_domain::UserId;
use pantheon_domain::limiter::{Window, window_index};

/// The key of `user`'s counter for the window `index` of `window`.
pub fn counter_key(user: &UserId, window: Window, index: i64) -> String {
    format!("ratelimit:{{{user}}}:turns:{}:{index}", window.name())
}

/// The key of `user`'s token count for the window `index` of `window`.
pub fn token_key(user: &UserId, window: Window, index: i64) -> String {
    format!("ratelimit:{{{user}}}:tokens:{}:{index}", window.name())
}

/// The four token keys a check under a budget reads at `now_ms` (after
/// [`check_keys`] in the script's `KEYS`): minute current and previous,
/// hour current and previous.
pub fn token_keys(user: &UserId, now_ms: i64) -> [String; 4] {
    windows(user, now_ms, token_key)
}

/// The key of `user`'s sorted set of leases.
pub fn active_key(user: &UserId) -> String {
    format!("ratelimit:{{{user}}}:turns:active")
}

/// The five keys a check reads at `now_ms`: minute current and previous,
/// hour current and previous, and the leases (the script's `KEYS` order).
pub fn check_keys(user: &UserId, now_ms: i64) -> [String; 5] {
    let [mc, mp, hc, hp] = windows(user, now_ms, counter_key);
    [mc, mp, hc, hp, active_key(user)]
}

/// `key` of the current and previous minute, then hour, at `now_ms`.
fn windows(user: &UserId, now_ms: i64, key: fn(&UserId, Window, i64) -> String) -> [String; 4] {
    let minute = window_index(Window::Minute, now_ms);
    let hour = window_index(Window::Hour, now_ms);
    [
        key(user, Window::Minute, minute),
        key(user, Window::Minute, minute - 1),
        key(user, Window::Hour, hour),
        key(user, Window::Hour, hour - 1),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        let user = UserId::parse("alice").unwrap_or_else(|_| unreachable!());
        let keys = check_keys(&user, 3_600_000 + 61_000);
        assert_eq!(keys[0], "ratelimit:{alice}:turns:minute:61");
        assert_eq!(keys[1], "ratelimit:{alice}:turns:minute:60");
        assert_eq!(keys[2], "ratelimit:{alice}:turns:hour:1");
        assert_eq!(keys[3], "ratelimit:{alice}:turns:hour:0");
        assert_eq!(keys[4], "ratelimit:{alice}:turns:active");
        let tokens = token_keys(&user, 3_600_000 + 61_000);
        assert_eq!(tokens[0], "ratelimit:{alice}:tokens:minute:61");
        assert_eq!(tokens[1], "ratelimit:{alice}:tokens:minute:60");
        assert_eq!(tokens[2], "ratelimit:{alice}:tokens:hour:1");
        assert_eq!(tokens[3], "ratelimit:{alice}:tokens:hour:0");
    }
}
