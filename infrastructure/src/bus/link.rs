//! Connections to the Redis (one node, or a cluster through redis-rs's
//! routing) for the turn bus. The bus's commands are safe to send again
//! (an append names its entry's id; a read or a publish changes nothing
//! that counts), so unlike the limiter's scripts they may ride a
//! connection that retries them.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{MultiplexedConnection, PubSub};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, Pipeline, RedisResult};

/// A connection, to one node or to the cluster.
#[derive(Clone)]
pub enum Conn {
    /// One Redis.
    Single(MultiplexedConnection),
    /// A Redis Cluster: commands routed by their key's slot.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "Conn::Single",
            Self::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl Conn {
    /// Runs `cmd`.
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Self::Single(conn) => cmd.query_async(conn).await,
            Self::Cluster(conn) => cmd.query_async(conn).await,
        }
    }

    /// Runs `pipe` (its commands on one key, so one node).
    pub async fn pipe(&mut self, pipe: &Pipeline) -> RedisResult<()> {
        match self {
            Self::Single(conn) => pipe.query_async(conn).await,
            Self::Cluster(conn) => pipe.query_async(conn).await,
        }
    }
}

/// Where the Redis is, and how long a call may take.
#[derive(Debug, Clone)]
pub struct Target {
    clients: Vec<Client>,
    cluster: bool,
    timeout: Duration,
}

impl Target {
    /// One Redis at `url`, or a cluster seeded by `urls`.
    ///
    /// # Errors
    /// A URL redis-rs cannot parse.
    pub fn new(urls: &[String], cluster: bool, timeout: Duration) -> RedisResult<Self> {
        let clients =
            urls.iter().map(|url| Client::open(url.as_str())).collect::<Result<_, _>>()?;
        Ok(Self { clients, cluster, timeout })
    }

    /// A new connection whose calls may take `response` (a blocking read's
    /// wait, plus the usual timeout).
    pub async fn connect(&self, response: Duration) -> RedisResult<Conn> {
        let connect = self.timeout.max(Duration::from_millis(250));
        if self.cluster {
            let nodes = self.clients.iter().map(|c| c.get_connection_info().clone());
            let client = ClusterClient::builder(nodes)
                .connection_timeout(connect)
                .response_timeout(response)
                .build()?;
            return Ok(Conn::Cluster(client.get_async_connection().await?));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(response));
        let client = self.clients.first().ok_or_else(no_node)?;
        Ok(Conn::Single(client.get_multiplexed_async_connection_with_config(&config).await?))
    }

    /// A subscriber on the `attempt`-th node (round robin over the seeds:
    /// classic pub/sub reaches every node of a cluster).
    pub async fn subscriber(&self, attempt: usize) -> RedisResult<PubSub> {
        let client = self.clients.get(attempt % self.clients.len().max(1)).ok_or_else(no_node)?;
        let connect = self.timeout.max(Duration::from_millis(250));
        tokio::time::timeout(connect, client.get_async_pubsub())
            .await
            .map_err(|_| timed_out("subscribe"))?
    }

    /// The longest a call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// The error of a call that ran out of time.
pub fn timed_out(what: &'static str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

fn no_node() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no Redis URL"))
}

/// The bus's shared connection, opened when first needed and again after
/// it failed, so the process starts (and the bus recovers) whether or not
/// Redis is up.
#[derive(Debug, Clone)]
pub struct Link {
    target: Target,
    conn: Arc<Mutex<Option<Conn>>>,
}

impl Link {
    /// A link to `target`, not connected yet.
    pub fn new(target: Target) -> Self {
        Self { target, conn: Arc::default() }
    }

    /// Where it goes.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The connection, opened if need be.
    ///
    /// # Errors
    /// The connect's.
    pub async fn get(&self) -> RedisResult<Conn> {
        let open = self.conn.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(conn) = open {
            return Ok(conn);
        }
        let conn = self.target.connect(self.target.timeout).await?;
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the connection after a failure: the next call opens another.
    pub fn reset(&self) {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}
