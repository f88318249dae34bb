//! The tokenizer's cost per turn: loading each encoding once, then for a
//! short turn (the bench's JSON turn: a few words in, their echo out), a
//! typical one (60 words in, a 300-word reply in one-word chunks) and a
//! long one (4,000 words in, a reply metered to a 4,096-token cap): the
//! input estimate, the output metered chunk by chunk as it streams, and the
//! final count of the reply, in microseconds per turn.
//!
//! Run: `cargo bench -p pantheon-infrastructure --bench tokenizer`
//! (`-- --quick` runs a tenth of the iterations).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use pantheon_domain::{OutputMeter, TokenCounter};
use pantheon_infrastructure::settings::TokenizerKind;
use pantheon_infrastructure::tokenizer::Tiktoken;

struct Turn {
    name: &'static str,
    input: String,
    chunks: Vec<String>,
    cap: u64,
}

fn words(n: usize, prefix: &str) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix}{} ", ["time", "model", "token", "budget", "reply"][i % 5]))
        .collect()
}

fn turns() -> Vec<Turn> {
    vec![
        Turn {
            name: "short (bench A)",
            input: "turn from the bench".into(),
            chunks: ["You said:", " turn", " from", " the", " bench"].map(String::from).to_vec(),
            cap: 4_096,
        },
        Turn {
            name: "typical",
            input: words(60, "").concat(),
            chunks: words(300, " "),
            cap: 4_096,
        },
        Turn {
            name: "long, capped",
            input: words(4_000, "").concat(),
            chunks: words(6_000, " "),
            cap: 4_096,
        },
    ]
}

/// Microseconds per turn for `turn`: estimate, meter, final count.
fn per_turn(tokenizer: &Tiktoken, turn: &Turn, iterations: u32) -> (f64, f64, f64) {
    let (mut estimate, mut meter_time, mut count) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..iterations {
        let started = Instant::now();
        black_box(tokenizer.count(&turn.input));
        estimate += started.elapsed();

        let started = Instant::now();
        let mut meter = OutputMeter::new(tokenizer, turn.cap);
        let mut output = String::new();
        for chunk in &turn.chunks {
            let accepted = meter.accept(&output, chunk);
            output.push_str(&chunk[..accepted.keep]);
            if accepted.capped {
                break;
            }
        }
        meter_time += started.elapsed();

        let started = Instant::now();
        black_box(tokenizer.count(&output));
        count += started.elapsed();
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(iterations);
    (us(estimate), us(meter_time), us(count))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    println!(
        "| encoding | load (ms, once) | turn | estimate (µs) | metering (µs) | final count (µs) |"
    );
    println!("|---|---|---|---|---|---|");
    for kind in [TokenizerKind::O200k, TokenizerKind::Cl100k] {
        let started = Instant::now();
        let tokenizer = Tiktoken::new(kind);
        black_box(tokenizer.count("warm"));
        let load = started.elapsed().as_secs_f64() * 1e3;
        for turn in turns() {
            let iterations = match (turn.name, quick) {
                ("long, capped", true) => 2,
                ("long, capped", false) => 20,
                (_, true) => 200,
                (_, false) => 2_000,
            };
            let (estimate, metering, count) = per_turn(&tokenizer, &turn, iterations);
            println!(
                "| {kind:?} | {load:.0} | {} | {estimate:.1} | {metering:.1} | {count:.1} |",
                turn.name
            );
        }
    }
}
