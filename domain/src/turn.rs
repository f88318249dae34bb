//! Turns: one exchange of a session, the user's input and the assistant's
//! output, with the status it ended in.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{FileId, SessionId, TurnId};
use crate::tool::ToolRecord;
use crate::validation::ValidationError;

/// Where a turn is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnStatus {
    /// Committed with its input; the reply is being generated.
    InProgress,
    /// The reply is complete.
    Completed,
    /// Cut short by a shutdown or a crash; the output is partial.
    Incomplete,
    /// The provider failed; the output is partial.
    Failed,
    /// Stopped on purpose (client gone with `on_disconnect = cancel`).
    Cancelled,
}

impl TurnStatus {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Incomplete => "incomplete",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(raw: &str) -> Option<Self> {
        [Self::InProgress, Self::Completed, Self::Incomplete, Self::Failed, Self::Cancelled]
            .into_iter()
            .find(|s| s.as_str() == raw)
    }
}

/// Why the reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model finished its reply.
    Stop,
    /// The model hit its output limit.
    Length,
    /// The turn was cancelled.
    Cancelled,
    /// The provider failed.
    Error,
}

impl FinishReason {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
            Self::Error => "error",
        }
    }

    /// Parses a stored name.
    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Stop, Self::Length, Self::Cancelled, Self::Error]
            .into_iter()
            .find(|s| s.as_str() == raw)
    }
}

/// Token usage: as the provider reported it, but never less than
/// Pantheon's tokenizer counted of what was sent and received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt.
    pub input_tokens: i64,
    /// Tokens of the reply.
    pub output_tokens: i64,
    /// Their sum (or the provider's total, when larger).
    pub total_tokens: i64,
}

impl Usage {
    /// Usage of `input` and `output` tokens.
    pub fn of(input: u64, output: u64) -> Self {
        let n = |t: u64| i64::try_from(t).unwrap_or(i64::MAX);
        Self {
            input_tokens: n(input),
            output_tokens: n(output),
            total_tokens: n(input.saturating_add(output)),
        }
    }

    /// The sum of two requests' usage (a turn's rounds of tool use).
    #[must_use]
    pub fn plus(self, other: Self) -> Self {
        Self {
            input_tokens: self.input_tokens.saturating_add(other.input_tokens),
            output_tokens: self.output_tokens.saturating_add(other.output_tokens),
            total_tokens: self.total_tokens.saturating_add(other.total_tokens),
        }
    }

    /// The total as charged against a token budget (a negative report counts 0).
    pub fn charged(&self) -> u64 {
        u64::try_from(self.total_tokens).unwrap_or(0)
    }
}

/// How a turn's provider failed: the closed set a failed turn records, and
/// its stable problem code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The provider answered with an error or broke off its reply.
    UpstreamError,
    /// The provider took longer than allowed.
    UpstreamTimeout,
    /// The provider is temporarily out of capacity.
    UpstreamUnavailable,
    /// The provider's shared capacity stayed taken for the whole queue
    /// timeout.
    UpstreamSaturated,
}

impl FailureKind {
    /// The stored name, which is also the problem code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpstreamError => "upstream_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamSaturated => "upstream_saturated",
        }
    }

    /// Parses a stored name.
    pub fn parse(raw: &str) -> Option<Self> {
        [
            Self::UpstreamError,
            Self::UpstreamTimeout,
            Self::UpstreamUnavailable,
            Self::UpstreamSaturated,
        ]
        .into_iter()
        .find(|k| k.as_str() == raw)
    }
}

/// Why a turn failed, kept with the turn so a later `GET` can explain it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnFailure {
    /// What failed.
    pub kind: FailureKind,
    /// A human explanation with no internal detail.
    pub detail: String,
}

