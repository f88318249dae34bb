//! The store `provider.*` configures: none when no capacity is set, the
//! shared Redis when one is configured (every instance in one queue),
//! else the process's memory.

use std::sync::Arc;
use std::time::Duration;

use pantheon_domain::ports::CapacityStore;

use super::config::{CapacityConfig, QueueOrder};
use super::memory::MemoryCapacity;
use super::redis_store::{Grants, RedisCapacity};
use crate::bus::redis_target;
use crate::settings::{QueueOrderSetting, Settings};

/// Where the provider's keys live in Redis: one hash tag, so a cluster
/// keeps them (and the script that reads them all) on one node.
pub const CAPACITY_PREFIX: &str = "{pantheon:provider}";

/// The provider's shared capacity as configured.
#[derive(Debug)]
pub struct Capacity {
    /// The store.
    pub store: Arc<dyn CapacityStore>,
    /// Over Redis: where other instances' grants are published.
    pub grants: Option<Grants>,
}

/// The provider's shared capacity; `None` when `provider.max_concurrent`
/// and `provider.tokens_per_minute` are both unset.
///
/// # Errors
/// A Redis URL that does not parse.
pub fn capacity_store(settings: &Settings) -> Result<Option<Capacity>, redis::RedisError> {
    let provider = &settings.provider;
    if !provider.is_capped() {
        return Ok(None);
    }
    let config = CapacityConfig {
        max_concurrent: provider.max_concurrent,
        tokens_per_minute: provider.tokens_per_minute.map(u64::from),
        // A dead instance's slots free as its leases do.
        ttl: Duration::from_secs(settings.rate_limit.lease_ttl_secs),
        order: match provider.queue_order {
            QueueOrderSetting::Fair => QueueOrder::Fair,
            QueueOrderSetting::Fifo => QueueOrder::Fifo,
        },
    };
    Ok(Some(match redis_target(settings)? {
        Some(target) => {
            let (store, grants) = RedisCapacity::new(target, config, CAPACITY_PREFIX.to_owned());
            Capacity { store: Arc::new(store), grants: Some(grants) }
        }
        None => Capacity { store: Arc::new(MemoryCapacity::new(config)), grants: None },
    }))
}
