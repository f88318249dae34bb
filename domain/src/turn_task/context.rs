//! What every turn of the process uses, shared by the service that admits
//! turns and the tasks that generate them: the ports, the tunables, and the
//! process's bookkeeping of its running turns.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::capacity::ProviderGate;
use crate::clock::Clock;
use crate::lifecycle::Lifecycle;
use crate::live::LiveOutputs;
use crate::observe::{Endpoint, TurnObserver};
use crate::ports::{FileRepository, ModelProvider, Tools, TurnBus, TurnRepository};
use crate::tokens::TokenCounter;

/// Tunables of the turn path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnPolicy {
    /// The longest a reply may take before the turn is ended as timed out;
    /// also how long an unwritten end of a turn is retried.
    pub max_duration: Duration,
    /// How often a generating turn's output and heartbeat are saved.
    pub checkpoint_interval: Duration,
    /// `turns.max_output_tokens`: the most output one turn may produce.
    pub max_output_tokens: u64,
    /// `rate_limit.min_output_tokens`: under a token budget, the fewest
    /// output tokens a turn is admitted with.
    pub min_output_tokens: u64,
    /// `turns.coalesce_ms`: deltas arriving within this of the last batch
    /// sent go out together (zero: each chunk on its own).
    pub coalesce: Duration,
    /// `turns.idempotency_ttl_secs`: how long an `Idempotency-Key` is held.
    pub idempotency_ttl: Duration,
    /// `turns.max_tool_rounds`: the most rounds of tool calls one turn runs.
    pub max_tool_rounds: u32,
}

impl TurnPolicy {
    /// Missed heartbeats after which a turn is taken for abandoned: three
    /// intervals, so one slow checkpoint write (or a brief pause of its
    /// instance) does not end a live turn.
    pub const STALE_AFTER_INTERVALS: u32 = 3;

    /// How old a heartbeat may be before the sweep ends its turn.
    pub fn stale_after(&self) -> Duration {
        self.checkpoint_interval * Self::STALE_AFTER_INTERVALS
    }
}

/// The ports and bookkeeping of the turn path, behind one `Arc`: a turn's
/// task holds it for as long as it runs, whatever became of its request.
/// A clone shares the bookkeeping (`live`, `lifecycle`).
#[derive(Debug, Clone)]
pub(crate) struct TurnContext {
    pub(crate) turns: Arc<dyn TurnRepository>,
    pub(crate) provider: Arc<dyn ModelProvider>,
    /// The tokenizer: input estimates, output caps, usage nobody reported.
    pub(crate) tokens: Arc<dyn TokenCounter>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) policy: TurnPolicy,
    /// The output of the turns generating here, for `GET` and checkpoints.
    pub(crate) live: LiveOutputs,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) observer: Arc<dyn TurnObserver>,
    /// The turns' journals and cancel requests, shared with other instances.
    pub(crate) bus: Arc<dyn TurnBus>,
    /// The files turns may read; `None`: no files (a turn naming one is
    /// refused).
    pub(crate) files: Option<Arc<dyn FileRepository>>,
    /// The tools offered to a turn that has files.
    pub(crate) tools: Option<Arc<dyn Tools>>,
    /// The provider's shared capacity; `None`: turns go upstream at once.
    pub(crate) gate: Option<ProviderGate>,
}

/// Which endpoint a turn came from and when it was admitted, for the
/// observer's durations.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured {
    pub(crate) endpoint: Endpoint,
    pub(crate) since: Instant,
}
