//! The capacity of one instance, in its memory: `dispatch.lua` step for
//! step, so the two stores answer alike (the same tests run on both). The
//! script's sorted sets are [`ZSet`]s here, ordered as Redis orders them
//! (by score, ties by member), so even ties dispatch in the same order.
//!
//! One lock over the whole state: each call is one short critical section
//! with no `.await` inside, and dispatch needs every part of it at once.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use pantheon_domain::capacity::{CapacityStats, Enqueued, Finished, Outcome, Ticket, TicketId};
use pantheon_domain::ports::CapacityStore;
use pantheon_domain::{StorageError, UserId};
use uuid::Uuid;

use super::zset::{Score, ZSet};

/// How many users tied at the smallest counter are weighed against each
/// other (the script's bound too: a dispatch stays a bounded amount of work).
const TIES: usize = 16;
use super::config::{CapacityConfig, MINUTE_MS, QueueOrder, ttl_ms};

/// The in-process [`CapacityStore`].
#[derive(Debug)]
pub struct MemoryCapacity {
    config: CapacityConfig,
    state: Mutex<State>,
}

impl MemoryCapacity {
    /// An empty queue under `config`.
    pub fn new(config: CapacityConfig) -> Self {
        Self { config, state: Mutex::default() }
    }

    fn with<T>(&self, now_ms: Option<i64>, work: impl FnOnce(&mut State, &Rules) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let rules = Rules::of(&self.config);
        if let Some(now) = now_ms {
            state.purge(now);
        }
        work(&mut state, &rules)
    }
}

/// The config as the steps use it.
#[derive(Debug)]
struct Rules {
    max: Option<f64>,
    tokens_per_minute: Option<u64>,
    ttl_ms: i64,
    fifo: bool,
}

impl Rules {
    fn of(config: &CapacityConfig) -> Self {
        Self {
            max: config.max_concurrent.map(f64::from),
            tokens_per_minute: config.tokens_per_minute,
            ttl_ms: ttl_ms(config),
            fifo: config.order == QueueOrder::Fifo,
        }
    }
}

/// A ticket's figures, waiting or in flight.
#[derive(Debug, Clone)]
struct Rec {
    user: UserId,
    weight: u32,
    cost: u64,
    deadline: i64,
}

/// The script's keys, in memory (see `dispatch.lua` for what each holds).
#[derive(Debug, Default)]
struct State {
    flight: ZSet<Uuid, i64>,
    held: HashMap<Uuid, Rec>,
    waiting: ZSet<Uuid, i64>,
    tickets: HashMap<Uuid, Rec>,
    queues: HashMap<String, ZSet<Uuid, u64>>,
    backlog: ZSet<String, Score>,
    counters: HashMap<String, f64>,
    minute: ZSet<Uuid, i64>,
    costs: HashMap<Uuid, u64>,
    fifo: ZSet<Uuid, u64>,
    eff: Option<f64>,
    decreased: Option<i64>,
    floor: f64,
    seq: u64,
    sum: u64,
}

impl State {
    fn purge(&mut self, now: i64) {
        for id in self.flight.pop_upto(now) {
            self.held.remove(&id);
        }
        for id in self.waiting.pop_upto(now) {
            self.drop_waiting(id);
        }
        for id in self.minute.pop_upto(now - MINUTE_MS) {
            let cost = self.costs.remove(&id).unwrap_or(0);
            self.sum = self.sum.saturating_sub(cost);
        }
    }

    fn drop_waiting(&mut self, id: Uuid) -> Option<Rec> {
        let rec = self.tickets.remove(&id)?;
        self.waiting.remove(&id);
        self.fifo.remove(&id);
        let user = rec.user.as_str();
        if let Some(queue) = self.queues.get_mut(user) {
            queue.remove(&id);
            if queue.is_empty() {
                self.queues.remove(user);
                self.backlog.remove(&user.to_owned());
            }
        }
        Some(rec)
    }

    fn counter(&self, user: &str) -> f64 {
        self.counters.get(user).copied().unwrap_or(0.0)
    }

