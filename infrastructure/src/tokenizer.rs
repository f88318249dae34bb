//! The tokenizer behind the domain's [`TokenCounter`]: OpenAI's `o200k_base`
//! (GPT-4o and later) or `cl100k_base` (GPT-4, GPT-3.5), by `tiktoken-rs`,
//! whose vocabularies are compiled into the binary. Each is loaded once per
//! process (a few hundred milliseconds) and shared by every server in it.
//!
//! Both encodings first split text into pieces by a regular expression and
//! then merge bytes within each piece only, so a count splits wherever a
//! piece must end whatever follows. [`Tiktoken::settled_len`] finds the last
//! such place by three rules that hold for both expressions:
//! - before a space (U+0020) that follows a non-space: no alternative takes
//!   a space after a non-space, so a piece ends there;
//! - after a newline, before a character that is neither whitespace nor `/`
//!   (`o200k` lets a punctuation piece take newlines and slashes);
//! - between an ASCII letter or digit, or a CJK character, and ASCII
//!   punctuation other than `'` (which may begin a contraction, `'s`).
//!
//! A run of CJK characters or emoji is one piece, so the meter settles it
//! at the token boundaries [`Tiktoken::token_ends`] reports instead: each
//! token's length comes from a table built once per encoding, so the ends
//! cost no more than the encoding itself.

use std::sync::OnceLock;

use pantheon_domain::TokenCounter;
use tiktoken_rs::{CoreBPE, Rank};

use crate::settings::TokenizerKind;

/// A compiled-in OpenAI encoding.
#[derive(Clone, Copy)]
pub struct Tiktoken {
    kind: TokenizerKind,
    bpe: &'static CoreBPE,
    /// Each token's length in bytes, by rank.
    lengths: &'static [u16],
}

impl std::fmt::Debug for Tiktoken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiktoken").field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl Tiktoken {
    /// The encoding `kind`, loaded on first use in the process.
    pub fn new(kind: TokenizerKind) -> Self {
        static O200K: OnceLock<Vec<u16>> = OnceLock::new();
        static CL100K: OnceLock<Vec<u16>> = OnceLock::new();
        let (bpe, lengths) = match kind {
            TokenizerKind::O200k => (tiktoken_rs::o200k_base_singleton(), &O200K),
            TokenizerKind::Cl100k => (tiktoken_rs::cl100k_base_singleton(), &CL100K),
        };
        let lengths = lengths.get_or_init(|| token_lengths(bpe));
        Self { kind, bpe, lengths }
    }

    /// Bytes of the token `rank`.
    fn length(&self, rank: Rank) -> usize {
        match usize::try_from(rank).ok().and_then(|i| self.lengths.get(i)) {
            Some(&length) => usize::from(length),
            None => self.bpe.decode_bytes(&[rank]).map_or(0, |bytes| bytes.len()),
        }
    }
}

/// The length of every ordinary token of `bpe`, by rank (ranks run from 0
/// without gaps in both encodings; a rank past the table is decoded).
fn token_lengths(bpe: &CoreBPE) -> Vec<u16> {
    (0..)
        .map_while(|rank: Rank| bpe.decode_bytes(&[rank]).ok())
        .map(|bytes| u16::try_from(bytes.len()).unwrap_or(u16::MAX))
        .collect()
}

impl TokenCounter for Tiktoken {
    fn count(&self, text: &str) -> u64 {
        self.bpe.encode_ordinary(text).len() as u64
    }

    fn fit(&self, text: &str, max: u64) -> usize {
        let tokens = self.bpe.encode_ordinary(text);
        let mut take = usize::try_from(max).unwrap_or(usize::MAX);
        if tokens.len() <= take {
            return text.len();
        }
        // The first `take` tokens' bytes are a prefix of the text; cut back
        // to a character boundary, and make sure the prefix, encoded on its
        // own, is no longer (BPE need not be monotone).
        while take > 0 {
            let bytes = self.bpe.decode_bytes(&tokens[..take]).map_or(0, |b| b.len());
            let mut end = bytes.min(text.len());
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

    fn fewest_tokens(&self, bytes: usize) -> u64 {
        u64::try_from(bytes.div_ceil(LONGEST_TOKEN_BYTES)).unwrap_or(u64::MAX)
    }

    fn settled_len(&self, text: &str) -> usize {
        let mut after: Option<char> = None;
        for (i, c) in text.char_indices().rev() {
            if let Some(next) = after
                && splits(c, next)
            {
                return i + c.len_utf8();
            }
            after = Some(c);
        }
        0
    }

    fn token_ends(&self, text: &str, ends: &mut Vec<usize>) {
        ends.clear();
        let mut end = 0;
        for rank in self.bpe.encode_ordinary(text) {
            end += self.length(rank);
            ends.push(end.min(text.len()));
        }
    }
}

/// The longest token of either encoding, in bytes (runs of spaces and of
/// `=`, `-`… in `o200k` and `cl100k` alike): no text has fewer tokens than
/// its bytes over this.
const LONGEST_TOKEN_BYTES: usize = 128;

/// Whether the encodings end a piece between `before` and `next` whatever
/// follows (see the module comment).
fn splits(before: char, next: char) -> bool {
    (next == ' ' && !before.is_whitespace())
        || (before == '\n' && !next.is_whitespace() && next != '/')
        || ((before.is_ascii_alphanumeric() || is_cjk(before))
            && next.is_ascii_punctuation()
            && next != '\'')
}

/// CJK ideographs, kana and Hangul syllables: letters that take no
/// combining marks in practice.
fn is_cjk(c: char) -> bool {
    matches!(c, '\u{3040}'..='\u{30ff}' | '\u{3400}'..='\u{4dbf}' | '\u{4e00}'..='\u{9fff}' | '\u{ac00}'..='\u{d7a3}')
}

#[cfg(test)]
mod tests {
    use pantheon_domain::OutputMeter;

    use super::*;

    const KINDS: [TokenizerKind; 2] = [TokenizerKind::O200k, TokenizerKind::Cl100k];

    /// A tiny deterministic generator, so a failure is reproducible.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self, bound: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % bound as u64) as usize
        }
    }

