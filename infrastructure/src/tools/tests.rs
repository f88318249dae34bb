//! `file_read` over an in-memory store: what the model gets for each kind
//! of call, and what is (not) read for it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use pantheon_domain::ports::{BlobStore, BlobWriter, Tools};
use pantheon_domain::tool::{FILE_READ, FileRef, ToolCall, ToolResult};
use pantheon_domain::{FileId, StorageError};
use serde_json::{Value, json};

use super::FileTools;

/// Blobs in memory; records every read, and fails them all when `down`.
#[derive(Debug, Default)]
struct Memory {
    blobs: Mutex<HashMap<FileId, Vec<u8>>>,
    reads: Mutex<Vec<(FileId, Option<Range<u64>>)>>,
    down: std::sync::atomic::AtomicBool,
}

impl Memory {
    fn put(&self, id: FileId, bytes: &[u8]) {
        self.blobs.lock().unwrap_or_else(|e| e.into_inner()).insert(id, bytes.to_vec());
    }

    fn reads(&self) -> Vec<(FileId, Option<Range<u64>>)> {
        self.reads.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn blob(&self, id: FileId, range: Option<Range<u64>>) -> Result<Vec<u8>, StorageError> {
        self.reads.lock().unwrap_or_else(|e| e.into_inner()).push((id, range));
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StorageError::unavailable("the store is down"));
        }
        let blobs = self.blobs.lock().unwrap_or_else(|e| e.into_inner());
        blobs.get(&id).cloned().ok_or_else(|| StorageError::other("no such blob"))
    }
}

#[async_trait]
impl BlobStore for Memory {
    async fn create(&self, _: FileId) -> Result<Box<dyn BlobWriter>, StorageError> {
        Err(StorageError::other("read-only"))
    }

    async fn read(
        &self,
        id: FileId,
    ) -> Result<BoxStream<'static, Result<Bytes, StorageError>>, StorageError> {
        let blob = self.blob(id, None)?;
        let chunks: Vec<_> = blob.chunks(7).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        Ok(futures::stream::iter(chunks).boxed())
    }

    async fn read_range(&self, id: FileId, range: Range<u64>) -> Result<Bytes, StorageError> {
        let blob = self.blob(id, Some(range.clone()))?;
        let end = usize::try_from(range.end).unwrap_or(usize::MAX).min(blob.len());
        let start = usize::try_from(range.start).unwrap_or(usize::MAX).min(end);
        Ok(Bytes::copy_from_slice(&blob[start..end]))
    }

    async fn delete(&self, _: FileId) -> Result<(), StorageError> {
        Ok(())
    }
}

fn file(store: &Memory, name: &str, content_type: &str, bytes: &[u8]) -> FileRef {
    let id = FileId::new();
    store.put(id, bytes);
    FileRef {
        id,
        filename: name.into(),
        content_type: content_type.into(),
        bytes: bytes.len() as u64,
    }
}

fn tools(store: &Arc<Memory>, max: u64) -> FileTools {
    FileTools::new(store.clone(), max).unwrap_or_else(|e| unreachable!("{e}"))
}

fn read(arguments: Value) -> ToolCall {
    ToolCall { id: "call_0".into(), name: FILE_READ.into(), arguments: arguments.to_string() }
}

fn content(result: &ToolResult) -> Value {
    serde_json::from_str(&result.content).unwrap_or_default()
}

/// Checks `result` is an error saying `expected`, and returns no bytes.
fn assert_refused(result: &ToolResult, expected: &str) {
    let message = result.error.clone().unwrap_or_default();
    assert!(message.contains(expected), "{message:?} should say {expected:?}");
    assert_eq!(content(result), json!({ "error": message }));
    assert_eq!(result.bytes, 0);
}

