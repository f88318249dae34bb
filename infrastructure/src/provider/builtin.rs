//! The `builtin` provider: deterministic and offline, for local runs, tests
//! and benchmarks. It echoes the input back as a short reply, one word a
//! chunk, with an optional pause before each chunk.
//!
//! An input containing [`FAIL_MARKER`] makes it fail halfway through its
//! reply, so the failure path (partial output persisted, `failed` status)
//! can be exercised end to end.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use pantheon_domain::ports::{ModelProvider, ReplyEvent, ReplyRequest, ReplyStream};
use pantheon_domain::{FinishReason, ProviderError, Usage};

/// Inputs containing this fail mid-reply.
pub const FAIL_MARKER: &str = "[[builtin:fail]]";

/// The offline provider.
#[derive(Debug, Clone, Default)]
pub struct BuiltinProvider {
    chunk_delay: Duration,
}

impl BuiltinProvider {
    /// A provider pausing `chunk_delay` before each chunk.
    pub fn new(chunk_delay: Duration) -> Self {
        Self { chunk_delay }
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
        let chunks = Self::chunks(&request.input);
        let fail_at = request.input.contains(FAIL_MARKER).then_some(chunks.len() / 2);
        let usage = Usage {
            input_tokens: request.input.split_whitespace().count() as i64,
            output_tokens: chunks.len() as i64,
            total_tokens: (request.input.split_whitespace().count() + chunks.len()) as i64,
        };
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
            Ok(ReplyEvent::Finished { finish_reason: FinishReason::Stop, usage: Some(usage) })
        });
        Ok(deltas.chain(finished).boxed())
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use pantheon_domain::SessionId;
    use pantheon_domain::ports::{ModelProvider, ReplyEvent, ReplyRequest};
    use tokio::time::{Duration, Instant};

    use super::BuiltinProvider;

    fn request(input: &str) -> ReplyRequest {
        ReplyRequest { session_id: SessionId::new(), input: input.into(), history: Vec::new() }
    }

    /// When each delta arrived, in ms after the reply began, for a reader
    /// that spends `work` on each delta before asking for the next.
    async fn arrivals(work: Duration) -> Vec<u128> {
        let provider = BuiltinProvider::new(Duration::from_millis(50));
        let began = Instant::now();
        let mut stream =
            provider.reply(request("a b c d")).await.unwrap_or_else(|_| unreachable!());
        let mut at = Vec::new();
        while let Some(Ok(event)) = stream.next().await {
            if let ReplyEvent::Delta(_) = event {
                at.push(began.elapsed().as_millis());
                tokio::time::sleep(work).await;
            }
        }
        at
    }

    #[tokio::test(start_paused = true)]
    async fn chunks_keep_their_schedule_for_a_prompt_reader() {
        assert_eq!(arrivals(Duration::ZERO).await, [50, 100, 150, 200, 250]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_reader_finds_the_due_chunks_without_a_further_pause() {
        // 120 ms on each delta: chunk 2 was due at 100 ms and is read at once
        // at 170 ms; a pause after each read would have made it 220 ms.
        assert_eq!(arrivals(Duration::from_millis(120)).await, [50, 170, 290, 410, 530]);
    }
}
