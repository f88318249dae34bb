//! Chat sessions: a titled container of a user's turns.

use chrono::{DateTime, Utc};

use crate::ids::{SessionId, UserId};
use crate::validation::ValidationError;

/// The longest session title accepted, in characters.
pub const MAX_TITLE_CHARS: usize = 200;

/// A chat session owned by one user.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// Its id (time-ordered).
    pub id: SessionId,
    /// Its owner.
    pub user_id: UserId,
    /// An optional human title.
    pub title: Option<String>,
    /// How many turns were ever submitted to it; the last turn's `seq`.
    pub turn_count: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was created or last received a turn.
    pub updated_at: DateTime<Utc>,
}

/// A validated request to open a session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewSession {
    title: Option<String>,
}

impl NewSession {
    /// Validates a title: optional, at most 200 characters, no NUL (U+0000,
    /// which PostgreSQL's `text` cannot store); a blank title is treated as
    /// none.
    ///
    /// # Errors
    /// [`ValidationError`] on `title` when it is too long or holds a NUL.
    pub fn parse(title: Option<String>) -> Result<Self, ValidationError> {
        let title = title.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
        if title.as_ref().is_some_and(|t| t.chars().count() > MAX_TITLE_CHARS) {
            return Err(ValidationError::new(
                "title",
                format!("must be at most {MAX_TITLE_CHARS} characters"),
            ));
        }
        if title.as_ref().is_some_and(|t| t.contains('\0')) {
            return Err(ValidationError::new("title", "must not contain NUL (U+0000)"));
        }
        Ok(Self { title })
    }

    /// The title, if any.
    pub fn title(&self) -> Option<&str> {
        self.title.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_title_is_none_and_long_title_is_refused() {
        assert_eq!(NewSession::parse(Some("  ".into())).map(|s| s.title), Ok(None));
        assert!(NewSession::parse(Some("x".repeat(201))).is_err());
        assert!(NewSession::parse(Some("a\0b".into())).is_err());
        assert_eq!(NewSession::parse(Some(" hi ".into())).map(|s| s.title), Ok(Some("hi".into())));
    }
}
