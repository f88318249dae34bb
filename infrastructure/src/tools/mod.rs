//! The tools a model may call during a turn, run against the turn's files:
//! today `file_read` ([`FileTools`]).
//!
//! Everything in a call is the model's, so nothing in it is trusted: a
//! call never fails and never panics. Malformed arguments, another tool's
//! name, a file not among the turn's, a range past the end, a file with no
//! text, the store failing: each is an error result the model reads (and
//! may correct), carrying no byte of any file. A file outside the turn's is
//! answered exactly as one that does not exist, and is never read.
//!
//! Text files are read by range, so a turn holds at most a read's worth of
//! any file. A PDF's text exists only once the whole document is parsed,
//! so it is read whole (bounded by the upload limit) and extracted
//! ([`pdf`]); its ranges then address that text.

mod pdf;
mod schema;
mod text;

use std::sync::Arc;

use async_trait::async_trait;
use jsonschema::Validator;
use pantheon_domain::FileId;
use pantheon_domain::ports::{BlobStore, Tools};
use pantheon_domain::tool::{FILE_READ, FileRef, ToolCall, ToolResult, ToolSpec};
use serde_json::json;

pub use schema::{FILE_READ_SCHEMA, schema_compilations};

use pdf::PdfText;

/// What a blob store failure tells the model (the cause goes to the log).
const NOT_NOW: &str = "the file could not be read now; try again later";
/// The most characters of a tool name an error repeats.
const NAME_CHARS: usize = 64;

/// `file_read` over the turn's files, whose bytes are in `blobs`.
#[derive(Debug)]
pub struct FileTools {
    blobs: Arc<dyn BlobStore>,
    max_read_bytes: u64,
    validator: &'static Validator,
    pdfs: PdfText,
}

/// A call answered with an error.
struct Refusal {
    message: String,
    file: Option<FileId>,
}

impl Refusal {
    fn new(message: impl Into<String>, file: Option<FileId>) -> Self {
        Self { message: message.into(), file }
    }
}

/// What a read returned: `bytes` of the file's text from `offset`.
struct Read<'a> {
    file: &'a FileRef,
    offset: u64,
    bytes: u64,
    total_bytes: u64,
    text: String,
}

/// How a type is read.
enum Kind {
    Text,
    Pdf,
    Opaque,
}

fn kind(content_type: &str) -> Kind {
    let base = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if base.starts_with("text/") || base == "application/json" {
        Kind::Text
    } else if base == "application/pdf" {
        Kind::Pdf
    } else {
        Kind::Opaque
    }
}

impl FileTools {
    /// The tools, reading at most `max_read_bytes` a call. Compiles the
    /// arguments' schema if this process has not yet.
    ///
    /// # Errors
    /// When `max_read_bytes` is 0, or the schema does not compile (a bug).
    pub fn new(blobs: Arc<dyn BlobStore>, max_read_bytes: u64) -> Result<Self, String> {
        if max_read_bytes == 0 {
            return Err("the most bytes a file_read returns must be at least 1".into());
        }
        let validator = schema::validator()?;
        Ok(Self { blobs, max_read_bytes, validator, pdfs: PdfText::new() })
    }

    async fn run<'a>(&self, files: &'a [FileRef], call: &ToolCall) -> Result<Read<'a>, Refusal> {
        if call.name != FILE_READ {
            let name = schema::clip(&call.name, NAME_CHARS);
            let message = format!("there is no tool {name:?}; the only tool is {FILE_READ}");
            return Err(Refusal::new(message, None));
        }
        let args =
            schema::parse(self.validator, &call.arguments).map_err(|m| Refusal::new(m, None))?;
        let id = uuid::Uuid::parse_str(args.file_id.trim()).ok().map(FileId::from);
        let Some(file) = files.iter().find(|f| Some(f.id) == id) else {
            return Err(Refusal::new("no such file among this turn's files", None));
        };
        let length = args.length.unwrap_or(self.max_read_bytes).min(self.max_read_bytes);
        match kind(&file.content_type) {
            Kind::Text => self.read_text(file, args.offset, length).await,
            Kind::Pdf => self.read_pdf(file, args.offset, length).await,
            Kind::Opaque => {
                let message = format!("{} has no text to read", file.content_type);
                Err(Refusal::new(message, Some(file.id)))
            }
        }
    }

    async fn read_text<'a>(
        &self,
        file: &'a FileRef,
        offset: u64,
        length: u64,
    ) -> Result<Read<'a>, Refusal> {
        let total = file.bytes;
        if offset > total {
            let message = format!("offset {offset} is past the end of the file ({total} bytes)");
            return Err(Refusal::new(message, Some(file.id)));
        }
        let wanted = length.min(total - offset);
        if wanted == 0 {
            return Ok(Read { file, offset, bytes: 0, total_bytes: total, text: String::new() });
        }
        // A few bytes more, in case the range ends inside a character.
        let end = offset.saturating_add(wanted).saturating_add(text::SPILL).min(total);
        let buf = self.blobs.read_range(file.id, offset..end).await.map_err(|error| {
            tracing::warn!(file = %file.id, %error, "a file's range could not be read");
            Refusal::new(NOT_NOW, Some(file.id))
        })?;
        let wanted = usize::try_from(wanted).unwrap_or(usize::MAX);
        let (start, end) = text::cut(&buf, wanted, offset > 0);
        let text = String::from_utf8_lossy(&buf[start..end]).into_owned();
        let offset = offset + start as u64;
        Ok(Read { file, offset, bytes: (end - start) as u64, total_bytes: total, text })
    }

    async fn read_pdf<'a>(
        &self,
        file: &'a FileRef,
        offset: u64,
        length: u64,
    ) -> Result<Read<'a>, Refusal> {
        let refuse = |message: &str| Refusal::new(message, Some(file.id));
        let extracted = self.pdfs.text(self.blobs.as_ref(), file.id, file.bytes).await;
        let text = match extracted {
            Ok(Ok(text)) => text,
            Ok(Err(why)) => return Err(refuse(&why)),
            Err(not_now) => return Err(refuse(&not_now.0)),
        };
        let total = text.len() as u64;
        if offset > total {
            let message =
                format!("offset {offset} is past the end of the PDF's text ({total} bytes)");
            return Err(refuse(&message));
        }
        let at = usize::try_from(offset).unwrap_or(usize::MAX);
        let (start, end) =
            text::char_range(&text, at, usize::try_from(length).unwrap_or(usize::MAX));
        Ok(Read {
            file,
            offset: start as u64,
            bytes: (end - start) as u64,
            total_bytes: total,
            text: text[start..end].to_owned(),
        })
    }
}

#[async_trait]
impl Tools for FileTools {
    fn specs(&self) -> Vec<ToolSpec> {
        vec![schema::spec()]
    }

    async fn call(&self, files: &[FileRef], call: &ToolCall) -> ToolResult {
        match self.run(files, call).await {
            Ok(read) => {
                let content = json!({
                    "file_id": read.file.id,
                    "filename": read.file.filename,
                    "offset": read.offset,
                    "bytes": read.bytes,
                    "total_bytes": read.total_bytes,
                    "eof": read.offset + read.bytes >= read.total_bytes,
                    "text": read.text,
                });
                ToolResult {
                    content: content.to_string(),
                    file: Some(read.file.id),
                    bytes: read.bytes,
                    error: None,
                }
            }
            Err(refusal) => ToolResult {
                content: json!({ "error": refusal.message }).to_string(),
                file: refusal.file,
                bytes: 0,
                error: Some(refusal.message),
            },
        }
    }
}

#[cfg(test)]
mod tests;
