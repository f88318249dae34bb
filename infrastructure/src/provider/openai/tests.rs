//! The streamed body read into reply events, without a server: chunks are
//! fed as a byte stream, split anywhere, as a network would.

use std::time::Duration;

use futures::StreamExt;
use pantheon_domain::ports::{ModelProvider, ReplyEvent, ReplyRequest};
use pantheon_domain::{FinishReason, ProviderError, SessionId, Usage};

use super::OpenAiProvider;
use super::failure::Secret;
use super::stream::from_bytes;
use crate::settings::{MaxTokensField, OpenAiProviderSettings};

const IDLE: Duration = Duration::from_millis(200);

fn delta(text: &str) -> String {
    let chunk = serde_json::json!({"choices": [{"index": 0, "delta": {"content": text}}]});
    format!("data: {chunk}\n\n")
}

fn finish(reason: &str) -> String {
    let chunk =
        serde_json::json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]});
    format!("data: {chunk}\n\n")
}

const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n";
const DONE: &str = "data: [DONE]\n\n";

/// Feeds `body` cut into pieces of `cut` bytes, then ends (or stalls).
async fn read(body: &str, cut: usize, stall: bool) -> Vec<Result<ReplyEvent, ProviderError>> {
    let pieces: Vec<Result<Vec<u8>, String>> =
        body.as_bytes().chunks(cut).map(|c| Ok(c.to_vec())).collect();
    let bytes = futures::stream::iter(pieces);
    let secret = Secret::new("sk-test".into());
    let stream = if stall {
        from_bytes(bytes.chain(futures::stream::pending()), IDLE, secret)
    } else {
        from_bytes(bytes, IDLE, secret)
    };
    tokio::time::timeout(Duration::from_secs(5), stream.collect()).await.unwrap_or_default()
}

fn text(events: &[Result<ReplyEvent, ProviderError>]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Ok(ReplyEvent::Delta(d)) => Some(d.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn deltas_then_finish_usage_and_done_make_a_completed_reply_however_cut() {
    let body = [delta("Hel"), delta("lo"), finish("stop"), USAGE.into(), DONE.into()].concat();
    for cut in [1, 7, body.len()] {
        let events = read(&body, cut, false).await;
        assert_eq!(text(&events), "Hello", "cut {cut}");
        let usage = Usage { input_tokens: 3, output_tokens: 2, total_tokens: 5 };
        assert_eq!(
            events.last(),
            Some(&Ok(ReplyEvent::Finished {
                finish_reason: FinishReason::Stop,
                usage: Some(usage)
            })),
            "cut {cut}"
        );
    }
}

#[tokio::test]
async fn length_is_kept_usage_may_be_unknown_and_done_may_be_missing() {
    let events = read(&[delta("a"), finish("length")].concat(), 5, false).await;
    assert_eq!(
        events.last(),
        Some(&Ok(ReplyEvent::Finished { finish_reason: FinishReason::Length, usage: None }))
    );
    let ping = "event: ping\ndata: keep going\n\n";
    let silent_after_finish =
        read(&[ping.into(), delta("a"), finish("stop")].concat(), 6, true).await;
    assert_eq!(text(&silent_after_finish), "a");
    assert_eq!(
        silent_after_finish.last(),
        Some(&Ok(ReplyEvent::Finished { finish_reason: FinishReason::Stop, usage: None })),
        "the finish reason makes the reply complete, whatever follows"
    );
    let filtered =
        read(&[delta("a"), finish("content_filter"), DONE.into()].concat(), 9, false).await;
    assert!(matches!(
        filtered.last(),
        Some(Ok(ReplyEvent::Finished { finish_reason: FinishReason::Stop, .. }))
    ));
}

#[tokio::test]
async fn an_error_line_truncation_and_silence_end_in_an_error_after_the_partial_text() {
    let error = "data: {\"error\":{\"message\":\"overloaded, key sk-test\"}}\n\n";
    let cases = [
        (read(&[delta("part"), error.into()].concat(), 4, false).await, "mid-reply"),
        (read(&delta("part"), 4, false).await, "ended before"),
        (read(&delta("part"), 4, true).await, "timed out"),
        (
            read(&[delta("part"), "data: {not json\n\n".into()].concat(), 4, false).await,
            "unreadable",
        ),
    ];
    for (events, expected) in cases {
        assert_eq!(text(&events), "part");
        let last = events.last().map(|e| e.clone().err().map(|e| e.to_string()));
        let message = last.flatten().unwrap_or_default();
        assert!(message.contains(expected), "{message:?} should say {expected:?}");
        assert!(!message.contains("sk-test"), "{message}");
    }
}

#[test]
fn the_request_carries_the_system_prompt_the_history_in_order_and_the_input() {
    let settings = OpenAiProviderSettings {
        base_url: Some("http://127.0.0.1:9/v1".into()),
        model: Some("m".into()),
        system_prompt: Some("Be brief.".into()),
        ..Default::default()
    };
    let provider = OpenAiProvider::new(&settings).map_err(|e| e.to_string());
    let request = ReplyRequest {
        session_id: SessionId::new(),
        input: "third".into(),
        history: vec![("first".into(), "one".into()), ("second".into(), "two".into())],
        max_output_tokens: 64,
        files: Vec::new(),
        tools: Vec::new(),
        rounds: Vec::new(),
    };
    let body = provider.map(|p| serde_json::to_value(p.body(&request)).unwrap_or_default());
    let expected = serde_json::json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first"}, {"role": "assistant", "content": "one"},
            {"role": "user", "content": "second"}, {"role": "assistant", "content": "two"},
            {"role": "user", "content": "third"},
        ],
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": 64,
    });
    assert_eq!(body, Ok(expected));
}

