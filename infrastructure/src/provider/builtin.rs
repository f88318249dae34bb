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
//! `usage` with Pantheon's own tokenizer — the input (with the tool rounds
//! sent back), and the reply text it sent — so a test can tell exactly what
//! a turn was charged.
//!
//! Its tool use is as deterministic, so a turn's rounds can be tested
//! without an upstream: offered tools and files and no round yet, it calls
//! `file_read` once per file (`call_0`, `call_1`…, the first 2,048 bytes
//! of each) and stops; asked again with the results, its reply begins with
//! one line per result of the last round (`Read 12 bytes of a.txt: "…"`,
//! the first 60 characters of the text or the error, on one line).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use pantheon_domain::ports::{ModelProvider, ReplyEvent, ReplyRequest, ReplyStream};
use pantheon_domain::tool::{FILE_READ, ToolCall, ToolResult};
use pantheon_domain::{FinishReason, OutputMeter, ProviderError, TokenCounter, Usage};

/// Inputs containing this fail mid-reply.
pub const FAIL_MARKER: &str = "[[builtin:fail]]";

/// How much of each file the builtin model reads.
pub const READ_LENGTH: u64 = 2_048;
/// How many characters of a result its reply repeats.
const SHOWN_CHARS: usize = 60;

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

    /// Its calls for a first round: one `file_read` of each file.
    pub fn tool_calls(request: &ReplyRequest) -> Vec<ToolCall> {
        request
            .files
            .iter()
            .enumerate()
            .map(|(i, file)| ToolCall {
                id: format!("call_{i}"),
                name: FILE_READ.to_owned(),
                arguments: format!(
                    r#"{{"file_id":"{}","offset":0,"length":{READ_LENGTH}}}"#,
                    file.id
                ),
            })
            .collect()
    }

    /// The line its reply gives a result of the last round.
    fn result_line(request: &ReplyRequest, call: &ToolCall, result: &ToolResult) -> String {
        let content: serde_json::Value = serde_json::from_str(&result.content).unwrap_or_default();
        let text = |key: &str| content.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        let named = result.file.and_then(|id| request.files.iter().find(|f| f.id == id));
        let asked = || {
            serde_json::from_str::<serde_json::Value>(&call.arguments)
                .ok()
                .and_then(|a| a.get("file_id").and_then(|v| v.as_str()).map(str::to_owned))
        };
        let name = text("filename")
            .or_else(|| named.map(|f| f.filename.clone()))
            .or_else(asked)
            .unwrap_or_else(|| "?".to_owned());
        let shown = result.error.clone().or_else(|| text("text")).unwrap_or_default();
        let shown: String =
            shown.chars().take(SHOWN_CHARS).map(|c| if c.is_control() { ' ' } else { c }).collect();
        format!("Read {} bytes of {name}: \"{shown}\"\n", result.bytes)
    }

    /// A first round's reply: the calls, at the chunks' pace.
    fn calling(&self, request: &ReplyRequest) -> ReplyStream {
        let calls = Self::tool_calls(request).into_iter().map(ReplyEvent::ToolCall).collect();
        let usage = Usage::of(self.input_tokens(request), 0);
        self.paced(calls, None, FinishReason::Stop, usage)
    }

    /// The tokens of the prompt it was sent: the input and the rounds.
    fn input_tokens(&self, request: &ReplyRequest) -> u64 {
        let tokens = self.tokens.as_ref();
        let rounds: u64 = request.rounds.iter().map(|r| self.round_tokens(tokens, r)).sum();
        tokens.count(&request.input) + rounds
    }

    /// `events`, each due one `chunk_delay` after the one before (from the
    /// reply's start), failing at `fail_at`, then the end.
    fn paced(
        &self,
        events: Vec<ReplyEvent>,
        fail_at: Option<usize>,
        finish_reason: FinishReason,
        usage: Usage,
    ) -> ReplyStream {
        let delay = self.chunk_delay;
        let began = tokio::time::Instant::now();
        let items = futures::stream::iter(events.into_iter().enumerate()).then(
            move |(i, event)| async move {
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
                    _ => Ok(event),
                }
            },
        );
        let finished = futures::stream::once(async move {
            Ok(ReplyEvent::Finished { finish_reason, usage: Some(usage) })
        });
        items.chain(finished).boxed()
    }
}

#[async_trait]
impl ModelProvider for BuiltinProvider {
    async fn reply(&self, request: ReplyRequest) -> Result<ReplyStream, ProviderError> {
        let offered = request.tools.iter().any(|t| t.name == FILE_READ);
        if offered && !request.files.is_empty() && request.rounds.is_empty() {
            return Ok(self.calling(&request));
        }
        let mut chunks: Vec<String> = match request.rounds.last() {
            Some(round) => {
                round.calls.iter().map(|(c, r)| Self::result_line(&request, c, r)).collect()
            }
            None => Vec::new(),
        };
        chunks.extend(Self::chunks(&request.input));
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
        let usage = Usage::of(self.input_tokens(&request), self.tokens.count(&output));
        let deltas = chunks.into_iter().map(ReplyEvent::Delta).collect();
        Ok(self.paced(deltas, fail_at, finish_reason, usage))
    }
}

