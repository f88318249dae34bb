//! The provider's capacity store (`CapacityStore`), one schedule per
//! scenario run on each store: in memory, on a `redis-server` of the
//! test's own, and on the suite's Redis Cluster (under a prefix of the
//! test's own, so tests share it safely). The clock is the `now_ms` passed
//! in, so expiry and the minute move without sleeping, and every store
//! must answer the same.
//!
//! Users are named `<unique>-<letter>`: when counters tie the fair order
//! takes the smaller user id (as a Redis sorted set does), so the letters
//! fix the order of ties.

use std::collections::HashMap;
use std::time::Duration;

use pantheon_domain::UserId;
use pantheon_domain::capacity::{Finished, Outcome, Ticket, TicketId};
use pantheon_domain::ports::CapacityStore;
use pantheon_infrastructure::bus::Target;
use pantheon_infrastructure::capacity::{
    CapacityConfig, MemoryCapacity, QueueOrder, RedisCapacity, grants_channel, listen_grants,
};
use pantheon_tests::redis_cluster::shared_cluster_urls;
use pantheon_tests::redis_server::RedisServer;

const T0: i64 = pantheon_tests::limiter::T0;
const TTL_MS: i64 = 30_000;
/// Far enough that no ticket here reaches its deadline unless it means to.
const LATER: i64 = T0 + 3_600_000;

/// Which store a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    Single,
    Cluster,
}

/// A store, and what keeps it up.
struct Opened {
    store: Box<dyn CapacityStore>,
    /// The Redis store's prefix and seeds, for looking behind it.
    redis: Option<(String, Vec<String>)>,
    /// The test's own Redis, killed when dropped.
    server: Option<RedisServer>,
}

fn config(max: Option<u32>, tokens_per_minute: Option<u64>, order: QueueOrder) -> CapacityConfig {
    CapacityConfig {
        max_concurrent: max,
        tokens_per_minute,
        ttl: Duration::from_millis(TTL_MS as u64),
        order,
    }
}

fn open(kind: Kind, config: CapacityConfig) -> Opened {
    let prefix = format!("{{pantheon:test:capacity:{}}}", uuid::Uuid::new_v4().simple());
    let (urls, cluster, server) = match kind {
        Kind::Memory => {
            let store = Box::new(MemoryCapacity::new(config));
            return Opened { store, redis: None, server: None };
        }
        Kind::Single => {
            let server = RedisServer::start();
            (vec![server.url()], false, Some(server))
        }
        Kind::Cluster => (shared_cluster_urls(), true, None),
    };
    let target = Target::new(&urls, cluster, Duration::from_secs(2)).unwrap();
    let (store, _) = RedisCapacity::new(target, config, prefix.clone());
    Opened { store: Box::new(store), redis: Some((prefix, urls)), server }
}

/// Runs a scenario (`async fn name(&dyn CapacityStore)`) on every store,
/// as `name::memory`, `name::single_redis` and `name::cluster`, each with
/// the store `config` describes.
macro_rules! on_every_store {
    ($($name:ident: $config:expr;)*) => {$(
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name(&*open(Kind::Memory, $config).store).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn single_redis() {
                super::$name(&*open(Kind::Single, $config).store).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$name(&*open(Kind::Cluster, $config).store).await
            }
        }
    )*};
}

on_every_store! {
    capacity_is_never_exceeded: config(Some(2), None, QueueOrder::Fair);
    light_users_go_before_the_heavy_users_second_ticket: config(Some(1), None, QueueOrder::Fair);
    weights_share_the_capacity: config(Some(1), None, QueueOrder::Fair);
    an_idle_user_banks_no_credit: config(Some(1), None, QueueOrder::Fair);
    a_tie_goes_to_the_cheaper_ticket: config(Some(1), None, QueueOrder::Fair);
    deadlines_and_liveness: config(Some(1), None, QueueOrder::Fair);
    tokens_per_minute_hold_the_head_of_the_line: config(None, Some(1_000), QueueOrder::Fair);
    throttling_halves_and_serving_grows_the_capacity: config(Some(8), None, QueueOrder::Fair);
    a_waiting_ticket_can_be_withdrawn: config(Some(1), None, QueueOrder::Fair);
    fifo_serves_in_arrival_order: config(Some(1), None, QueueOrder::Fifo);
}

