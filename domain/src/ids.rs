//! Identifiers. Each is a newtype so a session id cannot be passed where a
//! turn id is expected, and a [`UserId`] can only exist once validated.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::limiter::Limits;
use crate::validation::ValidationError;

/// The longest user id accepted (the JWT `sub`).
pub const MAX_USER_ID_LEN: usize = 128;

/// A user's id, taken from the token's `sub`.
///
/// Restricted to `[A-Za-z0-9._@|:-]{1,128}` so it is safe to embed in a Redis
/// key, a log field or a URL without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    /// Validates a raw user id.
    ///
    /// # Errors
    /// [`ValidationError`] when it is empty, longer than 128 characters, or
    /// holds a character outside the allowed set.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "._@|:-".contains(c);
        if raw.is_empty() || raw.len() > MAX_USER_ID_LEN || !raw.chars().all(allowed) {
            return Err(ValidationError::new(
                "sub",
                "must be 1-128 characters of [A-Za-z0-9._@|:-]",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id the limiter counts this user's `scope` requests under (the
    /// uploads window): `<user>/<scope>`. `/` is outside the user-id
    /// alphabet, so no user's own id can collide with it.
    pub fn scoped(&self, scope: &str) -> Self {
        Self(format!("{}/{scope}", self.0))
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered (UUIDv7) id: newer ids sort after older
            /// ones, which is what keyset pagination orders by.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The underlying UUID.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A chat session's id.
    SessionId
);
uuid_id!(
    /// A turn's id.
    TurnId
);
uuid_id!(
    /// An uploaded file's id; also the only part of its storage path.
    FileId
);

/// The authenticated caller of a request, established from the bearer token
/// without any I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who is calling.
    pub user: UserId,
    /// The limit tier named by the token's `tier` claim, if any.
    pub tier: Option<String>,
    /// The turn limits of that tier, resolved at authentication so the
    /// check needs no lookup.
    pub limits: Limits,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_accepts_the_documented_alphabet() {
        assert!(UserId::parse("alice.Smith_1@example.com|auth0:x-y").is_ok());
        assert!(UserId::parse(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn user_id_rejects_what_would_break_a_key() {
        for bad in ["", "a b", "a{b}", "a*", "ü", &"a".repeat(129)] {
            assert!(UserId::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
