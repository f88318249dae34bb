//! The in-process limiter: the same contract as the Redis script, for one
//! instance. Used when no Redis is configured and for `fallback = local`.
//! Each user has a [`UsageLog`] (the model the script follows), and a slot
//! is a count per user, given back when its lease is dropped; the unused
//! part of a token reservation goes back to its log entry. Slots never
//! expire, because nothing can outlive this process; logs are dropped by
//! the sweep once nothing in them is inside the hour.
//!
//! Every request's handle decides here on its own thread, so the logs are
//! split into shards by user, each behind its own lock: a user's log and
//! slots live in one shard (a check-then-admit is one critical section),
//! and users of different shards never wait for each other. A lock is held
//! for one log operation, never across an `.await`.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError};

use pantheon_domain::UserId;
use pantheon_domain::idempotency::KeyClaim;
use pantheon_domain::limiter::{
    Claim, Limits, LocalLimiter, Refund, Tally, TokenCost, UsageLog, Verdict,
};

/// Shards of the logs: a few per core is enough for callers to rarely
/// meet on one lock.
const SHARDS: usize = 64;

/// One shard: logs and slots taken, by user.
#[derive(Debug, Default)]
struct Shard {
    logs: HashMap<UserId, UsageLog>,
    active: HashMap<UserId, u64>,
    /// `Idempotency-Key` claims by user and key, with when they expire.
    claims: HashMap<(UserId, String), (KeyClaim, i64)>,
}

impl Shard {
    fn active(&self, user: &UserId) -> u64 {
        self.active.get(user).copied().unwrap_or(0)
    }
}

/// The logs and slots, sharded by user.
#[derive(Debug)]
pub struct MemoryLimiter {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl MemoryLimiter {
    /// The shard holding `user`. No log operation can panic midway (sums
    /// saturate, nothing is indexed unchecked), so poisoning is ignored.
    fn shard(&self, user: &UserId) -> MutexGuard<'_, Shard> {
        // `SHARDS` fits any usize; the modulo keeps the index in range.
        let index = usize::try_from(self.hasher.hash_one(user) % SHARDS as u64).unwrap_or(0);
        self.shards[index].lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LocalLimiter for MemoryLimiter {
    fn peek(&self, user: &UserId, limits: Limits, now_ms: i64) -> Tally {
        let shard = self.shard(user);
        let active = shard.active(user);
        // Read on a copy: a peek changes nothing, not even the log's clock
        // (as the script's peek writes nothing).
        let mut log = shard.logs.get(user).cloned().unwrap_or_default();
        log.advance(now_ms);
        log.peek(limits, active)
    }

    fn check(&self, user: &UserId, limits: Limits, cost: TokenCost, now_ms: i64) -> Verdict {
        check(&mut self.shard(user), user, limits, cost, now_ms)
    }

    fn check_claiming(
        &self,
        user: &UserId,
        limits: Limits,
        cost: TokenCost,
        claim: &Claim,
        now_ms: i64,
    ) -> Result<Verdict, KeyClaim> {
        let mut shard = self.shard(user);
        let id = (user.clone(), claim.key.clone());
        if let Some((held, expires)) = shard.claims.get(&id)
            && *expires > now_ms
        {
            return Err(held.clone());
        }
        let verdict = check(&mut shard, user, limits, cost, now_ms);
        if verdict.is_admitted() {
            shard.claims.insert(id, (claim.claim.clone(), now_ms.saturating_add(claim.ttl_ms)));
        }
        Ok(verdict)
    }

    fn unclaim(&self, user: &UserId, key: &str) {
        self.shard(user).claims.remove(&(user.clone(), key.to_owned()));
    }

    fn release(&self, user: &UserId) {
        let mut shard = self.shard(user);
        if let Some(active) = shard.active.get_mut(user) {
            *active = active.saturating_sub(1);
            if *active == 0 {
                shard.active.remove(user);
            }
        }
    }

    fn refund(&self, user: &UserId, refund: Refund) {
        if let Some(log) = self.shard(user).logs.get_mut(user) {
            log.refund(refund.at_ms, refund.tokens);
        }
    }

    fn sweep(&self, now_ms: i64) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.logs.retain(|_, log| {
                log.advance(now_ms);
                !log.is_empty()
            });
            shard.claims.retain(|_, (_, expires)| *expires > now_ms);
        }
    }
}

/// The check on `shard`, which holds `user`: decided on the user's log and,
/// when admitted, counted with a slot taken.
fn check(
    shard: &mut Shard,
    user: &UserId,
    limits: Limits,
    cost: TokenCost,
    now_ms: i64,
) -> Verdict {
    let active = shard.active(user);
    let log = shard.logs.entry(user.clone()).or_default();
    let tally = log.check(limits, cost, active, now_ms);
    if tally.admitted {
        *shard.active.entry(user.clone()).or_insert(0) += 1;
    } else if log.is_empty() && active == 0 {
        // A refusal keeps nothing for a user who has nothing.
        shard.logs.remove(user);
    }
    Verdict::from_tally(limits, cost, &tally, now_ms)
}