/// Users `<unique>-a`, `<unique>-b`… for `letters`.
fn users<const N: usize>(letters: [char; N]) -> [UserId; N] {
    let base = format!("cap-{}", uuid::Uuid::new_v4().simple());
    letters.map(|letter| UserId::parse(&format!("{base}-{letter}")).unwrap())
}

/// The tickets a scenario made, by id, to finish them by id.
#[derive(Default)]
struct Book {
    tickets: HashMap<TicketId, Ticket>,
    arrivals: Vec<TicketId>,
}

impl Book {
    fn ticket(&mut self, user: &UserId, weight: u32, cost: u64, deadline_ms: i64) -> Ticket {
        let ticket = Ticket { id: TicketId::new(), user: user.clone(), weight, cost, deadline_ms };
        self.tickets.insert(ticket.id, ticket.clone());
        self.arrivals.push(ticket.id);
        ticket
    }

    fn done(&self, id: TicketId, used: Option<u64>, outcome: Outcome) -> Finished {
        let ticket = &self.tickets[&id];
        Finished {
            id,
            user: ticket.user.clone(),
            weight: ticket.weight,
            reserved: ticket.cost,
            used: used.unwrap_or(ticket.cost),
            outcome,
        }
    }

    fn user(&self, id: TicketId) -> &UserId {
        &self.tickets[&id].user
    }

    /// Enqueues `count` tickets of `user` at `now`; returns the grants.
    async fn enqueue(
        &mut self,
        store: &dyn CapacityStore,
        user: &UserId,
        weight: u32,
        cost: u64,
        count: usize,
        now: i64,
    ) -> Vec<TicketId> {
        let mut granted = Vec::new();
        for _ in 0..count {
            let ticket = self.ticket(user, weight, cost, LATER);
            granted.extend(store.enqueue(&ticket, now).await.unwrap().granted);
        }
        granted
    }

    /// Finishes the one ticket in flight (served, used as reserved) and
    /// takes the one granted next, `rounds` times: the dispatch order.
    async fn serve(
        &self,
        store: &dyn CapacityStore,
        mut current: TicketId,
        rounds: usize,
        now: i64,
    ) -> Vec<TicketId> {
        let mut order = Vec::new();
        for _ in 0..rounds {
            let granted =
                store.finish(&[self.done(current, None, Outcome::Served)], now).await.unwrap();
            assert_eq!(granted.len(), 1, "one slot freed, one ticket goes");
            current = granted[0];
            order.push(current);
        }
        order
    }
}

/// Two slots, five tickets: two go, three wait in order; a slot given back
/// lets exactly one more go.
async fn capacity_is_never_exceeded(store: &dyn CapacityStore) {
    let people = users(['a', 'b', 'c', 'd', 'e']);
    let mut book = Book::default();
    let mut places = Vec::new();
    let mut granted = Vec::new();
    for user in &people {
        let ticket = book.ticket(user, 1, 100, LATER);
        let answer = store.enqueue(&ticket, T0).await.unwrap();
        granted.extend(answer.granted);
        places.push(answer.place);
    }
    assert_eq!(granted, book.arrivals[..2]);
    assert_eq!(places, [None, None, Some(1), Some(2), Some(3)]);
    let stats = store.stats(T0).await.unwrap();
    assert_eq!((stats.in_flight, stats.queued, stats.effective), (2, 3, Some(2.0)));
    assert!(store.granted(book.arrivals[0]).await.unwrap());
    assert!(!store.granted(book.arrivals[2]).await.unwrap());
    // Enqueuing a known ticket again changes nothing.
    let again = store.enqueue(&book.tickets[&book.arrivals[3]], T0).await.unwrap();
    assert_eq!((again.granted.len(), again.place), (0, Some(2)));

    let next = store.finish(&[book.done(granted[0], None, Outcome::Served)], T0 + 1).await.unwrap();
    assert_eq!(next, [book.arrivals[2]]);
    let stats = store.stats(T0 + 1).await.unwrap();
    assert_eq!((stats.in_flight, stats.queued), (2, 2));
    assert_eq!(store.place(&people[3]).await.unwrap(), Some(1));
    assert_eq!(store.place(&people[4]).await.unwrap(), Some(2));
    assert_eq!(store.place(&people[0]).await.unwrap(), None);
}

