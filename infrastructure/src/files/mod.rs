//! The bytes of uploaded files ([`BlobStore`]) on `object_store`: a local
//! directory or an S3 bucket (AWS's, or any compatible server).
//!
//! A blob's path is `files/<id>`, built from the file's id alone: a
//! client's file name never reaches the store. Every call to the store
//! (a request, a part, one chunk of a read) is bounded by a deadline, so a
//! store that hangs makes uploads and reads fail as unavailable instead of
//! holding them. Writes stream in parts ([`writer`]): memory stays bounded
//! whatever a file's size, and a blob is visible whole or not at all.

mod error;
mod writer;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, RetryConfig};
use pantheon_domain::ports::{BlobStore, BlobWriter};
use pantheon_domain::{FileId, StorageError};

use self::error::{CALL_TIMEOUT, bounded, store_error, timed_out};
pub use self::writer::PART_BYTES;
use crate::settings::{DatabaseSettings, FileStoreKind, FilesSettings, S3Settings};

/// The store of `files.store`: the directory (created when missing) or the
/// bucket the settings name. Nothing is sent to the store yet.
///
/// # Errors
/// A line naming the setting when the store cannot be set up.
pub fn blob_store(
    settings: &FilesSettings,
    database: &DatabaseSettings,
) -> Result<Arc<dyn BlobStore>, String> {
    let store = match settings.store {
        FileStoreKind::Local => ObjectBlobStore::local(&settings.local_dir(database))?,
        FileStoreKind::S3 => ObjectBlobStore::s3(&settings.s3)?,
    };
    Ok(Arc::new(store))
}

/// Blobs in an `object_store` store.
#[derive(Debug, Clone)]
pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    /// The directory of a local store, whose multipart uploads stage their
    /// parts in files of their own.
    local_dir: Option<std::path::PathBuf>,
}

/// How many staging files of one blob a delete looks for: `object_store`'s
/// local store stages a multipart upload of `<path>` in `<path>#<n>`, with
/// the first `n` from 1 that is free (more than one only while uploads of
/// the same path overlap, which ids never do).
const STAGING_FILES: u32 = 4;

impl ObjectBlobStore {
    /// Blobs in `store`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store, local_dir: None }
    }

    /// Blobs under the directory `dir`, created when missing. Each write is
    /// synced to disk before it counts as done, as S3's is: a file recorded
    /// `ready` must survive the machine's crash.
    ///
    /// # Errors
    /// A line naming `files.local_dir` when the directory cannot be made.
    pub fn local(dir: &std::path::Path) -> Result<Self, String> {
        let unusable =
            |e: &dyn std::fmt::Display| format!("files.local_dir {}: {e}", dir.display());
        std::fs::create_dir_all(dir).map_err(|e| unusable(&e))?;
        let local = LocalFileSystem::new_with_prefix(dir).map_err(|e| unusable(&e))?;
        let store = Self::new(Arc::new(local.with_fsync(true)));
        Ok(Self { local_dir: Some(dir.to_path_buf()), ..store })
    }

    /// Blobs in the bucket of `files.s3.*`, with the environment's
    /// credentials (`AWS_*`) unless the settings name keys.
    ///
    /// # Errors
    /// A line naming `files.s3` when the settings do not make a client.
    pub fn s3(settings: &S3Settings) -> Result<Self, String> {
        let bucket = settings
            .bucket
            .as_deref()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| "files.s3.bucket is required with files.store = s3".to_owned())?;
        // Retries end well within a call's deadline, so a store that keeps
        // failing is reported as failing rather than as slow.
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 3,
            retry_timeout: CALL_TIMEOUT.saturating_sub(Duration::from_secs(10)),
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(&settings.region)
            .with_virtual_hosted_style_request(!settings.path_style)
            .with_allow_http(settings.allow_http)
            .with_retry(retry);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
            builder = builder.with_access_key_id(id).with_secret_access_key(secret);
        }
        let s3 = builder.build().map_err(|e| format!("files.s3: {e}"))?;
        Ok(Self::new(Arc::new(s3)))
    }
}

/// Where the blob of `id` lives.
fn path(id: FileId) -> Path {
    Path::from_iter(["files".to_owned(), id.to_string()])
}

/// `chunks`, each one under [`CALL_TIMEOUT`]; the stream ends after its
/// first error.
fn within_deadline(
    chunks: BoxStream<'static, object_store::Result<Bytes>>,
) -> BoxStream<'static, Result<Bytes, StorageError>> {
    futures::stream::unfold(Some(chunks), |chunks| async move {
        let mut chunks = chunks?;
        match tokio::time::timeout(CALL_TIMEOUT, chunks.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(chunks))),
            Ok(Some(Err(error))) => Some((Err(store_error(error)), None)),
            Ok(None) => None,
            Err(_) => Some((Err(timed_out("a chunk of a read")), None)),
        }
    })
    .boxed()
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn create(&self, id: FileId) -> Result<Box<dyn BlobWriter>, StorageError> {
        Ok(Box::new(writer::ObjectBlobWriter::new(self.store.clone(), path(id))))
    }

    async fn read(
        &self,
        id: FileId,
    ) -> Result<BoxStream<'static, Result<Bytes, StorageError>>, StorageError> {
        let found = bounded("a read", self.store.get(&path(id))).await?;
        Ok(within_deadline(found.into_stream()))
    }

    async fn read_range(&self, id: FileId, range: Range<u64>) -> Result<Bytes, StorageError> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let location = path(id);
        match bounded("a ranged read", self.store.get_range(&location, range.clone())).await {
            Ok(bytes) => Ok(bytes),
            Err(error) => {
                // A range starting at or past the end is an error to the
                // store and an empty read to us; only the size tells which.
                let size = bounded("a size", self.store.head(&location)).await.map(|m| m.size);
                match size {
                    Ok(size) if range.start >= size => Ok(Bytes::new()),
                    _ => Err(error),
                }
            }
        }
    }

    /// Also removes what a multipart upload cut short by a dead instance
    /// left staged in a local store. (An S3 bucket's unfinished multipart
    /// uploads are its lifecycle rule's to abort; see the README.)
    async fn delete(&self, id: FileId) -> Result<(), StorageError> {
        match tokio::time::timeout(CALL_TIMEOUT, self.store.delete(&path(id))).await {
            Ok(Ok(()) | Err(object_store::Error::NotFound { .. })) => {}
            Ok(Err(error)) => return Err(store_error(error)),
            Err(_) => return Err(timed_out("a delete")),
        }
        if let Some(dir) = &self.local_dir {
            for n in 1..=STAGING_FILES {
                let staged = dir.join("files").join(format!("{id}#{n}"));
                match tokio::fs::remove_file(&staged).await {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(StorageError::other(error)),
                }
            }
        }
        Ok(())
    }
}
