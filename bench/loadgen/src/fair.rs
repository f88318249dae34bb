//! `fair`: open-loop streaming turns from heavy and light users, for
//! `bench/fairness.sh`.
//!
//! The first `heavy_users` lines of the users file are heavy users, the
//! rest light. Each light user submits turns at `rate_per_light` a second,
//! each heavy user `heavy_multiplier` times as often, as Poisson arrivals
//! (or at fixed intervals, each user's first at a random phase), for
//! `warmup_secs + secs`, whatever the answers: arrivals never wait for
//! earlier turns. Turns go round-robin over the instances, through
//! `POST /api/v1/sessions/{id}/turns/stream`; a heavy turn's input is about
//! `heavy_prompt_tokens` tokens of text, a light one's
//! `light_prompt_tokens` (three-letter words and a space: four characters
//! a token, as the fake upstream counts), after a `[[scenario:user:n]]`
//! tag by which `bench/fairness.sh` finds the turn in the upstream's log.
//!
//! Out: one JSON line a turn (`kind: "turn"`): `user`, `heavy`,
//! `instance`, `tag`, `phase` (`warmup` or `measure`, by its submission),
//! `t_submit`, `t_created`, `t_queued`, `place`, `t_first_delta`, `t_end`
//! (Unix seconds, or `null`), `status` (`completed`, `failed`, `http`,
//! `error`), `code` (the problem's code, the HTTP status, or the error),
//! `prompt_tokens` and `output_tokens` (the `turn.completed` turn's
//! usage); and first a `kind: "run"` line with the run's clock: `t_start`,
//! `t_measure` (the end of the warm-up), `t_stop` (the last arrival).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::client;

/// The shape of the offered load.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The first N lines of the users file are heavy users.
    #[arg(long, default_value_t = 1)]
    pub heavy_users: usize,
    /// Names the run in the turns' tags.
    #[arg(long, default_value = "fair")]
    pub scenario: String,
    #[arg(long, default_value_t = 8000)]
    pub heavy_prompt_tokens: usize,
    #[arg(long, default_value_t = 200)]
    pub light_prompt_tokens: usize,
    /// Seconds of measured arrivals (after the warm-up).
    #[arg(long)]
    pub secs: f64,
    #[arg(long, default_value_t = 0.0)]
    pub warmup_secs: f64,
    /// Turns a second of each light user.
    #[arg(long)]
    pub rate_per_light: f64,
    /// A heavy user's rate over a light one's.
    #[arg(long, default_value_t = 10.0)]
    pub heavy_multiplier: f64,
    /// Fixed intervals instead of Poisson arrivals.
    #[arg(long)]
    pub fixed: bool,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The longest one stream may take, in seconds.
    #[arg(long = "timeout-secs", default_value_t = 180)]
    pub timeout_secs: u64,
}

fn now_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// splitmix64: enough randomness for arrivals and filler text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

const WORDS: [&str; 32] = [
    "the", "and", "for", "are", "but", "not", "you", "all", "any", "can", "had", "her", "was",
    "one", "our", "out", "day", "get", "has", "him", "his", "how", "man", "new", "now", "old",
    "see", "two", "way", "who", "did", "its",
];

/// `[[tag]] ` and `tokens` three-letter words.
fn input(tag: &str, tokens: usize, rng: &mut Rng) -> String {
    let mut text = String::with_capacity(tokens * 4 + tag.len() + 8);
    let _ = write!(text, "[[{tag}]]");
    for _ in 0..tokens {
        text.push(' ');
        text.push_str(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
    }
    text
}

/// What one turn's stream told.
#[derive(Debug, Default)]
struct Record {
    t_created: Option<f64>,
    t_queued: Option<f64>,
    place: Option<Value>,
    t_first_delta: Option<f64>,
    t_end: Option<f64>,
    status: &'static str,
    code: Option<String>,
    prompt_tokens: Option<i64>,
    output_tokens: Option<i64>,
}

/// The event name and parsed data of one SSE block (`None` for comments).
fn parse_block(block: &[u8]) -> Option<(String, Value)> {
    let text = std::str::from_utf8(block).ok()?;
    let mut name = None;
    let mut data = String::new();
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("event:") {
            name = Some(n.trim().to_owned());
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push_str(d.trim_start());
        }
    }
    let data = serde_json::from_str(&data).unwrap_or(Value::Null);
    Some((name?, data))
}

async fn one_turn(http: Client, url: String, token: String, body: Value) -> Record {
    let mut record = Record { status: "error", ..Record::default() };
    let response = match http.post(&url).bearer_auth(&token).json(&body).send().await {
        Ok(response) => response,
        Err(e) => {
            record.code = Some(format!("request: {e}"));
            record.t_end = Some(now_s());
            return record;
        }
    };
    if response.status() != StatusCode::OK {
        let status = response.status();
        let problem: Value = response.json().await.unwrap_or(Value::Null);
        record.status = "http";
        record.code = Some(match problem["code"].as_str() {
            Some(code) => format!("{} {code}", status.as_u16()),
            None => status.as_u16().to_string(),
        });
        record.t_end = Some(now_s());
        return record;
    }
    let mut stream = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::with_capacity(4096);
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                record.code = Some(format!("body: {e}"));
                record.t_end = Some(now_s());
                return record;
            }
        };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buffer.drain(..end + 2).collect();
            let Some((name, data)) = parse_block(&block) else { continue };
            let t = now_s();
            match name.as_str() {
                "turn.created" => record.t_created = Some(t),
                "turn.queued" => {
                    record.t_queued.get_or_insert(t);
                    record.place.get_or_insert(data["place"].clone());
                }
                "turn.delta" => {
                    record.t_first_delta.get_or_insert(t);
                }
                "turn.completed" => {
                    record.status = "completed";
                    record.t_end = Some(t);
                    let usage = &data["turn"]["usage"];
                    record.prompt_tokens = usage["input_tokens"].as_i64();
                    record.output_tokens = usage["output_tokens"].as_i64();
                    return record;
                }
                "turn.failed" => {
                    record.status = "failed";
                    record.t_end = Some(t);
                    record.code = data["error"]["code"].as_str().map(str::to_owned);
                    return record;
                }
                _ => {}
            }
        }
    }
    record.code = Some("stream ended without a terminal event".into());
    record.t_end = Some(now_s());
    record
}

