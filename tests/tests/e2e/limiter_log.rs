//! The exact windows' log in Redis, below the actor: the script
//! (`check.lua`) and the domain's `UsageLog` step for step over random
//! checks, refunds and peeks at window edges and with lagging clocks — the
//! same tallies and the same stored log after every step — and the memory a
//! user's log takes at full use of the default limits.

use pantheon_domain::UserId;
use pantheon_domain::limiter::{Limits, Policy, Tally, TokenCost, UsageLog};
use pantheon_infrastructure::limiter::keys::{active_key, log_key};
use pantheon_infrastructure::limiter::{CHECK_SCRIPT, TokenRefund, parse_tally};
use pantheon_tests::limiter::{Store, redis_connection, stored_log, unique_user};
use pantheon_tests::rng::Rng;
use redis::{ConnectionLike, Script};

on_both_stores!(
    the_script_and_the_domain_log_agree_step_for_step,
    a_marked_refund_frees_the_slot_at_once_and_is_applied_once_whatever_comes_between
);

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
/// A minute boundary in 2026, 17 ms on.
const T0: i64 = 493_500 * HOUR + 17;

/// The script's tally, as the actor parses it (`-1`: never).
/// The script's packed tally, read as the actor reads it.
fn tally(value: redis::Value) -> Tally {
    parse_tally(vec![value]).unwrap()
}

fn limit_args(invocation: &mut redis::ScriptInvocation<'_>, limits: Limits) {
    invocation.arg(limits.per_minute).arg(limits.per_hour);
    for limit in [limits.tokens_per_minute, limits.tokens_per_hour] {
        invocation.arg(limit.map_or(-1, i64::from));
    }
}

fn check(
    conn: &mut impl ConnectionLike,
    user: &UserId,
    limits: Limits,
    cost: TokenCost,
    now: i64,
    lease: &str,
) -> Tally {
    let script = Script::new(CHECK_SCRIPT);
    let mut call = script.key(active_key(user));
    call.key(log_key(user)).arg("check").arg(now).arg(100_000_000).arg(limits.max_concurrent);
    call.arg(lease);
    limit_args(&mut call, limits);
    call.arg(cost.input).arg(cost.min_output).arg(cost.max_output);
    tally(call.invoke(conn).unwrap())
}

fn peek(conn: &mut impl ConnectionLike, user: &UserId, limits: Limits, now: i64) -> Tally {
    let script = Script::new(CHECK_SCRIPT);
    let mut call = script.key(active_key(user));
    call.key(log_key(user)).arg("peek").arg(now);
    limit_args(&mut call, limits);
    tally(call.invoke(conn).unwrap())
}

/// Releases `lease` with a refund of `tokens` to the entry at `at`, as the
/// actor does: its mark, which the next check or peek applies. Whether the
/// lease was there (and so was marked).
fn release(
    conn: &mut impl ConnectionLike,
    user: &UserId,
    lease: &str,
    at: i64,
    tokens: u64,
) -> bool {
    let mark = TokenRefund { at_ms: at, tokens }.mark();
    let changed: i64 = redis::cmd("ZADD")
        .arg(active_key(user))
        .arg("XX")
        .arg("CH")
        .arg(mark)
        .arg(lease)
        .query(conn)
        .unwrap();
    changed == 1
}

/// The refunds marked in `user`'s set and not yet applied.
fn marks(conn: &mut impl ConnectionLike, user: &UserId) -> usize {
    let marked: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(active_key(user))
        .arg("-inf")
        .arg("(0")
        .query(conn)
        .unwrap();
    marked.len()
}

/// Asserts the stored log is the model's: the same entries and sums, the
/// same clock and the same minute start.
fn assert_same_log(conn: &mut impl ConnectionLike, user: &UserId, model: &UsageLog, step: &str) {
    let stored = stored_log(conn, user);
    let Some(stored) = stored else {
        assert!(model.is_empty(), "{step}: Redis has no log, the model has {model:?}");
        return;
    };
    let entries: Vec<_> = model.entries().copied().collect();
    assert_eq!(stored.entries, entries, "{step}: entries");
    assert_eq!(stored.clock, model.clock(), "{step}: clock");
    let minute = stored.entries.len() - stored.minute_start;
    assert_eq!(
        [minute as u64, stored.minute_tokens, stored.hour_tokens],
        [Policy::Minute, Policy::TokensMinute, Policy::TokensHour].map(|p| model.load(p)),
        "{step}: the header's sums"
    );
}