#[tokio::test]
async fn a_text_file_is_read_by_range_and_reports_where_it_stands() {
    let store = Arc::new(Memory::default());
    let report = file(&store, "report.txt", "text/plain; charset=utf-8", "héllo world".as_bytes());
    let tools = tools(&store, 1_000);
    let files = [report.clone()];

    let result = tools.call(&files, &read(json!({"file_id": report.id, "length": 2}))).await;
    assert_eq!(result.error, None);
    assert_eq!((result.file, result.bytes), (Some(report.id), 1), "é is cut: only h");
    let expected = json!({"file_id": report.id, "filename": "report.txt", "offset": 0,
        "bytes": 1, "total_bytes": 12, "eof": false, "text": "h"});
    assert_eq!(content(&result), expected);

    let rest = tools.call(&files, &read(json!({"file_id": report.id, "offset": 1}))).await;
    assert_eq!(content(&rest)["text"], "éllo world");
    assert_eq!(content(&rest)["eof"], true);
    assert_eq!(rest.bytes, 11);

    let at_end = tools.call(&files, &read(json!({"file_id": report.id, "offset": 12}))).await;
    assert_eq!((content(&at_end)["text"].clone(), at_end.bytes), (json!(""), 0));
    assert_eq!(content(&at_end)["eof"], true);
    let reads = store.reads();
    assert_eq!(reads.len(), 2, "the end of the file needs no read: {reads:?}");
    assert_eq!(reads[0], (report.id, Some(0..5)), "three bytes more, in case a character is cut");
}

