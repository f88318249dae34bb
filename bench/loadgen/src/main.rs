//! `pantheon-loadgen`: the load generator of `bench/run.sh`.
//!
//! - `free-port`: prints a free loopback TCP port;
//! - `setup`: mints a token for each of N distinct bench users (with the
//!   configured `auth.jwt_secret`, exactly as `pantheon token` does) and
//!   creates one session each, writing `token session` lines for wrk's Lua
//!   scripts and for `sse`;
//! - `turns`: N sequential JSON turns (the per-turn cost measurement);
//! - `sse`: one streaming turn per line of the users file, all at once,
//!   counting events to each stream's terminal one;
//! - `resume`, `cancel`: streams resumed, and turns cancelled, across two
//!   instances (`bench/follow.sh`);
//! - `upstream`, `fair`: a fake OpenAI-compatible upstream with a hard
//!   capacity, and open-loop turns of heavy and light users over several
//!   instances (`bench/fairness.sh`);
//! - `upload`: files streamed to `POST /api/v1/files`, N at a time, from a
//!   fresh user or one per line of a users file (`bench/uploads.sh`,
//!   `COMPARE_AFTER_FILE=1 bench/compare.sh`).
//!
//! Every loop is bounded in count, every request in time, and all traffic
//! goes to the `--base` URL (127.0.0.1 in `bench/run.sh`).

// A benchmark tool, not the server: a setup step that fails should stop the
// run loudly, so panicking on it is the right behaviour here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use pantheon_infrastructure::Settings;
use pantheon_infrastructure::auth::TokenMinter;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

mod fair;
mod follow;
mod sse;
mod upload;
mod upstream;

