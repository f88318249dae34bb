//! The JSON shapes of the API: request bodies, resources and list pages.
//! Only this crate knows them; the domain has its own types.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, Utc};
use pantheon_domain::page::{DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT};
use pantheon_domain::{Page, PageRequest, Session, SessionId, Turn, Usage};
use serde::{Deserialize, Serialize, Serializer};
use uuid::Uuid;

use crate::error::{ApiError, failure_status};

/// Timestamps as RFC 3339 UTC with microseconds, the precision stored.
fn timestamp<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn optional_timestamp<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => timestamp(t, s),
        None => s.serialize_none(),
    }
}

/// `POST /sessions` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    /// Optional title.
    pub title: Option<String>,
}

/// Turn submission body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitTurnRequest {
    /// The user's input.
    pub input: String,
}

/// A session resource.
#[derive(Debug, Serialize)]
pub struct SessionBody {
    id: SessionId,
    title: Option<String>,
    turn_count: i64,
    #[serde(serialize_with = "timestamp")]
    created_at: DateTime<Utc>,
    #[serde(serialize_with = "timestamp")]
    updated_at: DateTime<Utc>,
}

impl From<Session> for SessionBody {
    fn from(s: Session) -> Self {
        Self {
            id: s.id,
            title: s.title,
            turn_count: s.turn_count,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// The `error` member of a failed turn: a problem object.
#[derive(Debug, Clone, Serialize)]
pub struct TurnErrorBody {
    #[serde(rename = "type")]
    type_uri: String,
    title: String,
    status: u16,
    /// Public explanation.
    pub detail: String,
    code: String,
}

/// A turn resource.
#[derive(Debug, Serialize)]
pub struct TurnBody {
    id: pantheon_domain::TurnId,
    session_id: SessionId,
    seq: i64,
    input: String,
    output: String,
    status: pantheon_domain::TurnStatus,
    finish_reason: Option<pantheon_domain::FinishReason>,
    usage: Option<Usage>,
    /// Why it failed, when it did.
    pub error: Option<TurnErrorBody>,
    #[serde(serialize_with = "timestamp")]
    created_at: DateTime<Utc>,
    #[serde(serialize_with = "optional_timestamp")]
    completed_at: Option<DateTime<Utc>>,
}

impl From<Turn> for TurnBody {
    fn from(t: Turn) -> Self {
        let error = t.error.map(|f| {
            let status = failure_status(f.kind);
            let code = f.kind.as_str();
            TurnErrorBody {
                type_uri: format!("urn:pantheon:problem:{code}"),
                title: status.canonical_reason().unwrap_or("Error").to_owned(),
                status: status.as_u16(),
                detail: f.detail,
                code: code.to_owned(),
            }
        });
        Self {
            id: t.id,
            session_id: t.session_id,
            seq: t.seq,
            input: t.input,
            output: t.output,
            status: t.status,
            finish_reason: t.finish_reason,
            usage: t.usage,
            error,
            created_at: t.created_at,
            completed_at: t.completed_at,
        }
    }
}

/// A page of a list.
#[derive(Debug, Serialize)]
pub struct ListBody<T> {
    data: Vec<T>,
    has_more: bool,
    next_cursor: Option<String>,
}

impl<T> ListBody<T> {
    /// Builds the body from a domain page; `cursor_of` names the last item.
    pub fn new<D>(page: Page<D>, cursor_of: impl Fn(&D) -> String, body: impl Fn(D) -> T) -> Self {
        let next_cursor = page.has_more.then(|| page.items.last().map(&cursor_of)).flatten();
        Self {
            has_more: page.has_more,
            next_cursor,
            data: page.items.into_iter().map(body).collect(),
        }
    }
}

/// `?limit=&after=` of the list endpoints.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<u64>,
    after: Option<String>,
}

/// Cursors are opaque to clients: a tagged key, base64url-encoded. The tag
/// keeps a session cursor from being replayed against a turn list.
const SESSION_CURSOR: &str = "s1:";
const TURN_CURSOR: &str = "t1:";

fn encode_cursor(tag: &str, key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{tag}{key}"))
}

fn decode_cursor(tag: &str, cursor: &str) -> Option<String> {
    let raw = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    String::from_utf8(raw).ok()?.strip_prefix(tag).map(str::to_owned)
}

fn invalid_cursor() -> ApiError {
    ApiError::bad_request("invalid_cursor", "The `after` cursor is not one this list issued.")
}

impl ListQuery {
    fn limit(&self) -> Result<u64, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_PAGE_LIMIT),
            Some(n) if (1..=MAX_PAGE_LIMIT).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::bad_request(
                "invalid_query",
                format!("`limit` must be between 1 and {MAX_PAGE_LIMIT}."),
            )),
        }
    }

    /// The page of sessions asked for.
    ///
    /// # Errors
    /// `400` for a bad limit or cursor.
    pub fn sessions(&self) -> Result<PageRequest<SessionId>, ApiError> {
        let after = match &self.after {
            None => None,
            Some(c) => {
                let key = decode_cursor(SESSION_CURSOR, c).ok_or_else(invalid_cursor)?;
                Some(SessionId::from(Uuid::parse_str(&key).map_err(|_| invalid_cursor())?))
            }
        };
        Ok(PageRequest { limit: self.limit()?, after })
    }

    /// The page of turns asked for.
    ///
    /// # Errors
    /// `400` for a bad limit or cursor.
    pub fn turns(&self) -> Result<PageRequest<i64>, ApiError> {
        let after = match &self.after {
            None => None,
            Some(c) => {
                let key = decode_cursor(TURN_CURSOR, c).ok_or_else(invalid_cursor)?;
                Some(key.parse::<i64>().map_err(|_| invalid_cursor())?)
            }
        };
        Ok(PageRequest { limit: self.limit()?, after })
    }
}

/// The cursor after a session.
pub fn session_cursor(s: &Session) -> String {
    encode_cursor(SESSION_CURSOR, &s.id.to_string())
}

/// The cursor after a turn.
pub fn turn_cursor(t: &Turn) -> String {
    encode_cursor(TURN_CURSOR, &t.seq.to_string())
}
