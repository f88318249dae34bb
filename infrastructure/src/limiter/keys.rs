//! The Redis key layout: `ratelimit:{<user_id>}:log` for the user's log of
//! admitted turns (every window is read from it; its format is described
//! in `check.lua`) and `ratelimit:{<user_id>}:turns:active` for the leases
//! of running turns. The braces are literal, a Redis Cluster hash tag: one
//! user's keys share a slot, so the script may touch both. A check with an
//! `Idempotency-Key` also touches `ratelimit:{<user_id>}:idempotency:<key>`
//! (the claim: `<turn_id> <fingerprint>`, kept `turns.idempotency_ttl_secs`).
//!
//! Deployments upgraded from the counters of earlier versions
//! (`ratelimit:{<user_id>}:turns:<window>:<index>` and
//! `…:tokens:<window>:<index>`) leave those keys to expire (within two hours);
//! the log starts empty.

use pantheon_domain::UserId;

/// The key of `user`'s log.
pub fn log_key(user: &UserId) -> String {
    format!("ratelimit:{{{user}}}:log")
}

/// The key of `user`'s sorted set of leases.
pub fn active_key(user: &UserId) -> String {
    format!("ratelimit:{{{user}}}:turns:active")
}

/// The key of `user`'s claim of the `Idempotency-Key` `key`.
pub fn claim_key(user: &UserId, key: &str) -> String {
    format!("ratelimit:{{{user}}}:idempotency:{key}")
}

/// The two keys of a check, a peek or a release, in the script's `KEYS`
/// order: the leases, then the log.
pub fn check_keys(user: &UserId) -> [String; 2] {
    [active_key(user), log_key(user)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        let user = UserId::parse("alice").unwrap_or_else(|_| unreachable!());
        assert_eq!(check_keys(&user), ["ratelimit:{alice}:turns:active", "ratelimit:{alice}:log"]);
    }
}