    /// Fragments that exercise every alternative of both expressions:
    /// words in both cases, contractions, digits, punctuation runs,
    /// whitespace runs with and without newlines, slashes, CJK, combining
    /// marks, emoji.
    const FRAGMENTS: [&str; 40] = [
        "hello",
        " world",
        "Hello",
        "WORLD",
        "'s",
        "'re",
        "don't",
        " it's",
        "123",
        "4567",
        " 89",
        ".",
        ",",
        "!!",
        "...",
        " (",
        ")",
        "/",
        "//",
        "\n",
        "\n\n",
        "  ",
        "   \n",
        "\t",
        "\r\n",
        " ",
        "中文",
        "，",
        "。",
        "日本語",
        "한국어",
        "e\u{301}",
        "\u{301}",
        "café",
        "🙂",
        "👍🏽",
        "x/y",
        "a-b",
        "_",
        "\"quoted\"",
    ];

    /// One to `most` fragments.
    fn random_text(rng: &mut Rng, most: usize) -> String {
        let pieces = 1 + rng.next(most);
        (0..pieces).map(|_| FRAGMENTS[rng.next(FRAGMENTS.len())]).collect()
    }

    #[test]
    fn counts_match_the_reference_encodings() {
        let o200k = Tiktoken::new(TokenizerKind::O200k);
        let cl100k = Tiktoken::new(TokenizerKind::Cl100k);
        assert_eq!(o200k.count("hello world"), 2);
        assert_eq!(cl100k.count("hello world"), 2);
        assert_eq!(o200k.count(""), 0);
        // Special tokens in user text are text, not control tokens.
        assert!(o200k.count("<|endoftext|>") > 1);
    }