/// A heavy user's ten tickets of 8000 tokens, then three light users'
/// three of 500, one slot: the light users, lifted to the heavy user's
/// counter, are served before the heavy user's second ticket; while both
/// kinds are backlogged, what users were served never differs by more
/// than twice the largest cost.
async fn light_users_go_before_the_heavy_users_second_ticket(store: &dyn CapacityStore) {
    let [a, b, c, heavy] = users(['a', 'b', 'c', 'h']);
    let mut book = Book::default();
    let first = book.enqueue(store, &heavy, 1, 8_000, 10, T0).await;
    assert_eq!(first.len(), 1);
    for user in [&a, &b, &c] {
        assert!(book.enqueue(store, user, 1, 500, 3, T0).await.is_empty());
    }
    let order = book.serve(store, first[0], 18, T0 + 1).await;
    let who: Vec<&UserId> = order.iter().map(|id| book.user(*id)).collect();
    let expected: Vec<&UserId> =
        [&a, &b, &c, &heavy, &a, &b, &c, &a, &b, &c].into_iter().chain([&heavy; 8]).collect();
    assert_eq!(who, expected);
    // Served per user, checked after each dispatch among the backlogged.
    let mut served: HashMap<&UserId, u64> = HashMap::from([(&heavy, 8_000)]);
    let mut left: HashMap<&UserId, usize> = HashMap::from([(&heavy, 9), (&a, 3), (&b, 3), (&c, 3)]);
    for id in &order {
        let user = book.user(*id);
        *served.entry(user).or_default() += book.tickets[id].cost;
        *left.get_mut(user).unwrap() -= 1;
        let backlogged: Vec<u64> = left
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(u, _)| served.get(u).copied().unwrap_or(0))
            .collect();
        let spread = backlogged.iter().max().unwrap_or(&0) - backlogged.iter().min().unwrap_or(&0);
        assert!(spread <= 2 * 8_000, "served {served:?}");
    }
}

/// Weights 1 and 3, equal costs, one slot, both always backlogged: over
/// 40 dispatches the weight-3 user gets three times as many, within one.
async fn weights_share_the_capacity(store: &dyn CapacityStore) {
    let [one, three] = users(['a', 'b']);
    let mut book = Book::default();
    let first = book.enqueue(store, &one, 1, 300, 40, T0).await;
    book.enqueue(store, &three, 3, 300, 40, T0).await;
    let mut order = first.clone();
    order.extend(book.serve(store, first[0], 39, T0 + 1).await);
    let heavy = order.iter().filter(|id| book.user(**id) == &three).count();
    assert!((29..=31).contains(&heavy), "the weight-3 user got {heavy} of 40");
}

