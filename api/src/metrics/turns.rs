//! The turn path's metrics, as the domain's [`TurnObserver`]: limiter
//! decisions, turns by endpoint and final status, time to the first delta
//! and to the end, tokens. Every label set is created here, at start; a
//! turn only indexes and adds.

use std::time::Duration;

use super::histogram::{Histogram, LATENCY_BOUNDS};
use pantheon_domain::limiter::{Decision, Policy};
use pantheon_domain::{Endpoint, TurnObserver, TurnStatus, Usage};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

const ENDPOINTS: [Endpoint; 2] = [Endpoint::Json, Endpoint::Stream];
/// The statuses a turn can end in (`in_progress` never is an end).
const ENDS: [TurnStatus; 4] =
    [TurnStatus::Completed, TurnStatus::Failed, TurnStatus::Cancelled, TurnStatus::Incomplete];

fn end_index(status: TurnStatus) -> Option<usize> {
    ENDS.iter().position(|s| *s == status)
}

fn endpoint_index(endpoint: Endpoint) -> usize {
    match endpoint {
        Endpoint::Json => 0,
        Endpoint::Stream => 1,
    }
}

/// The observer's counters and histograms.
#[derive(Debug)]
pub struct TurnMetrics {
    /// By endpoint, then by [`ENDS`].
    turns: [[Counter; 4]; 2],
    first_delta: Histogram,
    duration: Histogram,
    input_tokens: Counter,
    output_tokens: Counter,
    admitted: Counter,
    skipped: Counter,
    unavailable: Counter,
    /// `limited`, by the policy that bound the refusal (in `Policy::ALL`'s
    /// order).
    limited: [Counter; Policy::ALL.len()],
}

impl TurnMetrics {
    /// Registers the metrics, every label set at zero.
    pub fn new(registry: &mut Registry) -> Self {
        let totals = Family::<Labels, Counter>::default();
        let turns = ENDPOINTS.map(|endpoint| {
            ENDS.map(|status| {
                totals.get_or_create_owned(&vec![
                    ("endpoint", endpoint.as_str()),
                    ("status", status.as_str()),
                ])
            })
        });
        registry.register(
            "pantheon_turns",
            "Turns ended, by endpoint (json, stream) and final status",
            totals,
        );
        let first_delta = Histogram::new(LATENCY_BOUNDS);
        registry.register(
            "pantheon_turn_first_delta_seconds",
            "Seconds from a turn's admission to the first chunk of its reply",
            first_delta.clone(),
        );
        let duration = Histogram::new(LATENCY_BOUNDS);
        registry.register(
            "pantheon_turn_duration_seconds",
            "Seconds from a turn's admission to its end",
            duration.clone(),
        );
        let tokens = Family::<Labels, Counter>::default();
        let input_tokens = tokens.get_or_create_owned(&vec![("direction", "input")]);
        let output_tokens = tokens.get_or_create_owned(&vec![("direction", "output")]);
        registry.register(
            "pantheon_tokens",
            "Tokens ended turns settled at, by direction (input, output)",
            tokens,
        );
        let decisions = Family::<Labels, Counter>::default();
        let outcome = |outcome| decisions.get_or_create_owned(&vec![("outcome", outcome)]);
        let (admitted, skipped, unavailable) =
            (outcome("admitted"), outcome("skipped"), outcome("unavailable"));
        let limited = Policy::ALL.map(|policy| {
            decisions.get_or_create_owned(&vec![("outcome", "limited"), ("policy", policy.name())])
        });
        registry.register(
            "pantheon_limiter_decisions",
            "Limiter decisions on turn submissions: admitted, limited (with the policy that \
             bound the refusal), skipped (fallback allow), unavailable (fallback deny)",
            decisions,
        );
        Self {
            turns,
            first_delta,
            duration,
            input_tokens,
            output_tokens,
            admitted,
            skipped,
            unavailable,
            limited,
        }
    }
}

impl TurnObserver for TurnMetrics {
    fn decided(&self, decision: &Decision) {
        match decision {
            Decision::Admitted(_) => {
                self.admitted.inc();
            }
            Decision::Limited(denial) => {
                let index = Policy::ALL.iter().position(|p| *p == denial.binding);
                if let Some(counter) = index.and_then(|i| self.limited.get(i)) {
                    counter.inc();
                }
            }
            Decision::Skipped(_) => {
                self.skipped.inc();
            }
            Decision::Unavailable(_) => {
                self.unavailable.inc();
            }
        }
    }

    fn first_delta(&self, _: Endpoint, after: Duration) {
        self.first_delta.observe(after.as_secs_f64());
    }

    fn ended(
        &self,
        endpoint: Endpoint,
        status: TurnStatus,
        after: Duration,
        usage: Option<&Usage>,
    ) {
        if let Some(end) = end_index(status) {
            self.turns[endpoint_index(endpoint)][end].inc();
        }
        self.duration.observe(after.as_secs_f64());
        if let Some(usage) = usage {
            self.input_tokens.inc_by(u64::try_from(usage.input_tokens).unwrap_or(0));
            self.output_tokens.inc_by(u64::try_from(usage.output_tokens).unwrap_or(0));
        }
    }
}
