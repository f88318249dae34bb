//! Counting tokens: the [`TokenCounter`] port (a real tokenizer, in
//! `infrastructure`) and the [`OutputMeter`] that holds a streamed reply to
//! its output cap.
//!
//! The meter must know, after every chunk, whether the reply is still
//! within its cap, without tokenizing the whole reply again each time (a
//! 4,096-token reply streamed a token a chunk would cost thousands of
//! encodes of up to 16 KB). Two facts make that cheap and exact:
//! - every token is at least one byte, so a reply no longer in bytes than
//!   its cap cannot be over it, and is not tokenized at all;
//! - the tokenizer never merges across some positions (it splits text into
//!   pieces first, e.g. before a space that follows a word), so the count
//!   of everything before the last such position is settled and only the
//!   rest is counted again.

use std::fmt;

/// A tokenizer's counts, as the model's own tokenizer would make them.
pub trait TokenCounter: Send + Sync + fmt::Debug {
    /// Tokens of `text`.
    fn count(&self, text: &str) -> u64;

    /// The longest prefix of `text` of at most `max` tokens, in bytes (at a
    /// character boundary).
    fn fit(&self, text: &str, max: u64) -> usize;

    /// A byte offset `i` (a character boundary) up to which the count of
    /// `text` is settled: for any text `more`, `count(text + more) =
    /// count(text[..i]) + count(text[i..] + more)`. 0 when there is none.
    fn settled_len(&self, text: &str) -> usize;

    /// The fewest tokens any text of `bytes` bytes can have: a lower bound
    /// that needs no tokenizing, to refuse an input too long for a budget by
    /// its size alone. The default (one token for a non-empty text) holds
    /// for any tokenizer; one whose tokens are at most `n` bytes long can
    /// tell `bytes / n`, rounded up.
    fn fewest_tokens(&self, bytes: usize) -> u64 {
        u64::from(bytes > 0)
    }
}

/// How much of a chunk the reply may keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Bytes of the chunk to keep (a character boundary).
    pub keep: usize,
    /// The cap stopped the reply: nothing more is read.
    pub capped: bool,
}

/// Holds a reply to `cap` output tokens as it streams.
#[derive(Debug)]
pub struct OutputMeter<'a> {
    counter: &'a dyn TokenCounter,
    cap: u64,
    /// Bytes of the output whose count is settled, and that count.
    settled_bytes: usize,
    settled_tokens: u64,
}

impl<'a> OutputMeter<'a> {
    /// A meter for a reply of at most `cap` tokens.
    pub fn new(counter: &'a dyn TokenCounter, cap: u64) -> Self {
        Self { counter, cap, settled_bytes: 0, settled_tokens: 0 }
    }

    /// How much of `delta`, appended to `output` (every byte accepted so
    /// far), keeps the reply within the cap. Once it says `capped`, the
    /// reply must end there.
    pub fn accept(&mut self, output: &str, delta: &str) -> Accepted {
        let bytes = output.len().saturating_add(delta.len());
        if u64::try_from(bytes).unwrap_or(u64::MAX) <= self.cap {
            return Accepted { keep: delta.len(), capped: false };
        }
        let settled = self.settled_bytes.min(output.len());
        let mut tail = String::with_capacity(bytes - settled);
        tail.push_str(&output[settled..]);
        tail.push_str(delta);
        let budget = self.cap.saturating_sub(self.settled_tokens);
        let tokens = self.counter.count(&tail);
        if tokens <= budget {
            let cut = self.counter.settled_len(&tail);
            if cut > 0 {
                self.settled_tokens += tokens.saturating_sub(self.counter.count(&tail[cut..]));
                self.settled_bytes = settled + cut;
            }
            return Accepted { keep: delta.len(), capped: false };
        }
        let fit = self.counter.fit(&tail, budget);
        let keep = fit.saturating_sub(output.len() - settled).min(delta.len());
        Accepted { keep, capped: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tokenizer of one token per word and per space run, merging nothing
    /// across a space: `"ab cd"` is `ab`, ` `, `cd`.
    #[derive(Debug)]
    struct Words;

    impl Words {
        fn tokens(text: &str) -> Vec<&str> {
            let mut tokens = Vec::new();
            let mut start = 0;
            for (i, c) in text.char_indices().skip(1) {
                let prev = text[..i].chars().next_back().unwrap_or(' ');
                if (prev == ' ') != (c == ' ') {
                    tokens.push(&text[start..i]);
                    start = i;
                }
            }
            if start < text.len() {
                tokens.push(&text[start..]);
            }
            tokens
        }
    }

    impl TokenCounter for Words {
        fn count(&self, text: &str) -> u64 {
            Self::tokens(text).len() as u64
        }

        fn fit(&self, text: &str, max: u64) -> usize {
            Self::tokens(text).iter().take(max as usize).map(|t| t.len()).sum()
        }

        fn settled_len(&self, text: &str) -> usize {
            // Before the last word's start: the word may still grow, and so
            // may a trailing space run.
            let tokens = Self::tokens(text);
            let keep = tokens.len().saturating_sub(2);
            tokens[..keep].iter().map(|t| t.len()).sum()
        }
    }

    fn stream(cap: u64, chunks: &[&str]) -> (String, bool) {
        let mut meter = OutputMeter::new(&Words, cap);
        let mut output = String::new();
        for chunk in chunks {
            let accepted = meter.accept(&output, chunk);
            output.push_str(&chunk[..accepted.keep]);
            if accepted.capped {
                return (output, true);
            }
        }
        (output, false)
    }

    #[test]
    fn a_reply_within_its_cap_is_kept_whole() {
        let (output, capped) = stream(5, &["ab", " c", "d e"]);
        assert_eq!((output.as_str(), capped), ("ab cd e", false));
        assert_eq!(Words.count(&output), 5);
    }

    #[test]
    fn a_reply_past_its_cap_is_cut_at_the_last_token_that_fits() {
        let (output, capped) = stream(3, &["ab c", "d ef", " gh"]);
        assert_eq!((output.as_str(), capped), ("ab cd", true));
        // A chunk that itself crosses the cap keeps its fitting part.
        let (output, capped) = stream(4, &["one two three"]);
        assert_eq!((output.as_str(), capped), ("one two ", true));
    }

    #[test]
    fn long_replies_count_incrementally_and_agree_with_a_whole_count() {
        let chunks: Vec<String> = (0..500).map(|i| format!("w{i} ")).collect();
        let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
        let (output, capped) = stream(301, &chunks);
        assert!(capped);
        assert_eq!(Words.count(&output), 301);
        let (output, capped) = stream(10_000, &chunks);
        assert_eq!((Words.count(&output), capped), (1_000, false));
    }
}
