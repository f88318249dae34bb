//! The JSON shapes of turns: the submission, the resource and its members.

use chrono::{DateTime, Utc};
use pantheon_domain::tool::ToolRecord;
use pantheon_domain::{
    FileId, FinishReason, NewTurn, SessionId, Turn, TurnStatus, Usage, ValidationError,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{optional_timestamp, timestamp};
use crate::error::failure_status;

/// Turn submission body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SubmitTurn)]
pub struct SubmitTurnRequest {
    /// The user's input: not blank, at most `turns.max_input_chars`
    /// characters (default 32,000).
    #[schema(min_length = 1)]
    pub input: String,
    /// Files of the caller's for the model to read with `file_read`,
    /// besides those attached to the session: at most 20, each stored
    /// whole (`422` otherwise).
    #[serde(default)]
    #[schema(value_type = Vec<String>, format = Uuid)]
    pub files: Vec<FileId>,
}

impl SubmitTurnRequest {
    /// The validated turn.
    ///
    /// # Errors
    /// [`ValidationError`] on `input` or `files`.
    pub fn into_turn(self, max_input_chars: usize) -> Result<NewTurn, ValidationError> {
        NewTurn::parse(self.input, max_input_chars)?.with_files(self.files)
    }
}

/// The `error` member of a failed turn: a problem object, as the JSON
/// endpoint would have answered it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = TurnError)]
pub struct TurnErrorBody {
    /// `urn:pantheon:problem:<code>`.
    #[serde(rename = "type")]
    #[schema(format = "uri-reference")]
    type_uri: String,
    title: String,
    /// The HTTP status the failure maps to.
    status: u16,
    /// Public explanation.
    pub detail: String,
    /// `upstream_error`, `upstream_unavailable`, `upstream_saturated` or
    /// `upstream_timeout`.
    #[schema(pattern = "^upstream_(error|unavailable|saturated|timeout)$")]
    code: String,
}

/// Where a turn is in its life.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = TurnStatus)]
pub enum TurnStatusBody {
    /// Committed with its input; the reply is being generated.
    InProgress,
    /// The reply is complete.
    Completed,
    /// Cut short by a shutdown or a crash; the output is partial.
    Incomplete,
    /// The provider failed; the output is partial.
    Failed,
    /// Stopped on purpose (client gone with `turns.on_disconnect = cancel`).
    Cancelled,
}

impl From<TurnStatus> for TurnStatusBody {
    fn from(status: TurnStatus) -> Self {
        match status {
            TurnStatus::InProgress => Self::InProgress,
            TurnStatus::Completed => Self::Completed,
            TurnStatus::Incomplete => Self::Incomplete,
            TurnStatus::Failed => Self::Failed,
            TurnStatus::Cancelled => Self::Cancelled,
        }
    }
}

/// Why a reply ended.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = FinishReason)]
pub enum FinishReasonBody {
    /// The model finished its reply.
    Stop,
    /// The model hit its output limit.
    Length,
    /// The turn was cancelled (or ended by a shutdown).
    Cancelled,
    /// The provider failed.
    Error,
}

impl From<FinishReason> for FinishReasonBody {
    fn from(reason: FinishReason) -> Self {
        match reason {
            FinishReason::Stop => Self::Stop,
            FinishReason::Length => Self::Length,
            FinishReason::Cancelled => Self::Cancelled,
            FinishReason::Error => Self::Error,
        }
    }
}

/// Token usage: what the provider reported, never less than Pantheon
/// counted of the prompt it sent and the output it received.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[schema(as = Usage)]
pub struct UsageBody {
    input_tokens: i64,
    output_tokens: i64,
    total_tokens: i64,
}

impl From<Usage> for UsageBody {
    fn from(u: Usage) -> Self {
        Self {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            total_tokens: u.total_tokens,
        }
    }
}

/// A turn: one input and the reply to it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Turn)]
pub struct TurnBody {
    #[schema(value_type = String, format = Uuid)]
    id: pantheon_domain::TurnId,
    #[schema(value_type = String, format = Uuid)]
    session_id: SessionId,
    /// Its position in the session, from 1.
    seq: i64,
    input: String,
    /// The reply so far (partial while `in_progress`, and when the turn
    /// failed, was cancelled or is incomplete).
    output: String,
    status: TurnStatusBody,
    /// `null` while in progress.
    finish_reason: Option<FinishReasonBody>,
    /// `null` when the provider reported none.
    usage: Option<UsageBody>,
    /// Why it failed, when it did.
    pub error: Option<TurnErrorBody>,
    #[serde(serialize_with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    created_at: DateTime<Utc>,
    #[serde(serialize_with = "optional_timestamp")]
    #[schema(value_type = Option<String>, format = DateTime)]
    completed_at: Option<DateTime<Utc>>,
    /// The tools the model called for this reply, in order.
    tool_calls: Vec<ToolCallBody>,
}

impl From<Turn> for TurnBody {
    fn from(t: Turn) -> Self {
        let error = t.error.map(|f| {
            let status = failure_status(f.kind);
            let code = f.kind.as_str();
            TurnErrorBody {
                type_uri: format!("urn:pantheon:problem:{code}"),
                title: status.canonical_reason().unwrap_or("Error").to_owned(),
                status: status.as_u16(),
                detail: f.detail,
                code: code.to_owned(),
            }
        });
        Self {
            id: t.id,
            session_id: t.session_id,
            seq: t.seq,
            input: t.input,
            output: t.output,
            status: t.status.into(),
            finish_reason: t.finish_reason.map(Into::into),
            usage: t.usage.map(Into::into),
            error,
            created_at: t.created_at,
            completed_at: t.completed_at,
            tool_calls: t.tool_calls.into_iter().map(ToolCallBody::from).collect(),
        }
    }
}

/// A tool call of a turn's model.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ToolCall)]
pub struct ToolCallBody {
    /// The tool: `file_read`.
    name: String,
    /// Its arguments as the model sent them (JSON text).
    arguments: String,
    /// The file it read, when it named one of the turn's files.
    #[schema(value_type = Option<String>, format = Uuid)]
    file_id: Option<FileId>,
    /// The bytes of the file returned.
    bytes: u64,
    /// Why the call failed, when it did (the model was told).
    error: Option<String>,
}

impl From<ToolRecord> for ToolCallBody {
    fn from(r: ToolRecord) -> Self {
        Self {
            name: r.name,
            arguments: r.arguments,
            file_id: r.file_id,
            bytes: r.bytes,
            error: r.error,
        }
    }
}