/// A user served alone builds a counter; a user idle meanwhile arrives
/// lifted to it (to the floor, as nobody else waits), so it gets no run of
/// its own: the two alternate.
async fn an_idle_user_banks_no_credit(store: &dyn CapacityStore) {
    let [early, late] = users(['a', 'b']);
    let mut book = Book::default();
    for round in 0..5 {
        let granted = book.enqueue(store, &early, 1, 1_000, 1, T0 + round).await;
        assert_eq!(granted.len(), 1, "alone, each ticket goes at once");
        store.finish(&[book.done(granted[0], None, Outcome::Served)], T0 + round).await.unwrap();
    }
    let held = book.enqueue(store, &early, 1, 1_000, 1, T0 + 10).await;
    assert_eq!(held.len(), 1);
    assert!(book.enqueue(store, &late, 1, 1_000, 6, T0 + 11).await.is_empty());
    assert!(book.enqueue(store, &early, 1, 1_000, 6, T0 + 12).await.is_empty());
    let order = book.serve(store, held[0], 8, T0 + 13).await;
    let late_count = order.iter().filter(|id| book.user(**id) == &late).count();
    assert_eq!(late_count, 4, "the late user alternates with the early one");
    assert_eq!(book.user(order[0]), &late, "lifted to the floor, not above it");
}

/// A light user who starts waiting while a heavy one is backlogged is
/// lifted to the heavy one's counter: the tie goes to the cheaper next
/// ticket, whatever the ids' order (the heavy user's id sorts first here),
/// and the heavy user's next ticket follows it.
async fn a_tie_goes_to_the_cheaper_ticket(store: &dyn CapacityStore) {
    let [heavy, light] = users(['a', 'b']);
    let mut book = Book::default();
    let held = book.enqueue(store, &heavy, 1, 8_000, 1, T0).await;
    assert_eq!(held.len(), 1, "the heavy user's first ticket goes at once");
    assert!(book.enqueue(store, &heavy, 1, 8_000, 3, T0 + 1).await.is_empty());
    assert!(book.enqueue(store, &light, 1, 200, 1, T0 + 2).await.is_empty());
    let order = book.serve(store, held[0], 2, T0 + 3).await;
    assert_eq!(book.user(order[0]), &light, "the tie goes to the 200-token ticket");
    assert_eq!(book.user(order[1]), &heavy, "then the heavy user's next");
}

/// A ticket past its deadline never goes; a slot not renewed frees itself
/// after the ttl; a waiting ticket not renewed is dropped after it.
async fn deadlines_and_liveness(store: &dyn CapacityStore) {
    let [a, b] = users(['a', 'b']);
    let mut book = Book::default();
    let slot = book.ticket(&a, 1, 100, LATER);
    assert_eq!(store.enqueue(&slot, T0).await.unwrap().granted, [slot.id]);
    let short = book.ticket(&b, 1, 100, T0 + 1_000);
    assert_eq!(store.enqueue(&short, T0).await.unwrap().place, Some(1));
    let past = book.ticket(&b, 1, 100, T0 - 1);
    assert_eq!(store.enqueue(&past, T0).await.unwrap().place, None, "never queued");
    let kept = book.ticket(&a, 1, 100, LATER);
    store.enqueue(&kept, T0 + 10_000).await.unwrap();

    // The slot (expiring at T0 + ttl) was never renewed; `short` is past
    // its deadline; `kept` lives until T0 + 10 s + ttl.
    assert!(store.renew(&[], T0 + TTL_MS - 1).await.unwrap().is_empty());
    assert_eq!(store.renew(&[], T0 + TTL_MS).await.unwrap(), [kept.id]);
    assert!(!store.granted(short.id).await.unwrap());
    assert!(!store.granted(past.id).await.unwrap());
    assert!(!store.granted(slot.id).await.unwrap());

    // `dropped` is never renewed; `renewed` is, with the slot.
    let now = T0 + TTL_MS + 1;
    let dropped = book.ticket(&b, 1, 100, LATER);
    let renewed = book.ticket(&b, 1, 100, LATER);
    store.enqueue(&dropped, now).await.unwrap();
    store.enqueue(&renewed, now).await.unwrap();
    assert!(store.renew(&[kept.id, renewed.id], now + 20_000).await.unwrap().is_empty());
    let stats = store.stats(now + TTL_MS).await.unwrap();
    assert_eq!((stats.queued, stats.in_flight), (1, 1), "{stats:?}");
    let next = store.finish(&[book.done(kept.id, None, Outcome::Served)], now + TTL_MS).await;
    assert_eq!(next.unwrap(), [renewed.id]);
    assert!(!store.granted(dropped.id).await.unwrap());
    assert_eq!(store.stats(now + TTL_MS).await.unwrap().queued, 0);
}

