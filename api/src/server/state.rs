//! What one connection is doing, as its timers and the eviction at the
//! connection cap see it.
//!
//! One word per connection, written only by the connection's own task (its
//! reads, its service call, its response body's end) and read by that task's
//! timer and, at the cap, by the accept loop: relaxed atomics, no lock, no
//! cost shared between connections on the request path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The stage of a connection's current exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Accepted, no byte received yet.
    Fresh,
    /// A request head is arriving.
    Head,
    /// A request is being answered (its body read, its response written).
    Busy,
    /// Between two requests of a keep-alive connection.
    Idle,
}

impl Phase {
    const ALL: [Self; 4] = [Self::Fresh, Self::Head, Self::Busy, Self::Idle];

    fn bits(self) -> u64 {
        match self {
            Self::Fresh => 0,
            Self::Head => 1,
            Self::Busy => 2,
            Self::Idle => 3,
        }
    }
}

/// Why a connection's time is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// Its request head did not arrive within `server.header_read_timeout_ms`.
    Head,
    /// It waited for a request longer than `server.idle_timeout_secs`.
    Idle,
    /// Its client read nothing for `turns.write_timeout_secs`.
    Write,
}

/// The timeouts a connection lives by.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    /// `server.header_read_timeout_ms`
    pub header: Duration,
    /// `server.idle_timeout_secs`
    pub idle: Duration,
    /// `turns.write_timeout_secs`
    pub write: Duration,
}

const PHASE_SHIFT: u32 = 62;
const SINCE_MASK: u64 = (1 << PHASE_SHIFT) - 1;

/// One connection's phase, since when, and whether a write is stalled.
#[derive(Debug)]
pub(super) struct ConnState {
    started: Instant,
    /// The phase in the top two bits, when it began (milliseconds after
    /// `started`) below.
    word: AtomicU64,
    /// One more than the millisecond (after `started`) a write began to
    /// wait for the client's socket buffer; 0 while writes go through.
    write_stalled: AtomicU64,
}

impl ConnState {
    /// A connection accepted now.
    pub(super) fn new() -> Self {
        Self { started: Instant::now(), word: AtomicU64::new(0), write_stalled: AtomicU64::new(0) }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(SINCE_MASK) & SINCE_MASK
    }

    fn at(&self, ms: u64) -> Instant {
        self.started + Duration::from_millis(ms)
    }

    fn load(&self) -> (Phase, u64) {
        let word = self.word.load(Ordering::Relaxed);
        let bits = word >> PHASE_SHIFT;
        let phase = Phase::ALL.into_iter().find(|p| p.bits() == bits).unwrap_or(Phase::Busy);
        (phase, word & SINCE_MASK)
    }

    fn store(&self, phase: Phase, since_ms: u64) {
        self.word.store(phase.bits() << PHASE_SHIFT | since_ms, Ordering::Relaxed);
    }

    /// The current phase.
    #[cfg(test)]
    pub(super) fn phase(&self) -> Phase {
        self.load().0
    }

    /// Bytes arrived. A new head's clock starts with its first byte after a
    /// reply; a fresh connection's started at the accept.
    pub(super) fn on_read(&self) {
        match self.load() {
            (Phase::Idle, _) => self.store(Phase::Head, self.now_ms()),
            (Phase::Fresh, since) => self.store(Phase::Head, since),
            _ => {}
        }
    }

    /// A request head is complete and handed to the router.
    pub(super) fn on_request(&self) {
        self.store(Phase::Busy, 0);
    }

    /// The response body is done (or dropped): the connection waits for
    /// its next request.
    pub(super) fn on_response_end(&self) {
        self.store(Phase::Idle, self.now_ms());
    }

    /// A write found the client's socket buffer full.
    pub(super) fn on_write_pending(&self) {
        if self.write_stalled.load(Ordering::Relaxed) == 0 {
            self.write_stalled.store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// A write went through.
    pub(super) fn on_write_ready(&self) {
        if self.write_stalled.load(Ordering::Relaxed) != 0 {
            self.write_stalled.store(0, Ordering::Relaxed);
        }
    }

    /// Since when the connection may be closed to make room: it holds no
    /// request (fresh, or idle between requests); `None` otherwise.
    pub(super) fn reclaimable_since(&self) -> Option<Instant> {
        match self.load() {
            (Phase::Fresh | Phase::Idle, since) => Some(self.at(since)),
            _ => None,
        }
    }

    /// The next moment the connection's time is up, and why; `None` while
    /// a request is answered and its writes go through.
    pub(super) fn next_expiry(&self, timeouts: &Timeouts) -> Option<(Instant, Expiry)> {
        let (phase, since) = self.load();
        let phase_deadline = match phase {
            Phase::Fresh | Phase::Head => Some((self.at(since) + timeouts.header, Expiry::Head)),
            Phase::Idle => Some((self.at(since) + timeouts.idle, Expiry::Idle)),
            Phase::Busy => None,
        };
        let stalled = self.write_stalled.load(Ordering::Relaxed);
        let write_deadline =
            (stalled != 0).then(|| (self.at(stalled - 1) + timeouts.write, Expiry::Write));
        match (phase_deadline, write_deadline) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        write: Duration::from_secs(30),
    };

    #[tokio::test(start_paused = true)]
    async fn each_phase_has_its_own_clock() {
        let state = ConnState::new();
        let start = Instant::now();
        assert_eq!(state.next_expiry(&TIMEOUTS), Some((start + TIMEOUTS.header, Expiry::Head)));
        assert!(state.reclaimable_since().is_some(), "a fresh connection holds no request");

        tokio::time::advance(Duration::from_secs(1)).await;
        state.on_read();
        assert_eq!(state.phase(), Phase::Head);
        assert_eq!(
            state.next_expiry(&TIMEOUTS),
            Some((start + TIMEOUTS.header, Expiry::Head)),
            "the first head's clock started at the accept"
        );
        assert_eq!(state.reclaimable_since(), None);

        state.on_request();
        assert_eq!(state.next_expiry(&TIMEOUTS), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        state.on_write_pending();
        tokio::time::advance(Duration::from_secs(5)).await;
        state.on_write_pending();
        let stall = start + Duration::from_secs(6);
        assert_eq!(state.next_expiry(&TIMEOUTS), Some((stall + TIMEOUTS.write, Expiry::Write)));
        state.on_write_ready();
        assert_eq!(state.next_expiry(&TIMEOUTS), None);

        state.on_response_end();
        let idle = start + Duration::from_secs(11);
        assert_eq!(state.next_expiry(&TIMEOUTS), Some((idle + TIMEOUTS.idle, Expiry::Idle)));
        assert_eq!(state.reclaimable_since(), Some(idle));

        tokio::time::advance(Duration::from_secs(20)).await;
        state.on_read();
        let head = start + Duration::from_secs(31);
        assert_eq!(
            state.next_expiry(&TIMEOUTS),
            Some((head + TIMEOUTS.header, Expiry::Head)),
            "a later head's clock starts at its first byte"
        );
    }
}
