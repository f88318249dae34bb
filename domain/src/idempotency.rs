//! `Idempotency-Key`: what a client sends so a retried submission gets the
//! first attempt's turn, never a second one. A key belongs to its user;
//! the request's fingerprint (its target session and its input) tells a
//! retry from a different request that reused the key.

use sha2::{Digest, Sha256};

use crate::ids::{SessionId, TurnId};
use crate::validation::ValidationError;

/// The longest key accepted.
pub const MAX_KEY_CHARS: usize = 255;

/// A client's key: 1 to 255 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Reads the header's value: a bare key, or a Structured Fields string
    /// (`"…"`, with `\"` and `\\` its only escapes).
    ///
    /// # Errors
    /// [`ValidationError`] on `Idempotency-Key`: empty, too long, not
    /// printable ASCII, or a malformed string.
    pub fn parse(raw: &[u8]) -> Result<Self, ValidationError> {
        let invalid = |why: &str| ValidationError::new("Idempotency-Key", why);
        let raw = std::str::from_utf8(raw).map_err(|_| invalid("must be printable ASCII"))?;
        let key = match raw.strip_prefix('"') {
            Some(quoted) => {
                let inner =
                    quoted.strip_suffix('"').ok_or_else(|| invalid("an unterminated string"))?;
                let mut key = String::with_capacity(inner.len());
                let mut chars = inner.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some(escaped @ ('"' | '\\')) => key.push(escaped),
                            _ => return Err(invalid("a string escapes only \" and \\")),
                        },
                        '"' => return Err(invalid("an unescaped quote inside the string")),
                        c => key.push(c),
                    }
                }
                key
            }
            None => raw.to_owned(),
        };
        if key.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if key.len() > MAX_KEY_CHARS {
            return Err(invalid("must be at most 255 characters"));
        }
        if !key.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(invalid("must be printable ASCII"));
        }
        Ok(Self(key))
    }

    /// The key as sent (unquoted).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A submission's fingerprint: what makes two requests the same one (its
/// session and its input), as 64 hex digits.
pub fn fingerprint(session_id: SessionId, input: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(session_id.as_uuid().as_bytes());
    hash.update(input.as_bytes());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A key claimed for a turn: the turn it names and the request that
/// claimed it, as the limiter keeps them (`"<turn_id> <fingerprint>"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyClaim {
    /// The turn the key's first attempt created.
    pub turn: TurnId,
    /// That attempt's fingerprint.
    pub fingerprint: String,
}

impl KeyClaim {
    /// As stored.
    pub fn encode(&self) -> String {
        format!("{} {}", self.turn, self.fingerprint)
    }

    /// Reads a stored claim; `None` when it is not one.
    pub fn decode(raw: &str) -> Option<Self> {
        let (turn, fingerprint) = raw.split_once(' ')?;
        let turn = TurnId::from(turn.parse::<uuid::Uuid>().ok()?);
        Some(Self { turn, fingerprint: fingerprint.to_owned() })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bare_or_structured_strings_of_printable_ascii() {
        assert_eq!(IdempotencyKey::parse(b"abc-123").unwrap().as_str(), "abc-123");
        assert_eq!(IdempotencyKey::parse(br#""a \"b\" \\c""#).unwrap().as_str(), r#"a "b" \c"#);
        assert_eq!(IdempotencyKey::parse(&[b'k'; 255]).unwrap().as_str().len(), 255);
        for bad in [
            &b""[..],
            b"\"\"",
            &[b'k'; 256],
            b"caf\xc3\xa9",
            b"tab\there",
            b"\"open",
            br#""a\nb""#,
            br#""a"b""#,
        ] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_claim_round_trips_and_fingerprints_tell_session_and_input_apart() {
        let claim = KeyClaim { turn: TurnId::new(), fingerprint: "ab".repeat(32) };
        assert_eq!(KeyClaim::decode(&claim.encode()), Some(claim));
        assert_eq!(KeyClaim::decode("nonsense"), None);
        let (a, b) = (SessionId::new(), SessionId::new());
        assert_eq!(fingerprint(a, "hi"), fingerprint(a, "hi"));
        assert_ne!(fingerprint(a, "hi"), fingerprint(b, "hi"));
        assert_ne!(fingerprint(a, "hi"), fingerprint(a, "hi!"));
        assert_eq!(fingerprint(a, "hi").len(), 64);
    }
}
