//! What a file is, told from its bytes: the client's word (the part's
//! `Content-Type`, or its name's extension) is only checked against them,
//! never trusted.

use crate::error::TurnError;

/// How many leading bytes the type is told from: enough for every magic
/// number `infer` knows, and for text to show it is text.
pub const HEAD_BYTES: usize = 8192;

/// The types uploads may have unless `files.allowed_types` says otherwise:
/// text a model reads as it is, and the documents and images the tools read.
pub const DEFAULT_ALLOWED_TYPES: [&str; 8] = [
    "text/plain",
    "text/markdown",
    "text/csv",
    "application/json",
    "application/pdf",
    "image/png",
    "image/jpeg",
    "image/webp",
];

/// The type of unknown binary content.
const OCTET_STREAM: &str = "application/octet-stream";

/// Types whose content is UTF-8 text: they are sniffed as text, and their
/// whole body must be valid UTF-8.
pub fn is_text(content_type: &str) -> bool {
    content_type.starts_with("text/")
        || content_type == "application/json"
        || content_type.ends_with("+json")
}

/// A type without parameters, lowercased; `image/jpg` is `image/jpeg`.
fn normalize(raw: &str) -> String {
    let bare = raw.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if bare == "image/jpg" { "image/jpeg".to_owned() } else { bare }
}

/// The type a file name's extension claims, for clients that send none.
fn by_extension(filename: &str) -> Option<&'static str> {
    let (_, extension) = filename.rsplit_once('.')?;
    Some(match extension.to_ascii_lowercase().as_str() {
        "txt" | "text" | "log" => "text/plain",
        "md" | "markdown" => "text/markdown",
        "csv" => "text/csv",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        _ => return None,
    })
}

/// What the client declared: the part's `Content-Type` unless it is the
/// generic `application/octet-stream` (which declares nothing), else what
/// the name's extension says.
pub fn declared(part_type: Option<&str>, filename: &str) -> Option<String> {
    part_type
        .map(normalize)
        .filter(|t| !t.is_empty() && t != OCTET_STREAM)
        .or_else(|| by_extension(filename).map(str::to_owned))
}

/// Whether `head` is the start of UTF-8 text (a character cut at its end,
/// where the head was cut, is fine) without NULs, which no text file holds.
fn looks_like_text(head: &[u8]) -> bool {
    let valid = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(error) => error.error_len().is_none(),
    };
    valid && !head.contains(&0)
}

/// The type a file is stored as: told from `head` (its first
/// [`HEAD_BYTES`], or all of it), checked against what the client
/// `declared`, and against `allowed`.
///
/// # Errors
/// - [`TurnError::FileTypeMismatch`]: the bytes contradict the declared type.
/// - [`TurnError::FileTypeNotAllowed`]: the type is not in `allowed`.
pub fn sniff(head: &[u8], declared: Option<&str>, allowed: &[String]) -> Result<String, TurnError> {
    let detected = match infer::get(head) {
        Some(kind) => normalize(kind.mime_type()),
        None if looks_like_text(head) => "text/plain".to_owned(),
        None => OCTET_STREAM.to_owned(),
    };
    let mismatch = |declared: &str| TurnError::FileTypeMismatch {
        declared: declared.to_owned(),
        detected: detected.clone(),
    };
    let stored = match declared {
        None => detected.clone(),
        // Text has no magic number: any text type it was declared as holds.
        Some(declared) if detected == "text/plain" => {
            if !is_text(declared) {
                return Err(mismatch(declared));
            }
            declared.to_owned()
        }
        Some(declared) if declared != detected => return Err(mismatch(declared)),
        Some(declared) => declared.to_owned(),
    };
    if allowed.iter().any(|a| normalize(a) == stored) {
        Ok(stored)
    } else {
        Err(TurnError::FileTypeNotAllowed { detected: stored })
    }
}

/// Checks that a body arriving in chunks is UTF-8 as a whole: a character
/// may be cut between two chunks.
#[derive(Debug, Default)]
pub struct Utf8Check {
    /// The start of a character cut at the end of the last chunk.
    carry: Vec<u8>,
    failed: bool,
}

