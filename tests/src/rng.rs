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
}
