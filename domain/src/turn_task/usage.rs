//! What a turn may ask of the provider and what it is charged: the history
//! and output cap that fit its reservation, and the usage settled on its
//! lease.

use crate::limiter::{Lease, Reservation};
use crate::turn::{Turn, Usage};

use super::context::TurnContext;
use super::watch::Round;

impl TurnContext {
    /// The usage of one request that reached the provider (a turn makes
    /// one per round of tool use): what the provider reported, but never
    /// less than Pantheon counted — the `prompt` as sent (charged once
    /// sent, whatever ended the turn) and the `received` output. A provider
    /// reporting less (a zero, an omitted field) does not make a turn
    /// cheaper.
    pub(super) fn charged(
        &self,
        turn: &Turn,
        prompt: u64,
        received: u64,
        reported: Option<Usage>,
    ) -> Usage {
        let counted = Usage::of(prompt, received);
        let Some(reported) = reported else {
            return counted;
        };
        let floored = Usage {
            input_tokens: reported.input_tokens.max(counted.input_tokens),
            output_tokens: reported.output_tokens.max(counted.output_tokens),
            total_tokens: reported.total_tokens.max(counted.total_tokens),
        };
        if floored.total_tokens > reported.total_tokens {
            tracing::info!(
                turn.id = %turn.id,
                reported = reported.total_tokens,
                counted = counted.total_tokens,
                "the provider reported fewer tokens than were counted; charged the count"
            );
        }
        floored
    }

    /// The output tokens of a round: its text and its calls.
    pub(super) fn received(&self, round: &Round) -> u64 {
        let tokens = self.tokens.as_ref();
        let text = if round.text.is_empty() { 0 } else { tokens.count(&round.text) };
        let calls: u64 = round
            .calls
            .iter()
            .map(|call| tokens.count(&call.name) + tokens.count(&call.arguments))
            .sum();
        text + calls
    }

    /// The cap of a next round whose prompt is `prompt` tokens, after the
    /// turn `spent` so much: without a reservation, `turns.max_output_tokens`;
    /// with one, what is left of it after the prompt, `None` when that is
    /// less than `rate_limit.min_output_tokens` (the round would not fit).
    pub(super) fn next_cap(
        &self,
        reservation: Option<Reservation>,
        spent: Usage,
        prompt: u64,
    ) -> Option<u64> {
        let Some(reservation) = reservation else {
            return Some(self.policy.max_output_tokens);
        };
        let left = reservation.total().saturating_sub(spent.charged()).saturating_sub(prompt);
        let floor = self.policy.min_output_tokens.min(reservation.output_cap).max(1);
        (left >= floor).then(|| left.min(self.policy.max_output_tokens))
    }

    /// The output cap of a turn, the history that fits with it, and the
    /// prompt's tokens with that history when the admission counted the
    /// input (under a token budget). Without a reservation:
    /// `turns.max_output_tokens`, with all the history, the prompt counted
    /// later if at all. With one, the history (unknown at admission, which
    /// comes before any database read) is paid out of the reservation: the
    /// cap shrinks by its tokens, and its oldest turns are left out while
    /// the cap would fall below `rate_limit.min_output_tokens`.
    ///
    /// The input is not tokenized again: the reservation holds its count,
    /// and each history turn's tokens are counted once, on its own
    /// ([`ModelProvider::prompt_tokens`] is additive over the history).
    ///
    /// [`ModelProvider::prompt_tokens`]: crate::ports::ModelProvider::prompt_tokens
    pub(super) fn output_cap(
        &self,
        reservation: Option<Reservation>,
        history: &mut Vec<(String, String)>,
    ) -> (u64, Option<u64>) {
        let Some(reservation) = reservation else {
            return (self.policy.max_output_tokens, None);
        };
        if history.is_empty() {
            return (reservation.output_cap, Some(reservation.input));
        }
        let tokens = self.tokens.as_ref();
        let bare = self.provider.prompt_tokens(tokens, "", &[]);
        let each: Vec<u64> = history
            .iter()
            .map(|turn| {
                let with = self.provider.prompt_tokens(tokens, "", std::slice::from_ref(turn));
                with.saturating_sub(bare)
            })
            .collect();
        let mut extra: u64 = each.iter().sum();
        let floor = self.policy.min_output_tokens.min(reservation.output_cap);
        let mut dropped = 0;
        while reservation.output_cap.saturating_sub(extra) < floor && dropped < history.len() {
            extra = extra.saturating_sub(each[dropped]);
            dropped += 1;
        }
        history.drain(..dropped);
        (
            reservation.output_cap.saturating_sub(extra),
            Some(reservation.input.saturating_add(extra)),
        )
    }

    /// The earlier completed turns the provider wants as context; none
    /// (logged) when storage fails: a reply without history beats no reply.
    pub(super) async fn history(&self, turn: &Turn) -> Vec<(String, String)> {
        let wanted = self.provider.context_turns();
        if wanted == 0 {
            return Vec::new();
        }
        match self.turns.completed_before(turn.session_id, turn.seq, wanted).await {
            Ok(turns) => turns.into_iter().map(|t| (t.input, t.output)).collect(),
            Err(error) => {
                tracing::warn!(turn.id = %turn.id, error = %error, "no history for the provider");
                Vec::new()
            }
        }
    }
}

/// Records the turn's usage on its lease, so the release refunds the rest of
/// the reservation: all of it when nothing reached the provider (`None`),
/// never the prompt's tokens once something did. A usage above the
/// reservation (a provider's tokenizer counts the prompt differently) is
/// charged the reservation: the budget is never exceeded, and the excess is
/// logged.
pub(super) fn settle(lease: &mut Lease, turn: &Turn, usage: Option<Usage>) {
    let used = usage.as_ref().map_or(0, Usage::charged);
    if let Some(reservation) = lease.reservation()
        && used > reservation.total()
    {
        tracing::warn!(
            turn.id = %turn.id,
            used,
            reserved = reservation.total(),
            "the turn used more tokens than it reserved; charged the reservation"
        );
    }
    lease.settle(used);
}
