//! Tools a model may call during a turn (today one: `file_read`), as the
//! provider is told of them, as the model calls them, and as the turn
//! records them.

use serde::{Deserialize, Serialize};

use crate::ids::FileId;

/// The one tool: reads a range of one of the turn's files.
pub const FILE_READ: &str = "file_read";

/// A tool as offered to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolSpec {
    /// Its name ([`FILE_READ`]).
    pub name: &'static str,
    /// What it does, for the model.
    pub description: &'static str,
    /// Its arguments' JSON Schema, as JSON text.
    pub parameters: &'static str,
}

/// A file a turn may read, as the provider is told of it (the model needs
/// the ids to name them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// Its id.
    pub id: FileId,
    /// Its sanitised name.
    pub filename: String,
    /// Its sniffed type.
    pub content_type: String,
    /// Its size.
    pub bytes: u64,
}

/// A call the model made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call, echoed with its result.
    pub id: String,
    /// The tool's name, as the model sent it.
    pub name: String,
    /// Its arguments, as the model sent them (JSON text, not trusted).
    pub arguments: String,
}

/// What a call returned to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResult {
    /// The text the model reads (JSON).
    pub content: String,
    /// The file read, when the call named one of the turn's files.
    pub file: Option<FileId>,
    /// The bytes of the file returned (0 on an error).
    pub bytes: u64,
    /// Why the call failed, when it did (the model is told, the turn goes on).
    pub error: Option<String>,
}

/// One round of tool use: the model's calls, and each one's result in the
/// same order. A provider's next request carries every earlier round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolRound {
    /// The text the model produced with its calls, if any.
    pub text: String,
    /// The calls and their results.
    pub calls: Vec<(ToolCall, ToolResult)>,
}

/// A tool call as the turn records it (and the API shows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolRecord {
    /// The tool.
    pub name: String,
    /// Its arguments, as the model sent them.
    pub arguments: String,
    /// The file it read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<FileId>,
    /// The bytes returned.
    pub bytes: u64,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ToolRecord {
    /// The record of `call` answered `result`.
    pub fn of(call: &ToolCall, result: &ToolResult) -> Self {
        Self {
            name: call.name.clone(),
            arguments: call.arguments.clone(),
            file_id: result.file,
            bytes: result.bytes,
            error: result.error.clone(),
        }
    }
}

/// What a turn's stream shows of its tool use (`turn.tool_call`,
/// `turn.tool_result`), journaled like its deltas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ToolEvent {
    /// The model called a tool.
    Call {
        /// The tool.
        name: String,
        /// Its arguments, as the model sent them.
        arguments: String,
    },
    /// The call's result went back to the model.
    Result {
        /// The tool.
        name: String,
        /// The file read, when the call named one of the turn's files.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file_id: Option<FileId>,
        /// The bytes of the file returned.
        bytes: u64,
        /// Why the call failed, when it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl ToolEvent {
    /// The event of `call`.
    pub fn call(call: &ToolCall) -> Self {
        Self::Call { name: call.name.clone(), arguments: call.arguments.clone() }
    }

    /// The event of `call`'s `result`.
    pub fn result(call: &ToolCall, result: &ToolResult) -> Self {
        Self::Result {
            name: call.name.clone(),
            file_id: result.file,
            bytes: result.bytes,
            error: result.error.clone(),
        }
    }
}
