//! The body of a chat completion request: the system prompt, the files the
//! turn may read, the history, the input, then each earlier round of tool
//! use as the model made it and its results, in the chat format's own
//! shape (an assistant message carrying `tool_calls`, then one `tool`
//! message per result, answering by the call's id).
//!
//! The files are listed in a system message, one JSON object a line: the
//! model needs their ids to name them, and JSON keeps a file's name (the
//! user's text) from reading as part of the instructions around it.

use std::borrow::Cow;

use pantheon_domain::ProviderError;
use pantheon_domain::ports::ReplyRequest;
use pantheon_domain::tool::{FileRef, ToolRound};
use serde::Serialize;
use serde_json::Value;

use crate::settings::MaxTokensField;

/// What is sent (borrowing the request where it can).
#[derive(Debug, Serialize)]
pub(super) struct ChatRequest<'a> {
    pub(super) model: &'a str,
    pub(super) messages: Vec<Message<'a>>,
    pub(super) stream: bool,
    pub(super) stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_completion_tokens: Option<u64>,
}

/// One message. `content` is `null` for an assistant message that only
/// called tools.
#[derive(Debug, Serialize)]
pub(super) struct Message<'a> {
    role: &'static str,
    content: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<CallSent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

impl<'a> Message<'a> {
    fn text(role: &'static str, content: impl Into<Cow<'a, str>>) -> Self {
        Self { role, content: Some(content.into()), tool_calls: Vec::new(), tool_call_id: None }
    }
}

#[derive(Debug, Serialize)]
struct CallSent<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: Function<'a>,
}

#[derive(Debug, Serialize)]
struct Function<'a> {
    name: &'a str,
    arguments: &'a str,
}

/// A tool as offered.
#[derive(Debug, Serialize)]
pub(super) struct Tool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: ToolFunction<'a>,
}

#[derive(Debug, Serialize)]
struct ToolFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: Value,
}

#[derive(Debug, Serialize)]
pub(super) struct StreamOptions {
    pub(super) include_usage: bool,
}

/// How the provider was configured, for the body.
pub(super) struct Shape<'a> {
    pub(super) model: &'a str,
    pub(super) system_prompt: Option<&'a str>,
    pub(super) max_tokens_field: MaxTokensField,
}

/// The body for `request`.
///
/// # Errors
/// `Failed` when a tool's schema is not JSON (a bug of the tool's).
pub(super) fn chat_request<'a>(
    shape: &Shape<'a>,
    request: &'a ReplyRequest,
) -> Result<ChatRequest<'a>, ProviderError> {
    let mut messages = Vec::with_capacity(3 + 2 * request.history.len());
    if let Some(prompt) = shape.system_prompt {
        messages.push(Message::text("system", prompt));
    }
    if !request.tools.is_empty() && !request.files.is_empty() {
        messages.push(Message::text("system", files_message(&request.files)));
    }
    for (input, output) in &request.history {
        messages.push(Message::text("user", input.as_str()));
        messages.push(Message::text("assistant", output.as_str()));
    }
    messages.push(Message::text("user", request.input.as_str()));
    for round in &request.rounds {
        round_messages(round, &mut messages);
    }
    let tools = request
        .tools
        .iter()
        .map(|tool| {
            let parameters = serde_json::from_str(tool.parameters).map_err(|e| {
                ProviderError::Failed(format!("the schema of tool {} is not JSON: {e}", tool.name))
            })?;
            let function =
                ToolFunction { name: tool.name, description: tool.description, parameters };
            Ok(Tool { kind: "function", function })
        })
        .collect::<Result<_, ProviderError>>()?;
    let cap = request.max_output_tokens;
    let (max_tokens, max_completion_tokens) = match shape.max_tokens_field {
        MaxTokensField::MaxTokens => (Some(cap), None),
        MaxTokensField::MaxCompletionTokens => (None, Some(cap)),
        MaxTokensField::Both => (Some(cap), Some(cap)),
    };
    Ok(ChatRequest {
        model: shape.model,
        messages,
        stream: true,
        stream_options: StreamOptions { include_usage: true },
        tools,
        max_tokens,
        max_completion_tokens,
    })
}

/// The system message naming the files.
pub(super) fn files_message(files: &[FileRef]) -> String {
    let mut message = String::from(
        "Files you can read with the file_read tool, one JSON object a line \
         (its id, name, type and size in bytes):",
    );
    for file in files {
        let line = serde_json::json!({
            "id": file.id,
            "name": file.filename,
            "type": file.content_type,
            "bytes": file.bytes,
        });
        message.push('\n');
        message.push_str(&line.to_string());
    }
    message
}

/// The assistant message of a round, then its results.
fn round_messages<'a>(round: &'a ToolRound, messages: &mut Vec<Message<'a>>) {
    let tool_calls = round
        .calls
        .iter()
        .map(|(call, _)| CallSent {
            id: &call.id,
            kind: "function",
            function: Function { name: &call.name, arguments: &call.arguments },
        })
        .collect();
    let content = (!round.text.is_empty()).then_some(Cow::Borrowed(round.text.as_str()));
    messages.push(Message { role: "assistant", content, tool_calls, tool_call_id: None });
    for (call, result) in &round.calls {
        messages.push(Message {
            role: "tool",
            content: Some(Cow::Borrowed(&result.content)),
            tool_calls: Vec::new(),
            tool_call_id: Some(&call.id),
        });
    }
}
