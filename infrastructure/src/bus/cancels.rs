//! Cancel requests from other instances: a subscriber on
//! [`CANCEL_CHANNEL`](super::redis_bus::CANCEL_CHANNEL) that hands each
//! turn id to the process (which cancels the turn if it runs it). It
//! subscribes again after a lost connection, over the seeds in turn; a
//! request published meanwhile is lost, and its sender answers that the
//! cancel is not confirmed.

use pantheon_domain::TurnId;

use super::link::Target;
use super::redis_bus::CANCEL_CHANNEL;
use super::subscription::{self, Topic};

/// Listens for cancel requests until the task is stopped, calling
/// `cancel` with each turn id.
pub async fn listen(target: Target, cancel: impl Fn(TurnId) + Send + 'static) {
    let topic = Topic {
        channel: CANCEL_CHANNEL,
        what: "cancel requests",
        missed: "other instances' cancels do not reach this one until it can",
    };
    subscription::listen(target, topic, move |payload| match payload.parse::<uuid::Uuid>() {
        Ok(id) => cancel(TurnId::from(id)),
        Err(_) => tracing::warn!("ignored a malformed cancel request"),
    })
    .await;
}
