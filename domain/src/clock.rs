//! Where "now" comes from. Services take a [`Clock`] instead of calling
//! `Utc::now()` so tests (and the limiter's window arithmetic) can move time
//! without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;

    /// The current instant truncated to whole microseconds, the precision both
    /// PostgreSQL and our SQLite encoding keep: a value stamped with it reads
    /// back from the database unchanged, so an entity in a response equals the
    /// persisted one.
    fn now_micros(&self) -> DateTime<Utc> {
        let now = self.now();
        now.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(now)
    }

    /// The current instant in milliseconds since the epoch: the limiter's
    /// unit of time.
    fn now_ms(&self) -> i64 {
        self.now().timestamp_millis()
    }
}

/// The production clock: the operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stands still until told to move: tests put the limiter at an
/// exact millisecond (a window boundary, `retry_at − 1`) without sleeping.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    /// A clock reading `now_ms` milliseconds since the epoch.
    pub fn at(now_ms: i64) -> Self {
        Self { now_ms: AtomicI64::new(now_ms) }
    }

    /// Moves the clock to `now_ms`.
    pub fn set(&self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.now_ms()).unwrap_or_default()
    }

    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}