    /// Sets `user`'s counter, and its place in the backlog if it has one.
    fn set_counter(&mut self, user: &str, counter: f64) {
        self.counters.insert(user.to_owned(), counter);
        let user = user.to_owned();
        if self.backlog.score(&user).is_some() {
            self.backlog.add(user, Score(counter));
        }
    }

    fn enqueue(&mut self, rules: &Rules, ticket: &Ticket, now: i64) {
        let id = ticket.id.0;
        if self.flight.score(&id).is_some() || self.tickets.contains_key(&id) {
            return;
        }
        if ticket.deadline_ms <= now {
            return;
        }
        let user = ticket.user.as_str().to_owned();
        if !self.queues.contains_key(&user) {
            let base = self.backlog.first().map_or(self.floor, |(score, _)| score.0);
            let counter = self.counter(&user).max(base);
            self.counters.insert(user.clone(), counter);
            self.backlog.add(user.clone(), Score(counter));
        }
        self.seq += 1;
        self.queues.entry(user).or_default().add(id, self.seq);
        let rec = Rec {
            user: ticket.user.clone(),
            weight: ticket.weight.max(1),
            cost: ticket.cost,
            deadline: ticket.deadline_ms,
        };
        self.waiting.add(id, (now + rules.ttl_ms).min(rec.deadline));
        self.tickets.insert(id, rec);
        if rules.fifo {
            self.fifo.add(id, self.seq);
        }
    }

    fn finish(&mut self, rules: &Rules, done: &[Finished], now: i64) {
        for finished in done {
            let id = finished.id.0;
            if !self.flight.remove(&id) {
                self.drop_waiting(id);
                continue;
            }
            let Some(rec) = self.held.remove(&id) else { continue };
            let delta = finished.used as i64 - rec.cost as i64;
            let user = rec.user.as_str();
            let counter = (self.counter(user) + delta as f64 / f64::from(rec.weight)).max(0.0);
            self.set_counter(user, counter);
            if let Some(charged) = self.costs.get_mut(&id) {
                let corrected = (*charged as i64 + delta).max(0) as u64;
                self.sum = (self.sum + corrected).saturating_sub(*charged);
                *charged = corrected;
            }
            let Some(max) = rules.max else { continue };
            let eff = self.eff.unwrap_or(max).min(max);
            let halve = self.decreased.is_none_or(|at| now - at >= 1_000);
            match finished.outcome {
                Outcome::Throttled => {
                    let eff = if halve { eff / 2.0 } else { eff };
                    self.decreased = if halve { Some(now) } else { self.decreased };
                    // The upstream refused one more than those still in flight.
                    self.eff = Some(eff.min(self.flight.len() as f64).max(1.0));
                }
                Outcome::Served => self.eff = Some((eff + 1.0 / eff).min(max)),
                Outcome::Unused => {}
            }
        }
    }

    fn renew(&mut self, rules: &Rules, held: &[TicketId], now: i64) {
        for ticket in held {
            let id = ticket.0;
            if self.flight.score(&id).is_some() {
                self.flight.add(id, now + rules.ttl_ms);
            } else if let Some(rec) = self.tickets.get(&id) {
                let alive = (now + rules.ttl_ms).min(rec.deadline);
                self.waiting.add(id, alive);
            }
        }
    }

    /// The next waiting ticket in the order `rules` keep.
    fn next(&self, rules: &Rules) -> Option<Uuid> {
        if rules.fifo {
            return self.fifo.first().map(|(_, id)| *id);
        }
        // Among the users tied at the smallest counter (a user who starts
        // waiting is lifted to it), the one whose next ticket costs least.
        let (least, _) = *self.backlog.first()?;
        let heads = self.backlog.iter().take_while(|(score, _)| *score == least).take(TIES);
        let heads = heads.filter_map(|(_, user)| self.queues.get(user)?.first().map(|(_, id)| *id));
        heads.min_by_key(|id| self.tickets.get(id).map_or(u64::MAX, |rec| rec.cost))
    }

