//! Redis Clusters for the tests: [`shared_cluster`], the one the suite
//! shares (`PANTHEON_TEST_CLUSTER_URLS`, started by `scripts/test.sh`), and
//! [`RedisCluster`], one of a test's own (3 masters and 3 replicas of
//! [`RedisServer`]s) that it may kill nodes of or reshard.
//! [`ClusterView`] reads either: who serves which slot, per-node `INFO`.
//!
//! The methods are synchronous and short; every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use pantheon_domain::UserId;
use pantheon_infrastructure::limiter::topology::slot_of;

use crate::redis_server::{RedisServer, command_at, info_value, try_command_at};

/// How long a cluster may take to agree on its layout (after a create,
/// a failover, a resharding).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The seed URLs of the suite's cluster.
///
/// # Panics
/// When `PANTHEON_TEST_CLUSTER_URLS` is unset: `scripts/test.sh` starts a
/// cluster and sets it (`scripts/cluster.sh start DIR` does it by hand).
pub fn shared_cluster_urls() -> Vec<String> {
    let urls = std::env::var("PANTHEON_TEST_CLUSTER_URLS").unwrap_or_default();
    assert!(
        !urls.is_empty(),
        "PANTHEON_TEST_CLUSTER_URLS is unset: run the suite with scripts/test.sh, or start a \
         cluster with scripts/cluster.sh start DIR and export what it prints"
    );
    urls.split(',').map(str::to_owned).collect()
}

/// The suite's shared cluster: never kill, pause or reshard it.
pub fn shared_cluster() -> ClusterView {
    ClusterView::of_urls(&shared_cluster_urls())
}

/// One node as `CLUSTER NODES` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// Node id.
    pub id: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Whether it is a master.
    pub master: bool,
    /// Whether the cluster flags it failed.
    pub failed: bool,
    /// A replica's master id.
    pub master_id: Option<String>,
    /// A master's slot ranges.
    pub slots: Vec<(u16, u16)>,
}

/// A cluster's nodes, by port, for looking behind the limiter.
#[derive(Debug, Clone)]
pub struct ClusterView {
    ports: Vec<u16>,
}

impl ClusterView {
    /// The cluster whose nodes are at `urls` (`redis://127.0.0.1:<port>`).
    pub fn of_urls(urls: &[String]) -> Self {
        let ports = urls
            .iter()
            .map(|url| url.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap())
            .collect();
        Self { ports }
    }

    /// The seed URLs.
    pub fn urls(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect()
    }

    /// The nodes as the first node that answers lists them.
    pub fn nodes(&self) -> Vec<ClusterNode> {
        for port in &self.ports {
            if let Ok(listing) = try_command_at(*port, &["CLUSTER", "NODES"]) {
                return parse_cluster_nodes(&listing);
            }
        }
        panic!("no node of the cluster answers CLUSTER NODES");
    }

    /// The live masters serving slots, by port, ordered by their first slot.
    pub fn masters(&self) -> Vec<ClusterNode> {
        let mut masters: Vec<ClusterNode> = self
            .nodes()
            .into_iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .collect();
        masters.sort_by_key(|m| m.slots[0].0);
        masters
    }