    #[test]
    fn a_settled_prefix_counts_apart_from_whatever_follows() {
        let mut rng = Rng(0x70c3_u64 | 1);
        for kind in KINDS {
            let tokenizer = Tiktoken::new(kind);
            for case in 0..2_000 {
                let text = random_text(&mut rng, 12);
                let more = random_text(&mut rng, 4);
                let cut = tokenizer.settled_len(&text);
                assert!(text.is_char_boundary(cut));
                let whole = tokenizer.count(&format!("{text}{more}"));
                let apart = tokenizer.count(&text[..cut])
                    + tokenizer.count(&format!("{}{more}", &text[cut..]));
                assert_eq!(whole, apart, "{kind:?} case {case}: {text:?} + {more:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn a_fitted_prefix_is_within_its_budget_and_as_long_as_the_tokens_allow() {
        let mut rng = Rng(0xf17_u64);
        for kind in KINDS {
            let tokenizer = Tiktoken::new(kind);
            for _ in 0..500 {
                let text = random_text(&mut rng, 20);
                let max = rng.next(12) as u64;
                let end = tokenizer.fit(&text, max);
                assert!(text.is_char_boundary(end));
                assert!(tokenizer.count(&text[..end]) <= max, "{text:?} within {max}");
                if tokenizer.count(&text) <= max {
                    assert_eq!(end, text.len());
                }
            }
        }
    }

    #[test]
    fn a_metered_stream_counts_exactly_and_stops_at_its_cap() {
        let mut rng = Rng(0x5_7ea_u64);
        for kind in KINDS {
            let tokenizer = Tiktoken::new(kind);
            for _ in 0..300 {
                let n = 1 + rng.next(60);
                let chunks: Vec<String> = (0..n).map(|_| random_text(&mut rng, 3)).collect();
                let cap = 1 + rng.next(40) as u64;
                let mut meter = OutputMeter::new(&tokenizer, cap);
                let mut output = String::new();
                let mut capped = false;
                for chunk in &chunks {
                    let accepted = meter.accept(&output, chunk);
                    output.push_str(&chunk[..accepted.keep]);
                    if accepted.capped {
                        capped = true;
                        break;
                    }
                }
                let whole: String = chunks.concat();
                assert!(tokenizer.count(&output) <= cap, "{output:?} over {cap}");
                assert_eq!(capped, tokenizer.count(&whole) > cap, "{whole:?} vs {cap}");
                if !capped {
                    assert_eq!(output, whole);
                }
            }
        }
    }

    #[test]
    fn no_token_is_longer_than_the_bound_a_refusal_by_size_relies_on() {
        for kind in KINDS {
            let tokens = Tiktoken::new(kind);
            let longest = (0..300_000_u32)
                .filter_map(|rank| tokens.bpe.decode_bytes(&[rank]).ok())
                .map(|bytes| bytes.len())
                .max();
            assert_eq!(longest, Some(LONGEST_TOKEN_BYTES), "{kind:?}");
            let text = " ".repeat(1_000);
            assert!(tokens.count(&text) >= tokens.fewest_tokens(text.len()));
        }
    }

    #[test]
    fn token_ends_are_the_encodings_own() {
        let mut rng = Rng(0xe4d5_u64);
        let mut ends = Vec::new();
        for kind in KINDS {
            let tokenizer = Tiktoken::new(kind);
            assert!(tokenizer.lengths.len() > 100_000, "{kind:?}: {}", tokenizer.lengths.len());
            for _ in 0..500 {
                let text = random_text(&mut rng, 20);
                tokenizer.token_ends(&text, &mut ends);
                let tokens = tokenizer.bpe.encode_ordinary(&text);
                assert_eq!(ends.len(), tokens.len(), "{text:?}");
                for (k, end) in ends.iter().enumerate() {
                    let bytes = tokenizer.bpe.decode_bytes(&tokens[..=k]).map_or(0, |b| b.len());
                    assert_eq!(*end, bytes, "{kind:?} {text:?} token {k}");
                }
            }
        }
    }

    /// `Tiktoken`, adding up the bytes it is handed.
    #[derive(Debug)]
    struct Tally(Tiktoken, std::sync::atomic::AtomicUsize);

    impl Tally {
        fn add(&self, text: &str) {
            self.1.fetch_add(text.len(), std::sync::atomic::Ordering::Relaxed);
        }
    }

    impl TokenCounter for Tally {
        fn count(&self, text: &str) -> u64 {
            self.add(text);
            self.0.count(text)
        }

        fn fit(&self, text: &str, max: u64) -> usize {
            self.add(text);
            self.0.fit(text, max)
        }

        fn settled_len(&self, text: &str) -> usize {
            self.add(text);
            self.0.settled_len(text)
        }

        fn token_ends(&self, text: &str, ends: &mut Vec<usize>) {
            self.add(text);
            self.0.token_ends(text, ends);
        }
    }

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

    #[test]
    fn a_cjk_reply_a_character_a_delta_is_metered_in_linear_work_within_its_cap() {
        let ideographs: Vec<char> =
            "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对"
                .chars()
                .collect();
        let chunks: Vec<String> =
            (0..6_000).map(|i| ideographs[(i * 7) % ideographs.len()].to_string()).collect();
        let whole = chunks.concat();
        for kind in KINDS {
            let tokenizer = Tiktoken::new(kind);
            assert_eq!(tokenizer.settled_len(&whole), 0, "{kind:?}: one piece");
            for cap in [1_000, 4_096] {
                let tally = Tally(tokenizer, 0.into());
                let (output, capped) = metered(&tally, cap, &chunks);
                let tokens = tokenizer.count(&output);
                assert!(capped, "{kind:?}: {} tokens", tokenizer.count(&whole));
                assert!(tokens <= cap, "{kind:?}: {tokens} tokens over {cap}");
                assert!(tokens + 2 >= cap, "{kind:?}: {tokens} tokens, cut early under {cap}");
                let bytes = tally.1.into_inner();
                assert!(
                    bytes <= 4 * output.len(),
                    "{kind:?} under {cap}: {bytes} bytes tokenized for a {}-byte reply",
                    output.len()
                );
            }
        }
    }

    #[test]
    fn long_streams_in_any_script_count_as_the_whole_reply_does() {
        let mut rng = Rng(0x10_c5_u64);
        // Runs the encodings never split, and some that they do.
        let runs = [
            "的",
            "一是",
            "不了人",
            "🙂",
            "👍🏽",
            "😂",
            "한국어",
            "日本語",
            "e\u{301}",
            " word",
            "中文，",
        ];
        for kind in KINDS {
            let tokenizer = Tiktoken::new(kind);
            for case in 0..12 {
                let chunks: Vec<String> = (0..1_500)
                    .map(|_| (0..1 + rng.next(3)).map(|_| runs[rng.next(runs.len())]).collect())
                    .collect();
                let whole = chunks.concat();
                let cap = 200 + rng.next(3_000) as u64;
                let (output, capped) = metered(&tokenizer, cap, &chunks);
                let tokens = tokenizer.count(&output);
                assert_eq!(capped, tokenizer.count(&whole) > cap, "{kind:?} case {case}");
                assert!(tokens <= cap, "{kind:?} case {case}: {tokens} over {cap}");
                if capped {
                    assert!(tokens + 2 >= cap, "{kind:?} case {case}: {tokens} under {cap}");
                } else {
                    assert_eq!(output, whole, "{kind:?} case {case}");
                }
            }
        }
    }
}
