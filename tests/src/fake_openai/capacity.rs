//! An upstream's hard capacity, for the fake: requests past it are
//! refused as a real provider refuses them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Answer, status};

/// An upstream with a hard capacity, as a real provider has: at most
/// `limit` requests in flight (from their arrival to the end of their
/// streamed reply, or its drop), and `429` with `Retry-After: 1` for any
/// request past it. It counts what it served and refused, and the most
/// requests it ever saw in flight at once (refused ones included: what
/// the callers tried).
#[derive(Debug, Clone)]
pub struct HardCapacity {
    counts: Arc<CapacityCounts>,
}

#[derive(Debug, Default)]
struct CapacityCounts {
    limit: usize,
    in_flight: AtomicUsize,
    most_tried: AtomicUsize,
    most_served: AtomicUsize,
    served: AtomicUsize,
    refused: AtomicUsize,
}

/// A request counted in flight by a [`HardCapacity`]; it leaves when the
/// last clone is dropped.
#[derive(Debug, Clone)]
pub struct Held(#[allow(dead_code)] Arc<HeldSlot>);

#[derive(Debug)]
struct HeldSlot {
    counts: Arc<CapacityCounts>,
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        self.counts.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl HardCapacity {
    /// A capacity of `limit` requests at once.
    pub fn new(limit: usize) -> Self {
        Self { counts: Arc::new(CapacityCounts { limit, ..CapacityCounts::default() }) }
    }

    /// Answers one request: `answer` (held in flight until its body ends)
    /// while there is room, else `429` with `Retry-After: 1`.
    pub fn admit(&self, answer: Answer) -> Answer {
        let counts = &self.counts;
        let now = counts.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        counts.most_tried.fetch_max(now, Ordering::SeqCst);
        if now > counts.limit {
            counts.in_flight.fetch_sub(1, Ordering::SeqCst);
            counts.refused.fetch_add(1, Ordering::SeqCst);
            return status(
                429,
                "Rate limit reached: too many requests in flight",
                vec![("retry-after", "1".to_owned())],
            );
        }
        counts.most_served.fetch_max(now, Ordering::SeqCst);
        counts.served.fetch_add(1, Ordering::SeqCst);
        Answer::Holding(Held(Arc::new(HeldSlot { counts: counts.clone() })), Box::new(answer))
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.counts.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests in flight at once, counting refused ones.
    pub fn most_tried(&self) -> usize {
        self.counts.most_tried.load(Ordering::SeqCst)
    }

    /// The most requests served at once (at most the limit).
    pub fn most_served(&self) -> usize {
        self.counts.most_served.load(Ordering::SeqCst)
    }

    /// Requests served (let in).
    pub fn served(&self) -> usize {
        self.counts.served.load(Ordering::SeqCst)
    }

    /// Requests refused with `429`.
    pub fn refused(&self) -> usize {
        self.counts.refused.load(Ordering::SeqCst)
    }
}
