//! Limiter throughput: checks per second through the actor with 1, 64 and
//! 1,024 concurrent callers, each check's lease released as soon as it is
//! answered, against a baseline measured in the same run that awaits each
//! `EVALSHA` and then its lease's `ZREM` on one connection; and Redis commands
//! per admitted check and per cached refusal, read from `INFO commandstats`
//! (commands the limiter sends; those its script runs inside Redis are not
//! round trips and are left out). With a Redis Cluster named too, every
//! figure again on the cluster, beside the single Redis's.
//!
//! Run: `cargo bench -p pantheon-infrastructure --bench limiter` (needs Redis
//! on `PANTHEON_BENCH_REDIS_URL`, default `redis://127.0.0.1:6379`; an idle
//! one, since commands are counted server-wide; and, for the cluster
//! columns, an idle cluster's seeds on `PANTHEON_BENCH_CLUSTER_URLS`,
//! comma-separated: `scripts/cluster.sh start DIR` prints them; each
//! caller is its own user, so the callers spread over every master).
//! `-- --quick` shortens it. A last table gives the in-process limiter's
//! checks per second (no Redis configured) with the same callers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pantheon_domain::limiter::{Decision, Limits};
use pantheon_domain::{SystemClock, UserId};
use pantheon_infrastructure::Settings;
use pantheon_infrastructure::limiter::keys::check_keys;
use pantheon_infrastructure::limiter::topology::{SlotMap, parse_cluster_slots, slot_of};
use pantheon_infrastructure::limiter::{CHECK_SCRIPT, limiter};

const HIGH: Limits = Limits::turns(u32::MAX / 4, u32::MAX / 4, u32::MAX / 4);

fn user(tag: &str, i: usize) -> UserId {
    UserId::parse(&format!("bench-{tag}-{}-{i}", std::process::id())).unwrap()
}

/// Commands clients sent: `INFO commandstats` also counts the commands a
/// script runs inside Redis (our script's TIME, LINDEX, LRANGE, LSET,
/// RPUSH, LPUSH, LTRIM, PEXPIRE, ZREMRANGEBYSCORE, ZCARD, ZADD), which cost
/// no round trip, our own INFO calls, and a master's replicas'
/// acknowledgements (REPLCONF); all are left out (this bench sends no
/// renewal: leases live for less than a renewal interval; and no refund,
/// the one release whose ZREM is the script's).
fn total_commands(conn: &mut redis::Connection) -> u64 {
    const NOT_SENT: [&str; 13] = [
        "cmdstat_info:",
        "cmdstat_time:",
        "cmdstat_lindex:",
        "cmdstat_lrange:",
        "cmdstat_lset:",
        "cmdstat_rpush:",
        "cmdstat_lpush:",
        "cmdstat_ltrim:",
        "cmdstat_pexpire:",
        "cmdstat_zremrangebyscore:",
        "cmdstat_zcard:",
        "cmdstat_zadd:",
        "cmdstat_replconf:",
    ];
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_") && !NOT_SENT.iter().any(|p| l.starts_with(p)))
        .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum()
}

/// Where the counters are: one Redis, or a cluster's masters.
struct Store {
    name: &'static str,
    settings: Settings,
    /// The single Redis, or every master (`INFO` is per node).
    nodes: Vec<String>,
    /// Who serves each slot (every slot on the one node of a single Redis).
    slots: SlotMap,
}

impl Store {
    fn single(url: &str) -> Self {
        let mut settings = Settings::default();
        settings.redis.url = Some(url.to_owned());
        settings.redis.timeout_ms = 1_000;
        let node = pantheon_infrastructure::limiter::topology::NodeAddr::new("single", 0);
        Self {
            name: "single Redis",
            settings,
            nodes: vec![url.to_owned()],
            slots: SlotMap::single(node),
        }
    }

    fn cluster(urls: &str) -> Self {
        let seeds: Vec<String> = urls.split(',').map(str::to_owned).collect();
        let mut settings = Settings::default();
        settings.redis.cluster_urls = seeds.clone();
        settings.redis.timeout_ms = 1_000;
        let mut conn = redis::Client::open(seeds[0].as_str()).unwrap().get_connection().unwrap();
        let reply = redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn).unwrap();
        let ranges = parse_cluster_slots(reply, "127.0.0.1").unwrap();
        let mut slots = SlotMap::single(ranges[0].2.clone());
        slots.apply(&ranges);
        let nodes = slots.masters().map(|m| format!("redis://{m}")).collect();
        Self { name: "Redis Cluster", settings, nodes, slots }
    }

    /// The URL of the node serving `user`.
    fn node_of(&self, user: &UserId) -> String {
        match self.nodes.len() {
            1 => self.nodes[0].clone(),
            _ => format!("redis://{}", self.slots.node(slot_of(user))),
        }
    }

    /// Commands sent to all its nodes so far.
    fn commands(&self) -> u64 {
        self.nodes
            .iter()
            .map(|url| {
                total_commands(
                    &mut redis::Client::open(url.as_str()).unwrap().get_connection().unwrap(),
                )
            })
            .sum()
    }
}

