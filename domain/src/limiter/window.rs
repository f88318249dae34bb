//! The two lengths every user is limited over. A window is rolling and
//! exact: "at most L in any W" means that no span of `W` milliseconds ending
//! at a decision holds more than `L` admitted turns (or tokens), counting
//! the one being decided. What a window holds is read off the user's log
//! (`log`), never estimated.

/// One of the two windows every user is limited over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// A rolling minute (60 000 ms).
    Minute,
    /// A rolling hour (3 600 000 ms).
    Hour,
}

impl Window {
    /// Both windows in the order verdicts and headers list them (minute first).
    pub const ALL: [Window; 2] = [Window::Minute, Window::Hour];

    /// The window's length in milliseconds: an entry made at `t` is inside
    /// the window at `now` while `t > now − millis`, and leaves it at
    /// `t + millis`.
    pub fn millis(self) -> i64 {
        match self {
            Window::Minute => 60_000,
            Window::Hour => 3_600_000,
        }
    }

    /// The window's length in seconds, as the `w` of a `RateLimit-Policy`.
    pub fn seconds(self) -> u64 {
        self.millis().unsigned_abs() / 1000
    }

    /// The window's name as it appears in headers and error bodies.
    pub fn name(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_lengths_and_names_match_the_contract() {
        let (m, h) = (Window::Minute, Window::Hour);
        assert_eq!((m.millis(), m.seconds(), m.name()), (60_000, 60, "minute"));
        assert_eq!((h.millis(), h.seconds(), h.name()), (3_600_000, 3600, "hour"));
    }
}
