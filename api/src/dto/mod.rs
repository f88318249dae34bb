//! The JSON shapes of the API: request bodies, resources and list pages.
//! Only this crate knows them; the domain has its own types. Each derives
//! its OpenAPI schema (`docs/openapi.json`) from the same fields it
//! serializes, so the document follows the code.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, Utc};
use pantheon_domain::limiter::LimiterState;
use pantheon_domain::page::{DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT};
use pantheon_domain::{Page, PageRequest, Session, SessionId, Turn};
use serde::{Deserialize, Serialize, Serializer};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::ApiError;

mod files;
mod turns;

pub use files::{FileBody, file_cursor};
pub use turns::{SubmitTurnRequest, TurnBody};

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
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreateSession)]
pub struct CreateSessionRequest {
    /// Optional title: 1–200 characters, not blank.
    #[schema(min_length = 1, max_length = 200)]
    pub title: Option<String>,
}

/// A chat session.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Session)]
pub struct SessionBody {
    #[schema(value_type = String, format = Uuid)]
    id: SessionId,
    title: Option<String>,
    /// Turns submitted into it so far.
    turn_count: i64,
    /// RFC 3339, UTC, microseconds.
    #[serde(serialize_with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
    created_at: DateTime<Utc>,
    #[serde(serialize_with = "timestamp")]
    #[schema(value_type = String, format = DateTime)]
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

/// A page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListBody<T> {
    /// The items, in the list's order.
    data: Vec<T>,
    /// Whether more items follow this page.
    has_more: bool,
    /// The `after` of the next page; `null` on the last.
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
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Items per page, 1–100 (default 20); outside that range `400 invalid_query`.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u64>,
    /// The `next_cursor` of the previous page; a cursor this list did not
    /// issue is `400 invalid_cursor`.
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

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Health)]
pub struct HealthBody {
    /// Always `ok`: the process answers.
    #[schema(value_type = String, pattern = "^ok$")]
    pub status: &'static str,
}

/// The limiter's state, as `/readyz` and `GET /api/v1/rate-limit` report it.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = LimiterState)]
pub enum LimiterStateBody {
    /// Redis answers.
    Healthy,
    /// Redis is failing; checks are answered by `rate_limit.fallback`.
    Degraded,
    /// No Redis configured: counted in this process.
    InProcess,
    /// `rate_limit.enabled = false`.
    Disabled,
}

impl From<Option<LimiterState>> for LimiterStateBody {
    fn from(state: Option<LimiterState>) -> Self {
        match state {
            None => Self::Disabled,
            Some(LimiterState::Healthy) => Self::Healthy,
            Some(LimiterState::Degraded) => Self::Degraded,
            Some(LimiterState::InProcess) => Self::InProcess,
        }
    }
}

/// `GET /readyz` when the database answers.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Ready)]
pub struct ReadyBody {
    /// Always `ready`.
    #[schema(value_type = String, pattern = "^ready$")]
    pub status: &'static str,
    /// Always `ok`.
    #[schema(value_type = String, pattern = "^ok$")]
    pub database: &'static str,
    /// Reported, never failing readiness: a degraded limiter still serves.
    pub limiter: LimiterStateBody,
}
