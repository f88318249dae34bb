//! The output meter's cost per streamed reply, by script: 6,000 CJK
//! characters one per delta (a run the encodings never split), 6,000 emoji
//! one per delta, and 6,000 English words one per delta, each metered to
//! the same 4,096-token cap in both encodings. Prints the CPU time per reply
//! (this thread's, from `/proc/thread-self/schedstat`; wall time where that
//! is missing) beside the CPU of counting the kept reply once (the least
//! any meter could spend), the bytes handed to the tokenizer per byte of the
//! reply kept, and the CJK ÷ English CPU ratio.
//!
//! Run: `cargo bench -p pantheon-infrastructure --bench meter`
//! (`-- --quick` runs 20 iterations instead of 200).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use pantheon_domain::{OutputMeter, TokenCounter};
use pantheon_infrastructure::settings::TokenizerKind;
use pantheon_infrastructure::tokenizer::Tiktoken;

const CAP: u64 = 4_096;
const DELTAS: usize = 6_000;

/// `Tiktoken`, adding up the bytes each call is handed.
#[derive(Debug)]
struct Tallied {
    inner: Tiktoken,
    bytes: AtomicUsize,
}

impl Tallied {
    fn add(&self, text: &str) {
        self.bytes.fetch_add(text.len(), Ordering::Relaxed);
    }
}

impl TokenCounter for Tallied {
    fn count(&self, text: &str) -> u64 {
        self.add(text);
        self.inner.count(text)
    }

    fn fit(&self, text: &str, max: u64) -> usize {
        self.add(text);
        self.inner.fit(text, max)
    }

    fn settled_len(&self, text: &str) -> usize {
        self.add(text);
        self.inner.settled_len(text)
    }

    fn token_ends(&self, text: &str, ends: &mut Vec<usize>) {
        self.add(text);
        self.inner.token_ends(text, ends);
    }
}

fn replies() -> Vec<(&'static str, Vec<String>)> {
    // Common ideographs, no punctuation: one piece for both encodings.
    let cjk: Vec<char> = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明社".chars().collect();
    let emoji: Vec<char> = "🙂😀😂🥲😍🤔🙃😎🥳😭👍🎉🔥🌟🍕🚀".chars().collect();
    let english = ["time", "model", "token", "budget", "reply"];
    vec![
        ("CJK", (0..DELTAS).map(|i| cjk[(i * 7) % cjk.len()].to_string()).collect()),
        ("emoji", (0..DELTAS).map(|i| emoji[(i * 5) % emoji.len()].to_string()).collect()),
        ("English", (0..DELTAS).map(|i| format!(" {}", english[i % english.len()])).collect()),
    ]
}

/// This thread's CPU time so far, in seconds (wall time when unavailable).
fn cpu_seconds(origin: Instant) -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or_else(|| origin.elapsed().as_secs_f64(), |ns| ns as f64 / 1e9)
}

/// Meters `deltas` once: the reply kept.
fn meter(counter: &dyn TokenCounter, deltas: &[String]) -> String {
    let mut meter = OutputMeter::new(counter, CAP);
    let mut output = String::new();
    for delta in deltas {
        let accepted = meter.accept(&output, delta);
        output.push_str(&delta[..accepted.keep]);
        if accepted.capped {
            break;
        }
    }
    output
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let iterations: u32 = if quick { 20 } else { 200 };
    let origin = Instant::now();
    println!(
        "| encoding | reply | kept (bytes) | kept (tokens) | CPU per reply (ms) | one count of the kept reply (ms) | bytes tokenized per reply byte |"
    );
    println!("|---|---|---|---|---|---|---|");
    for kind in [TokenizerKind::O200k, TokenizerKind::Cl100k] {
        let tallied = Tallied { inner: Tiktoken::new(kind), bytes: AtomicUsize::new(0) };
        black_box(tallied.inner.count("warm"));
        let mut cpu = Vec::new();
        for (name, deltas) in replies() {
            let output = meter(&tallied, &deltas);
            let per_byte =
                tallied.bytes.swap(0, Ordering::Relaxed) as f64 / output.len().max(1) as f64;
            let started = cpu_seconds(origin);
            for _ in 0..iterations {
                black_box(meter(&tallied, &deltas));
            }
            let ms = (cpu_seconds(origin) - started) * 1e3 / f64::from(iterations);
            tallied.bytes.store(0, Ordering::Relaxed);
            let started = cpu_seconds(origin);
            for _ in 0..iterations {
                black_box(tallied.inner.count(&output));
            }
            let once = (cpu_seconds(origin) - started) * 1e3 / f64::from(iterations);
            let tokens = tallied.inner.count(&output);
            println!(
                "| {kind:?} | {name} | {} | {tokens} | {ms:.2} | {once:.2} | {per_byte:.2} |",
                output.len()
            );
            cpu.push(ms);
        }
        println!("| {kind:?} | CJK ÷ English CPU | | | {:.2} | | |", cpu[0] / cpu[2]);
    }
}
