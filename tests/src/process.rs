//! The real `pantheon` binary, spawned by a test: for what is the process's
//! own behaviour (a crash, a start, an open-files limit, a signal), which an
//! in-test server sharing the test's runtime cannot show.
//!
//! The binary is configured through `PANTHEON__…` variables only and runs in
//! a directory of its own, so no `pantheon.toml` or `.env` of the checkout
//! reaches it. Its stdout (the log) and stderr go to one file the test can
//! read. Every wait is
//! bounded; the process is killed when its handle is dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::redis_server::free_port;

/// How long a started server may take to answer `/healthz`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a signalled server may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

/// The `pantheon` binary of this build, built once per test run when
/// `cargo test` has not built it (`cargo test` builds a package's binaries
/// only for that package's own integration tests). Built with the whole
/// workspace selected, so features unify as in `cargo test --workspace` and
/// nothing is rebuilt twice.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build("pantheon"))
}

/// The `migration` CLI of this build, built as [`binary`] is.
pub fn migration_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build("migration"))
}

fn build(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/e2e-<hash> → target/<profile>/<name>
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["build", "--workspace", "--bin", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the {name} binary failed");
    let binary = profile_dir.join(name);
    assert!(binary.exists(), "no binary at {}", binary.display());
    binary
}

/// What a finished command printed.
#[derive(Debug)]
pub struct CommandOutput {
    /// Its exit status.
    pub status: std::process::ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `binary args` to completion (bounded) as a server is run: in a
/// directory of its own, with only `PATH` and `env` in its environment, so
/// no `.env` or `pantheon.toml` of the checkout reaches it.
pub async fn run(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> CommandOutput {
    let dir = std::env::temp_dir().join(format!("pantheon-cmd-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(binary)
        .args(args)
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{} starts: {e}", binary.display()));
    let what = format!("{} {args:?}", binary.display());
    let status = wait_bounded(&mut child, EXIT_TIMEOUT, &what).await;
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let output = CommandOutput { status, stdout: read(&out), stderr: read(&err) };
    let _ = std::fs::remove_dir_all(&dir);
    output
}

/// Waits for `child` to exit, polling; past `limit` it is killed and the
/// test fails naming `what`.
pub async fn wait_bounded(
    child: &mut Child,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How to start one server process.
#[derive(Debug, Clone)]
pub struct ServerCommand {
    env: Vec<(String, String)>,
    nofile: Option<u64>,
}

impl ServerCommand {
    /// A server on `database_url` with a random secret-free development
    /// setup; `PANTHEON__SERVER__ADDR` is chosen at spawn.
    pub fn new(database_url: &str) -> Self {
        let mut command = Self { env: Vec::new(), nofile: None };
        command.set("PANTHEON__DATABASE__URL", database_url);
        command.set("PANTHEON__LOG__FORMAT", "json");
        // Any free port: processes of parallel tests must not share 9464.
        command.set("PANTHEON__SERVER__METRICS_ADDR", "127.0.0.1:0");
        command
    }

    /// Sets a variable, e.g. `("PANTHEON__TURNS__CHECKPOINT_MS", "200")`.
    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs the server under `prlimit --nofile=N:N`.
    pub fn nofile(&mut self, limit: u64) -> &mut Self {
        self.nofile = Some(limit);
        self
    }

    /// Starts the process on a free port without waiting for it.
    pub fn start(&self) -> ServerProcess {
        let binary = binary();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("pantheon-proc-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let output_path = dir.join("output.log");
        let output = std::fs::File::create(&output_path).unwrap();
        let mut command = match self.nofile {
            Some(limit) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={limit}:{limit}")).arg("--").arg(binary);
                c
            }
            None => Command::new(binary),
        };
        command
            .current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PANTHEON__SERVER__ADDR", format!("127.0.0.1:{port}"))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output);
        let child = command.spawn().expect("the pantheon binary starts");
        let (command, port_retries) = (self.clone(), 0);
        ServerProcess { child: Some(child), port, dir, output_path, command, port_retries }
    }

    /// Starts the process and waits until `/healthz` answers.
    pub async fn spawn(&self) -> ServerProcess {
        let mut process = self.start();
        process.wait_ready().await;
        process
    }
}

/// A running `pantheon` process.
#[derive(Debug)]
pub struct ServerProcess {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    output_path: PathBuf,
    /// What started it, to start it again on another port.
    command: ServerCommand,
    /// Starts again because another process took the port first.
    port_retries: u32,
}

impl ServerProcess {
    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id (of `prlimit`'s exec'd child: the same process).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Creates a session for `token`'s user on this server; its id.
    pub async fn create_session(&self, client: &reqwest::Client, token: &str) -> String {
        let session: serde_json::Value = client
            .post(format!("{}/api/v1/sessions", self.address()))
            .bearer_auth(token)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        session["id"].as_str().unwrap().to_owned()
    }

    /// Starts a streamed turn; the response, its body unread.
    pub async fn stream(
        &self,
        client: &reqwest::Client,
        token: &str,
        session: &str,
        input: &str,
    ) -> reqwest::Response {
        client
            .post(format!("{}/api/v1/sessions/{session}/turns/stream", self.address()))
            .bearer_auth(token)
            .json(&serde_json::json!({ "input": input }))
            .send()
            .await
            .unwrap()
    }

    /// What it logged and wrote to stderr so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output_path).unwrap_or_default()
    }

    /// Waits (bounded) until `/healthz` answers `200`; panics with the
    /// process's stderr if it exits or never answers.
    pub async fn wait_ready(&mut self) {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().unwrap();
        let url = format!("{}/healthz", self.address());
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_exit_status() {
                // The port was free when chosen, but a process of a test
                // running beside this one bound it first: start again on
                // another (the failed start served nothing).
                if self.output().contains("Address already in use") && self.port_retries < 3 {
                    let retries = self.port_retries + 1;
                    *self = self.command.start();
                    self.port_retries = retries;
                    continue;
                }
                panic!("pantheon exited ({status}) before it was ready:\n{}", self.output());
            }
            if let Ok(response) = client.get(&url).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "pantheon was not ready within {READY_TIMEOUT:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The exit status, if the process has exited.
    pub fn try_exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// `SIGKILL`, then waits for the process to be reaped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `SIGTERM`, then waits (bounded) for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.pid().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success(), "kill -TERM {pid}");
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_exit_status() {
                self.child = None;
                return status;
            }
            assert!(started.elapsed() < EXIT_TIMEOUT, "pantheon did not exit after SIGTERM");
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
