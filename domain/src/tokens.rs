//! Counting tokens: the [`TokenCounter`] port (a real tokenizer, in
//! `infrastructure`) and the [`OutputMeter`] that holds a streamed reply to
//! its output cap.
//!
//! The meter must know, after every chunk, whether the reply is still
//! within its cap, at a cost linear in the reply whatever its script: a
//! reply the tokenizer never splits (Chinese prose, an emoji run) has no
//! position where its count is settled by rule, and counting all of it
//! again at every chunk made a 6,000-character reply cost seconds of CPU.
//! Three facts keep the work to a few passes over each byte:
//! - every token is at least one byte, so the tokens settled, plus the last
//!   exact count of what follows them, plus the bytes received since that
//!   count, bound the reply's count from above: while that bound is within
//!   the cap nothing is tokenized, except that the bytes not yet counted
//!   are counted once they pass [`WINDOW`];
//! - a count gives the token boundaries too, and a byte-pair encoding's
//!   merges are local: in practice, appending text moves no boundary more
//!   than a token or two back, so every boundary at least [`MARGIN`] bytes
//!   before the end (or a later position the tokenizer names as one it
//!   never merges across: [`TokenCounter::settled_len`]) settles the count
//!   before it. No count is longer than `WINDOW` + [`STEP`] bytes;
//! - near the cap the bound fails at every chunk and the unsettled tail is
//!   counted exactly each time, so the reply is cut at the last token that
//!   fits.
//!
//! The count is exact where the settled boundaries are the ones the whole
//! reply's encoding has, which local merges make so in practice (the
//! tokenizer's tests check it over mixed scripts). Where no token of the
//! tail ends on a character boundary for half a window (a tokenizer whose
//! tokens cut characters in two), the meter settles at a character boundary
//! anyway and counts the token it splits on both sides: one token too many
//! per such settle, at most about one per 512 bytes of reply, so the cut may
//! come that many tokens early, never late.

use std::fmt;

/// The most bytes left uncounted while the bound says the reply is within
/// its cap: what keeps any one count short (a few hundred microseconds of a
/// runtime worker).
const WINDOW: usize = 1_024;

/// A chunk is metered in pieces of at most this many bytes, so one large
/// chunk is counted in windows too.
const STEP: usize = 512;

/// Bytes before the end of a count whose token boundaries are not settled:
/// more than any merge chain reaches back when text is appended.
const MARGIN: usize = 64;

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

    /// Where each token of `text` ends, in bytes, in order, into `ends`
    /// (cleared first; a buffer the caller reuses): as many ends as
    /// `count(text)`, the last `text.len()`. An end may fall inside a
    /// character, when a token holds part of its bytes.
    ///
    /// The default asks [`fit`](Self::fit) once per token, which reports
    /// character boundaries only: enough for a test's counter; a real
    /// tokenizer reports the ends its one encoding made.
    fn token_ends(&self, text: &str, ends: &mut Vec<usize>) {
        ends.clear();
        for max in 1..=self.count(text) {
            ends.push(self.fit(text, max));
        }
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
    /// Bytes at the reply's start whose count is settled, and that count.
    settled_bytes: usize,
    settled_tokens: u64,
    /// The reply's length at the last count, and the tokens that count
    /// found after `settled_bytes`.
    counted_bytes: usize,
    counted_tokens: u64,
    /// The unsettled text and its token ends, kept to reuse their buffers.
    tail: String,
    ends: Vec<usize>,
}

impl<'a> OutputMeter<'a> {
    /// A meter for a reply of at most `cap` tokens.
    pub fn new(counter: &'a dyn TokenCounter, cap: u64) -> Self {
        Self {
            counter,
            cap,
            settled_bytes: 0,
            settled_tokens: 0,
            counted_bytes: 0,
            counted_tokens: 0,
            tail: String::new(),
            ends: Vec::new(),
        }
    }

