//! The ports of uploaded files: their rows and the users' quotas, their
//! bytes, and the tool that reads them for a model.

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

use crate::error::StorageError;
use crate::file::{NewUpload, StorageUsage, StoredFile, Uploaded};
use crate::ids::{FileId, SessionId, UserId};
use crate::page::{Page, PageRequest};
use crate::tool::{FileRef, ToolCall, ToolResult, ToolSpec};

/// The quotas a reservation is checked against, per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// `files.quota_bytes`.
    pub bytes: u64,
    /// `files.max_files`.
    pub files: u64,
}

/// What [`FileRepository::mark_deleting`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleting {
    /// A `ready` file of the user's, now `deleting`.
    Marked,
    /// A file of the user's already being deleted, or deleted lately.
    AlreadyDeleted,
    /// No file of the user's by that id.
    NotFound,
}

/// Rows of uploaded files and each user's storage counters. Every read is
/// scoped to the owner: another user's file behaves as a missing one.
///
/// The counters are exact across instances: a reservation is a single
/// conditional update of the user's counter row (`… WHERE bytes + n <=
/// quota`), so concurrent uploads can never together pass the quota. A
/// file's row holds what it reserved until it is `ready`; whatever removes
/// the row gives that back in the same transaction.
#[async_trait]
pub trait FileRepository: Send + Sync + std::fmt::Debug {
    /// Records an `uploading` row for `upload` and counts one more file,
    /// atomically, if the user has fewer than `quota.files`; `false` (and
    /// nothing written) when not.
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn begin(
        &self,
        user: &UserId,
        upload: &NewUpload,
        quota: Quota,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError>;

    /// Reserves `bytes` more for the `uploading` file `id`, atomically with
    /// the check that the user's bytes stay within `quota.bytes`; `false`
    /// (and nothing changed) when they would not. Stamps the row's
    /// `updated_at` with `now`.
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn reserve(
        &self,
        user: &UserId,
        id: FileId,
        bytes: u64,
        quota: Quota,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError>;

    /// Makes the `uploading` file `id` `ready` with its final size and
    /// hash, giving back what it reserved beyond `done.bytes`.
    ///
    /// # Errors
    /// [`StorageError`] when the database fails or the row is gone.
    async fn complete(
        &self,
        user: &UserId,
        id: FileId,
        done: &Uploaded,
        now: DateTime<Utc>,
    ) -> Result<StoredFile, StorageError>;

    /// The user's `ready` files, newest first (`created_at`, then id).
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn list(
        &self,
        user: &UserId,
        page: PageRequest<FileId>,
    ) -> Result<Page<StoredFile>, StorageError>;

    /// One `ready` file of the user's, or `None`.
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn get(&self, user: &UserId, id: FileId) -> Result<Option<StoredFile>, StorageError>;

    /// The `ready` files among `ids` that are the user's, plus every
    /// `ready` file attached to `session` (the user's), without duplicates:
    /// what a turn of that session naming `ids` may read.
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn readable(
        &self,
        user: &UserId,
        session: SessionId,
        ids: &[FileId],
    ) -> Result<Vec<StoredFile>, StorageError>;

    /// Marks a `ready` file of the user's `deleting` (it disappears from
    /// every read); tells a file of the user's already being deleted, or
    /// deleted within the last day, from one that never was the user's.
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn mark_deleting(
        &self,
        user: &UserId,
        id: FileId,
        now: DateTime<Utc>,
    ) -> Result<Deleting, StorageError>;

    /// The ids of the files marked `deleting` with `session` (the session
    /// repository marks them in the transaction that deletes the session).
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn deleting_in_session(&self, session: SessionId) -> Result<Vec<FileId>, StorageError>;

    /// Removes the row of a file that is `uploading` or `deleting` (never a
    /// `ready` one), giving back its bytes and its count; `false` when
    /// there was no such row. Its blob must be gone first. A `deleting`
    /// one leaves its id and owner in `deleted_files`, stamped `now`.
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn remove(&self, id: FileId, now: DateTime<Utc>) -> Result<bool, StorageError>;

    /// Forgets the deletions made before `before`; returns how many.
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn forget_deleted(&self, before: DateTime<Utc>) -> Result<u64, StorageError>;

    /// Files left `uploading` or `deleting` since before `before` (their
    /// instance died, or the store failed), at most `limit` of them.
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn stale(&self, before: DateTime<Utc>, limit: u64) -> Result<Vec<FileId>, StorageError>;

    /// The user's counters.
    ///
    /// # Errors
    /// [`StorageError`] when the database fails.
    async fn usage(&self, user: &UserId) -> Result<StorageUsage, StorageError>;
}

/// Where the bytes of files live (a directory, an S3 bucket), keyed by the
/// file's id alone.
#[async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// Starts writing the blob of `id`; nothing is visible under `id`
    /// until [`BlobWriter::finish`].
    ///
    /// # Errors
    /// [`StorageError`] when the store fails.
    async fn create(&self, id: FileId) -> Result<Box<dyn BlobWriter>, StorageError>;

    /// The blob of `id`, streamed.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails or there is no such blob.
    async fn read(
        &self,
        id: FileId,
    ) -> Result<BoxStream<'static, Result<Bytes, StorageError>>, StorageError>;

    /// The bytes `range` of the blob of `id` (cut at its end).
    ///
    /// # Errors
    /// [`StorageError`] when the store fails or there is no such blob.
    async fn read_range(&self, id: FileId, range: Range<u64>) -> Result<Bytes, StorageError>;

    /// Deletes the blob of `id`; a missing one is not an error.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails.
    async fn delete(&self, id: FileId) -> Result<(), StorageError>;
}

/// A blob being written, in order; memory stays bounded whatever its size.
#[async_trait]
pub trait BlobWriter: Send {
    /// Appends `chunk`.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails.
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError>;

    /// Completes the blob: it is readable from now on.
    ///
    /// # Errors
    /// [`StorageError`] when the store fails; nothing is left behind then.
    async fn finish(self: Box<Self>) -> Result<(), StorageError>;

    /// Gives up: nothing is left behind (best effort; the sweep removes
    /// what a failed abort leaves).
    async fn abort(self: Box<Self>);
}

/// The tools a turn's model may call, validated and run against the
/// turn's files.
#[async_trait]
pub trait Tools: Send + Sync + std::fmt::Debug {
    /// The tools offered to a model whose turn may read `files` (none when
    /// there are none).
    fn specs(&self) -> Vec<ToolSpec>;

    /// Runs `call` for a turn that may read `files`. Never fails: a call
    /// that is malformed, names another tool or a file not among `files`,
    /// or asks for a bad range, gets an error result the model reads (and
    /// the bytes of no other file).
    async fn call(&self, files: &[FileRef], call: &ToolCall) -> ToolResult;
}
