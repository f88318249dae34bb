//! Limiter throughput: checks per second through the actor with 1, 64 and
//! 1,024 concurrent callers, each check's lease released as soon as it is
//! answered, against a baseline measured in the same run that awaits each
//! `EVALSHA` and then its lease's `ZREM` on one connection; and Redis commands
//! per admitted check and per cached refusal, read from `INFO commandstats`
//! (commands the limiter sends; those its script runs inside Redis are not
//! round trips and are left out).
//!
//! Run: `cargo bench -p pantheon-infrastructure --bench limiter` (needs Redis
//! on `PANTHEON_BENCH_REDIS_URL`, default `redis://127.0.0.1:6379`; an idle
//! one, since commands are counted server-wide). `-- --quick` shortens it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pantheon_domain::limiter::{Decision, Limits};
use pantheon_domain::{SystemClock, UserId};
use pantheon_infrastructure::Settings;
use pantheon_infrastructure::limiter::keys::check_keys;
use pantheon_infrastructure::limiter::{CHECK_SCRIPT, limiter};

const HIGH: Limits = Limits::turns(u32::MAX / 4, u32::MAX / 4, u32::MAX / 4);

fn user(tag: &str, i: usize) -> UserId {
    UserId::parse(&format!("bench-{tag}-{}-{i}", std::process::id())).unwrap()
}

/// Commands clients sent: `INFO commandstats` also counts the commands a
/// script runs inside Redis (our script's MGET, INCR, PEXPIRE,
/// ZREMRANGEBYSCORE, ZCARD, ZADD), which cost no round trip, and our own INFO
/// calls; both are left out (this bench sends no peek, the one MGET a client
/// sends, and no renewal, the one ZADD and PEXPIRE: leases live for less
/// than a renewal interval).
fn total_commands(conn: &mut redis::Connection) -> u64 {
    const NOT_SENT: [&str; 7] = [
        "cmdstat_info:",
        "cmdstat_mget:",
        "cmdstat_incr:",
        "cmdstat_pexpire:",
        "cmdstat_zremrangebyscore:",
        "cmdstat_zcard:",
        "cmdstat_zadd:",
    ];
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_") && !NOT_SENT.iter().any(|p| l.starts_with(p)))
        .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum()
}

/// One caller awaiting each `EVALSHA` before sending the next.
async fn baseline(url: &str, run: Duration) -> f64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(CHECK_SCRIPT);
    script.load_async(&mut conn).await.unwrap();
    let user = user("baseline", 0);
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < run {
        let now_ms = pantheon_domain::Clock::now_ms(&SystemClock);
        let keys = check_keys(&user, now_ms);
        let lease = format!("baseline-{done}");
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(5).arg(&keys);
        for (limit, w) in [(HIGH.per_minute, 60_000i64), (HIGH.per_hour, 3_600_000)] {
            cmd.arg(limit).arg(w).arg(now_ms.rem_euclid(w));
        }
        cmd.arg(now_ms).arg(15_000).arg(HIGH.max_concurrent).arg(&lease);
        let _: Vec<i64> = cmd.query_async(&mut conn).await.unwrap();
        let _: i64 =
            redis::cmd("ZREM").arg(&keys[4]).arg(&lease).query_async(&mut conn).await.unwrap();
        done += 1;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// `callers` tasks checking through one actor for `run`.
async fn through_actor(settings: &Settings, callers: usize, run: Duration) -> (f64, u64) {
    let (handle, actor) = limiter(settings, Arc::new(SystemClock)).await.unwrap();
    tokio::spawn(actor);
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let handle = handle.clone();
            let user = user(&format!("actor{callers}"), i);
            tokio::spawn(async move {
                let (mut admitted, mut other) = (0u64, 0u64);
                while start.elapsed() < run {
                    // The lease is dropped at once: each check is followed
                    // by its release, as a turn's would be.
                    match handle.check(user.clone(), HIGH).await.decision {
                        Decision::Admitted(_) => admitted += 1,
                        _ => other += 1,
                    }
                }
                (admitted, other)
            })
        })
        .collect();
    let (mut admitted, mut other) = (0, 0);
    for task in tasks {
        let (a, o) = task.await.unwrap();
        admitted += a;
        other += o;
    }
    (admitted as f64 / start.elapsed().as_secs_f64(), other)
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let run = if quick { Duration::from_millis(500) } else { Duration::from_secs(3) };
    let url = std::env::var("PANTHEON_BENCH_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut settings = Settings::default();
    settings.redis.url = Some(url.clone());
    settings.redis.timeout_ms = 1_000;
    let mut stats = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();

    let base = baseline(&url, run).await;
    println!("| callers | checks/s | vs one-at-a-time EVALSHA | not admitted |");
    println!("|---:|---:|---:|---:|");
    println!("| baseline (1, awaiting each) | {base:.0} | 1.00× | 0 |");
    for callers in [1, 64, 1024] {
        let (rate, other) = through_actor(&settings, callers, run).await;
        println!("| {callers} | {rate:.0} | {:.2}× | {other} |", rate / base);
    }

    // Commands per admitted check and per cached refusal.
    let (handle, actor) = limiter(&settings, Arc::new(SystemClock)).await.unwrap();
    tokio::spawn(actor);
    let admitted_user = user("count", 0);
    let before = total_commands(&mut stats);
    for _ in 0..1_000 {
        let admission = handle.check(admitted_user.clone(), HIGH).await;
        assert!(matches!(admission.decision, Decision::Admitted(_)));
    }
    let per_admitted = (total_commands(&mut stats) - before) as f64 / 1_000.0;
    let refused_user = user("count", 1);
    let one = Limits::turns(1, 1, 1_000);
    handle.check(refused_user.clone(), one).await;
    assert!(matches!(handle.check(refused_user.clone(), one).await.decision, Decision::Limited(_)));
    let before = total_commands(&mut stats);
    for _ in 0..1_000 {
        let refused = handle.check(refused_user.clone(), one).await.decision;
        assert!(matches!(refused, Decision::Limited(_)));
    }
    let per_refusal = (total_commands(&mut stats) - before) as f64 / 1_000.0;
    println!();
    println!(
        "Redis commands per admitted check: {per_admitted:.3} (expect 2: its EVALSHA and its lease's ZREM)"
    );
    println!("Redis commands per cached refusal: {per_refusal:.3} (expect 0)");
}
