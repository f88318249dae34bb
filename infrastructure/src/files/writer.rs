//! A blob being written. Under one part it is kept in memory and stored
//! with a single `PUT` at the end (most files: one request, and nothing in
//! the store until then); past that it becomes a multipart upload whose
//! parts are sent as they fill, at most [`PARTS_IN_FLIGHT`] at a time, so
//! a writer holds a few parts whatever the file's size. Either way the
//! object appears whole, at [`BlobWriter::finish`], or not at all.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use pantheon_domain::StorageError;
use pantheon_domain::ports::BlobWriter;

use super::error::{CALL_TIMEOUT, bounded, store_error, timed_out};

/// The size of a part: S3's smallest (but for the last one).
pub const PART_BYTES: usize = 5 * 1024 * 1024;

/// Parts being sent at once; a write waits for one to end beyond this.
const PARTS_IN_FLIGHT: usize = 1;

enum State {
    /// Less than a part so far, and its length.
    Buffered(Vec<Bytes>, usize),
    /// A multipart upload under way.
    Parts(WriteMultipart),
    /// Finished, aborted or failed: nothing more to send or clean up.
    Closed,
}

/// Writes the blob at one path of a store.
pub(super) struct ObjectBlobWriter {
    store: Arc<dyn ObjectStore>,
    path: Path,
    state: State,
}

impl std::fmt::Debug for ObjectBlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBlobWriter").field("path", &self.path).finish_non_exhaustive()
    }
}

impl ObjectBlobWriter {
    pub(super) fn new(store: Arc<dyn ObjectStore>, path: Path) -> Self {
        Self { store, path, state: State::Buffered(Vec::new(), 0) }
    }

    /// Turns what is buffered into the start of a multipart upload.
    async fn start_parts(&mut self) -> Result<(), StorageError> {
        let State::Buffered(chunks, _) = std::mem::replace(&mut self.state, State::Closed) else {
            return Ok(());
        };
        let upload = bounded("a multipart start", self.store.put_multipart(&self.path)).await?;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        for chunk in chunks {
            parts.put(chunk);
        }
        self.state = State::Parts(parts);
        Ok(())
    }
}

/// Deletes whatever a timed-out end may have left visible.
async fn remove_leftover(store: &dyn ObjectStore, path: &Path) {
    if let Err(error) = bounded("a delete", store.delete(path)).await {
        tracing::warn!(path = %path, error = %error, "a failed upload's blob may be left");
    }
}

async fn abort_parts(parts: WriteMultipart, path: &Path) {
    let aborted = match tokio::time::timeout(CALL_TIMEOUT, parts.abort()).await {
        Ok(result) => result.map_err(store_error),
        Err(_) => Err(timed_out("an abort")),
    };
    if let Err(error) = aborted {
        tracing::warn!(path = %path, error = %error, "an upload's parts could not be aborted");
    }
}

#[async_trait]
impl BlobWriter for ObjectBlobWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        if let State::Buffered(chunks, len) = &mut self.state {
            if *len + chunk.len() < PART_BYTES {
                *len += chunk.len();
                chunks.push(chunk);
                return Ok(());
            }
            self.start_parts().await?;
        }
        let State::Parts(parts) = &mut self.state else {
            return Err(StorageError::other(format!("{} was written after its end", self.path)));
        };
        match tokio::time::timeout(CALL_TIMEOUT, parts.wait_for_capacity(PARTS_IN_FLIGHT)).await {
            Ok(Ok(())) => {
                parts.put(chunk);
                Ok(())
            }
            failed => {
                let error = match failed {
                    Ok(Err(error)) => store_error(error),
                    _ => timed_out("a part"),
                };
                if let State::Parts(parts) = std::mem::replace(&mut self.state, State::Closed) {
                    abort_parts(parts, &self.path).await;
                }
                Err(error)
            }
        }
    }

    async fn finish(mut self: Box<Self>) -> Result<(), StorageError> {
        let finished = match std::mem::replace(&mut self.state, State::Closed) {
            State::Buffered(chunks, _) => {
                let payload: PutPayload = chunks.into_iter().collect();
                tokio::time::timeout(CALL_TIMEOUT, self.store.put(&self.path, payload)).await
            }
            // `WriteMultipart::finish` aborts the upload itself when it fails.
            State::Parts(parts) => tokio::time::timeout(CALL_TIMEOUT, parts.finish()).await,
            State::Closed => {
                return Err(StorageError::other(format!("{} was finished twice", self.path)));
            }
        };
        match finished {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(store_error(error)),
            Err(_) => {
                // The store may have completed it just as the wait ended.
                remove_leftover(self.store.as_ref(), &self.path).await;
                Err(timed_out("the end of an upload"))
            }
        }
    }

    async fn abort(mut self: Box<Self>) {
        if let State::Parts(parts) = std::mem::replace(&mut self.state, State::Closed) {
            abort_parts(parts, &self.path).await;
        }
    }
}

/// A writer dropped mid-upload (its request's task cancelled) has its parts
/// aborted in the background: S3 keeps an unfinished upload's parts, and
/// bills them, until told.
impl Drop for ObjectBlobWriter {
    fn drop(&mut self) {
        if let State::Parts(parts) = std::mem::replace(&mut self.state, State::Closed)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let path = self.path.clone();
            runtime.spawn(async move { abort_parts(parts, &path).await });
        }
    }
}
