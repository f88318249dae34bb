//! Cancel requests from other instances: a subscriber on
//! [`CANCEL_CHANNEL`](super::redis_bus::CANCEL_CHANNEL) that hands each
//! turn id to the process (which cancels the turn if it runs it). It
//! subscribes again after a lost connection, over the seeds in turn; a
//! request published meanwhile is lost, and its sender answers that the
//! cancel is not confirmed.

use std::time::Duration;

use futures::StreamExt;
use pantheon_domain::TurnId;

use super::link::Target;
use super::redis_bus::CANCEL_CHANNEL;

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Listens for cancel requests until the task is stopped, calling
/// `cancel` with each turn id.
pub async fn listen(target: Target, cancel: impl Fn(TurnId) + Send + 'static) {
    let mut pause = RETRY_FIRST;
    let mut attempt = 0;
    let mut failing = false;
    loop {
        let subscribed = async {
            let mut pubsub = target.subscriber(attempt).await?;
            pubsub.subscribe(CANCEL_CHANNEL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match subscribed.await {
            Ok(mut pubsub) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("listening for cancel requests again");
                }
                pause = RETRY_FIRST;
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let id = message.get_payload::<String>().ok();
                    match id.and_then(|id| id.parse::<uuid::Uuid>().ok()) {
                        Some(id) => cancel(TurnId::from(id)),
                        None => tracing::warn!("ignored a malformed cancel request"),
                    }
                }
                failing = true;
                tracing::warn!("lost the cancel-request subscription; subscribing again");
            }
            Err(error) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(%error, "cannot subscribe to cancel requests; other instances' cancels will not reach this one until it can");
                }
            }
        }
        attempt += 1;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX);
    }
}