/// 1000 tokens a minute, tickets of 400: two go, the third waits until
/// the first leaves the minute; a ticket of 5000 waits for an empty minute.
async fn tokens_per_minute_hold_the_head_of_the_line(store: &dyn CapacityStore) {
    let [a, b, c] = users(['a', 'b', 'c']);
    let mut book = Book::default();
    let first = book.enqueue(store, &a, 1, 400, 1, T0).await;
    let second = book.enqueue(store, &b, 1, 400, 1, T0 + 10).await;
    assert_eq!((first.len(), second.len()), (1, 1));
    let third = book.ticket(&c, 1, 400, LATER);
    assert_eq!(store.enqueue(&third, T0 + 20).await.unwrap().place, Some(1));
    // Renewed meanwhile; the slots of the first two lapse, their tokens stay.
    for now in [T0 + 25_000, T0 + 50_000] {
        assert!(store.renew(&[third.id], now).await.unwrap().is_empty());
    }
    assert_eq!(store.stats(T0 + 50_000).await.unwrap().tokens_last_minute, 800);
    assert!(store.renew(&[third.id], T0 + 59_999).await.unwrap().is_empty());
    assert_eq!(store.renew(&[third.id], T0 + 60_001).await.unwrap(), [third.id]);
    assert_eq!(store.stats(T0 + 60_001).await.unwrap().tokens_last_minute, 800);
    // Used less than reserved: the minute gets the difference back.
    let done = book.done(third.id, Some(100), Outcome::Served);
    store.finish(&[done], T0 + 60_001).await.unwrap();
    assert_eq!(store.stats(T0 + 60_001).await.unwrap().tokens_last_minute, 500);

    let big = book.ticket(&a, 1, 5_000, LATER);
    assert_eq!(store.enqueue(&big, T0 + 60_002).await.unwrap().place, Some(1));
    for now in [T0 + 80_000, T0 + 100_000] {
        assert!(store.renew(&[big.id], now).await.unwrap().is_empty());
    }
    // The last entry (at T0 + 60 001) leaves at T0 + 120 001.
    assert!(store.renew(&[big.id], T0 + 120_000).await.unwrap().is_empty());
    assert_eq!(store.renew(&[big.id], T0 + 120_001).await.unwrap(), [big.id]);
    assert_eq!(store.stats(T0 + 120_001).await.unwrap().tokens_last_minute, 5_000);
}

