//! The text of PDFs, extracted for `file_read`.
//!
//! Extraction parses a whole document that a user uploaded, so it is
//! treated as hostile work: it runs on the blocking pool (it is CPU-bound
//! and synchronous), at most [`MAX_EXTRACTING`] at once, each waited for
//! at most [`EXTRACT_TIMEOUT`]. A thread stuck past its timeout cannot be
//! stopped, but it keeps its permit, so stuck documents can only ever take
//! [`MAX_EXTRACTING`] threads, never the pool. A panic in the parser ends
//! its task, not the process.
//!
//! A model reads a document in pieces, so each document's outcome (its
//! text, or why it has none, a timeout included) is kept, bounded by size:
//! the pieces cost one extraction, and a document that cannot be read is
//! not parsed again for each call that names it. Files never change under
//! an id, so nothing kept goes stale.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use pantheon_domain::FileId;
use pantheon_domain::ports::BlobStore;
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use tokio::sync::Semaphore;

/// The most extractions running at once.
pub(super) const MAX_EXTRACTING: usize = 2;
/// The longest an extraction is waited for, and apart from it its slot.
pub(super) const EXTRACT_TIMEOUT: Duration = Duration::from_secs(20);
/// The most bytes of outcomes kept.
const KEPT_BYTES: u64 = 32 * 1024 * 1024;

/// A document's text, or why it has none (the model is told).
pub(super) type Extracted = Result<Arc<str>, Arc<str>>;

/// Why a document could not be read this time (the store failed, or the
/// extractions were all busy): the next call may succeed.
#[derive(Debug)]
pub(super) struct NotNow(pub(super) String);

#[derive(Debug, Clone)]
struct BySize;

impl Weighter<FileId, Extracted> for BySize {
    fn weight(&self, _: &FileId, outcome: &Extracted) -> u64 {
        let text = match outcome {
            Ok(text) | Err(text) => text,
        };
        // Never zero: an item of no weight is never evicted.
        text.len() as u64 + 1
    }
}

/// Extracts and keeps the text of PDFs.
#[derive(Debug)]
pub(super) struct PdfText {
    kept: Cache<FileId, Extracted, BySize>,
    permits: Arc<Semaphore>,
}

impl PdfText {
    pub(super) fn new() -> Self {
        Self {
            kept: Cache::with_weighter(1_024, KEPT_BYTES, BySize),
            permits: Arc::new(Semaphore::new(MAX_EXTRACTING)),
        }
    }

    /// The text of the PDF `id` of `size` bytes, extracted once (callers
    /// asking at the same time wait for the one extraction).
    pub(super) async fn text(
        &self,
        blobs: &dyn BlobStore,
        id: FileId,
        size: u64,
    ) -> Result<Extracted, NotNow> {
        self.kept
            .get_or_insert_async(&id, async {
                let bytes = read_whole(blobs, id, size).await?;
                self.extract(bytes).await
            })
            .await
    }

    async fn extract(&self, bytes: Vec<u8>) -> Result<Extracted, NotNow> {
        // A document waiting for a slot is not at fault: that is not kept.
        let acquire = self.permits.clone().acquire_owned();
        let permit = match tokio::time::timeout(EXTRACT_TIMEOUT, acquire).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) | Err(_) => {
                tracing::warn!("every PDF extraction slot stayed busy");
                return Err(NotNow("the document reader is busy; try again later".into()));
            }
        };
        let work = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            pdf_extract::extract_text_from_mem(&bytes)
        });
        let unparsable =
            || Err(Arc::from("the PDF could not be parsed, so it has no text to read"));
        Ok(match tokio::time::timeout(EXTRACT_TIMEOUT, work).await {
            Ok(Ok(Ok(text))) => Ok(Arc::from(text)),
            Ok(Ok(Err(error))) => {
                tracing::info!(%error, "a PDF could not be parsed");
                unparsable()
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "the PDF parser failed");
                unparsable()
            }
            Err(_) => {
                tracing::warn!(timeout = ?EXTRACT_TIMEOUT, "a PDF took too long to extract");
                Err(Arc::from("the PDF took too long to read, so it has no text to read"))
            }
        })
    }
}

/// The blob of `id`, which should be `size` bytes (its upload was bounded);
/// more is refused rather than held.
async fn read_whole(blobs: &dyn BlobStore, id: FileId, size: u64) -> Result<Vec<u8>, NotNow> {
    let failed = |error: pantheon_domain::StorageError| {
        tracing::warn!(file = %id, %error, "a file's blob could not be read");
        NotNow("the file could not be read now; try again later".into())
    };
    let mut chunks = blobs.read(id).await.map_err(failed)?;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 24));
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(failed)?;
        if bytes.len() as u64 + chunk.len() as u64 > size {
            tracing::warn!(file = %id, size, "a file's blob is longer than its row says");
            return Err(NotNow("the file could not be read now; try again later".into()));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}