/// Random checks (turn limits and token budgets, random costs), refunds of
/// random earlier admissions (some of entries gone) and peeks, the clock
/// moving by edge-sized steps (0, 1 ms, a window less 1 ms, a window, …)
/// and now and then lagging behind the log's: the script's tally equals
/// the model's at every step, and so does the stored log after every check
/// and peek (a release only marks its refund, which the next one applies:
/// until then the log is as it was, the mark waiting in the set).
async fn the_script_and_the_domain_log_agree_step_for_step(store: Store) {
    let seed = 0x10c_u64 ^ u64::from(std::process::id());
    let mut rng = Rng(seed | 1);
    let mut conn = store.connection();
    for round in 0..6 {
        let user = unique_user("log-diff");
        let limits = Limits {
            per_minute: 3 + rng.next(5) as u32,
            per_hour: 10 + rng.next(20) as u32,
            max_concurrent: 1_000,
            tokens_per_minute: (round % 3 != 0).then(|| 500 + rng.next(1_000) as u32),
            tokens_per_hour: (round % 2 == 0).then(|| 2_000 + rng.next(3_000) as u32),
        };
        let mut model = UsageLog::default();
        let mut leases: Vec<(String, i64, u64)> = Vec::new();
        let (mut now, mut admitted, mut refused, mut refunds) = (T0, 0, 0, 0);
        let mut applied = model.clone();
        for step in 0..400 {
            let step = format!("seed {seed}, round {round}, step {step}");
            let gaps = [0, 0, 1, 1, 999, 999, 3_000, 3_000, MINUTE - 1, MINUTE, MINUTE + 1, HOUR];
            now += gaps[rng.next(gaps.len() as u64) as usize] * i64::from(rng.next(4) != 0);
            // Now and then an instance whose clock lags.
            let at = if rng.next(6) == 0 { now - rng.next(5_000) as i64 } else { now };
            match rng.next(8) {
                0 if !leases.is_empty() => {
                    let (lease, stamp, reserved) =
                        leases.swap_remove(rng.next(leases.len() as u64) as usize);
                    let tokens = rng.next(reserved + 1);
                    let marked = release(&mut conn, &user, &lease, stamp, tokens);
                    if marked {
                        model.refund(stamp, tokens);
                        refunds += 1;
                    }
                    assert!(!marked || marks(&mut conn, &user) > 0, "{step}: the mark waits");
                    assert_same_log(&mut conn, &user, &applied, &step);
                    continue;
                }
                1 => {
                    let mut copy = model.clone();
                    copy.advance(at);
                    let expected = copy.peek(limits, 0);
                    // The script's peek counts live leases on Redis's clock.
                    let got = Tally { active: 0, ..peek(&mut conn, &user, limits, at) };
                    assert_eq!(got, expected, "{step}: peek");
                }
                _ => {
                    let cost = TokenCost {
                        input: rng.next(300),
                        min_output: 10,
                        max_output: 50 + rng.next(200),
                    };
                    let lease = format!("lease-{}", uuid::Uuid::new_v4().simple());
                    let got = check(&mut conn, &user, limits, cost, at, &lease);
                    let expected = model.check(limits, cost, got.active, at);
                    assert_eq!(got, expected, "{step}: check at {at}");
                    if got.admitted {
                        admitted += 1;
                        let reserved =
                            if limits.has_token_budget() { cost.input + got.output_cap } else { 0 };
                        leases.push((lease, got.at_ms, reserved));
                    } else {
                        refused += 1;
                    }
                }
            }
            assert_same_log(&mut conn, &user, &model, &step);
            assert_eq!(marks(&mut conn, &user), 0, "{step}: every mark applied");
            applied = model.clone();
        }
        assert!(admitted > 20 && refused > 20, "round {round}: {admitted} in, {refused} refused");
        assert!(refunds > 10, "round {round}: {refunds} refunds");
        let _: () = redis::cmd("DEL").arg(active_key(&user)).query(&mut conn).unwrap();
        let _: () = redis::cmd("DEL").arg(log_key(&user)).query(&mut conn).unwrap();
    }
}