struct User {
    index: usize,
    heavy: bool,
    token: String,
    session: String,
}

pub async fn fair(
    bases: &[String],
    users: Vec<(String, String)>,
    options: Options,
    out: &PathBuf,
) -> Result<(), String> {
    if bases.is_empty() {
        return Err("--bases names no instance".into());
    }
    if options.rate_per_light <= 0.0 || options.heavy_multiplier <= 0.0 {
        return Err("--rate-per-light and --heavy-multiplier must be positive".into());
    }
    let options = Arc::new(options);
    let http = client(256, Duration::from_secs(options.timeout_secs));
    let next_instance = Arc::new(AtomicUsize::new(0));
    let bases: Arc<Vec<String>> = Arc::new(bases.to_vec());
    let t_start = now_s();
    let start = Instant::now();
    let measure_at = options.warmup_secs;
    let stop_at = options.warmup_secs + options.secs;
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let mut generators = Vec::new();
    for (i, (token, session)) in users.into_iter().enumerate() {
        let user = User { index: i, heavy: i < options.heavy_users, token, session };
        let (options, http, bases, next_instance, sender) =
            (options.clone(), http.clone(), bases.clone(), next_instance.clone(), sender.clone());
        generators.push(tokio::spawn(async move {
            let mut rng =
                Rng(options.seed ^ (user.index as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
            let rate = if user.heavy {
                options.rate_per_light * options.heavy_multiplier
            } else {
                options.rate_per_light
            };
            let gap = |rng: &mut Rng| {
                if options.fixed { 1.0 / rate } else { -rng.unit().ln() / rate }
            };
            let mut at = if options.fixed { rng.unit() / rate } else { gap(&mut rng) };
            let mut n = 0usize;
            let mut turns = Vec::new();
            while at < stop_at {
                tokio::time::sleep_until(start + Duration::from_secs_f64(at)).await;
                let tag = format!("{}:u{}:{n}", options.scenario, user.index);
                let tokens = if user.heavy {
                    options.heavy_prompt_tokens
                } else {
                    options.light_prompt_tokens
                };
                let body = json!({ "input": input(&tag, tokens, &mut rng) });
                let instance = next_instance.fetch_add(1, Ordering::Relaxed) % bases.len();
                let url =
                    format!("{}/api/v1/sessions/{}/turns/stream", bases[instance], user.session);
                let phase = if at < measure_at { "warmup" } else { "measure" };
                let (http, token, sender) = (http.clone(), user.token.clone(), sender.clone());
                let (index, heavy) = (user.index, user.heavy);
                turns.push(tokio::spawn(async move {
                    let t_submit = now_s();
                    let r = one_turn(http, url, token, body).await;
                    let _ = sender.send(json!({
                        "kind": "turn", "user": index, "heavy": heavy, "instance": instance,
                        "tag": tag, "phase": phase, "t_submit": t_submit,
                        "t_created": r.t_created, "t_queued": r.t_queued, "place": r.place,
                        "t_first_delta": r.t_first_delta, "t_end": r.t_end,
                        "status": r.status, "code": r.code,
                        "prompt_tokens": r.prompt_tokens, "output_tokens": r.output_tokens,
                    }));
                }));
                n += 1;
                at += gap(&mut rng);
            }
            for turn in turns {
                let _ = turn.await;
            }
        }));
    }
    drop(sender);
    let t_measure = t_start + measure_at;
    let t_stop = t_start + stop_at;
    let mut lines = vec![json!({
        "kind": "run", "scenario": options.scenario, "t_start": t_start,
        "t_measure": t_measure, "t_stop": t_stop, "bases": bases.len(),
        "heavy_users": options.heavy_users, "rate_per_light": options.rate_per_light,
        "heavy_multiplier": options.heavy_multiplier,
    })];
    while let Some(line) = receiver.recv().await {
        lines.push(line);
    }
    for generator in generators {
        generator.await.map_err(|e| e.to_string())?;
    }
    let mut text = String::new();
    for line in &lines {
        let _ = writeln!(text, "{line}");
    }
    std::fs::write(out, text).map_err(|e| format!("{}: {e}", out.display()))?;
    let turns: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "turn").collect();
    let count = |f: &dyn Fn(&Value) -> bool| turns.iter().filter(|t| f(t)).count();
    println!(
        "RESULT scenario={} turns={} completed={} failed={} http={} errors={} queued={} out={}",
        options.scenario,
        turns.len(),
        count(&|t| t["status"] == "completed"),
        count(&|t| t["status"] == "failed"),
        count(&|t| t["status"] == "http"),
        count(&|t| t["status"] == "error"),
        count(&|t| !t["t_queued"].is_null()),
        out.display()
    );
    Ok(())
}
