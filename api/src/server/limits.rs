//! How many connections the open-files limit leaves room for.

use rlimit::Resource;
use tokio::sync::Semaphore;

/// Open files the process needs besides its client connections and its
/// database pool: the listener, stdio and log output, the runtime's epoll
/// and wake-up descriptors, the Redis connection and its reconnects, DNS
/// lookups, and a margin for what a dependency opens on its own.
const RESERVED_FILES: u64 = 64;

/// Raises the soft open-files limit to the hard one, as servers do at
/// start: the soft default (often 1,024) is a compatibility value for
/// programs that use `select`, not a budget. Returns the soft limit now in
/// force, `None` where there is none to read.
pub fn raise_open_files_limit() -> Option<u64> {
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(%error, "cannot raise the open-files limit");
    }
    Resource::NOFILE.get().ok().map(|(soft, _)| soft)
}

/// `configured` (`server.max_connections`), or what the open-files limit
/// leaves once `pool` files (the database pool) and [`RESERVED_FILES`] are
/// set aside, divided by the files each client connection may hold (2
/// with the `openai` provider: its upstream connection too).
pub fn connection_cap(configured: Option<usize>, pool: u64, files_per_client: u64) -> usize {
    let derived = Resource::NOFILE.get().ok().map(|(soft, _)| {
        let room = soft.saturating_sub(RESERVED_FILES + pool);
        let per_client = files_per_client.max(1);
        usize::try_from(room / per_client).unwrap_or(usize::MAX).clamp(1, Semaphore::MAX_PERMITS)
    });
    match (configured, derived) {
        (Some(configured), Some(derived)) if configured > derived => {
            tracing::warn!(
                max_connections = configured,
                room = derived,
                "server.max_connections is more than the open-files limit leaves room for; \
                 accepts will fail with EMFILE before the cap is reached"
            );
            configured.min(Semaphore::MAX_PERMITS)
        }
        (Some(configured), _) => configured.min(Semaphore::MAX_PERMITS),
        (None, Some(derived)) => derived,
        (None, None) => Semaphore::MAX_PERMITS,
    }
}
