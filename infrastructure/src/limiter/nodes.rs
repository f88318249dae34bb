//! The Redis deployment the limiter talks to: one Redis, or the masters of
//! a Redis Cluster. Holds one multiplexed connection per node (the script
//! loaded on each as it connects) and the slot map, shared by the actor
//! (which groups each batch by node) and its pipelines in flight (which
//! follow `MOVED` replies). Both sit behind short `std` locks that are never
//! held across an `.await`.
//!
//! Why not redis-rs's `ClusterConnection`: it routes and retries a pipeline
//! as one unit, so a `MOVED` for one check would resend every check of the
//! pipeline, re-running (and counting again) those that had already run,
//! and it cannot say which node failed. Here each check is re-routed alone
//! and each node's health is its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, RedisError, RedisResult, Script,
};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::topology::{NodeAddr, SlotMap, parse_cluster_slots};

/// What is deployed.
#[derive(Debug)]
enum Layout {
    /// One Redis: every slot on it, no `CLUSTER SLOTS`.
    Single,
    /// A cluster found from these seeds.
    Cluster { seeds: Vec<NodeAddr> },
}

type Cell = Arc<OnceCell<MultiplexedConnection>>;

/// The nodes, their connections and who serves which slot.
#[derive(Debug)]
pub struct Nodes {
    layout: Layout,
    /// Connection settings (credentials, TLS, TCP) every node shares; each
    /// node's address is put in for it.
    base: ConnectionInfo,
    script: Arc<Script>,
    timeout: Duration,
    connections: Mutex<HashMap<NodeAddr, Cell>>,
    slots: Mutex<SlotMap>,
    /// A `MOVED` was seen: the whole map may be stale (a resharding moves
    /// many slots, a failover all of a node's).
    stale: AtomicBool,
}

impl Nodes {
    /// One Redis at `info`.
    pub fn single(info: ConnectionInfo, script: Arc<Script>, timeout: Duration) -> Self {
        let node = node_of(&info);
        Self::new(Layout::Single, info, node, script, timeout)
    }

    /// A cluster reached through `seeds`; `None` without any. Until its
    /// layout is read, every slot is taken to be on the first seed.
    pub fn cluster(
        seeds: Vec<ConnectionInfo>,
        script: Arc<Script>,
        timeout: Duration,
    ) -> Option<Self> {
        let addrs: Vec<NodeAddr> = seeds.iter().map(node_of).collect();
        let first = addrs.first()?.clone();
        let base = seeds.into_iter().next()?;
        Some(Self::new(Layout::Cluster { seeds: addrs }, base, first, script, timeout))
    }

    fn new(
        layout: Layout,
        base: ConnectionInfo,
        first: NodeAddr,
        script: Arc<Script>,
        timeout: Duration,
    ) -> Self {
        Self {
            layout,
            base,
            script,
            timeout,
            connections: Mutex::new(HashMap::new()),
            slots: Mutex::new(SlotMap::single(first)),
            stale: AtomicBool::new(false),
        }
    }

    /// Whether this is a cluster (with a slot map to keep up to date).
    pub fn is_cluster(&self) -> bool {
        matches!(self.layout, Layout::Cluster { .. })
    }

    /// The limiter's script.
    pub fn script(&self) -> &Arc<Script> {
        &self.script
    }

    /// The longest one exchange may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The node serving `slot`, as far as this instance knows.
    pub fn node_for(&self, slot: u16) -> NodeAddr {
        self.slots().node(slot).clone()
    }

    /// The node serving each of `slots`, under one lock.
    pub fn nodes_for(&self, slots: impl Iterator<Item = u16>) -> Vec<NodeAddr> {
        let map = self.slots();
        slots.map(|slot| map.node(slot).clone()).collect()
    }

    /// Every node serving a slot.
    pub fn masters(&self) -> Vec<NodeAddr> {
        self.slots().masters().cloned().collect()
    }

    /// How many nodes serve a slot.
    pub fn master_count(&self) -> usize {
        self.slots().master_count()
    }

    /// Whether `node` still serves a slot.
    pub fn serves(&self, node: &NodeAddr) -> bool {
        self.slots().serves(node)
    }

    /// A `MOVED` reply: `slot` is on `node` now, and the rest of the map is
    /// to be read again.
    pub fn moved(&self, slot: u16, node: NodeAddr) {
        self.slots().assign(slot, node);
        self.stale.store(true, Ordering::Relaxed);
    }

    /// Takes the "map is stale" flag: true once per `MOVED` burst.
    pub fn take_stale(&self) -> bool {
        self.is_cluster() && self.stale.swap(false, Ordering::Relaxed)
    }

