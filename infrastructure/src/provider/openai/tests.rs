//! The streamed body read into reply events, without a server: chunks are
//! fed as a byte stream, split anywhere, as a network would.

use std::time::Duration;

use futures::StreamExt;
use pantheon_domain::ports::{ModelProvider, ReplyEvent, ReplyRequest};
use pantheon_domain::tool::{FileRef, ToolCall, ToolResult, ToolRound, ToolSpec};
use pantheon_domain::{FileId, FinishReason, ProviderError, SessionId, Usage};

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
    let body = provider
        .map(|p| p.body(&request).map(|b| serde_json::to_value(b).unwrap_or_default()).ok());
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
    assert_eq!(body, Ok(Some(expected)));
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
            .ok()
            .and_then(|p| p.body(&request).ok().map(serde_json::to_value))
            .and_then(Result::ok)
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

fn tool_call(index: u32, id: Option<&str>, name: Option<&str>, arguments: &str) -> String {
    let mut call = serde_json::json!({"index": index, "function": {"arguments": arguments}});
    if let Some(id) = id {
        call["id"] = id.into();
        call["type"] = "function".into();
    }
    if let Some(name) = name {
        call["function"]["name"] = name.into();
    }
    let chunk = serde_json::json!({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]});
    format!("data: {chunk}\n\n")
}

fn calls(events: &[Result<ReplyEvent, ProviderError>]) -> Vec<ToolCall> {
    events
        .iter()
        .filter_map(|e| match e {
            Ok(ReplyEvent::ToolCall(call)) => Some(call.clone()),
            _ => None,
        })
        .collect()
}

fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
    ToolCall { id: id.into(), name: name.into(), arguments: arguments.into() }
}

#[tokio::test]
async fn streamed_tool_calls_are_put_together_and_handed_on_before_the_end_however_cut() {
    let body = [
        delta("Let me look."),
        tool_call(0, Some("call_a"), Some("file_read"), ""),
        tool_call(1, Some("call_b"), Some("file_read"), "{\"file_id\":"),
        tool_call(0, None, None, "{\"file_id\":\"é\"}"),
        tool_call(1, None, None, "\"b\"}"),
        finish("tool_calls"),
        USAGE.into(),
        DONE.into(),
    ]
    .concat();
    for cut in [1, 5, body.len()] {
        let events = read(&body, cut, false).await;
        assert_eq!(text(&events), "Let me look.", "cut {cut}");
        let expected = vec![
            call("call_a", "file_read", "{\"file_id\":\"é\"}"),
            call("call_b", "file_read", "{\"file_id\":\"b\"}"),
        ];
        assert_eq!(calls(&events), expected, "cut {cut}");
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| match e {
                Ok(ReplyEvent::Delta(_)) => "delta",
                Ok(ReplyEvent::ToolCall(_)) => "call",
                Ok(ReplyEvent::Finished { .. }) => "finished",
                Err(_) => "error",
            })
            .collect();
        assert_eq!(kinds, ["delta", "call", "call", "finished"], "cut {cut}");
        let usage = Usage { input_tokens: 3, output_tokens: 2, total_tokens: 5 };
        assert_eq!(
            events.last(),
            Some(&Ok(ReplyEvent::Finished {
                finish_reason: FinishReason::Stop,
                usage: Some(usage)
            }))
        );
    }
}

#[tokio::test]
async fn calls_end_with_done_without_a_finish_reason_but_not_with_a_truncated_body() {
    let call_a = tool_call(0, Some("call_a"), Some("file_read"), "{}");
    let done = read(&[call_a.clone(), DONE.into()].concat(), 9, false).await;
    assert_eq!(calls(&done), vec![call("call_a", "file_read", "{}")]);
    assert!(matches!(done.last(), Some(Ok(ReplyEvent::Finished { .. }))));

    let truncated = read(&call_a, 9, false).await;
    assert_eq!(calls(&truncated), Vec::new(), "a call may be cut: none is handed on");
    assert!(matches!(truncated.last(), Some(Err(ProviderError::Failed(_)))));
}