    /// The port of the master serving `slot`.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        self.masters()
            .into_iter()
            .find(|m| m.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|m| m.port)
            .expect("every slot is served")
    }

    /// The port of the master serving `user`'s keys.
    pub fn master_of(&self, user: &UserId) -> u16 {
        self.master_of_slot(slot_of(user))
    }

    /// A replica of the master at `port`.
    pub fn replica_of(&self, port: u16) -> u16 {
        let nodes = self.nodes();
        let master = nodes.iter().find(|n| n.port == port).expect("a known master");
        nodes
            .iter()
            .find(|n| n.master_id.as_deref() == Some(master.id.as_str()) && !n.failed)
            .map(|n| n.port)
            .expect("the master has a replica")
    }

    /// Runs one command on the node at `port`.
    pub fn command(&self, port: u16, args: &[&str]) -> String {
        command_at(port, args)
    }

    /// A count from the node's `INFO section` (`cmdstat_evalsha`,
    /// `total_reads_processed`, `errorstat_MOVED`…), 0 when absent.
    pub fn info(&self, port: u16, section: &str, field: &str) -> u64 {
        info_value(&command_at(port, &["INFO", section]), field)
    }

    /// Waits until every live node sees every slot served and agrees on
    /// the masters.
    pub fn wait_until_settled(&self) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            if self.settled() {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not settle in {SETTLE_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn settled(&self) -> bool {
        let mut layouts = Vec::new();
        for port in &self.ports {
            let Ok(info) = try_command_at(*port, &["CLUSTER", "INFO"]) else { continue };
            if !info.contains("cluster_state:ok") || !info.contains("cluster_slots_ok:16384") {
                return false;
            }
            let Ok(listing) = try_command_at(*port, &["CLUSTER", "NODES"]) else { return false };
            let mut masters: Vec<(u16, Vec<(u16, u16)>)> = parse_cluster_nodes(&listing)
                .into_iter()
                .filter(|n| n.master && !n.failed && !n.slots.is_empty())
                .map(|n| (n.port, n.slots))
                .collect();
            masters.sort();
            layouts.push(masters);
        }
        !layouts.is_empty() && layouts.windows(2).all(|w| w[0] == w[1])
    }
}

/// Parses `CLUSTER NODES`.
fn parse_cluster_nodes(listing: &str) -> Vec<ClusterNode> {
    listing
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let address = fields[1].split('@').next().unwrap();
            let port = address.rsplit(':').next().unwrap().parse().unwrap();
            let flags = fields[2];
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| match s.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None => (s.parse().unwrap(), s.parse().unwrap()),
                })
                .collect();
            ClusterNode {
                id: fields[0].to_owned(),
                port,
                master: flags.contains("master"),
                failed: flags.split(',').any(|f| f == "fail" || f == "fail?"),
                master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                slots,
            }
        })
        .collect()
}

/// A user id no other test uses whose keys live on the master at `port`.
pub fn user_on(view: &ClusterView, port: u16, prefix: &str) -> UserId {
    let ranges = view.masters().into_iter().find(|m| m.port == port).expect("a master").slots;
    user_in(|slot| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)), prefix)
}

/// A user id no other test uses whose slot satisfies `wanted`.
pub fn user_in(wanted: impl Fn(u16) -> bool, prefix: &str) -> UserId {
    loop {
        let user = crate::limiter::unique_user(prefix);
        if wanted(slot_of(&user)) {
            return user;
        }
    }
}

/// A cluster of a test's own: 3 masters, 3 replicas, killed when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    servers: Vec<RedisServer>,
    view: ClusterView,
}

impl RedisCluster {
    /// Starts 3 masters and 3 replicas (a node is failed after
    /// `node_timeout_ms` without an answer; a failed master stops only its
    /// own slots) and joins them with `redis-cli --cluster create`.
    pub fn start(node_timeout_ms: u64) -> Self {
        Self::start_with(3, 1, node_timeout_ms)
    }

    /// Starts `masters` masters with `replicas` replicas each.
    pub fn start_with(masters: usize, replicas: usize, node_timeout_ms: u64) -> Self {
        let timeout = node_timeout_ms.to_string();
        let servers: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    &timeout,
                    "--cluster-require-full-coverage",
                    "no",
                ])
            })
            .collect();
        let addresses: Vec<String> =
            servers.iter().map(|s| format!("127.0.0.1:{}", s.port())).collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let view = ClusterView { ports: servers.iter().map(RedisServer::port).collect() };
        view.wait_until_settled();
        // And every replica attached (a fresh node lists itself as a master
        // until it learns its role).
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while view.nodes().iter().filter(|n| !n.master).count() < masters * replicas {
            assert!(Instant::now() < deadline, "the replicas did not attach in {SETTLE_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { servers, view }
    }

    /// The view of it.
    pub fn view(&self) -> &ClusterView {
        &self.view
    }

    /// Every node's URL (the seeds).
    pub fn urls(&self) -> Vec<String> {
        self.view.urls()
    }

    /// Kills the node at `port` with SIGKILL; the view stops asking it.
    pub fn kill(&mut self, port: u16) {
        let server = self.servers.iter_mut().find(|s| s.port() == port).expect("a node");
        server.kill();
        self.view.ports.retain(|p| *p != port);
    }

    /// Runs `redis-cli --cluster` with `args` against the first live node.
    pub fn redis_cli(&self, args: &[&str]) -> String {
        let seed = format!("127.0.0.1:{}", self.view.ports[0]);
        let mut command = Command::new("redis-cli");
        command.arg("--cluster").arg(args[0]).arg(&seed).args(&args[1..]);
        let output = command.output().expect("redis-cli runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "redis-cli --cluster {args:?} failed: {text}");
        text
    }
}