/// Eight slots; three 429s at once halve them once, one more a second
/// later halves them again; `Served` replies add `1 / eff` each.
async fn throttling_halves_and_serving_grows_the_capacity(store: &dyn CapacityStore) {
    let [a, b] = users(['a', 'b']);
    let mut book = Book::default();
    let held = book.enqueue(store, &a, 1, 100, 8, T0).await;
    assert_eq!(held.len(), 8);
    let throttled = |ids: &[TicketId]| -> Vec<Finished> {
        ids.iter().map(|id| book.done(*id, None, Outcome::Throttled)).collect()
    };
    store.finish(&throttled(&held[0..2]), T0 + 100).await.unwrap();
    store.finish(&throttled(&held[2..3]), T0 + 100).await.unwrap();
    let stats = store.stats(T0 + 100).await.unwrap();
    assert_eq!((stats.effective, stats.in_flight), (Some(4.0), 5));
    store.finish(&throttled(&held[3..4]), T0 + 1_100).await.unwrap();
    assert_eq!(store.stats(T0 + 1_100).await.unwrap().effective, Some(2.0));

    let mut waiting = Vec::new();
    for _ in 0..5 {
        let ticket = book.ticket(&b, 1, 100, LATER);
        assert!(store.enqueue(&ticket, T0 + 1_100).await.unwrap().granted.is_empty());
        waiting.push(ticket.id);
    }
    let unused = |id: TicketId| [book.done(id, None, Outcome::Unused)];
    assert!(store.finish(&unused(held[4]), T0 + 1_200).await.unwrap().is_empty());
    assert!(store.finish(&unused(held[5]), T0 + 1_200).await.unwrap().is_empty());
    assert_eq!(store.finish(&unused(held[6]), T0 + 1_200).await.unwrap(), [waiting[0]]);
    assert_eq!(store.finish(&unused(held[7]), T0 + 1_200).await.unwrap(), [waiting[1]]);
    let stats = store.stats(T0 + 1_200).await.unwrap();
    assert_eq!((stats.effective, stats.in_flight, stats.queued), (Some(2.0), 2, 3));

    let mut eff: f64 = 2.0;
    let served = |id: TicketId| [book.done(id, None, Outcome::Served)];
    assert_eq!(store.finish(&served(waiting[0]), T0 + 1_300).await.unwrap(), [waiting[2]]);
    eff += 1.0 / eff;
    assert_eq!(store.stats(T0 + 1_300).await.unwrap().effective, Some(eff));
    assert_eq!(store.finish(&served(waiting[1]), T0 + 1_300).await.unwrap(), [waiting[3]]);
    eff += 1.0 / eff;
    assert_eq!(store.stats(T0 + 1_300).await.unwrap().effective, Some(eff));
    // Past three slots: the last waiting ticket goes (two in flight).
    assert_eq!(store.finish(&served(waiting[2]), T0 + 1_300).await.unwrap(), [waiting[4]]);
    eff += 1.0 / eff;
    assert!(eff > 3.0);
    let stats = store.stats(T0 + 1_300).await.unwrap();
    assert_eq!((stats.effective, stats.in_flight, stats.queued), (Some(eff), 2, 0));
}

/// A waiting ticket given back through `finish` is withdrawn: never
/// granted, and those behind it move up; an unknown ticket is ignored.
async fn a_waiting_ticket_can_be_withdrawn(store: &dyn CapacityStore) {
    let [a, b, c, d] = users(['a', 'b', 'c', 'd']);
    let mut book = Book::default();
    let held = book.enqueue(store, &a, 1, 100, 1, T0).await;
    for user in [&b, &c, &d] {
        book.enqueue(store, user, 1, 100, 1, T0).await;
    }
    assert_eq!(store.place(&d).await.unwrap(), Some(3));
    let withdrawn = book.arrivals[2];
    let none = store.finish(&[book.done(withdrawn, None, Outcome::Unused)], T0 + 1).await;
    assert!(none.unwrap().is_empty());
    assert_eq!(store.place(&c).await.unwrap(), None);
    assert_eq!(store.place(&d).await.unwrap(), Some(2));

    let unknown = Finished {
        id: TicketId::new(),
        user: a.clone(),
        weight: 1,
        reserved: 100,
        used: 5_000,
        outcome: Outcome::Throttled,
    };
    assert!(store.finish(&[unknown], T0 + 2).await.unwrap().is_empty());
    let stats = store.stats(T0 + 2).await.unwrap();
    assert_eq!((stats.queued, stats.in_flight, stats.effective), (2, 1, Some(1.0)));

    let order = book.serve(store, held[0], 2, T0 + 3).await;
    assert_eq!(order, [book.arrivals[1], book.arrivals[3]]);
    assert!(!store.granted(withdrawn).await.unwrap());
}