#[tokio::test]
async fn length_is_clamped_to_the_limit_and_json_counts_as_text() {
    let store = Arc::new(Memory::default());
    let data = file(&store, "data.json", "application/json", br#"{"a": [1, 2, 3]}"#);
    let tools = tools(&store, 4);
    let result = tools
        .call(std::slice::from_ref(&data), &read(json!({"file_id": data.id, "length": 1_000_000})))
        .await;
    assert_eq!(content(&result)["text"], r#"{"a""#);
    assert_eq!(result.bytes, 4);
    assert_eq!(store.reads(), vec![(data.id, Some(0..7))]);
}

#[tokio::test]
async fn only_the_turns_files_are_read_and_others_are_not_told_apart_from_missing_ones() {
    let store = Arc::new(Memory::default());
    let mine = file(&store, "mine.txt", "text/plain", b"mine");
    let theirs = file(&store, "theirs.txt", "text/plain", b"secret");
    let tools = tools(&store, 100);
    let files = [mine.clone()];
    for file_id in [json!(theirs.id), json!(FileId::new()), json!("not an id"), json!("")] {
        let result = tools.call(&files, &read(json!({ "file_id": file_id }))).await;
        assert_refused(&result, "no such file among this turn's files");
        assert_eq!(result.file, None);
    }
    assert_eq!(store.reads(), Vec::new(), "nothing was read");
    let upper = mine.id.to_string().to_uppercase();
    let result = tools.call(&files, &read(json!({ "file_id": upper }))).await;
    assert_eq!(content(&result)["text"], "mine", "an id is a UUID, whatever its case");
}

#[tokio::test]
async fn bad_calls_get_error_results_naming_the_problem() {
    let store = Arc::new(Memory::default());
    let notes = file(&store, "notes.md", "text/markdown", b"# notes");
    let picture = file(&store, "cat.png", "image/png", b"\x89PNG....");
    let tools = tools(&store, 100);
    let files = [notes.clone(), picture.clone()];
    let call = |name: &str, arguments: &str| ToolCall {
        id: "call_1".into(),
        name: name.into(),
        arguments: arguments.into(),
    };
    let cases = [
        (call("shell", "{}"), "there is no tool \"shell\"; the only tool is file_read"),
        (call(&"x".repeat(10_000), "{}"), "the only tool is file_read"),
        (call(FILE_READ, "{\"file_id\":"), "the arguments are not a JSON object"),
        (call(FILE_READ, "{}"), "\"file_id\" is a required property"),
        (call(FILE_READ, &format!(r#"{{"file_id":"{}","offset":-3}}"#, notes.id)), "minimum of 0"),
        (
            call(FILE_READ, &format!(r#"{{"file_id":"{}","offset":8}}"#, notes.id)),
            "offset 8 is past the end of the file (7 bytes)",
        ),
        (
            call(FILE_READ, &format!(r#"{{"file_id":"{}","offset":1e300}}"#, notes.id)),
            "past the end",
        ),
        (
            call(FILE_READ, &format!(r#"{{"file_id":"{}"}}"#, picture.id)),
            "image/png has no text to read",
        ),
    ];
    for (call, expected) in cases {
        let result = tools.call(&files, &call).await;
        assert_refused(&result, expected);
        assert!(result.error.as_deref().is_some_and(|e| e.len() < 1_000), "{result:?}");
    }
    assert_eq!(store.reads(), Vec::new());
}

#[tokio::test]
async fn a_store_failure_is_an_error_result_for_now() {
    let store = Arc::new(Memory::default());
    let notes = file(&store, "notes.txt", "text/plain", b"notes");
    let pdf = file(&store, "doc.pdf", "application/pdf", &hello_pdf());
    store.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let tools = tools(&store, 100);
    let files = [notes.clone(), pdf.clone()];
    for id in [notes.id, pdf.id] {
        let result = tools.call(&files, &read(json!({ "file_id": id }))).await;
        assert_refused(&result, "could not be read now");
        assert_eq!(result.file, Some(id));
    }
    store.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let result = tools.call(&files, &read(json!({ "file_id": pdf.id }))).await;
    assert_eq!(result.error, None, "a failure of the store is not kept");
}

#[tokio::test]
async fn a_pdf_is_read_as_its_extracted_text_extracted_once() {
    let store = Arc::new(Memory::default());
    let pdf = file(&store, "doc.pdf", "application/pdf", &hello_pdf());
    let tools = tools(&store, 5);
    let files = [pdf.clone()];
    let first = tools.call(&files, &read(json!({ "file_id": pdf.id }))).await;
    assert_eq!(first.error, None, "{first:?}");
    let total = content(&first)["total_bytes"].as_u64().unwrap_or_default();
    let (mut offset, mut text) = (0, String::new());
    while offset < total {
        let part = tools.call(&files, &read(json!({ "file_id": pdf.id, "offset": offset }))).await;
        let part = content(&part);
        text.push_str(part["text"].as_str().unwrap_or_default());
        offset = part["offset"].as_u64().unwrap_or_default() + part["bytes"].as_u64().unwrap_or(1);
    }
    assert!(text.contains("Hello PDF"), "{text:?}");
    assert_eq!(store.reads(), vec![(pdf.id, None)], "read whole, once");
    let past = tools.call(&files, &read(json!({ "file_id": pdf.id, "offset": total + 1 }))).await;
    assert_refused(&past, "past the end of the PDF's text");
}

#[tokio::test]
async fn a_pdf_that_does_not_parse_is_an_error_result_and_is_not_parsed_again() {
    let store = Arc::new(Memory::default());
    let garbage = file(&store, "bad.pdf", "application/pdf", b"%PDF-1.4\nthis is no pdf\n%%EOF");
    let tools = tools(&store, 100);
    for _ in 0..3 {
        let result = tools
            .call(std::slice::from_ref(&garbage), &read(json!({ "file_id": garbage.id })))
            .await;
        assert_refused(&result, "the PDF could not be parsed");
        assert_eq!(result.file, Some(garbage.id));
    }
    assert_eq!(store.reads().len(), 1);
}

#[test]
fn a_zero_limit_is_refused_and_the_schema_is_compiled_once_per_process() {
    let store = Arc::new(Memory::default());
    assert!(FileTools::new(store.clone(), 0).is_err());
    for _ in 0..3 {
        let tools = tools(&store, 10);
        assert_eq!(tools.specs().len(), 1);
    }
    assert_eq!(super::schema_compilations(), 1);
}

/// A one-page PDF showing "Hello PDF" in Helvetica, with a correct
/// cross-reference table.
fn hello_pdf() -> Vec<u8> {
    let stream = "BT /F1 24 Tf 72 720 Td (Hello PDF) Tj ET";
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
         /Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>"
            .to_owned(),
        format!("<< /Length {} >>\nstream\n{stream}\nendstream", stream.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_owned(),
    ];
    let mut pdf = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n{object}\nendobj\n", i + 1).as_bytes());
    }
    let xref = pdf.len();
    let mut table = format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1);
    for offset in offsets {
        table.push_str(&format!("{offset:010} 00000 n \n"));
    }
    table.push_str(&format!(
        "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
        objects.len() + 1
    ));
    pdf.extend_from_slice(table.as_bytes());
    pdf
}