#[cfg(test)]
mod tests {
    use pantheon_domain::tool::{FileRef, ToolRound, ToolSpec};
    use pantheon_domain::{FileId, SessionId};

    use super::*;
    use crate::settings::TokenizerKind;
    use crate::tokenizer::Tiktoken;

    fn provider() -> BuiltinProvider {
        BuiltinProvider::new(Duration::ZERO, Arc::new(Tiktoken::new(TokenizerKind::O200k)))
    }

    fn file(name: &str) -> FileRef {
        FileRef {
            id: FileId::new(),
            filename: name.into(),
            content_type: "text/plain".into(),
            bytes: 10,
        }
    }

    fn request(input: &str, files: Vec<FileRef>, rounds: Vec<ToolRound>) -> ReplyRequest {
        let tool = ToolSpec { name: FILE_READ, description: "reads", parameters: "{}" };
        ReplyRequest {
            session_id: SessionId::new(),
            input: input.into(),
            history: Vec::new(),
            max_output_tokens: 4_096,
            tools: if files.is_empty() { Vec::new() } else { vec![tool] },
            files,
            rounds,
        }
    }

    async fn events(request: ReplyRequest) -> Vec<ReplyEvent> {
        match provider().reply(request).await {
            Ok(stream) => stream.filter_map(|e| async move { e.ok() }).collect().await,
            Err(_) => Vec::new(),
        }
    }

    fn text(events: &[ReplyEvent]) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                ReplyEvent::Delta(d) => Some(d.as_str()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn offered_files_and_no_round_yet_it_reads_each_file_then_stops() {
        let files = vec![file("a.txt"), file("b.md")];
        let got = events(request("summarise", files.clone(), Vec::new())).await;
        let calls: Vec<ReplyEvent> = files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                ReplyEvent::ToolCall(ToolCall {
                    id: format!("call_{i}"),
                    name: FILE_READ.into(),
                    arguments: format!(r#"{{"file_id":"{}","offset":0,"length":2048}}"#, f.id),
                })
            })
            .collect();
        assert_eq!(got[..2], calls[..]);
        let tokens = Tiktoken::new(TokenizerKind::O200k);
        let usage = Usage::of(tokens.count("summarise"), 0);
        assert_eq!(
            got.get(2),
            Some(&ReplyEvent::Finished { finish_reason: FinishReason::Stop, usage: Some(usage) })
        );
        assert_eq!(got.len(), 3);
    }

    #[tokio::test]
    async fn asked_again_it_begins_with_a_line_per_result_of_the_last_round() {
        let (a, b) = (file("report.txt"), file("b.txt"));
        let call = |i: usize, file: &FileRef| ToolCall {
            id: format!("call_{i}"),
            name: FILE_READ.into(),
            arguments: format!(r#"{{"file_id":"{}"}}"#, file.id),
        };
        let long = format!("line one\nline two {}", "x".repeat(100));
        let read = ToolResult {
            content: serde_json::json!({"filename": "report.txt", "text": long}).to_string(),
            file: Some(a.id),
            bytes: 123,
            error: None,
        };
        let refused = ToolResult {
            content: r#"{"error":"offset 9 is past the end"}"#.into(),
            file: Some(b.id),
            bytes: 0,
            error: Some("offset 9 is past the end".into()),
        };
        let stale = ToolRound { text: String::new(), calls: vec![(call(0, &b), refused.clone())] };
        let last = ToolRound {
            text: String::new(),
            calls: vec![(call(0, &a), read), (call(1, &b), refused)],
        };
        let got = events(request("hi there", vec![a, b], vec![stale, last])).await;
        let shown = format!("line one line two {}", "x".repeat(42));
        assert_eq!(
            text(&got),
            format!(
                "Read 123 bytes of report.txt: \"{shown}\"\n\
                 Read 0 bytes of b.txt: \"offset 9 is past the end\"\n\
                 You said: hi there"
            )
        );
        assert!(!got.iter().any(|e| matches!(e, ReplyEvent::ToolCall(_))), "no second round");
    }

    #[tokio::test]
    async fn without_files_or_tools_it_replies_as_ever() {
        let mut plain = request("a b", Vec::new(), Vec::new());
        assert_eq!(text(&events(plain.clone()).await), "You said: a b");
        plain.files = vec![file("a.txt")];
        assert_eq!(text(&events(plain).await), "You said: a b", "files but no tools offered");
    }
}