/// One caller awaiting each `EVALSHA` and its lease's `ZREM` (sent straight
/// to its user's node) before sending the next.
async fn baseline(store: &Store, run: Duration) -> f64 {
    let user = user("baseline", 0);
    let client = redis::Client::open(store.node_of(&user)).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(CHECK_SCRIPT);
    script.load_async(&mut conn).await.unwrap();
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < run {
        let now_ms = pantheon_domain::Clock::now_ms(&SystemClock);
        let keys = check_keys(&user);
        let lease = format!("baseline-{done}");
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(2).arg(&keys).arg("check").arg(now_ms).arg(15_000);
        cmd.arg(HIGH.max_concurrent).arg(&lease).arg(HIGH.per_minute).arg(HIGH.per_hour);
        cmd.arg(-1).arg(-1).arg(0).arg(0).arg(0);
        let _: redis::Value = cmd.query_async(&mut conn).await.unwrap();
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(&keys[0]).arg(&lease);
        let _: i64 = zrem.query_async(&mut conn).await.unwrap();
        done += 1;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// `callers` tasks checking through one actor for `run`.
async fn through_actor(store: &Store, callers: usize, run: Duration) -> (f64, u64) {
    let (handle, actor) = limiter(&store.settings, Arc::new(SystemClock)).await.unwrap();
    tokio::spawn(actor);
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let handle = handle.clone();
            let user = user(&format!("actor{callers}-{}", store.nodes.len()), i);
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

/// Checks per second of the in-process limiter (no Redis) with `callers`.
async fn in_process(callers: usize, run: Duration) -> (f64, u64) {
    let store = Store {
        name: "in-process",
        settings: Settings::default(),
        nodes: Vec::new(),
        slots: SlotMap::single(pantheon_infrastructure::limiter::topology::NodeAddr::new(
            "none", 0,
        )),
    };
    through_actor(&store, callers, run).await
}

/// Redis commands per admitted check and per cached refusal.
async fn commands_per_check(store: &Store) -> (f64, f64) {
    let (handle, actor) = limiter(&store.settings, Arc::new(SystemClock)).await.unwrap();
    tokio::spawn(actor);
    let admitted_user = user(&format!("count-{}", store.nodes.len()), 0);
    let before = store.commands();
    for _ in 0..1_000 {
        let admission = handle.check(admitted_user.clone(), HIGH).await;
        assert!(matches!(admission.decision, Decision::Admitted(_)));
    }
    let per_admitted = (store.commands() - before) as f64 / 1_000.0;
    let refused_user = user(&format!("count-{}", store.nodes.len()), 1);
    let one = Limits::turns(1, 1, 1_000);
    handle.check(refused_user.clone(), one).await;
    assert!(matches!(handle.check(refused_user.clone(), one).await.decision, Decision::Limited(_)));
    let before = store.commands();
    for _ in 0..1_000 {
        let refused = handle.check(refused_user.clone(), one).await.decision;
        assert!(matches!(refused, Decision::Limited(_)));
    }
    let per_refusal = (store.commands() - before) as f64 / 1_000.0;
    (per_admitted, per_refusal)
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let run = if quick { Duration::from_millis(500) } else { Duration::from_secs(3) };
    let url = std::env::var("PANTHEON_BENCH_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut stores = vec![Store::single(&url)];
    if let Some(urls) = std::env::var("PANTHEON_BENCH_CLUSTER_URLS").ok().filter(|u| !u.is_empty())
    {
        stores.push(Store::cluster(&urls));
    }

    // rows[i][s]: (checks/s, not admitted) of row i on store s; row 0 the baseline.
    let mut rows: Vec<Vec<(f64, u64)>> = vec![Vec::new(); 4];
    for store in &stores {
        rows[0].push((baseline(store, run).await, 0));
        for (i, callers) in [1, 64, 1024].into_iter().enumerate() {
            rows[i + 1].push(through_actor(store, callers, run).await);
        }
    }
    let mut header = "| callers |".to_owned();
    let mut rule = "|---:|".to_owned();
    for store in &stores {
        header += &format!(
            " {} checks/s | vs its one-at-a-time EVALSHA + ZREM | not admitted |",
            store.name
        );
        rule += "---:|---:|---:|";
    }
    if stores.len() > 1 {
        header += " cluster ÷ single |";
        rule += "---:|";
    }
    println!("{header}");
    println!("{rule}");
    for (i, row) in rows.iter().enumerate() {
        let label = match i {
            0 => "baseline (1, awaiting each)".to_owned(),
            i => [1, 64, 1024][i - 1].to_string(),
        };
        let mut line = format!("| {label} |");
        for (s, (rate, other)) in row.iter().enumerate() {
            line += &format!(" {rate:.0} | {:.2}× | {other} |", rate / rows[0][s].0);
        }
        if row.len() > 1 {
            line += &format!(" {:.2}× |", row[1].0 / row[0].0);
        }
        println!("{line}");
    }
    println!();
    for store in &stores {
        let (per_admitted, per_refusal) = commands_per_check(store).await;
        println!(
            "{}: Redis commands per admitted check: {per_admitted:.3} (expect 2: EVALSHA, ZREM)",
            store.name
        );
        println!("{}: Redis commands per cached refusal: {per_refusal:.3} (expect 0)", store.name);
    }
    println!();
    println!("| callers | in-process checks/s | not admitted |");
    println!("|---:|---:|---:|");
    for callers in [1, 64, 1024] {
        let (rate, other) = in_process(callers, run).await;
        println!("| {callers} | {rate:.0} | {other} |");
    }
}
