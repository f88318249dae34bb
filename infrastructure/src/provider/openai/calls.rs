//! Tool calls as a stream carries them: in fragments, each naming the
//! call it continues by `index` (the first fragment carries the call's id
//! and name, the rest pieces of its arguments), several calls interleaved.
//! They are put together here and handed on whole, in index order, once
//! the model has finished.
//!
//! What an upstream sends is bounded: a hostile or broken one must not make
//! a turn hold unbounded arguments or run unbounded calls, so going past
//! [`MAX_CALLS`] calls or [`MAX_ARGUMENT_BYTES`] of arguments fails the
//! reply.

use std::collections::BTreeMap;

use pantheon_domain::ProviderError;
use pantheon_domain::tool::ToolCall;
use serde::Deserialize;

/// The most calls one reply may make.
pub(super) const MAX_CALLS: usize = 16;
/// The most bytes of one call's arguments.
pub(super) const MAX_ARGUMENT_BYTES: usize = 64 * 1024;
/// The most bytes of a call's id or name.
const MAX_NAME_BYTES: usize = 256;

/// One fragment of a call (`choices[].delta.tool_calls[]`).
#[derive(Debug, Deserialize)]
pub(super) struct CallDelta {
    /// Missing from some servers, which send each call whole.
    index: Option<u64>,
    id: Option<String>,
    function: Option<FunctionDelta>,
}

#[derive(Debug, Deserialize)]
struct FunctionDelta {
    name: Option<String>,
    arguments: Option<String>,
}

/// The calls of one reply, as their fragments arrive.
#[derive(Debug, Default)]
pub(super) struct Calls {
    partial: BTreeMap<u64, Partial>,
    /// The index the last fragment went to.
    last: Option<u64>,
    /// Handed on: later fragments are ignored.
    taken: bool,
}

#[derive(Debug, Default)]
struct Partial {
    id: String,
    name: String,
    arguments: String,
}

