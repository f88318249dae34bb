//! Where "now" comes from. Services take a [`Clock`] instead of calling
//! `Utc::now()` so tests (and the limiter's window arithmetic) can move time
//! without sleeping.

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
        now.duration_trunc(TimeDelta::microseconds(1))
            .unwrap_or(now)
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
