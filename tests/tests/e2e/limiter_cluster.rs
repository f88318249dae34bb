//! The limiter on a Redis Cluster: users on every master limited exactly
//! through several instances, each batch sent as one pipeline per node
//! with one `EVALSHA` per check, `SCRIPT FLUSH` on one node, and the slot
//! of every user agreeing with the server's. The tests of the windows,
//! retry times, keys and peeks run on the cluster too (`limiter_actor`,
//! `limiter_http`); failover, resharding and a stalled node are in
//! `limiter_cluster_faults`.

use std::sync::Arc;
use std::time::Duration;

use pantheon_domain::limiter::{Decision, Fallback, LimiterHandle, Limits};
use pantheon_domain::{ManualClock, UserId};
use pantheon_infrastructure::limiter::keys::log_key;
use pantheon_infrastructure::limiter::topology::slot_of;
use pantheon_tests::limiter::{Store, cluster_limiter};
use pantheon_tests::redis_cluster::{ClusterView, RedisCluster, shared_cluster, user_on};

use crate::limiter_faults::T0;

fn limits(per_minute: u32) -> Limits {
    Limits::turns(per_minute, 10_000, 1_000_000)
}

/// The turns of the user's log, read through redis-rs's own cluster
/// connection (which routes by the key's slot).
fn minute_count(connection: &mut impl redis::ConnectionLike, user: &UserId) -> u64 {
    pantheon_tests::limiter::logged_turns(connection, user)
}

/// Ten users on each master of the shared cluster, checked twenty times
/// each through three instances at once (600 checks in flight), with a
/// limit of five: each is admitted exactly five times, and each counter
/// holds five.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_every_master_are_admitted_exactly_to_their_limits() {
    let view = shared_cluster();
    let masters = view.masters();
    assert_eq!(masters.len(), 3, "the suite's cluster has three masters");
    let users: Vec<UserId> =
        masters.iter().flat_map(|m| (0..10).map(|_| user_on(&view, m.port, "spread"))).collect();
    // The limiter's slot is the server's.
    for user in users.iter().take(5) {
        let key = log_key(user);
        let slot = view.command(masters[0].port, &["CLUSTER", "KEYSLOT", &key]);
        assert_eq!(slot, slot_of(user).to_string(), "{user}");
    }

    let clock = Arc::new(ManualClock::at(T0));
    let instances: Vec<LimiterHandle> = vec![
        Store::Cluster.limiter(clock.clone()).await,
        Store::Cluster.limiter(clock.clone()).await,
        Store::Cluster.limiter(clock.clone()).await,
    ];
    let mut tasks = Vec::new();
    for round in 0..20 {
        for (i, user) in users.iter().enumerate() {
            let handle = instances[(i + round) % 3].clone();
            let user = user.clone();
            tasks.push(tokio::spawn(async move {
                let decision = handle.check(user.clone(), limits(5)).await.decision;
                (user, decision)
            }));
        }
    }
    let mut admitted: std::collections::HashMap<UserId, u64> = Default::default();
    for task in tasks {
        let (user, decision) = task.await.unwrap();
        match decision {
            Decision::Admitted(_) => *admitted.entry(user).or_default() += 1,
            Decision::Limited(_) => {}
            other => panic!("no check may be skipped here: {other:?}"),
        }
    }
    let mut connection = Store::Cluster.connection();
    for user in &users {
        assert_eq!(
            admitted.get(user).copied().unwrap_or(0),
            5,
            "{user} on {}",
            view.master_of(user)
        );
        assert_eq!(minute_count(&mut connection, user), 5, "{user}'s counter");
    }
}

/// A persistent connection per master for reading `INFO`, so the readings
/// add exactly one read each to the node's counters.
struct Meter {
    connections: Vec<(u16, redis::Connection)>,
}

impl Meter {
    fn new(view: &ClusterView) -> Self {
        let connections = view
            .masters()
            .into_iter()
            .map(|m| {
                let client = redis::Client::open(format!("redis://127.0.0.1:{}", m.port)).unwrap();
                (m.port, client.get_connection().unwrap())
            })
            .collect();
        Self { connections }
    }

    /// Per master: `EVALSHA` calls and reads processed so far.
    fn read(&mut self) -> Vec<(u16, u64, u64)> {
        self.connections
            .iter_mut()
            .map(|(port, connection)| {
                let info: String = redis::cmd("INFO").arg("all").query(connection).unwrap();
                let evalsha = pantheon_tests::redis_server::info_value(&info, "cmdstat_evalsha");
                let reads =
                    pantheon_tests::redis_server::info_value(&info, "total_reads_processed");
                (*port, evalsha, reads)
            })
            .collect()
    }
}