impl Calls {
    /// Adds a fragment.
    ///
    /// # Errors
    /// `Failed` when the reply goes past the bounds.
    pub(super) fn add(&mut self, delta: CallDelta) -> Result<(), ProviderError> {
        if self.taken {
            return Ok(());
        }
        let index = delta.index.unwrap_or_else(|| self.unindexed(delta.id.as_deref()));
        if !self.partial.contains_key(&index) && self.partial.len() >= MAX_CALLS {
            return Err(ProviderError::Failed(format!(
                "the upstream made more than {MAX_CALLS} tool calls in one reply"
            )));
        }
        self.last = Some(index);
        let call = self.partial.entry(index).or_default();
        if let Some(id) = delta.id.filter(|id| !id.is_empty())
            && call.id.is_empty()
        {
            call.id = id;
        }
        let (name, arguments) = match delta.function {
            Some(function) => (function.name, function.arguments),
            None => (None, None),
        };
        // Some servers repeat the name with every fragment.
        if let Some(name) = name.filter(|n| *n != call.name) {
            call.name.push_str(&name);
        }
        call.arguments.push_str(arguments.as_deref().unwrap_or_default());
        if call.id.len() > MAX_NAME_BYTES || call.name.len() > MAX_NAME_BYTES {
            return Err(ProviderError::Failed(format!(
                "the upstream sent a tool call id or name longer than {MAX_NAME_BYTES} bytes"
            )));
        }
        if call.arguments.len() > MAX_ARGUMENT_BYTES {
            return Err(ProviderError::Failed(format!(
                "the upstream sent tool call arguments longer than {MAX_ARGUMENT_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// The index of a fragment without one: a new call when it carries a
    /// new id, else the call the last fragment went to.
    fn unindexed(&self, id: Option<&str>) -> u64 {
        let last = self.last.and_then(|i| self.partial.get(&i).map(|c| (i, c)));
        match (last, id.filter(|id| !id.is_empty())) {
            (Some((i, call)), Some(id)) if call.id == id || call.id.is_empty() => i,
            (Some((i, _)), None) => i,
            _ => self.partial.keys().next_back().map_or(0, |i| i.saturating_add(1)),
        }
    }

    /// The calls put together, in index order (an id the upstream left out
    /// is made up from the index); none after the first time.
    pub(super) fn take(&mut self) -> Vec<ToolCall> {
        if self.taken {
            return Vec::new();
        }
        self.taken = true;
        std::mem::take(&mut self.partial)
            .into_iter()
            .map(|(index, call)| ToolCall {
                id: if call.id.is_empty() { format!("call_{index}") } else { call.id },
                name: call.name,
                arguments: call.arguments,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(value: serde_json::Value) -> CallDelta {
        serde_json::from_value(value).unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
        ToolCall { id: id.into(), name: name.into(), arguments: arguments.into() }
    }

    #[test]
    fn interleaved_fragments_make_whole_calls_in_index_order() {
        let mut calls = Calls::default();
        let fragments = [
            serde_json::json!({"index": 1, "id": "b", "type": "function",
                               "function": {"name": "file_read", "arguments": ""}}),
            serde_json::json!({"index": 0, "id": "a", "function": {"name": "file_read"}}),
            serde_json::json!({"index": 1, "function": {"arguments": "{\"file_"}}),
            serde_json::json!({"index": 0, "function": {"arguments": "{}"}}),
            serde_json::json!({"index": 1, "function": {"arguments": "id\":\"x\"}"}}),
        ];
        for f in fragments {
            assert!(calls.add(fragment(f)).is_ok());
        }
        let expected =
            vec![call("a", "file_read", "{}"), call("b", "file_read", "{\"file_id\":\"x\"}")];
        assert_eq!(calls.take(), expected);
        assert_eq!(calls.take(), Vec::new(), "handed on once");
        assert!(calls.add(fragment(serde_json::json!({"index": 2, "id": "c"}))).is_ok());
        assert_eq!(calls.take(), Vec::new(), "nothing after");
    }

    #[test]
    fn fragments_without_an_index_follow_their_ids_and_missing_ids_are_made_up() {
        let mut calls = Calls::default();
        let fragments = [
            serde_json::json!({"id": "a", "function": {"name": "file_read", "arguments": "{"}}),
            serde_json::json!({"function": {"name": "file_read", "arguments": "}"}}),
            serde_json::json!({"id": "b", "function": {"name": "other", "arguments": "[]"}}),
            serde_json::json!({"index": 7, "function": {"name": "x"}}),
        ];
        for f in fragments {
            assert!(calls.add(fragment(f)).is_ok());
        }
        let expected =
            vec![call("a", "file_read", "{}"), call("b", "other", "[]"), call("call_7", "x", "")];
        assert_eq!(calls.take(), expected);
    }

    #[test]
    fn too_many_calls_or_too_long_arguments_fail_the_reply() {
        let mut calls = Calls::default();
        for index in 0..MAX_CALLS {
            assert!(calls.add(fragment(serde_json::json!({"index": index}))).is_ok());
        }
        let again = calls.add(fragment(serde_json::json!({"index": 0})));
        assert!(again.is_ok(), "a known call may go on");
        let over = calls.add(fragment(serde_json::json!({"index": u64::MAX})));
        assert!(matches!(over, Err(ProviderError::Failed(m)) if m.contains("more than 16")));

        let mut calls = Calls::default();
        let piece = "x".repeat(MAX_ARGUMENT_BYTES / 4);
        for _ in 0..4 {
            let f = fragment(serde_json::json!({"index": 0, "function": {"arguments": piece}}));
            assert!(calls.add(f).is_ok());
        }
        let f = fragment(serde_json::json!({"index": 0, "function": {"arguments": "x"}}));
        assert!(matches!(calls.add(f), Err(ProviderError::Failed(m)) if m.contains("65536")));
        let long = fragment(serde_json::json!({"index": 1, "id": "i".repeat(300)}));
        assert!(calls.add(long).is_err());
    }
}