/// The heavy and light users of the fair test, in `Fifo` order: served in
/// arrival order, whoever they are.
async fn fifo_serves_in_arrival_order(store: &dyn CapacityStore) {
    let [a, b, c, heavy] = users(['a', 'b', 'c', 'h']);
    let mut book = Book::default();
    let first = book.enqueue(store, &heavy, 1, 8_000, 10, T0).await;
    for user in [&a, &b, &c] {
        book.enqueue(store, user, 1, 500, 3, T0).await;
    }
    assert_eq!(store.place(&a).await.unwrap(), Some(10), "behind the heavy user's nine");
    let mut order = first.clone();
    order.extend(book.serve(store, first[0], 18, T0 + 1).await);
    assert_eq!(order, book.arrivals);
}

/// Every grant is published on the store's channel, to a plain subscriber
/// and to `listen_grants`.
async fn grants_are_published(kind: Kind) {
    let opened = open(kind, config(Some(1), None, QueueOrder::Fair));
    let (prefix, urls) = opened.redis.clone().unwrap();
    let store = &*opened.store;
    let channel = grants_channel(&prefix);
    let client = redis::Client::open(urls[0].as_str()).unwrap();
    let mut plain = client.get_async_pubsub().await.unwrap();
    plain.subscribe(&channel).await.unwrap();
    let (woken, mut wakes) = tokio::sync::mpsc::unbounded_channel();
    let target = Target::new(&urls, kind == Kind::Cluster, Duration::from_secs(2)).unwrap();
    let listener = tokio::spawn(listen_grants(target, channel.clone(), move |ids| {
        let _ = woken.send(ids);
    }));
    wait_for_subscribers(&urls, &channel, 2).await;

    let [a, b] = users(['a', 'b']);
    let mut book = Book::default();
    let held = book.enqueue(store, &a, 1, 100, 1, T0).await;
    assert!(book.enqueue(store, &b, 1, 100, 1, T0).await.is_empty());
    let next = store.finish(&[book.done(held[0], None, Outcome::Served)], T0 + 1).await.unwrap();
    assert_eq!(next, [book.arrivals[1]]);

    let mut messages = plain.on_message();
    let mut payloads = Vec::new();
    for _ in 0..2 {
        let message =
            tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut messages));
        payloads.push(message.await.unwrap().unwrap().get_payload::<String>().unwrap());
    }
    assert_eq!(payloads, [held[0].to_string(), next[0].to_string()]);
    for expected in [held[0], next[0]] {
        let ids = tokio::time::timeout(Duration::from_secs(5), wakes.recv()).await.unwrap();
        assert_eq!(ids.unwrap(), [expected]);
    }
    listener.abort();
}

/// Waits until `count` subscribers listen on `channel` (over every node).
async fn wait_for_subscribers(urls: &[String], channel: &str, count: i64) {
    for _ in 0..500 {
        let mut total = 0;
        for url in urls {
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let reply: (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(channel)
                .query_async(&mut conn)
                .await
                .unwrap();
            total += reply.1;
        }
        if total >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {count} subscribers on {channel}");
}

mod grants_are_published {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn single_redis() {
        super::grants_are_published(Kind::Single).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster() {
        super::grants_are_published(Kind::Cluster).await
    }
}

/// A Redis that lost its scripts (a restart, `SCRIPT FLUSH`) gets the
/// script again on the next call, which goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_is_loaded_again_after_a_flush() {
    let opened = open(Kind::Single, config(Some(1), None, QueueOrder::Fair));
    let store = &*opened.store;
    let [a] = users(['a']);
    let mut book = Book::default();
    assert_eq!(book.enqueue(store, &a, 1, 100, 1, T0).await.len(), 1);
    let server = opened.server.as_ref().unwrap();
    assert_eq!(server.command(&["SCRIPT", "FLUSH"]), "OK");
    assert!(book.enqueue(store, &a, 1, 100, 1, T0).await.is_empty());
    assert_eq!(store.place(&a).await.unwrap(), Some(1));
}