    fn dispatch(&mut self, rules: &Rules, now: i64) -> Vec<TicketId> {
        let slots = rules.max.map(|max| self.eff.unwrap_or(max).min(max).floor().max(1.0));
        let mut granted = Vec::new();
        while slots.is_none_or(|slots| (self.flight.len() as f64) < slots) {
            let Some(id) = self.next(rules) else { break };
            // Every queued id has its figures (they come and go together).
            let Some(rec) = self.tickets.get(&id) else { break };
            if rec.deadline <= now {
                self.drop_waiting(id);
                continue;
            }
            if let Some(budget) = rules.tokens_per_minute
                && self.sum > 0
                && self.sum.saturating_add(rec.cost) > budget
            {
                break;
            }
            let Some(rec) = self.drop_waiting(id) else { break };
            self.flight.add(id, now + rules.ttl_ms);
            if rules.tokens_per_minute.is_some() {
                self.minute.add(id, now);
                self.costs.insert(id, rec.cost);
                self.sum += rec.cost;
            }
            let user = rec.user.as_str();
            self.floor = self.counter(user);
            self.set_counter(user, self.floor + rec.cost as f64 / f64::from(rec.weight));
            self.held.insert(id, rec);
            granted.push(TicketId(id));
        }
        granted
    }

    /// The place of waiting ticket `id` of `user`: users ahead in the fair
    /// order, then the user's own tickets ahead (or, in Fifo, every ticket
    /// ahead).
    fn place_of(&self, rules: &Rules, id: Uuid, user: &str) -> Option<u64> {
        if rules.fifo {
            return self.fifo.rank(&id).map(|rank| rank + 1);
        }
        let ahead = self.backlog.rank(&user.to_owned())?;
        let own = self.queues.get(user)?.rank(&id)?;
        Some(1 + ahead + own)
    }

    fn stats(&self, rules: &Rules, now: i64) -> CapacityStats {
        let tokens = self.minute.above(now - MINUTE_MS).filter_map(|id| self.costs.get(id)).sum();
        CapacityStats {
            queued: self.waiting.above(now).count() as u64,
            in_flight: self.flight.above(now).count() as u64,
            effective: rules.max.map(|max| self.eff.unwrap_or(max).min(max)),
            tokens_last_minute: tokens,
        }
    }
}

#[async_trait]
impl CapacityStore for MemoryCapacity {
    async fn enqueue(&self, ticket: &Ticket, now_ms: i64) -> Result<Enqueued, StorageError> {
        Ok(self.with(Some(now_ms), |state, rules| {
            state.enqueue(rules, ticket, now_ms);
            let granted = state.dispatch(rules, now_ms);
            let place = state.place_of(rules, ticket.id.0, ticket.user.as_str());
            Enqueued { granted, place }
        }))
    }

    async fn finish(&self, done: &[Finished], now_ms: i64) -> Result<Vec<TicketId>, StorageError> {
        Ok(self.with(Some(now_ms), |state, rules| {
            state.finish(rules, done, now_ms);
            state.dispatch(rules, now_ms)
        }))
    }

    async fn renew(&self, held: &[TicketId], now_ms: i64) -> Result<Vec<TicketId>, StorageError> {
        Ok(self.with(Some(now_ms), |state, rules| {
            state.renew(rules, held, now_ms);
            state.dispatch(rules, now_ms)
        }))
    }

    async fn granted(&self, ticket: TicketId) -> Result<bool, StorageError> {
        Ok(self.with(None, |state, _| state.flight.score(&ticket.0).is_some()))
    }

    async fn place(&self, user: &UserId) -> Result<Option<u64>, StorageError> {
        Ok(self.with(None, |state, rules| {
            let (_, first) = state.queues.get(user.as_str())?.first()?;
            state.place_of(rules, *first, user.as_str())
        }))
    }

    async fn stats(&self, now_ms: i64) -> Result<CapacityStats, StorageError> {
        Ok(self.with(None, |state, rules| state.stats(rules, now_ms)))
    }
}