    /// How much of `delta`, appended to `output` (every byte accepted so
    /// far), keeps the reply within the cap. Once it says `capped`, the
    /// reply must end there.
    pub fn accept(&mut self, output: &str, delta: &str) -> Accepted {
        if output.get(self.settled_bytes..).is_none() {
            // Not the output this meter accepted: start over from its start.
            *self = Self::new(self.counter, self.cap);
        }
        let mut start = 0;
        while start < delta.len() {
            let end = piece_end(delta, start);
            let reply = output.len() + end;
            let uncounted = reply.saturating_sub(self.counted_bytes);
            let bound = (self.settled_tokens.saturating_add(self.counted_tokens))
                .saturating_add(u64::try_from(uncounted).unwrap_or(u64::MAX));
            if bound <= self.cap && reply - self.settled_bytes <= WINDOW {
                start = end;
                continue;
            }
            self.tail.clear();
            if let Some(settled) = self.settled_bytes.checked_sub(output.len()) {
                self.tail.push_str(&delta[settled..end]);
            } else {
                self.tail.push_str(&output[self.settled_bytes..]);
                self.tail.push_str(&delta[..end]);
            }
            self.counter.token_ends(&self.tail, &mut self.ends);
            let tokens = u64::try_from(self.ends.len()).unwrap_or(u64::MAX);
            let budget = self.cap.saturating_sub(self.settled_tokens);
            if tokens > budget {
                // The tail's bytes before this piece were accepted already.
                let before = output.len() + start - self.settled_bytes;
                let fit = self.counter.fit(&self.tail, budget);
                let keep = start + fit.saturating_sub(before).min(end - start);
                return Accepted { keep, capped: true };
            }
            self.settle(reply);
            start = end;
        }
        Accepted { keep: delta.len(), capped: false }
    }

    /// Settles what the count just made of `tail` (the reply up to `reply`
    /// bytes, from `settled_bytes`) allows: see the module comment.
    fn settle(&mut self, reply: usize) {
        let (tail, ends) = (&self.tail, &self.ends);
        let limit = tail.len().saturating_sub(MARGIN);
        let by_tokens = ends
            .iter()
            .rev()
            .copied()
            .find(|&end| end <= limit && tail.is_char_boundary(end))
            .unwrap_or(0);
        // Past those, a position the tokenizer never merges across: only
        // the last bytes are scanned for one, so a count reads the tail once.
        let rest = &tail[by_tokens..];
        let mut at = by_tokens + self.counter.settled_len(rest).min(rest.len());
        if !tail.is_char_boundary(at) {
            at = by_tokens;
        }
        if at.saturating_add(WINDOW / 2) < tail.len() {
            at = limit;
            while !tail.is_char_boundary(at) {
                at -= 1;
            }
        }
        // Tokens ending by `at`, and one more when a token straddles it.
        let whole = ends.partition_point(|&end| end <= at);
        let straddles = at > 0 && whole < ends.len() && (whole == 0 || ends[whole - 1] != at);
        let before = u64::try_from(whole + usize::from(straddles)).unwrap_or(u64::MAX);
        self.settled_tokens = self.settled_tokens.saturating_add(before);
        self.settled_bytes += at;
        self.counted_bytes = reply;
        self.counted_tokens = u64::try_from(ends.len() - whole).unwrap_or(u64::MAX);
    }
}