/// One exchange of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// Its id.
    pub id: TurnId,
    /// The session it belongs to.
    pub session_id: SessionId,
    /// Its position in the session: 1, 2, 3…
    pub seq: i64,
    /// The user's input.
    pub input: String,
    /// The reply, partial while in progress or when cut short.
    pub output: String,
    /// Where it is in its life.
    pub status: TurnStatus,
    /// Why the reply ended, once it has.
    pub finish_reason: Option<FinishReason>,
    /// Token usage (what its token budget was charged), once it ended;
    /// `None` when nothing reached the provider.
    pub usage: Option<Usage>,
    /// Why it failed, when it did.
    pub error: Option<TurnFailure>,
    /// When it was committed.
    pub created_at: DateTime<Utc>,
    /// When it reached a final status.
    pub completed_at: Option<DateTime<Utc>>,
    /// The tools its model called, in order (empty for most turns).
    pub tool_calls: Vec<ToolRecord>,
}

/// How a turn ended: everything [`crate::ports::TurnRepository::finish`]
/// writes in its one statement.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnEnd {
    /// The reply produced, whole or partial.
    pub output: String,
    /// The final status (never `in_progress`).
    pub status: TurnStatus,
    /// Why the reply ended.
    pub finish_reason: FinishReason,
    /// Token usage, when reported.
    pub usage: Option<Usage>,
    /// Why it failed, when it did.
    pub error: Option<TurnFailure>,
    /// When it ended.
    pub completed_at: DateTime<Utc>,
    /// The tools its model called, in order.
    pub tool_calls: Vec<ToolRecord>,
}

/// A validated turn submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTurn {
    input: String,
    files: Vec<FileId>,
}

/// The most files one turn may name.
pub const MAX_TURN_FILES: usize = 20;

impl NewTurn {
    /// Validates the input: not blank, at most `max_chars` characters
    /// (Unicode scalar values, as a user would count them), and no NUL
    /// (U+0000), which PostgreSQL's `text` cannot store: refused here, it is
    /// a 422 rather than a storage failure.
    ///
    /// # Errors
    /// [`ValidationError`] on `input`.
    pub fn parse(input: String, max_chars: usize) -> Result<Self, ValidationError> {
        if input.trim().is_empty() {
            return Err(ValidationError::new("input", "must not be blank"));
        }
        if input.chars().count() > max_chars {
            return Err(ValidationError::new(
                "input",
                format!("must be at most {max_chars} characters"),
            ));
        }
        if input.contains('\0') {
            return Err(ValidationError::new("input", "must not contain NUL (U+0000)"));
        }
        Ok(Self { input, files: Vec::new() })
    }

    /// The same turn, naming `files` for its model to read (besides its
    /// session's): at most [`MAX_TURN_FILES`], each once.
    ///
    /// # Errors
    /// [`ValidationError`] on `files`.
    pub fn with_files(mut self, files: Vec<FileId>) -> Result<Self, ValidationError> {
        if files.len() > MAX_TURN_FILES {
            return Err(ValidationError::new(
                "files",
                format!("must name at most {MAX_TURN_FILES} files"),
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(files.len());
        if !files.iter().all(|id| seen.insert(*id)) {
            return Err(ValidationError::new("files", "must not name a file twice"));
        }
        self.files = files;
        Ok(self)
    }

    /// The files the turn names.
    pub fn files(&self) -> &[FileId] {
        &self.files
    }

    /// The input text.
    pub fn input(&self) -> &str {
        &self.input
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_rules() {
        assert!(NewTurn::parse(" \n\t".into(), 10).is_err());
        assert!(NewTurn::parse("é".repeat(10), 10).is_ok(), "counts characters, not bytes");
        assert!(NewTurn::parse("a".repeat(11), 10).is_err());
        assert!(NewTurn::parse("a\0b".into(), 10).is_err());
    }

    #[test]
    fn status_names_round_trip() {
        for s in [
            TurnStatus::InProgress,
            TurnStatus::Completed,
            TurnStatus::Incomplete,
            TurnStatus::Failed,
            TurnStatus::Cancelled,
        ] {
            assert_eq!(TurnStatus::parse(s.as_str()), Some(s));
        }
        for f in
            [FinishReason::Stop, FinishReason::Length, FinishReason::Cancelled, FinishReason::Error]
        {
            assert_eq!(FinishReason::parse(f.as_str()), Some(f));
        }
    }
}
