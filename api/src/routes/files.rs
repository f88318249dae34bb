//! File handlers: the upload (its form read by [`super::upload`]), the
//! list, one file, its bytes, its deletion.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use pantheon_domain::FileId;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::upload;
use crate::dto::{FileBody, ListBody, ListQuery, file_cursor};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, Authenticated};
use crate::openapi::problems::problems;
use crate::state::AppState;

problems!(UploadFileProblems: malformed_upload, upload_incomplete, unauthenticated,
    session_not_found, upload_timeout, file_too_large, storage_quota_exceeded,
    unsupported_media_type, file_type_mismatch, file_type_not_allowed, validation_failed,
    rate_limited, internal_error, storage_unavailable, limiter_unavailable);

/// `POST /api/v1/files`
#[utoipa::path(
    post,
    path = "/api/v1/files",
    tag = "files",
    request_body(
        content = String,
        description = "`multipart/form-data`: an optional `session_id` field (the file is then \
            readable by every turn of that session), then a `file` part, streamed to storage as \
            it arrives. Its type is told from its bytes; the part's `Content-Type` (or the \
            name's extension) must agree with them. Counted in `rate_limit.uploads_per_minute`.",
        content_type = "multipart/form-data",
    ),
    responses(
        (status = 201, description = "Stored whole; `Location` is its path.", body = FileBody),
        UploadFileProblems,
    ),
    security(("bearer" = [])),
)]
pub async fn upload_file(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let max = state.files.policy().max_file_bytes;
    let form = upload::open(&headers, body, max, state.body_read_timeout).await.map_err(closing)?;
    let (chunks, receiver) = upload::channel();
    let meta = form.meta.clone();
    let pump = upload::pump(form, chunks, state.body_read_timeout);
    let stored = state.files.upload(&caller, meta, receiver);
    tokio::pin!(pump, stored);
    let mut pumping = true;
    let stored = loop {
        tokio::select! {
            stored = &mut stored => break stored,
            () = &mut pump, if pumping => pumping = false,
        }
    };
    // The answer waits for the body's end (a refusal may come before it:
    // a refused type, a crossed quota; the pump then reads on a little),
    // so a client still sending hears of it.
    if pumping {
        pump.await;
    }
    let file = stored.map_err(|e| closing(ApiError::from(e)))?;
    let location = format!("/api/v1/files/{}", file.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(FileBody::from(file)))
        .into_response())
}

/// A refused upload's answer closes its connection: the body may be left
/// unread (refused from its `Content-Length`, or cut off while draining),
/// and a client must not send its next request after it on the same one.
fn closing(error: ApiError) -> ApiError {
    error.with_header("connection", HeaderValue::from_static("close"))
}

problems!(ListFilesProblems: invalid_query, invalid_cursor, unauthenticated, internal_error,
    storage_unavailable);

/// `GET /api/v1/files`
#[utoipa::path(
    get,
    path = "/api/v1/files",
    tag = "files",
    params(ListQuery),
    responses(
        (status = 200, description = "The caller's files, newest first.", body = ListBody<FileBody>),
        ListFilesProblems,
    ),
    security(("bearer" = [])),
)]
pub async fn list_files(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ListBody<FileBody>>, ApiError> {
    let page = state.files.list(&caller, query.files()?).await?;
    Ok(Json(ListBody::new(page, file_cursor, FileBody::from)))
}

problems!(FileProblems: invalid_path, unauthenticated, file_not_found, internal_error,
    storage_unavailable);

/// `GET /api/v1/files/{file_id}`
#[utoipa::path(
    get,
    path = "/api/v1/files/{file_id}",
    tag = "files",
    params(("file_id" = uuid::Uuid, Path, description = "The file's id.")),
    responses((status = 200, description = "The file.", body = FileBody), FileProblems),
    security(("bearer" = [])),
)]
pub async fn get_file(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(file_id): ApiPath<FileId>,
) -> Result<Json<FileBody>, ApiError> {
    Ok(Json(FileBody::from(state.files.get(&caller, file_id).await?)))
}

/// `DELETE /api/v1/files/{file_id}`
#[utoipa::path(
    delete,
    path = "/api/v1/files/{file_id}",
    tag = "files",
    params(("file_id" = uuid::Uuid, Path, description = "The file's id.")),
    responses(
        (status = 204, description = "Deleted, rows and bytes, and its storage given back; \
            deleting it again answers `204` too."),
        FileProblems,
    ),
    security(("bearer" = [])),
)]
pub async fn delete_file(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(file_id): ApiPath<FileId>,
) -> Result<StatusCode, ApiError> {
    state.files.delete(&caller, file_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The characters of a file name percent-encoded in `filename*` (RFC 8187's
/// `attr-char` are left as they are).
const ATTR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `attachment` with the sanitised name: an ASCII fallback for old clients
/// and the exact name in `filename*`.
fn disposition(filename: &str) -> HeaderValue {
    let ascii: String =
        filename.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '_' }).collect();
    let exact = utf8_percent_encode(filename, ATTR);
    HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{exact}"))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// `GET /api/v1/files/{file_id}/content`
#[utoipa::path(
    get,
    path = "/api/v1/files/{file_id}/content",
    tag = "files",
    params(("file_id" = uuid::Uuid, Path, description = "The file's id.")),
    responses(
        (status = 200, description = "Its bytes, streamed, with the stored `Content-Type`, \
            `Content-Disposition: attachment` and `X-Content-Type-Options: nosniff`.",
            content_type = "application/octet-stream", body = Vec<u8>),
        FileProblems,
    ),
    security(("bearer" = [])),
)]
pub async fn file_content(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    ApiPath(file_id): ApiPath<FileId>,
) -> Result<Response, ApiError> {
    let (file, bytes) = state.files.content(&caller, file_id).await?;
    let content_type = HeaderValue::from_str(&file.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_LENGTH, HeaderValue::from(file.bytes)),
        (header::CONTENT_DISPOSITION, disposition(&file.filename)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::CACHE_CONTROL, HeaderValue::from_static("private, no-store")),
    ];
    // A store failing mid-body cuts the response short of its length:
    // the client sees a broken transfer, never a truncated file as whole.
    let body = Body::from_stream(bytes.map_err(|error| {
        tracing::warn!(error = %error, "reading a file's bytes failed mid-response");
        std::io::Error::other(error)
    }));
    Ok((headers, body).into_response())
}