#[tokio::test]
async fn a_hostile_upstream_cannot_make_unbounded_calls_or_arguments() {
    let many: String = (0..=16).map(|i| tool_call(i, Some(&format!("c{i}")), None, "")).collect();
    let events = read(&[many, finish("tool_calls"), DONE.into()].concat(), 64, false).await;
    assert_eq!(calls(&events), Vec::new());
    let message = events.last().and_then(|e| e.clone().err()).map(|e| e.to_string());
    assert!(message.is_some_and(|m| m.contains("more than 16 tool calls")));

    let piece = "x".repeat(8 * 1024);
    let mut body = tool_call(0, Some("c"), Some("file_read"), "");
    for _ in 0..9 {
        body.push_str(&tool_call(0, None, None, &piece));
    }
    let events = read(&[body, finish("tool_calls"), DONE.into()].concat(), 4096, false).await;
    assert_eq!(calls(&events), Vec::new());
    let message = events.last().and_then(|e| e.clone().err()).map(|e| e.to_string());
    assert!(message.is_some_and(|m| m.contains("arguments longer than 65536 bytes")));
}

fn round() -> ToolRound {
    let result =
        |content: &str| ToolResult { content: content.into(), file: None, bytes: 0, error: None };
    ToolRound {
        text: String::new(),
        calls: vec![
            (call("call_1", "file_read", "{\"file_id\":\"a\"}"), result("{\"text\":\"A\"}")),
            (call("call_2", "file_read", "{}"), result("{\"error\":\"no\"}")),
        ],
    }
}

#[test]
fn with_tools_the_request_offers_them_lists_the_files_and_replays_each_round() {
    let settings = OpenAiProviderSettings {
        base_url: Some("http://127.0.0.1:9/v1".into()),
        model: Some("m".into()),
        system_prompt: Some("Be brief.".into()),
        ..Default::default()
    };
    let file = FileRef {
        id: FileId::new(),
        filename: "notes \"1\".txt".into(),
        content_type: "text/plain".into(),
        bytes: 12,
    };
    let tool =
        ToolSpec { name: "file_read", description: "Reads.", parameters: r#"{"type":"object"}"# };
    let mut second = round();
    second.text = "And the other.".into();
    let request = ReplyRequest {
        session_id: SessionId::new(),
        input: "what is in it?".into(),
        history: vec![("before".into(), "yes".into())],
        max_output_tokens: 64,
        files: vec![file.clone()],
        tools: vec![tool],
        rounds: vec![round(), second],
    };
    let body = OpenAiProvider::new(&settings)
        .ok()
        .and_then(|p| p.body(&request).ok().map(serde_json::to_value))
        .and_then(Result::ok)
        .unwrap_or_default();
    let listing = format!(
        "Files you can read with the file_read tool, one JSON object a line \
         (its id, name, type and size in bytes):\n{}",
        serde_json::json!({"id": file.id, "name": "notes \"1\".txt", "type": "text/plain", "bytes": 12})
    );
    let calls = serde_json::json!([
        {"id": "call_1", "type": "function",
         "function": {"name": "file_read", "arguments": "{\"file_id\":\"a\"}"}},
        {"id": "call_2", "type": "function", "function": {"name": "file_read", "arguments": "{}"}},
    ]);
    let results = [
        serde_json::json!({"role": "tool", "tool_call_id": "call_1", "content": "{\"text\":\"A\"}"}),
        serde_json::json!({"role": "tool", "tool_call_id": "call_2", "content": "{\"error\":\"no\"}"}),
    ];
    let expected = serde_json::json!([
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": listing},
        {"role": "user", "content": "before"}, {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "what is in it?"},
        {"role": "assistant", "content": null, "tool_calls": calls},
        results[0], results[1],
        {"role": "assistant", "content": "And the other.", "tool_calls": calls},
        results[0], results[1],
    ]);
    assert_eq!(body["messages"], expected);
    assert_eq!(
        body["tools"],
        serde_json::json!([{"type": "function", "function":
            {"name": "file_read", "description": "Reads.", "parameters": {"type": "object"}}}])
    );
}

#[test]
fn a_round_is_counted_as_its_messages_with_their_framing() {
    let tokens = crate::tokenizer::Tiktoken::new(crate::settings::TokenizerKind::O200k);
    let settings = OpenAiProviderSettings {
        base_url: Some("http://127.0.0.1:9/v1".into()),
        model: Some("m".into()),
        ..Default::default()
    };
    let provider = OpenAiProvider::new(&settings).unwrap_or_else(|_| unreachable!());
    let count = |t: &str| pantheon_domain::TokenCounter::count(&tokens, t);
    let expected = 4
        + (count("file_read") + count("{\"file_id\":\"a\"}") + 4 + count("{\"text\":\"A\"}"))
        + (count("file_read") + count("{}") + 4 + count("{\"error\":\"no\"}"));
    assert_eq!(provider.round_tokens(&tokens, &round()), expected);
}
