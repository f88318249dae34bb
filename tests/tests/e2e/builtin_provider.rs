//! The builtin provider's pace, on tokio's paused clock: chunks keep their
//! schedule from the reply's start, for a prompt reader and a late one.

use futures::StreamExt;
use pantheon_domain::SessionId;
use pantheon_domain::ports::{ModelProvider, ReplyEvent, ReplyRequest};
use pantheon_infrastructure::provider::BuiltinProvider;
use pantheon_infrastructure::settings::TokenizerKind;
use pantheon_infrastructure::tokenizer::Tiktoken;
use tokio::time::{Duration, Instant};

fn request(input: &str) -> ReplyRequest {
    ReplyRequest {
        session_id: SessionId::new(),
        input: input.into(),
        history: Vec::new(),
        max_output_tokens: 4_096,
        files: Vec::new(),
        tools: Vec::new(),
        rounds: Vec::new(),
    }
}

/// When each delta arrived, in ms after the reply began, for a reader
/// that spends `work` on each delta before asking for the next.
async fn arrivals(work: Duration) -> Vec<u128> {
    let tokens = std::sync::Arc::new(Tiktoken::new(TokenizerKind::O200k));
    let provider = BuiltinProvider::new(Duration::from_millis(50), tokens);
    let began = Instant::now();
    let mut stream = provider.reply(request("a b c d")).await.unwrap_or_else(|_| unreachable!());
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