/// Thirty checks for users on all three masters, waiting together in the
/// mailbox when the actor starts, go out as three pipelines, one per
/// master, with one `EVALSHA` per check: each master counts ten `EVALSHA`
/// calls and one read of its socket for them (`INFO`'s
/// `total_reads_processed`; this cluster has no replicas, whose
/// acknowledgements would be reads too, and the only other read is the
/// second `INFO` itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_for_users_on_every_master_goes_as_one_pipeline_per_node() {
    let cluster = RedisCluster::start_with(3, 0, 5_000);
    let view = cluster.view();
    let masters = view.masters();
    assert_eq!(masters.len(), 3);
    let users: Vec<UserId> =
        masters.iter().flat_map(|m| (0..10).map(|_| user_on(view, m.port, "pipe"))).collect();

    let (handle, actor, _) = cluster_limiter(
        &cluster.urls(),
        Fallback::Deny,
        Duration::from_secs(5),
        Duration::from_secs(10),
    )
    .await;
    let tasks: Vec<_> = users
        .iter()
        .map(|user| {
            let (handle, user) = (handle.clone(), user.clone());
            tokio::spawn(async move { handle.check(user, limits(5)).await })
        })
        .collect();
    // Every check waits in the mailbox: the actor is not running yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut meter = Meter::new(view);
    let before = meter.read();
    tokio::spawn(actor.run());
    // The admissions are kept until the meter is read: their leases'
    // releases would be pipelines of their own.
    let mut admissions = Vec::new();
    for task in tasks {
        let admission = task.await.unwrap();
        assert!(matches!(admission.decision, Decision::Admitted(_)));
        admissions.push(admission);
    }
    let after = meter.read();
    drop(admissions);
    for ((port, evalsha_before, reads_before), (_, evalsha_after, reads_after)) in
        before.into_iter().zip(after)
    {
        assert_eq!(evalsha_after - evalsha_before, 10, "master {port}: one EVALSHA per check");
        assert_eq!(reads_after - reads_before, 2, "master {port}: one pipeline (and the INFO)");
    }
}

/// `SCRIPT FLUSH` on one master is not an outage: that node answers
/// `NOSCRIPT`, the script is loaded there again and only the checks that
/// found no script are sent again, so nothing is counted twice. A user on
/// each master has two of three turns; after the flush each is admitted a
/// third time and refused a fourth, and each counter holds three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_on_one_node_reloads_there_and_counts_nothing_twice() {
    let view = shared_cluster();
    let masters = view.masters();
    let users: Vec<UserId> = masters.iter().map(|m| user_on(&view, m.port, "flush")).collect();
    let clock = Arc::new(ManualClock::at(T0));
    let limiter = Store::Cluster.limiter(clock.clone()).await;
    for user in &users {
        for _ in 0..2 {
            assert!(matches!(
                limiter.check(user.clone(), limits(3)).await.decision,
                Decision::Admitted(_)
            ));
        }
    }
    let flushed = masters[1].port;
    let noscript_before = view.info(flushed, "errorstats", "errorstat_NOSCRIPT");
    assert_eq!(view.command(flushed, &["SCRIPT", "FLUSH"]), "OK");

    let third: Vec<Decision> = futures::future::join_all(
        users.iter().map(|user| async { limiter.check(user.clone(), limits(3)).await.decision }),
    )
    .await;
    for (user, decision) in users.iter().zip(&third) {
        match decision {
            Decision::Admitted(status) => assert_eq!(status.usage[0].remaining, 0, "{user}"),
            other => panic!("{user}: the third turn is admitted by Redis, got {other:?}"),
        }
    }
    assert!(
        view.info(flushed, "errorstats", "errorstat_NOSCRIPT") > noscript_before,
        "the flushed node answered NOSCRIPT"
    );
    let fresh = Store::Cluster.limiter(clock.clone()).await;
    let mut connection = Store::Cluster.connection();
    for user in &users {
        assert!(
            matches!(fresh.check(user.clone(), limits(3)).await.decision, Decision::Limited(_)),
            "{user}"
        );
        assert_eq!(minute_count(&mut connection, user), 3, "{user}: counted once each");
    }
}