/// The load generator of `bench/run.sh`.
#[derive(Debug, Parser)]
#[command(name = "pantheon-loadgen")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a free TCP port on 127.0.0.1.
    FreePort,
    /// Mint tokens for N users and create a session for each; write
    /// `token session` lines.
    Setup {
        /// The server, e.g. `http://127.0.0.1:8080`.
        #[arg(long)]
        base: String,
        /// How many distinct users.
        #[arg(long)]
        users: usize,
        /// User ids are `<prefix>-<i>`.
        #[arg(long)]
        prefix: String,
        /// The tier claim of the tokens.
        #[arg(long)]
        tier: Option<String>,
        /// Where the `token session` lines go.
        #[arg(long)]
        out: PathBuf,
        /// Sessions created at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Submit `count` JSON turns one after the other, rotating through the
    /// users file; every one must answer `201`.
    Turns {
        #[arg(long)]
        base: String,
        #[arg(long)]
        users: PathBuf,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value = "Hello, Pantheon benchmark")]
        input: String,
    },
    /// One streaming turn per line of the users file, all concurrent.
    Sse {
        #[arg(long)]
        base: String,
        #[arg(long)]
        users: PathBuf,
        #[arg(long)]
        input: String,
        /// Do not open the connections before the clock starts (measures
        /// the connect burst too).
        #[arg(long)]
        cold: bool,
        /// The longest one stream may take.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Streams cut at random points and resumed on either instance until
    /// their end, checked for missing and repeated characters.
    Resume {
        /// The instances, comma-separated.
        #[arg(long, value_delimiter = ',')]
        bases: Vec<String>,
        #[arg(long)]
        users: PathBuf,
        #[arg(long)]
        trials: usize,
        #[arg(long)]
        input: String,
    },
    /// Turns streamed on the first instance, cancelled from the second.
    Cancel {
        /// The two instances, comma-separated.
        #[arg(long, value_delimiter = ',')]
        bases: Vec<String>,
        #[arg(long)]
        users: PathBuf,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        input: String,
    },
    /// A fake OpenAI-compatible `/v1/chat/completions` on 127.0.0.1 that
    /// serves `capacity` requests at once (`429` beyond) at a fixed rate.
    Upstream {
        #[arg(long)]
        port: u16,
        #[command(flatten)]
        config: upstream::Config,
        /// One JSON line per request.
        #[arg(long)]
        log: Option<PathBuf>,
    },
    /// Open-loop streaming turns of heavy and light users, round-robin
    /// over the instances; one JSON line per turn.
    Fair {
        /// The instances, comma-separated.
        #[arg(long, value_delimiter = ',')]
        bases: Vec<String>,
        #[arg(long)]
        users: PathBuf,
        #[command(flatten)]
        options: fair::Options,
        #[arg(long)]
        out: PathBuf,
    },
    /// Upload text files of `bytes` each, `concurrency` at a time, each
    /// body streamed in `chunk-bytes` pieces; every one must answer `201`.
    Upload {
        #[arg(long)]
        base: String,
        /// Mint a token for this user id and make `count` uploads as it.
        #[arg(long, conflicts_with = "users", required_unless_present = "users")]
        user: Option<String>,
        /// Or one upload per line of this `token session` file.
        #[arg(long)]
        users: Option<PathBuf>,
        /// With `--user`: how many uploads.
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// The size of each file.
        #[arg(long)]
        bytes: u64,
        /// The size of each piece of the body as it is sent.
        #[arg(long, default_value_t = 64 * 1024)]
        chunk_bytes: usize,
        /// With `--users`: send the line's session as the form's
        /// `session_id` (its turns then read the file unnamed).
        #[arg(long)]
        attach: bool,
        /// Write `token session file_id` lines (`-` for no session) of the
        /// files stored.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The longest one upload may take.
        #[arg(long, default_value_t = 900)]
        timeout_secs: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let result = runtime.block_on(async move {
        match cli.command {
            Command::FreePort => free_port(),
            Command::Setup { base, users, prefix, tier, out, concurrency } => {
                setup(&base, users, &prefix, tier.as_deref(), &out, concurrency).await
            }
            Command::Turns { base, users, count, input } => {
                turns(&base, &read_users(&users)?, count, &input).await
            }
            Command::Sse { base, users, input, cold, timeout_secs } => {
                let timeout = Duration::from_secs(timeout_secs);
                sse::sse(&base, read_users(&users)?, &input, cold, timeout).await
            }
            Command::Resume { bases, users, trials, input } => {
                follow::resume(&bases, &read_users(&users)?, trials, &input).await
            }
            Command::Cancel { bases, users, count, input } => {
                follow::cancel(&bases, &read_users(&users)?, count, &input).await
            }
            Command::Upstream { port, config, log } => upstream::upstream(port, config, log).await,
            Command::Fair { bases, users, options, out } => {
                fair::fair(&bases, read_users(&users)?, options, &out).await
            }
            Command::Upload {
                base,
                user,
                users,
                count,
                concurrency,
                bytes,
                chunk_bytes,
                attach,
                out,
                timeout_secs,
            } => {
                let jobs = match (user, users) {
                    (Some(user), _) => {
                        let token = mint(&user)?;
                        (0..count)
                            .map(|_| upload::Job { token: token.clone(), session: None })
                            .collect()
                    }
                    (None, Some(users)) => read_users(&users)?
                        .into_iter()
                        .map(|(token, session)| upload::Job { token, session: Some(session) })
                        .collect(),
                    (None, None) => return Err("--user or --users is required".to_owned()),
                };
                let options = upload::Options {
                    attach,
                    concurrency,
                    bytes,
                    chunk_bytes,
                    timeout: Duration::from_secs(timeout_secs),
                };
                upload::upload(&base, jobs, options, out.as_ref()).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pantheon-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn free_port() -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    println!("{}", listener.local_addr().map_err(|e| e.to_string())?.port());
    Ok(())
}

/// `(token, session id)` pairs from a `token session` file.
fn read_users(path: &PathBuf) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let users: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect();
    if users.is_empty() {
        return Err(format!("{}: no `token session` lines", path.display()));
    }
    Ok(users)
}

/// A token for `user`, minted as `setup` mints them.
fn mint(user: &str) -> Result<String, String> {
    let settings = Settings::load().map_err(|e| e.to_string())?;
    let minter = TokenMinter::new(&settings.auth)?;
    minter.mint(user, None, Duration::from_secs(3 * 3600))
}

fn client(max_idle: usize, timeout: Duration) -> Client {
    Client::builder()
        .pool_max_idle_per_host(max_idle)
        .pool_idle_timeout(Duration::from_secs(300))
        .tcp_nodelay(true)
        .timeout(timeout)
        .build()
        .expect("an HTTP client")
}

async fn setup(
    base: &str,
    users: usize,
    prefix: &str,
    tier: Option<&str>,
    out: &PathBuf,
    concurrency: usize,
) -> Result<(), String> {
    let settings = Settings::load().map_err(|e| e.to_string())?;
    let minter = TokenMinter::new(&settings.auth)?;
    let http = client(concurrency, Duration::from_secs(30));
    let url = format!("{base}/api/v1/sessions");
    let tokens: Vec<String> = (0..users)
        .map(|i| minter.mint(&format!("{prefix}-{i}"), tier, Duration::from_secs(3 * 3600)))
        .collect::<Result<_, _>>()?;
    let sessions: Vec<Result<String, String>> = futures::stream::iter(tokens.iter())
        .map(|token| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let response = http
                    .post(&url)
                    .bearer_auth(token)
                    .json(&json!({ "title": "bench" }))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status();
                let body: Value = response.json().await.map_err(|e| e.to_string())?;
                match (status, body["id"].as_str()) {
                    (StatusCode::CREATED, Some(id)) => Ok(id.to_owned()),
                    _ => Err(format!("creating a session answered {status}: {body}")),
                }
            }
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    let mut lines = String::new();
    for (token, session) in tokens.iter().zip(sessions) {
        writeln!(lines, "{token} {}", session?).map_err(|e| e.to_string())?;
    }
    std::fs::write(out, lines).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("setup: {users} users with a session each in {}", out.display());
    Ok(())
}

async fn turns(
    base: &str,
    users: &[(String, String)],
    count: usize,
    input: &str,
) -> Result<(), String> {
    let http = client(1, Duration::from_secs(30));
    let body = json!({ "input": input });
    let mut created = 0usize;
    for i in 0..count {
        let (token, session) = &users[i % users.len()];
        let response = http
            .post(format!("{base}/api/v1/sessions/{session}/turns"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        if status != StatusCode::CREATED {
            return Err(format!("turn {i} answered {status}: {text}"));
        }
        created += 1;
    }
    println!("RESULT turns={count} created={created}");
    Ok(())
}