#[test]
fn the_output_cap_goes_in_the_configured_field() {
    let request = ReplyRequest {
        session_id: SessionId::new(),
        input: "hi".into(),
        history: Vec::new(),
        max_output_tokens: 77,
        files: Vec::new(),
        tools: Vec::new(),
        rounds: Vec::new(),
    };
    let fields = [
        (MaxTokensField::MaxTokens, Some(77), None),
        (MaxTokensField::MaxCompletionTokens, None, Some(77)),
        (MaxTokensField::Both, Some(77), Some(77)),
    ];
    for (field, max_tokens, max_completion_tokens) in fields {
        let settings = OpenAiProviderSettings {
            base_url: Some("http://127.0.0.1:9/v1".into()),
            model: Some("m".into()),
            max_tokens_field: field,
            ..Default::default()
        };
        let body = OpenAiProvider::new(&settings)
            .map(|p| serde_json::to_value(p.body(&request)).unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(body.get("max_tokens").and_then(|v| v.as_u64()), max_tokens, "{field:?}");
        let completion = body.get("max_completion_tokens").and_then(|v| v.as_u64());
        assert_eq!(completion, max_completion_tokens, "{field:?}");
    }
}

#[test]
fn the_prompt_estimate_frames_every_message_as_the_chat_format_does() {
    let tokens = crate::tokenizer::Tiktoken::new(crate::settings::TokenizerKind::O200k);
    let settings = OpenAiProviderSettings {
        base_url: Some("http://127.0.0.1:9/v1".into()),
        model: Some("m".into()),
        system_prompt: Some("Be brief.".into()),
        ..Default::default()
    };
    let provider = OpenAiProvider::new(&settings).unwrap_or_else(|_| unreachable!());
    let history = vec![("first".to_owned(), "one".to_owned())];
    let count = |t: &str| pantheon_domain::TokenCounter::count(&tokens, t);
    let expected = (4 + count("Be brief."))
        + (4 + count("first"))
        + (4 + count("one"))
        + (4 + count("third"))
        + 3;
    assert_eq!(provider.prompt_tokens(&tokens, "third", &history), expected);
}
