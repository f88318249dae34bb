//! A `redis-server` of a test's own: started on a free loopback port with no
//! persistence, so a test can kill it, restart it, pause it or flush its
//! scripts without disturbing any other test.
//!
//! The methods are synchronous and short (a process spawn, one command over
//! a fresh connection); every wait is bounded in tries and time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started server may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a killed server may take to be reaped.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two polls of a starting or exiting process.
const POLL: Duration = Duration::from_millis(10);
/// Ports tried when another process takes the free port first.
const START_ATTEMPTS: usize = 5;

/// A loopback port nothing listens on (bound, then released): connecting to
/// it is refused. Another process may take it later; tests use it at once.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// A free port below 55,536 whose port + 10,000 is free too (a cluster
/// node's bus port).
fn bus_free_port() -> u16 {
    for _ in 0..100 {
        let port = free_port();
        if port < 55_536 && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port with a free bus port");
}

/// A `redis://` URL on which connections are refused.
pub fn refused_url() -> String {
    format!("redis://127.0.0.1:{}", free_port())
}

/// A running `redis-server` process, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    /// Arguments besides the port, bind address, persistence and files.
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with `extra` arguments (e.g. `--cluster-enabled yes`)
    /// on a free port whose port + 10,000 (a cluster bus) is free too.
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("pantheon-redis-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let extra = extra.iter().map(|a| (*a).to_owned()).collect();
        let mut server = Self { port: bus_free_port(), dir, extra, child: None };
        let mut attempt = 1;
        loop {
            match server.launch() {
                Ok(()) => return server,
                Err(e) if attempt >= START_ATTEMPTS => {
                    panic!("redis-server did not start in {attempt} attempts: {e}")
                }
                // The port was taken between `free_port` and the bind: try another.
                Err(_) => {
                    server.kill();
                    server.port = bus_free_port();
                    attempt += 1;
                }
            }
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (logs, a cluster node's `nodes.conf`).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// A count from `INFO`: `field` of `section` (e.g. `stats`,
    /// `total_reads_processed`), 0 when absent.
    pub fn info_field(&self, section: &str, field: &str) -> u64 {
        let info = self.command(&["INFO", section]);
        info_value(&info, field)
    }

    /// Kills the process with SIGKILL (no shutdown, no goodbye to clients)
    /// and waits until it has exited.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = child.kill();
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
        panic!("redis-server on port {} did not exit after SIGKILL", self.port);
    }

    /// Kills the server (if running) and starts a new, empty one on the same
    /// port, waiting until it answers `PING`.
    pub fn restart(&mut self) {
        self.kill();
        // The listening socket is reusable at once (redis sets SO_REUSEADDR);
        // retry a little anyway in case the kernel is slow to release it.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("redis-server did not restart on port {}: {e}", self.port)
                }
                Err(_) => {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Stalls every client for `ms` milliseconds (`CLIENT PAUSE ms ALL`):
    /// connections stay open, commands wait.
    pub fn pause(&self, ms: u64) {
        let reply = self.command(&["CLIENT", "PAUSE", &ms.to_string(), "ALL"]);
        assert_eq!(reply, "OK", "CLIENT PAUSE");
    }

    /// Runs one command over a fresh connection and renders its reply as
    /// text (`OK`, a string, a number, or the debug form of anything else).
    pub fn command(&self, args: &[&str]) -> String {
        command_at(self.port, args)
    }

    /// How many times `EVALSHA` has run since the server started
    /// (`cmdstat_evalsha:calls=N,...` of `INFO commandstats`; 0 when never).
    pub fn evalsha_calls(&self) -> u64 {
        let info = self.command(&["INFO", "commandstats"]);
        info_value(&info, "cmdstat_evalsha")
    }

    /// Spawns the process on `self.port` and waits for `PING`; an error when
    /// it exits first (e.g. the port is taken) or does not answer in time.
    fn launch(&mut self) -> Result<(), String> {
        let log = self.dir.join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(&self.extra)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("redis-server exited with {status}; its log:\n{log}"));
            }
            if self.ping() {
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
        Err(format!("redis-server did not answer PING in {START_TIMEOUT:?}"))
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else { return false };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
        redis::cmd("PING").query::<String>(&mut conn).is_ok_and(|pong| pong == "PONG")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first number of `field` in an `INFO` reply: `field:N` or
/// `field:calls=N,...` (`cmdstat_*`, `errorstat_*`); 0 when absent.
pub fn info_value(info: &str, field: &str) -> u64 {
    info.lines().find_map(|line| line.trim().strip_prefix(field)?.strip_prefix(':')).map_or(
        0,
        |rest| {
            let rest = rest.split_once('=').map_or(rest, |(_, v)| v);
            rest.split(',').next().unwrap().trim().parse().unwrap()
        },
    )
}

/// Runs one command on the Redis at `127.0.0.1:port` over a fresh
/// connection and renders its reply as text (`OK`, a string, a number, or
/// the debug form of anything else); panics on an error reply.
pub fn command_at(port: u16, args: &[&str]) -> String {
    try_command_at(port, args).unwrap_or_else(|e| panic!("redis {args:?} on {port} failed: {e}"))
}

/// [`command_at`], with the error instead of a panic (a node may be down).
pub fn try_command_at(port: u16, args: &[&str]) -> redis::RedisResult<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    Ok(match cmd.query::<redis::Value>(&mut conn)? {
        redis::Value::Okay => "OK".to_owned(),
        redis::Value::SimpleString(s) => s,
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        redis::Value::Int(n) => n.to_string(),
        redis::Value::Nil => "nil".to_owned(),
        other => format!("{other:?}"),
    })
}
