//! The multipart body of an upload, read as it arrives: the `session_id`
//! field, then the `file` part, whose chunks are handed to the upload's
//! task through a small channel (memory stays bounded whatever the size).
//! Each wait for the client is bounded by `server.body_read_timeout_ms`.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use futures::Future;
use multer::{Constraints, Field, Multipart, SizeLimit};
use pantheon_domain::file::{UploadChunk, UploadFault, UploadMeta};
use pantheon_domain::{SessionId, TurnError, ValidationError};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::problem::Problem;

/// Room for the form around the file (boundaries, part headers, the
/// `session_id` field) when `Content-Length` is judged against
/// `files.max_file_bytes`.
const FORM_OVERHEAD: u64 = 64 * 1024;

/// Chunks in flight between the body and the upload's task.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The form's parts up to the file: its metadata, and the file part.
pub struct Form {
    pub meta: UploadMeta,
    pub file: Field<'static>,
    /// The rest of the form, read (and dropped) after the file.
    pub rest: Multipart<'static>,
}

/// Opens the form: a body that cannot hold an allowed file is refused
/// before a byte of it is read.
///
/// # Errors
/// `415` when it is not `multipart/form-data`; `413 file_too_large` when
/// `Content-Length` rules the file out; the problems of [`fault`].
pub async fn open(
    headers: &HeaderMap,
    body: Body,
    max_file_bytes: u64,
    read_timeout: Duration,
) -> Result<Form, ApiError> {
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok())
        .ok_or_else(|| {
            ApiError::new(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "The body must be sent as multipart/form-data.",
            ))
        })?;
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|length| length > max_file_bytes.saturating_add(FORM_OVERHEAD)) {
        return Err(TurnError::FileTooLarge { limit: max_file_bytes }.into());
    }
    let constraints = Constraints::new()
        .allowed_fields(vec!["session_id", "file"])
        .size_limit(SizeLimit::new().for_field("session_id", 64));
    let mut form = Multipart::with_constraints(body.into_data_stream(), boundary, constraints);
    let mut session_id = None;
    loop {
        let Some(field) = within(read_timeout, form.next_field()).await? else {
            return Err(fault(UploadFault::Malformed("there is no `file` part".into())));
        };
        if field.name() == Some("file") {
            let meta = UploadMeta {
                session_id,
                filename: field.file_name().unwrap_or_default().to_owned(),
                part_type: field.content_type().map(ToString::to_string),
            };
            return Ok(Form { meta, file: field, rest: form });
        }
        if session_id.is_some() {
            // One field at most before the file: a form of endless fields
            // must not keep the handler reading.
            return Err(fault(UploadFault::Malformed("`session_id` is sent twice".into())));
        }
        let text = within(read_timeout, field.text()).await?;
        let id = uuid::Uuid::parse_str(text.trim()).map_err(|_| {
            ApiError::from(ValidationError::new("session_id", "must be a session's id (a UUID)"))
        })?;
        session_id = Some(SessionId::from(id));
    }
}

/// Awaits one read of the body, within the read timeout.
async fn within<T>(
    timeout: Duration,
    read: impl Future<Output = Result<T, multer::Error>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(fault(fault_of(&error))),
        Err(_) => Err(fault(UploadFault::TimedOut)),
    }
}

fn fault(fault: UploadFault) -> ApiError {
    TurnError::Upload(fault).into()
}

/// What a body error means for the upload.
fn fault_of(error: &multer::Error) -> UploadFault {
    match error {
        multer::Error::IncompleteStream
        | multer::Error::IncompleteFieldData { .. }
        | multer::Error::IncompleteHeaders
        | multer::Error::StreamReadFailed(_) => UploadFault::Incomplete,
        other => UploadFault::Malformed(other.to_string()),
    }
}

/// How much of a body is still read (and dropped) when the upload no
/// longer wants it: a client that is still sending then reads its answer
/// (a `413`, a `415`) instead of a connection reset, and one sending much
/// more is cut off.
const DRAIN_BYTES: usize = 1024 * 1024;

/// Pumps the file part's chunks into `chunks` until its end or a fault,
/// then reads the rest of the form to its end. Once the upload's task
/// stops listening (it refused the file), what still comes is dropped, at
/// most [`DRAIN_BYTES`] of it.
pub async fn pump(form: Form, chunks: mpsc::Sender<UploadChunk>, read_timeout: Duration) {
    let Form { mut file, mut rest, .. } = form;
    let mut drained = 0;
    loop {
        let next = match tokio::time::timeout(read_timeout, file.chunk()).await {
            Ok(Ok(Some(bytes))) => UploadChunk::Data(bytes),
            Ok(Ok(None)) => UploadChunk::End,
            Ok(Err(error)) => UploadChunk::Fault(fault_of(&error)),
            Err(_) => UploadChunk::Fault(UploadFault::TimedOut),
        };
        match next {
            UploadChunk::Data(bytes) if chunks.is_closed() => {
                drained += bytes.len();
                if drained > DRAIN_BYTES {
                    return;
                }
            }
            UploadChunk::Data(bytes) => {
                let _ = chunks.send(UploadChunk::Data(bytes)).await;
            }
            UploadChunk::End => {
                let _ = chunks.send(UploadChunk::End).await;
                break;
            }
            fault @ UploadChunk::Fault(_) => {
                let _ = chunks.send(fault).await;
                return;
            }
        }
    }
    // Whatever parts follow the file (the closing boundary at least).
    while drained <= DRAIN_BYTES {
        let Ok(Ok(Some(mut field))) = tokio::time::timeout(read_timeout, rest.next_field()).await
        else {
            return;
        };
        while let Ok(Ok(Some(bytes))) = tokio::time::timeout(read_timeout, field.chunk()).await {
            drained += bytes.len();
        }
    }
}

/// The channel of one upload.
pub fn channel() -> (mpsc::Sender<UploadChunk>, mpsc::Receiver<UploadChunk>) {
    mpsc::channel(CHUNKS_IN_FLIGHT)
}
