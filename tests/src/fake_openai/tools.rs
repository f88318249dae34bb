//! Scripted tool use: the calls a round makes, streamed as OpenAI streams
//! them, the queue of rounds successive requests take, and what a request
//! sent back of earlier rounds.

use std::collections::VecDeque;

use serde_json::{Value, json};

use super::{Answer, Seen, data, done, finish, reply, usage};

/// Tool calls as OpenAI streams them: each call's id and name first, then
/// its arguments in pieces of a few characters, the calls interleaved;
/// then `finish_reason` `tool_calls`, the usage (1 prompt token, a
/// completion token per call) and `[DONE]`. `calls` are `(id, name,
/// arguments)`.
pub fn tool_calls(calls: &[(&str, &str, &str)]) -> Answer {
    let fragment = |index: usize, mut call: Value| {
        call["index"] = index.into();
        data(json!({"object": "chat.completion.chunk", "choices": [{"index": 0,
            "delta": {"tool_calls": [call]}, "finish_reason": null}]}))
    };
    let mut steps = vec![data(json!({"object": "chat.completion.chunk", "choices": [{"index": 0,
        "delta": {"role": "assistant", "content": null}, "finish_reason": null}]}))];
    for (index, (id, name, _)) in calls.iter().enumerate() {
        let head =
            json!({"id": id, "type": "function", "function": {"name": name, "arguments": ""}});
        steps.push(fragment(index, head));
    }
    let pieces: Vec<Vec<String>> = calls.iter().map(|(_, _, args)| pieces(args)).collect();
    let longest = pieces.iter().map(Vec::len).max().unwrap_or(0);
    for at in 0..longest {
        for (index, call) in pieces.iter().enumerate() {
            if let Some(piece) = call.get(at) {
                steps.push(fragment(index, json!({"function": {"arguments": piece}})));
            }
        }
    }
    steps.extend([finish("tool_calls"), usage(1, calls.len() as i64), done()]);
    Answer::Stream(steps)
}

/// `text` in pieces of at most 8 characters.
fn pieces(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(8).map(|c| c.iter().collect()).collect()
}

/// What the fake answers one request with, taken in order from its queue.
#[derive(Debug, Clone)]
pub enum Round {
    /// Calls to these tools, `(name, arguments JSON)`, streamed as
    /// [`tool_calls`] does; the ids are `call_<r>_<i>`, for the `r`-th round
    /// the fake answered (from 0) and the call's place `i` in it.
    ToolCalls(Vec<(String, String)>),
    /// A whole text reply of these pieces, as [`reply`] makes it (1 prompt
    /// token).
    Text(Vec<String>),
    /// Any answer.
    Answer(Answer),
}

impl Round {
    /// [`Round::ToolCalls`] from borrowed pairs.
    pub fn calls(calls: &[(&str, &str)]) -> Self {
        Self::ToolCalls(calls.iter().map(|(n, a)| ((*n).to_owned(), (*a).to_owned())).collect())
    }

    /// [`Round::Text`] from borrowed pieces.
    pub fn text(pieces: &[&str]) -> Self {
        Self::Text(pieces.iter().map(|p| (*p).to_owned()).collect())
    }

    /// The answer of this round, the `number`-th the fake answered.
    fn answer(self, number: usize) -> Answer {
        match self {
            Self::ToolCalls(calls) => {
                let ids: Vec<String> =
                    (0..calls.len()).map(|i| format!("call_{number}_{i}")).collect();
                let calls: Vec<(&str, &str, &str)> = calls
                    .iter()
                    .zip(&ids)
                    .map(|((name, args), id)| (id.as_str(), name.as_str(), args.as_str()))
                    .collect();
                tool_calls(&calls)
            }
            Self::Text(pieces) => {
                let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
                reply(&pieces, 1)
            }
            Self::Answer(answer) => answer,
        }
    }
}

/// The rounds not yet answered, and how many were.
#[derive(Debug, Default)]
pub(super) struct Queue {
    pub(super) rounds: VecDeque<Round>,
    answered: usize,
}

impl Queue {
    /// The next round's answer, if one is queued.
    pub(super) fn next(&mut self) -> Option<Answer> {
        let round = self.rounds.pop_front()?;
        self.answered += 1;
        Some(round.answer(self.answered - 1))
    }
}

impl Seen {
    /// The tools offered (`tools`), as sent; empty when none.
    pub fn tools(&self) -> Vec<Value> {
        self.body["tools"].as_array().cloned().unwrap_or_default()
    }

    /// The names of the tools offered.
    pub fn tool_names(&self) -> Vec<String> {
        let tools = self.tools();
        tools.iter().map(|t| t["function"]["name"].as_str().unwrap_or_default().into()).collect()
    }

    /// Every call the assistant messages sent back carry, in order, as
    /// `(id, name, arguments)`.
    pub fn tool_calls(&self) -> Vec<(String, String, String)> {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        self.message_values()
            .iter()
            .filter(|m| m["role"] == "assistant")
            .flat_map(|m| m["tool_calls"].as_array().cloned().unwrap_or_default())
            .map(|c| {
                (text(&c["id"]), text(&c["function"]["name"]), text(&c["function"]["arguments"]))
            })
            .collect()
    }

    /// The tool results sent back, in order, as `(tool_call_id, content)`.
    pub fn tool_results(&self) -> Vec<(String, String)> {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        self.message_values()
            .iter()
            .filter(|m| m["role"] == "tool")
            .map(|m| (text(&m["tool_call_id"]), text(&m["content"])))
            .collect()
    }
}