    /// The connection to `node`, opened (and the script loaded) if there is
    /// none; concurrent callers share one attempt.
    ///
    /// # Errors
    /// The connect's or the `SCRIPT LOAD`'s.
    pub async fn connection(&self, node: &NodeAddr) -> RedisResult<MultiplexedConnection> {
        let cell = self.cell(node);
        let connection = cell
            .get_or_try_init(|| async {
                let client = redis::Client::open(self.info(node))?;
                connect(&client, &self.script, self.timeout).await
            })
            .await?;
        Ok(connection.clone())
    }

    /// Opens a fresh connection to `node` in place of the old one (a probe).
    ///
    /// # Errors
    /// The connect's or the `SCRIPT LOAD`'s.
    pub async fn reconnect(&self, node: &NodeAddr) -> RedisResult<MultiplexedConnection> {
        self.forget(node);
        self.connection(node).await
    }

    /// Drops the connection to `node` (it is failing, or serves nothing).
    pub fn forget(&self, node: &NodeAddr) {
        self.connections.lock().unwrap_or_else(PoisonError::into_inner).remove(node);
    }

    /// Reads the cluster's layout (`CLUSTER SLOTS`) from the first node that
    /// answers: the known masters, then the seeds. A single Redis has
    /// nothing to read.
    ///
    /// # Errors
    /// The last node's error when none answers.
    pub async fn refresh(&self) -> RedisResult<()> {
        let Layout::Cluster { seeds } = &self.layout else { return Ok(()) };
        let mut candidates = self.masters();
        candidates
            .extend(seeds.iter().filter(|s| !candidates.contains(s)).cloned().collect::<Vec<_>>());
        let mut last = None;
        for node in candidates {
            let deadline = Instant::now() + self.timeout.max(Duration::from_millis(250));
            match tokio::time::timeout_at(deadline, self.cluster_slots(&node)).await {
                Ok(Ok(ranges)) if !ranges.is_empty() => {
                    self.slots().apply(&ranges);
                    self.retire_connections();
                    return Ok(());
                }
                Ok(Ok(_)) => {
                    last =
                        Some(RedisError::from((redis::ErrorKind::Client, "CLUSTER SLOTS is empty")))
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(timed_out("CLUSTER SLOTS")),
            }
        }
        Err(last.unwrap_or_else(|| timed_out("CLUSTER SLOTS")))
    }

    async fn cluster_slots(&self, node: &NodeAddr) -> RedisResult<Vec<(u16, u16, NodeAddr)>> {
        let mut connection = self.connection(node).await?;
        let reply = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut connection).await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                // A dead node's connection is not worth keeping for the next try.
                self.forget(node);
                return Err(e);
            }
        };
        parse_cluster_slots(reply, &node.host).map_err(|message| {
            RedisError::from((redis::ErrorKind::Client, "CLUSTER SLOTS", message))
        })
    }

    /// Closes connections to nodes that serve no slot (replicas used as
    /// seeds, masters that failed over).
    fn retire_connections(&self) {
        let map = self.slots().clone();
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|node, _| map.serves(node));
    }

    fn cell(&self, node: &NodeAddr) -> Cell {
        let mut connections = self.connections.lock().unwrap_or_else(PoisonError::into_inner);
        connections.entry(node.clone()).or_default().clone()
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, SlotMap> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How to reach `node`: the shared settings with its address.
    fn info(&self, node: &NodeAddr) -> ConnectionInfo {
        let addr = match (&self.layout, self.base.addr()) {
            (Layout::Single, _) => return self.base.clone(),
            (Layout::Cluster { .. }, ConnectionAddr::TcpTls { insecure, tls_params, .. }) => {
                ConnectionAddr::TcpTls {
                    host: node.host.clone(),
                    port: node.port,
                    insecure: *insecure,
                    tls_params: tls_params.clone(),
                }
            }
            (Layout::Cluster { .. }, _) => ConnectionAddr::Tcp(node.host.clone(), node.port),
        };
        self.base.clone().set_addr(addr)
    }
}

/// The node a URL names.
fn node_of(info: &ConnectionInfo) -> NodeAddr {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            NodeAddr::new(host.clone(), *port)
        }
        ConnectionAddr::Unix(path) => NodeAddr::new(path.display().to_string(), 0),
        other => NodeAddr::new(other.to_string(), 0),
    }
}

/// The error of a call that ran out of time.
pub fn timed_out(what: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what}: Redis call exceeded redis.timeout_ms"),
    ))
}

/// Opens a multiplexed connection and loads the script, both bounded by
/// `timeout` (connect gets a little more: a TCP handshake is not a command).
///
/// # Errors
/// The [`RedisError`] of the connect or load (a timeout is an I/O error).
pub async fn connect(
    client: &Client,
    script: &Script,
    timeout: Duration,
) -> RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(250))))
        .set_response_timeout(Some(timeout));
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    script.load_async(&mut conn).await?;
    Ok(conn)
}