/// The end of the piece of `delta` from `start`: at most [`STEP`] bytes on,
/// at a character boundary, and at least one character.
fn piece_end(delta: &str, start: usize) -> usize {
    if delta.len() - start <= STEP {
        return delta.len();
    }
    let mut end = start + STEP;
    while !delta.is_char_boundary(end) {
        end -= 1;
    }
    if end == start {
        end = start + 1;
        while !delta.is_char_boundary(end) {
            end += 1;
        }
    }
    end
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

    /// A tokenizer shaped like a byte-pair encoding where the meter cares:
    /// a piece ends only where the kind of character changes (space, other
    /// ASCII, a 3-byte character such as CJK, any other), so a CJK or emoji
    /// run has no settled position; a space or ASCII run is one token; CJK
    /// characters pair up left to right when their code points' sum is even
    /// (a merge that appending can undo only at the end); other characters'
    /// bytes go three to a token, across character boundaries.
    #[derive(Debug)]
    struct Scripts;

    impl Scripts {
        fn kind(c: char) -> u8 {
            match c {
                ' ' => 0,
                c if c.is_ascii() => 1,
                c if c.len_utf8() == 3 => 2,
                _ => 3,
            }
        }

        fn ends(text: &str) -> Vec<usize> {
            let chars: Vec<(usize, char)> = text.char_indices().collect();
            let at = |k: usize| chars.get(k).map_or(text.len(), |c| c.0);
            let mut ends = Vec::new();
            let mut i = 0;
            while i < chars.len() {
                let kind = Self::kind(chars[i].1);
                let mut j = i;
                while j < chars.len() && Self::kind(chars[j].1) == kind {
                    j += 1;
                }
                match kind {
                    0 | 1 => ends.push(at(j)),
                    2 => {
                        let mut k = i;
                        while k < j {
                            let pairs = k + 1 < j
                                && (u32::from(chars[k].1) + u32::from(chars[k + 1].1)) % 2 == 0;
                            k += if pairs { 2 } else { 1 };
                            ends.push(at(k));
                        }
                    }
                    _ => {
                        let mut end = at(i);
                        while end < at(j) {
                            end = (end + 3).min(at(j));
                            ends.push(end);
                        }
                    }
                }
                i = j;
            }
            ends
        }
    }

    impl TokenCounter for Scripts {
        fn count(&self, text: &str) -> u64 {
            Self::ends(text).len() as u64
        }

        fn fit(&self, text: &str, max: u64) -> usize {
            let ends = Self::ends(text);
            let mut take = max as usize;
            if ends.len() <= take {
                return text.len();
            }
            while take > 0 {
                let mut end = ends[take - 1];
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                if self.count(&text[..end]) <= max {
                    return end;
                }
                take -= 1;
            }
            0
        }

        fn settled_len(&self, text: &str) -> usize {
            let mut chars = text.char_indices().rev();
            let Some((_, last)) = chars.next() else { return 0 };
            chars
                .find(|&(_, c)| Self::kind(c) != Self::kind(last))
                .map_or(0, |(i, c)| i + c.len_utf8())
        }

        fn token_ends(&self, text: &str, ends: &mut Vec<usize>) {
            ends.clear();
            ends.extend(Self::ends(text));
        }
    }

    /// A counter that tallies the bytes it is handed, in all and at most at
    /// once.
    #[derive(Debug)]
    struct Tally<C> {
        inner: C,
        bytes: std::sync::atomic::AtomicUsize,
        longest: std::sync::atomic::AtomicUsize,
    }

    impl<C: TokenCounter> Tally<C> {
        fn new(inner: C) -> Self {
            Self { inner, bytes: 0.into(), longest: 0.into() }
        }

        fn add(&self, text: &str) {
            use std::sync::atomic::Ordering::Relaxed;
            self.bytes.fetch_add(text.len(), Relaxed);
            self.longest.fetch_max(text.len(), Relaxed);
        }

        fn read(&self) -> (usize, usize) {
            use std::sync::atomic::Ordering::Relaxed;
            (self.bytes.load(Relaxed), self.longest.load(Relaxed))
        }
    }

    impl<C: TokenCounter> TokenCounter for Tally<C> {
        fn count(&self, text: &str) -> u64 {
            self.add(text);
            self.inner.count(text)
        }

        fn fit(&self, text: &str, max: u64) -> usize {
            self.add(text);
            self.inner.fit(text, max)
        }

        fn settled_len(&self, text: &str) -> usize {
            self.add(text);
            self.inner.settled_len(text)
        }

        fn token_ends(&self, text: &str, ends: &mut Vec<usize>) {
            self.add(text);
            self.inner.token_ends(text, ends);
        }
    }

    /// Streams `chunks` through a meter over `counter`.
    fn metered(counter: &dyn TokenCounter, cap: u64, chunks: &[String]) -> (String, bool) {
        let mut meter = OutputMeter::new(counter, cap);
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

    /// The most bytes one call may hand the tokenizer: a window and a piece.
    const LONGEST: usize = WINDOW + STEP;

    fn stream(cap: u64, chunks: &[&str]) -> (String, bool) {
        let chunks: Vec<String> = chunks.iter().map(|c| (*c).to_owned()).collect();
        metered(&Words, cap, &chunks)
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

    #[test]
    fn metering_tokenizes_each_byte_a_few_times_in_any_script() {
        let cjk: Vec<char> = "的一是不了人我在有他这中大来上国个到说们".chars().collect();
        let emoji: Vec<char> = "🙂😀😂🥲😍🤔🙃😎🥳😭👍🎉".chars().collect();
        let replies: [(&str, Vec<String>); 3] = [
            ("CJK", (0..6_000).map(|i| cjk[(i * 7) % cjk.len()].to_string()).collect()),
            ("emoji", (0..6_000).map(|i| emoji[(i * 5) % emoji.len()].to_string()).collect()),
            ("English", (0..6_000).map(|i| format!(" w{}", i % 7)).collect()),
        ];
        for (script, chunks) in &replies {
            let whole = chunks.concat();
            if *script != "English" {
                assert_eq!(Scripts.settled_len(&whole[..whole.len() / 2]), 0, "{script}: a run");
            }
            for cap in [3_000, 20_000] {
                let tally = Tally::new(Scripts);
                let (output, capped) = metered(&tally, cap, chunks);
                let (bytes, longest) = tally.read();
                assert_eq!(capped, Scripts.count(&whole) > cap, "{script} under {cap}");
                // The cut is where counting the whole reply would put it.
                assert_eq!(output.len(), Scripts.fit(&whole, cap), "{script} under {cap}");
                assert!(Scripts.count(&output) <= cap, "{script} under {cap}");
                assert!(
                    bytes <= 4 * output.len(),
                    "{script} under {cap}: {bytes} bytes tokenized for a {}-byte reply",
                    output.len()
                );
                assert!(longest <= LONGEST, "{script} under {cap}: one call of {longest} bytes");
            }
        }
    }

    #[test]
    fn a_large_chunk_is_counted_in_windows() {
        let text: String = "的一是不了人我在有他这中大来上国个到说们🙂".repeat(500);
        let tally = Tally::new(Scripts);
        let (output, capped) = metered(&tally, 5_000, &[text.clone(), text.clone()]);
        let (bytes, longest) = tally.read();
        assert!(capped);
        assert_eq!(output.len(), Scripts.fit(&format!("{text}{text}"), 5_000));
        assert!(longest <= LONGEST, "one call of {longest} bytes");
        assert!(bytes <= 4 * output.len(), "{bytes} bytes for {}", output.len());
    }

    #[test]
    fn where_no_token_ends_on_a_character_the_cut_comes_early_never_late() {
        /// Tokens of 47 bytes, across characters: one ends on a 3-byte
        /// character's boundary only every 141 bytes, so the meter must
        /// settle inside a token.
        #[derive(Debug)]
        struct Wide;

        impl TokenCounter for Wide {
            fn count(&self, text: &str) -> u64 {
                text.len().div_ceil(47) as u64
            }

            fn fit(&self, text: &str, max: u64) -> usize {
                let mut end = (47 * max as usize).min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                end
            }

            fn settled_len(&self, _: &str) -> usize {
                0
            }

            fn token_ends(&self, text: &str, ends: &mut Vec<usize>) {
                ends.clear();
                ends.extend((1..=text.len().div_ceil(47)).map(|k| (47 * k).min(text.len())));
            }
        }

        let chunks: Vec<String> = (0..6_000).map(|_| "的".to_string()).collect();
        let tally = Tally::new(Wide);
        let (output, capped) = metered(&tally, 300, &chunks);
        let (bytes, longest) = tally.read();
        assert!(capped);
        let tokens = Wide.count(&output);
        let early = 300 - tokens.min(300);
        assert!(tokens <= 300, "{tokens} tokens kept of 300");
        assert!(early <= 1 + output.len() as u64 / 450, "{early} tokens early");
        assert!(longest <= LONGEST, "one call of {longest} bytes");
        // Near the cap every delta is counted, and a token takes 16 of them.
        assert!(bytes <= 8 * output.len(), "{bytes} bytes for {}", output.len());
    }
}
