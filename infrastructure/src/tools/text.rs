//! Cutting a byte range out of UTF-8 text without splitting a character.
//!
//! A range the model names in bytes may start or end inside a multi-byte
//! character. The partial character at either edge is dropped rather than
//! shown as a replacement character, and the range reported back is the
//! one actually returned, so the model reading on from `offset + bytes`
//! never sees a character twice or loses one. Bytes that are not UTF-8 at
//! all (a `text/plain` file in another encoding) are shown replaced.

/// How far a range may reach past the requested end to finish the one
/// character it would otherwise return nothing of.
pub(super) const SPILL: u64 = 3;

/// Whether `byte` continues a multi-byte character.
fn continues(byte: u8) -> bool {
    byte & 0xC0 == 0x80
}

/// The length of the character `lead` starts (1 for a byte that starts
/// none, which the lossy decoding replaces).
fn width(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

/// The part of `buf` (bytes of a file from some offset) to return for a
/// request of `wanted` bytes, as `start..end` within `buf`.
///
/// `mid_file`: the buffer does not start at the file's first byte, so
/// leading continuation bytes belong to a character begun before it.
/// `buf` holds up to [`SPILL`] bytes past `wanted` where the file has
/// them: their presence tells a character cut by the range's end from the
/// file's own end, and they finish the one character a range inside it
/// would otherwise return nothing of, so reading on always makes progress.
pub(super) fn cut(buf: &[u8], wanted: usize, mid_file: bool) -> (usize, usize) {
    let wanted = wanted.min(buf.len());
    let mut start = 0;
    if mid_file {
        // At most three bytes continue a character; a longer run is not
        // UTF-8, and is kept for the lossy decoding to show.
        while start < 3 && start < buf.len() && continues(buf[start]) {
            start += 1;
        }
    }
    if start >= wanted {
        // The range lies inside a character begun before it.
        return (start, start);
    }
    let mut end = whole_chars_end(buf, start, wanted);
    if end == start {
        // Nothing whole inside the range: return the one character it cuts.
        end = (start + width(buf[start])).min(buf.len());
    }
    (start, end)
}

/// The end, at or before `cut`, that leaves no character of `buf[start..]`
/// unfinished; a lead byte without the continuation it announces before
/// `cut` is left out with them.
fn whole_chars_end(buf: &[u8], start: usize, cut: usize) -> usize {
    let back_limit = 3.min(cut.saturating_sub(start));
    for back in 1..=back_limit {
        let byte = buf[cut - back];
        if continues(byte) {
            continue;
        }
        return if width(byte) > back && cut < buf.len() { cut - back } else { cut };
    }
    cut
}

/// `text`'s bytes from `offset` (moved on to a character boundary), at
/// most `length` of them (moved back to one), as `start..end`; never
/// empty while there is text from `offset`.
pub(super) fn char_range(text: &str, offset: usize, length: usize) -> (usize, usize) {
    let mut start = offset.min(text.len());
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let mut end = start.saturating_add(length).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end == start
        && let Some(c) = text[start..].chars().next()
    {
        end = start + c.len_utf8();
    }
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `cut` returns of `text`'s bytes `from..from + wanted`, reading
    /// `SPILL` bytes further as the tool does.
    fn read(text: &str, from: usize, wanted: usize) -> (usize, String) {
        let bytes = text.as_bytes();
        let to = (from + wanted + SPILL as usize).min(bytes.len());
        let buf = &bytes[from..to];
        let wanted = wanted.min(bytes.len() - from);
        let (start, end) = cut(buf, wanted, from > 0);
        (from + start, String::from_utf8_lossy(&buf[start..end]).into_owned())
    }

    #[test]
    fn partial_characters_at_either_edge_are_dropped() {
        let text = "aé€😀z"; // 1, 2, 3, 4, 1 bytes
        assert_eq!(read(text, 0, 2), (0, "a".into()), "é cut after its first byte");
        assert_eq!(read(text, 0, 3), (0, "aé".into()));
        assert_eq!(read(text, 2, 4), (3, "€".into()), "starts inside é");
        assert_eq!(read(text, 4, 6), (6, "😀".into()), "starts inside €");
        assert_eq!(read(text, 0, 100), (0, text.into()), "to the end");
        assert_eq!(read(text, 7, 4), (10, "z".into()), "starts inside 😀");
    }

    #[test]
    fn a_range_inside_one_character_still_returns_it_whole() {
        let text = "😀😀";
        assert_eq!(read(text, 0, 1), (0, "😀".into()));
        assert_eq!(read(text, 4, 2), (4, "😀".into()));
        assert_eq!(read(text, 5, 1), (8, String::new()), "nothing after the partial one");
    }

    #[test]
    fn reading_on_from_offset_plus_bytes_covers_the_text_exactly_once() {
        let text = "héllo wörld, ☃ and 😀 — fin";
        for length in 1..8 {
            let (mut offset, mut seen) = (0, String::new());
            while offset < text.len() {
                let (at, part) = read(text, offset, length);
                assert_eq!(at, offset, "length {length}: a read starts where the last ended");
                assert!(!part.is_empty(), "length {length}: progress at {offset}");
                offset = at + part.len();
                seen.push_str(&part);
            }
            assert_eq!(seen, text, "length {length}");
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_are_replaced_not_dropped() {
        let bytes = [b'a', 0xFF, 0x80, 0x80, 0x80, 0x80, b'b'];
        let (start, end) = cut(&bytes, bytes.len(), true);
        assert_eq!((start, end), (0, 7));
        assert_eq!(
            String::from_utf8_lossy(&bytes[start..end]),
            "a\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}b"
        );
        let (start, _) = cut(&bytes[2..], 5, true);
        assert_eq!(start, 3, "at most three continuation bytes are skipped");
    }

    #[test]
    fn char_ranges_of_extracted_text_snap_to_boundaries() {
        let text = "aé€z";
        assert_eq!(char_range(text, 0, 2), (0, 1));
        assert_eq!(char_range(text, 2, 3), (3, 6));
        assert_eq!(char_range(text, 4, 1), (6, 7), "inside €, then z");
        assert_eq!(char_range(text, 1, 1), (1, 3), "é returned whole");
        assert_eq!(char_range(text, 99, 5), (7, 7));
        assert_eq!(char_range(text, 0, usize::MAX), (0, 7));
    }
}
