//! The `builtin` provider: deterministic and offline, for local runs, tests
//! and benchmarks. It echoes the input back as a short reply, one word a
//! chunk, with an optional pause before each chunk.
//!
//! The pauses keep a schedule: the n-th chunk is due n × `chunk_delay`
//! after the reply began, as a real upstream generates at its own pace
//! whatever its reader is doing. A reader late for one chunk (a busy
//! server) finds the next one already due instead of starting a further
//! full pause, so lateness does not add up over a reply.
//!
//! An input containing [`FAIL_MARKER`] makes it fail halfway through its
//! reply, so the failure path (partial output persisted, `failed` status)
//! can be exercised end to end.
//!
//! Like a real model it stops at the request's `max_output_tokens`
//! (`finish_reason` `length`, the last chunk cut to fit), and it reports its
//! `usage` with Pantheon's own tokenizer — the input, and the reply it
//! sent — so a test can tell exactly what a turn was charged.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use pantheon_domain::ports::{ModelProvider, ReplyEvent, ReplyRequest, ReplyStream};
use pantheon_domain::{FinishReason, OutputMeter, ProviderError, TokenCounter, Usage};

/// Inputs containing this fail mid-reply.
pub const FAIL_MARKER: &str = "[[builtin:fail]]";

/// The offline provider.
#[derive(Debug, Clone)]
pub struct BuiltinProvider {
    chunk_delay: Duration,
    tokens: Arc<dyn TokenCounter>,
}

impl BuiltinProvider {
    /// A provider pausing `chunk_delay` before each chunk, counting its
    /// usage with `tokens`.
    pub fn new(chunk_delay: Duration, tokens: Arc<dyn TokenCounter>) -> Self {
        Self { chunk_delay, tokens }
    }

    /// The reply to `input`, as its chunks.
    pub fn chunks(input: &str) -> Vec<String> {
        let words: Vec<&str> = input.split_whitespace().collect();
        let mut chunks = vec!["You said:".to_owned()];
        chunks.extend(words.iter().map(|w| format!(" {w}")));
        chunks
    }
}

#[async_trait]
impl ModelProvider for BuiltinProvider {
    async fn reply(&self, request: ReplyRequest) -> Result<ReplyStream, ProviderError> {
        let mut chunks = Self::chunks(&request.input);
        let fail_at = request.input.contains(FAIL_MARKER).then_some(chunks.len() / 2);
        // The reply is known in advance: cut it at the cap now.
        let mut meter = OutputMeter::new(self.tokens.as_ref(), request.max_output_tokens);
        let (mut output, mut finish_reason) = (String::new(), FinishReason::Stop);
        for (i, chunk) in chunks.iter_mut().enumerate() {
            let accepted = meter.accept(&output, chunk);
            chunk.truncate(accepted.keep);
            output.push_str(chunk);
            if accepted.capped {
                finish_reason = FinishReason::Length;
                chunks.truncate(i + 1);
                chunks.retain(|c| !c.is_empty());
                break;
            }
        }
        let usage = Usage::of(self.tokens.count(&request.input), self.tokens.count(&output));
        let delay = self.chunk_delay;
        let began = tokio::time::Instant::now();
        let deltas = futures::stream::iter(chunks.into_iter().enumerate()).then(
            move |(i, chunk)| async move {
                if !delay.is_zero() {
                    let due = u32::try_from(i + 1)
                        .ok()
                        .and_then(|n| began.checked_add(delay.saturating_mul(n)));
                    match due {
                        Some(due) => tokio::time::sleep_until(due).await,
                        None => tokio::time::sleep(delay).await,
                    }
                }
                match fail_at {
                    Some(at) if i == at => {
                        Err(ProviderError::Failed("builtin failure marker".into()))
                    }
                    _ => Ok(ReplyEvent::Delta(chunk)),
                }
            },
        );
        let finished = futures::stream::once(async move {
            Ok(ReplyEvent::Finished { finish_reason, usage: Some(usage) })
        });
        Ok(deltas.chain(finished).boxed())
    }
}
