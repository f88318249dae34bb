//! A PostgreSQL server of a test's own (`initdb` + `pg_ctl` on a free
//! loopback port, trust auth, no fsync), so a test can stop it hard and
//! start it again without touching the shared server. PostgreSQL refuses
//! to run as root: as root, the cluster belongs to the `postgres` user and
//! every command runs as that user.
//!
//! The methods are synchronous (process spawns) and bounded in time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::redis_server::free_port;

/// How long `pg_ctl` may take to start or stop the server.
const PG_CTL_WAIT_SECS: &str = "30";

/// A running PostgreSQL cluster, stopped and removed when dropped.
#[derive(Debug)]
pub struct PostgresServer {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

/// The newest installed PostgreSQL's binaries.
fn bin_dir() -> PathBuf {
    let root = PathBuf::from("/usr/lib/postgresql");
    let mut versions: Vec<u32> = std::fs::read_dir(&root)
        .expect("PostgreSQL is installed")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    root.join(versions.last().expect("a PostgreSQL version").to_string()).join("bin")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl PostgresServer {
    /// Creates a cluster in a temporary directory and starts it.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("pantheon-pg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let server = Self { port: free_port(), dir, bin: bin_dir() };
        if is_root() {
            let chown = Command::new("chown").arg("postgres:postgres").arg(&server.dir).status();
            assert!(chown.unwrap().success(), "chown the cluster directory");
        }
        let data = server.data();
        server.run("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"]);
        server.start_again();
        server
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// One of the cluster's binaries, as `postgres` when we are root.
    fn command(&self, binary: &str) -> Command {
        let path = self.bin.join(binary);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        command.current_dir(&self.dir);
        command
    }

    /// Runs one of the cluster's binaries, asserting it succeeds.
    fn run(&self, binary: &str, args: &[&str]) -> Output {
        let output = self.command(binary).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{binary} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// A URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' -c fsync=off",
            self.port,
            self.dir.display()
        );
        let data = self.data();
        let log = self.dir.join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "-t", PG_CTL_WAIT_SECS, "start"],
        );
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "PostgreSQL did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `pg_ctl stop -m immediate`: every backend is killed at once, as in a
    /// crash; open connections break mid-query.
    pub fn stop_immediately(&self) {
        let data = self.data();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "-t", PG_CTL_WAIT_SECS, "stop"]);
    }

    /// Creates database `name`.
    pub fn create_database(&self, name: &str) {
        let port = self.port.to_string();
        self.run("createdb", &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", name]);
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.command("pg_ctl").args(["-D", &data, "-m", "immediate", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
