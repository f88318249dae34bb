//! One round of a turn's reply: the provider's stream read into deltas
//! (held to the round's output cap) and tool calls, then the calls run,
//! each shown to the client before and after. Every wait is under the
//! turn's [`Watch`]: its cancel, the shutdown abort, its deadline.

use futures::StreamExt;

use crate::live::LiveOutput;
use crate::ports::{ReplyEvent, ReplyStream};
use crate::tokens::OutputMeter;
use crate::tool::{FileRef, ToolCall, ToolEvent, ToolResult};
use crate::turn::FinishReason;
use crate::turn_run::TurnEvent;

use super::TurnTask;
use super::ending::Ending;
use super::watch::{Reply, Round, Watch, sleep_until};

impl TurnTask {
    /// Reads one round's stream. Its text is held to `cap` tokens: the
    /// provider is asked for no more, and one that sends more anyway is
    /// cut at the cap and not read on.
    pub(super) async fn read_round(
        &self,
        mut stream: ReplyStream,
        cap: u64,
        reply: &mut Reply,
        live: &LiveOutput,
        watch: &mut Watch,
    ) -> Round {
        let context = &self.context;
        let mut meter = OutputMeter::new(context.tokens.as_ref(), cap);
        let mut text = String::new();
        let mut calls = Vec::new();
        let ending = loop {
            let due = reply.outbox.due_at();
            let item = tokio::select! {
                item = stream.next() => Some(item),
                () = sleep_until(due) => None,
                ending = watch.stopped() => break ending,
            };
            let mut flush = item.is_none();
            match item.flatten() {
                None if flush => {}
                Some(Ok(ReplyEvent::Delta(mut delta))) => {
                    if std::mem::take(&mut reply.first_delta) {
                        let since = self.measured.since.elapsed();
                        context.observer.first_delta(self.measured.endpoint, since);
                    }
                    let accepted = meter.accept(&text, &delta);
                    delta.truncate(accepted.keep);
                    if !delta.is_empty() {
                        text.push_str(&delta);
                        reply.output.push_str(&delta);
                        live.append(&delta);
                        flush = reply.outbox.push(&delta);
                    }
                    if accepted.capped {
                        tracing::info!(turn.id = %self.turn_id, cap, "the reply reached its output cap; not reading on");
                        break Ending::Completed(FinishReason::Length, None);
                    }
                }
                Some(Ok(ReplyEvent::ToolCall(call))) => calls.push(call),
                Some(Ok(ReplyEvent::Finished { finish_reason, usage })) => {
                    break Ending::Completed(finish_reason, usage);
                }
                Some(Err(error)) => break Ending::Failed(error),
                None => break Ending::Completed(FinishReason::Stop, None),
            }
            if let Some(batch) = flush.then(|| reply.outbox.take()).flatten()
                && let Some(ending) = self.send(TurnEvent::Delta(batch), watch).await
            {
                break ending;
            }
        };
        Round { text, calls, ending }
    }

    /// Runs a round's calls against the turn's `files`, in order; `Err`
    /// when the turn must stop meanwhile.
    pub(super) async fn run_tools(
        &self,
        files: &[FileRef],
        calls: Vec<ToolCall>,
        reply: &mut Reply,
        watch: &mut Watch,
    ) -> Result<Vec<(ToolCall, ToolResult)>, Ending> {
        let mut done = Vec::with_capacity(calls.len());
        for call in calls {
            self.tool_event(ToolEvent::call(&call), reply, watch).await?;
            let result = match &self.context.tools {
                Some(tools) => tokio::select! {
                    result = tools.call(files, &call) => result,
                    ending = watch.stopped() => return Err(ending),
                },
                None => ToolResult {
                    content: r#"{"error":"no tools are available"}"#.to_owned(),
                    file: None,
                    bytes: 0,
                    error: Some("no tools are available".to_owned()),
                },
            };
            self.tool_event(ToolEvent::result(&call, &result), reply, watch).await?;
            done.push((call, result));
        }
        Ok(done)
    }

    /// Sends a tool event after whatever text was still gathering, numbered
    /// and journaled like a delta.
    async fn tool_event(
        &self,
        event: ToolEvent,
        reply: &mut Reply,
        watch: &mut Watch,
    ) -> Result<(), Ending> {
        if let Some(batch) = reply.outbox.take()
            && let Some(ending) = self.send(TurnEvent::Delta(batch), watch).await
        {
            return Err(ending);
        }
        reply.outbox.tool(event.clone());
        match self.send(TurnEvent::Tool(event), watch).await {
            Some(ending) => Err(ending),
            None => Ok(()),
        }
    }

    /// Sends an event to the caller. A client that reads nothing holds the
    /// send, so it waits under the watch; `Some` when the turn must stop. A
    /// receiver gone means the client left; the turn goes on.
    pub(super) async fn send(&self, event: TurnEvent, watch: &mut Watch) -> Option<Ending> {
        tokio::select! {
            biased;
            _ = self.events.send(event) => None,
            ending = watch.stopped() => Some(ending),
        }
    }
}