impl Utf8Check {
    /// Takes the next chunk.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.failed || chunk.is_empty() {
            return;
        }
        let mut joined;
        let bytes = if self.carry.is_empty() {
            chunk
        } else {
            joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(chunk);
            &joined[..]
        };
        match std::str::from_utf8(bytes) {
            Ok(_) => self.carry.clear(),
            Err(error) if error.error_len().is_none() => {
                self.carry = bytes[error.valid_up_to()..].to_vec();
            }
            Err(_) => self.failed = true,
        }
        if bytes.contains(&0) {
            self.failed = true;
        }
    }

    /// Whether everything pushed was UTF-8 text, ending on a whole character.
    pub fn is_valid(&self) -> bool {
        !self.failed && self.carry.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        DEFAULT_ALLOWED_TYPES.map(str::to_owned).to_vec()
    }

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";

    #[test]
    fn png_bytes_named_pdf_are_a_mismatch() {
        let declared = declared(None, "report.pdf");
        let error = sniff(PNG, declared.as_deref(), &allowed()).unwrap_err();
        assert!(matches!(
            error,
            TurnError::FileTypeMismatch { ref declared, ref detected }
                if declared == "application/pdf" && detected == "image/png"
        ));
    }

    #[test]
    fn the_part_type_outranks_the_name_and_octet_stream_declares_nothing() {
        assert_eq!(declared(Some("image/PNG; q=1"), "x.pdf").as_deref(), Some("image/png"));
        assert_eq!(
            declared(Some("application/octet-stream"), "a.md").as_deref(),
            Some("text/markdown")
        );
        assert_eq!(declared(None, "noextension"), None);
        assert_eq!(sniff(PNG, None, &allowed()).unwrap(), "image/png");
    }

    #[test]
    fn text_takes_the_text_type_it_was_declared() {
        assert_eq!(sniff(b"a,b\n1,2\n", Some("text/csv"), &allowed()).unwrap(), "text/csv");
        assert_eq!(sniff(b"# Title", Some("text/markdown"), &allowed()).unwrap(), "text/markdown");
        assert_eq!(sniff(b"{}", Some("application/json"), &allowed()).unwrap(), "application/json");
        assert_eq!(sniff("héllo".as_bytes(), None, &allowed()).unwrap(), "text/plain");
        assert!(matches!(
            sniff(b"hello", Some("application/pdf"), &allowed()),
            Err(TurnError::FileTypeMismatch { .. })
        ));
        assert!(matches!(
            sniff(b"<html></html>", Some("text/html"), &allowed()),
            Err(TurnError::FileTypeNotAllowed { ref detected }) if detected == "text/html"
        ));
    }

    #[test]
    fn unknown_binaries_and_unlisted_types_are_refused() {
        assert!(matches!(
            sniff(b"\x00\x01\x02\xff", None, &allowed()),
            Err(TurnError::FileTypeNotAllowed { ref detected }) if detected == OCTET_STREAM
        ));
        let zip = b"PK\x03\x04\x14\0\0\0\x08\0";
        assert!(matches!(sniff(zip, None, &allowed()), Err(TurnError::FileTypeNotAllowed { .. })));
        assert!(matches!(
            sniff(b"\xff\xfe\x00binary", Some("text/plain"), &allowed()),
            Err(TurnError::FileTypeMismatch { .. })
        ));
    }

    #[test]
    fn utf8_is_checked_across_chunk_edges() {
        let text = "é€😀".as_bytes();
        for cut in 0..=text.len() {
            let mut check = Utf8Check::default();
            check.push(&text[..cut]);
            check.push(&text[cut..]);
            assert!(check.is_valid(), "cut at {cut}");
        }
        let mut cut_short = Utf8Check::default();
        cut_short.push(&text[..text.len() - 1]);
        assert!(!cut_short.is_valid());
        let mut invalid = Utf8Check::default();
        invalid.push(b"ok");
        invalid.push(b"\xff");
        invalid.push(b"ok");
        assert!(!invalid.is_valid());
    }
}
