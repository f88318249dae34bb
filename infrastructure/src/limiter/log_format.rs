//! How `check.lua` stores a user's log in Redis, read back: for tests and
//! tools that assert what Redis holds (`LRANGE ratelimit:{<user>}:log 0 -1`),
//! never on the request path, which only the script reads.

use pantheon_domain::limiter::Entry;

/// A stored log: the header's fields and the entries, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredLog {
    /// The log's clock (ms).
    pub clock: i64,
    /// The index of the first entry inside the minute.
    pub minute_start: usize,
    /// The tokens of the entries inside the minute.
    pub minute_tokens: u64,
    /// The tokens of every entry.
    pub hour_tokens: u64,
    /// The entries.
    pub entries: Vec<Entry>,
}

/// Bytes of a stored entry: a 6-byte signed stamp and 4-byte tokens, big
/// endian.
pub const ENTRY_BYTES: usize = 10;

/// Decodes the elements of a log list (`LRANGE key 0 -1`); `None` for an
/// empty list (no log).
///
/// # Errors
/// A message when an element has another shape than the script writes.
pub fn decode(elements: &[Vec<u8>]) -> Result<Option<StoredLog>, String> {
    let Some((header, entries)) = elements.split_first() else { return Ok(None) };
    let field = |i: usize| -> Result<f64, String> {
        let bytes = header.get(i * 8..i * 8 + 8).ok_or("short header")?;
        Ok(f64::from_be_bytes(bytes.try_into().map_err(|_| "short header")?))
    };
    if header.len() != 7 * 8 {
        return Err(format!("a header of {} bytes", header.len()));
    }
    // Every field is an integer below 2^53 the script wrote as a double.
    let whole = |v: f64| v as i64;
    let n = whole(field(0)?);
    let entries: Vec<Entry> = entries
        .iter()
        .map(|e| {
            let e: &[u8; ENTRY_BYTES] =
                e.as_slice().try_into().map_err(|_| format!("an entry of {} bytes", e.len()))?;
            let mut stamp = [0u8; 8];
            stamp[2..].copy_from_slice(&e[..6]);
            let at_ms = i64::from_be_bytes(stamp) << 16 >> 16;
            let tokens = u64::from(u32::from_be_bytes([e[6], e[7], e[8], e[9]]));
            Ok(Entry { at_ms, tokens })
        })
        .collect::<Result<_, String>>()?;
    if usize::try_from(n).ok() != Some(entries.len()) {
        return Err(format!("the header counts {n} entries, the list holds {}", entries.len()));
    }
    Ok(Some(StoredLog {
        clock: whole(field(4)?),
        minute_start: usize::try_from(whole(field(1)?)).unwrap_or(0),
        minute_tokens: u64::try_from(whole(field(2)?)).unwrap_or(0),
        hour_tokens: u64::try_from(whole(field(3)?)).unwrap_or(0),
        entries,
    }))
}
