//! Removing a file that is no longer `ready`: its blob first, then its row
//! (which gives its reservation back), so no row is ever gone while its
//! bytes are still stored.

use chrono::{DateTime, Utc};

use crate::error::StorageError;
use crate::ids::FileId;
use crate::ports::{BlobStore, FileRepository};

/// Removes the blob and the row of `id`; on a failure both stay for the
/// sweep.
pub(super) async fn remove(
    blobs: &dyn BlobStore,
    files: &dyn FileRepository,
    id: FileId,
    now: DateTime<Utc>,
) -> Result<(), StorageError> {
    blobs.delete(id).await?;
    files.remove(id, now).await?;
    Ok(())
}
