//! Extractors whose rejections are [`ApiError`](crate::error::ApiError)s, so
//! bad input gets the same problem responses as everything else.
//!
//! - The bearer token is verified in-process: it touches no database.
//! - Path and query parameters: a malformed one is a `400`, never a `500`.
//! - JSON bodies with the statuses of `docs/API.md` ("Errors"): malformed
//!   `400`, wrong content type `415`, schema violation (missing or unknown
//!   field, wrong type) `422`, over the body limit `413`, not all in within
//!   `server.body_read_timeout_ms` `408`.
//!
//! The body deadline is here, not at the connection, so the client gets a
//! problem response; and since a handler calls no service before its body
//! is parsed, a late body has created nothing and counted nothing.

use std::future::Future;
use std::marker::PhantomData;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use pantheon_domain::Caller;
use pantheon_domain::idempotency::IdempotencyKey;
use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::error::ApiError;
use crate::problem::Problem;
use crate::state::AppState;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Caller);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(ApiError::unauthenticated)?;
        state.verifier.verify(token).map(Authenticated).map_err(|refused| {
            tracing::debug!(reason = %refused, "bearer token refused");
            ApiError::unauthenticated()
        })
    }
}

/// Path parameters (`{session_id}` must be a UUID).
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state).await.map(|Path(v)| Self(v)).map_err(|e| {
            ApiError::bad_request(
                "invalid_path",
                format!("Malformed path parameter: {}", e.body_text()),
            )
        })
    }
}

/// Query parameters.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Self(v))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// The optional `Idempotency-Key` header (see `docs/API.md`); a malformed
/// one, or two, is `400 invalid_idempotency_key`.
#[derive(Debug)]
pub struct IdempotencyHeader(pub Option<IdempotencyKey>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all("idempotency-key").iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return match parts.headers.contains_key("idempotency-key") {
                true => Err(invalid_key("must be sent once")),
                false => Ok(Self(None)),
            };
        };
        IdempotencyKey::parse(value.as_bytes())
            .map(|key| Self(Some(key)))
            .map_err(|e| invalid_key(&e.message))
    }
}

fn invalid_key(why: &str) -> ApiError {
    ApiError::bad_request("invalid_idempotency_key", format!("Idempotency-Key {why}."))
}

/// A JSON body that must be present.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let problem = match &rejection {
            JsonRejection::JsonDataError(e) => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", e.body_text())
            }
            JsonRejection::JsonSyntaxError(e) => {
                Problem::new(StatusCode::BAD_REQUEST, "malformed_json", e.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "The request body must be sent as Content-Type: application/json.",
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Problem::for_status(StatusCode::PAYLOAD_TOO_LARGE)
            }
            other => Problem::new(other.status(), "bad_request", other.body_text()),
        };
        ApiError::new(problem)
    }
}

impl<T> FromRequest<AppState> for ApiJson<T>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let read = Json::<ObjectOnly<T>>::from_request(req, state);
        let Json(ObjectOnly(value)) = within_body_deadline(state, read).await?;
        Ok(Self(value))
    }
}

/// `read`, or `408` if the body is not in within `server.body_read_timeout_ms`.
async fn within_body_deadline<T, E: Into<ApiError>>(
    state: &AppState,
    read: impl Future<Output = Result<T, E>>,
) -> Result<T, ApiError> {
    let limit = state.body_read_timeout;
    match tokio::time::timeout(limit, read).await {
        Ok(read) => read.map_err(Into::into),
        Err(_) => {
            tracing::debug!(timeout_ms = limit.as_millis(), "request body timed out");
            Err(ApiError::new(Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("The request body did not arrive within {} ms.", limit.as_millis()),
            )))
        }
    }
}

/// `T` from a JSON object only: serde would otherwise accept `["hi"]` for a
/// one-field struct, and our bodies are objects. Read in one pass (no
/// intermediate `Value`); a non-object is a data error, so a `422`.
struct ObjectOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for Object<T> {
            type Value = T;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        deserializer.deserialize_map(Object(PhantomData)).map(ObjectOnly)
    }
}

/// A JSON body that may be left out entirely (then `T::default()`), as for
/// `POST /sessions` whose only field is optional.
#[derive(Debug)]
pub struct JsonOrEmpty<T>(pub T);

impl<T> FromRequest<AppState> for JsonOrEmpty<T>
where
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let has_content_type = req.headers().contains_key(header::CONTENT_TYPE);
        let (parts, body) = req.into_parts();
        let read = Bytes::from_request(Request::from_parts(parts.clone(), body), state);
        let bytes = within_body_deadline(state, async {
            read.await.map_err(|e| ApiError::new(Problem::for_status(e.status())))
        })
        .await?;
        if bytes.is_empty() && !has_content_type {
            return Ok(Self(T::default()));
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        Ok(Self(ApiJson::<T>::from_request(req, state).await?.0))
    }
}
