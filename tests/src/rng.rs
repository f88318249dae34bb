//! A tiny deterministic generator (xorshift) for the randomised tests, so a
//! failure is reproducible from the printed seed.

/// Xorshift64; the seed must not be 0.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next value below `bound` (which must be at least 1).
    pub fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }

    /// A gap between two events of a limiter sequence, in ms: mostly short
    /// (bursts), sometimes tens of seconds, now and then twenty minutes
    /// (window changes).
    pub fn gap_ms(&mut self) -> i64 {
        let gap = match self.next(10) {
            0..=5 => self.next(2_000),
            6..=8 => self.next(40_000),
            _ => self.next(1_200_000),
        };
        i64::try_from(gap).unwrap_or(0)
    }
}
