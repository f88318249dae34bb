//! A subscription to one pub/sub channel that outlives its connection: it
//! subscribes again after a loss, over the seeds in turn (classic pub/sub
//! reaches every node of a cluster), with a growing pause, and logs once
//! per outage. A message published while it is down is lost; each
//! subscriber says what that costs.

use std::time::Duration;

use futures::StreamExt;

use super::link::Target;

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What a subscription carries, for its log lines.
#[derive(Debug, Clone, Copy)]
pub struct Topic<'a> {
    /// The channel.
    pub channel: &'a str,
    /// What it carries, e.g. `cancel requests`.
    pub what: &'static str,
    /// What is missed while it is down.
    pub missed: &'static str,
}

/// Hands each message's payload on `topic` to `deliver` until the task is
/// stopped.
pub async fn listen(target: Target, topic: Topic<'_>, mut deliver: impl FnMut(String) + Send) {
    let mut pause = RETRY_FIRST;
    let mut attempt = 0;
    let mut failing = false;
    loop {
        let subscribed = async {
            let mut pubsub = target.subscriber(attempt).await?;
            pubsub.subscribe(topic.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match subscribed.await {
            Ok(mut pubsub) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(what = topic.what, "subscribed again");
                }
                pause = RETRY_FIRST;
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    match message.get_payload::<String>() {
                        Ok(payload) => deliver(payload),
                        Err(_) => tracing::warn!(what = topic.what, "ignored a malformed message"),
                    }
                }
                failing = true;
                tracing::warn!(what = topic.what, "lost the subscription; subscribing again");
            }
            Err(error) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(%error, what = topic.what, missed = topic.missed, "cannot subscribe");
                }
            }
        }
        attempt += 1;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX);
    }
}