/// A release marks its refund on the lease: the slot is free at once, a
/// renewal does not bring the lease back, the mark sent again changes
/// nothing, and the next check applies it exactly once before deciding (a
/// check without a budget drops it).
async fn a_marked_refund_frees_the_slot_at_once_and_is_applied_once_whatever_comes_between(
    store: Store,
) {
    let mut conn = store.connection();
    let user = unique_user("mark");
    let limits = Limits {
        per_minute: 100,
        per_hour: 100,
        max_concurrent: 1,
        tokens_per_minute: Some(1_000),
        tokens_per_hour: None,
    };
    let cost = TokenCost { input: 100, min_output: 10, max_output: 500 };
    let first = check(&mut conn, &user, limits, cost, T0, "first");
    assert!(first.admitted && first.output_cap == 500, "{first:?}");
    let busy = check(&mut conn, &user, limits, cost, T0 + 1, "busy");
    assert!(!busy.admitted && busy.active == 1, "one slot, held: {busy:?}");

    assert!(release(&mut conn, &user, "first", first.at_ms, 450), "marked");
    assert!(!release(&mut conn, &user, "first", first.at_ms, 450), "marked already");
    let renew = Script::new(CHECK_SCRIPT);
    let _: i64 = renew
        .key(active_key(&user))
        .arg("renew")
        .arg(60_000)
        .arg("first")
        .invoke(&mut conn)
        .unwrap();
    assert_eq!(marks(&mut conn, &user), 1, "a renewal leaves a mark a mark");
    let log = stored_log(&mut conn, &user).unwrap();
    assert_eq!(log.minute_tokens, 600, "nothing applied before the next check");

    let second = check(&mut conn, &user, limits, cost, T0 + 2, "second");
    assert!(second.admitted, "the marked lease holds no slot: {second:?}");
    assert_eq!(second.loads[2], 150, "the refund applied before the decision, once");
    assert_eq!(marks(&mut conn, &user), 0);
    assert!(!release(&mut conn, &user, "first", first.at_ms, 450), "applied: gone");
    let log = stored_log(&mut conn, &user).unwrap();
    let tokens: Vec<u64> = log.entries.iter().map(|e| e.tokens).collect();
    assert_eq!(tokens, [150, 100 + second.output_cap]);

    // A check without a budget (the tier lost it) removes a mark unapplied:
    // no budget, no refund to apply.
    assert!(release(&mut conn, &user, "second", second.at_ms, 100), "marked");
    let plain = Limits { tokens_per_minute: None, ..limits };
    let third = check(&mut conn, &user, plain, cost, T0 + 3, "third");
    assert!(third.admitted && third.active == 0, "{third:?}");
    assert_eq!(marks(&mut conn, &user), 0, "the mark is gone");
    let log = stored_log(&mut conn, &user).unwrap();
    let tokens: Vec<u64> = log.entries.iter().map(|e| e.tokens).collect();
    assert_eq!(tokens, [150, 100 + second.output_cap, 0], "and nothing was refunded");
    let _: () =
        redis::cmd("DEL").arg(log_key(&user)).arg(active_key(&user)).query(&mut conn).unwrap();
}

/// A user at full use of the default limits — 20 turns a minute, 300 in the
/// hour — with token budgets: their log is one entry per turn, and takes at
/// most 8 KiB of Redis memory.
#[test]
fn a_user_s_log_at_full_use_of_the_defaults_takes_at_most_8_kib() {
    let mut conn = redis_connection();
    let user = unique_user("memory");
    let limits = Limits {
        per_minute: 20,
        per_hour: 300,
        max_concurrent: 4,
        tokens_per_minute: Some(1_000_000),
        tokens_per_hour: Some(10_000_000),
    };
    let cost = TokenCost { input: 1_200, min_output: 16, max_output: 800 };
    // 300 turns, one every 12 s: the hour is full, the minute holds 5.
    for i in 0..300 {
        let lease = format!("lease-{i}");
        let tally = check(&mut conn, &user, limits, cost, T0 + i * 12_000, &lease);
        assert!(tally.admitted, "turn {i}");
        assert!(release(&mut conn, &user, &lease, tally.at_ms, 300));
    }
    let refused = check(&mut conn, &user, limits, cost, T0 + 300 * 12_000 - 1, "over");
    assert!(!refused.admitted, "the hour is full");
    let log = stored_log(&mut conn, &user).unwrap();
    assert_eq!(log.entries.len(), 300);
    let bytes: u64 =
        redis::cmd("MEMORY").arg("USAGE").arg(log_key(&user)).query(&mut conn).unwrap();
    eprintln!("a log at full use of the defaults: {bytes} bytes");
    assert!(bytes <= 8 * 1024, "{bytes} bytes");
    let _: () =
        redis::cmd("DEL").arg(log_key(&user)).arg(active_key(&user)).query(&mut conn).unwrap();
}
