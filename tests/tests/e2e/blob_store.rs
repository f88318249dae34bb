//! The blob store on a local directory and on S3 (the suite's moto server,
//! a bucket per test; skipped, said on stderr, when none is set): blobs
//! written in parts read back whole and by range, and whatever ends an
//! upload other than `finish` leaves nothing visible, nor parts behind.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use pantheon_domain::FileId;
use pantheon_domain::ports::{BlobStore, BlobWriter};
use pantheon_infrastructure::files::{PART_BYTES, blob_store};
use pantheon_infrastructure::settings::{DatabaseSettings, FileStoreKind, FilesSettings};
use pantheon_tests::s3;

/// Runs a blob store test body (`async fn name(Store)`) on a directory and
/// on S3, as `name::local` and `name::s3`.
macro_rules! on_both_blob_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn local() {
                    super::$name(super::Store::local()).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn s3() {
                    if let Some(store) = super::Store::s3().await {
                        super::$name(store).await
                    }
                }
            }
        )*
    };
}

on_both_blob_stores!(
    a_blob_written_in_parts_reads_back_whole_and_by_range,
    a_small_blob_and_an_empty_one_read_back,
    a_deleted_blob_is_gone_and_deleting_it_again_is_fine,
    an_aborted_blob_leaves_nothing,
    an_interrupted_blob_leaves_nothing_visible,
);

/// A blob store and a way to see what it holds underneath.
struct Store {
    blobs: std::sync::Arc<dyn BlobStore>,
    under: Under,
}

enum Under {
    /// The directory (removed with the store).
    Dir(std::path::PathBuf),
    /// The endpoint and the bucket.
    Bucket(String, String),
}

impl Store {
    fn local() -> Self {
        let dir =
            std::env::temp_dir().join(format!("pantheon-test-blobs-{}", uuid::Uuid::new_v4()));
        let settings = FilesSettings { local_dir: Some(dir.clone()), ..FilesSettings::default() };
        let blobs = blob_store(&settings, &DatabaseSettings::default()).unwrap();
        assert!(dir.is_dir(), "the directory is made at start");
        Self { blobs, under: Under::Dir(dir) }
    }

    async fn s3() -> Option<Self> {
        let endpoint = s3::endpoint()?;
        let bucket = s3::new_bucket(&endpoint).await;
        let settings = FilesSettings {
            store: FileStoreKind::S3,
            s3: s3::settings(&endpoint, &bucket),
            ..FilesSettings::default()
        };
        let blobs = blob_store(&settings, &DatabaseSettings::default()).unwrap();
        Some(Self { blobs, under: Under::Bucket(endpoint, bucket) })
    }

    /// Files or objects in the store, and uploads begun but never ended.
    async fn leftovers(&self) -> (Vec<String>, usize) {
        match &self.under {
            Under::Dir(dir) => {
                let mut found = Vec::new();
                let mut pending = vec![dir.clone()];
                while let Some(dir) = pending.pop() {
                    for entry in std::fs::read_dir(&dir).unwrap() {
                        let path = entry.unwrap().path();
                        if path.is_dir() {
                            pending.push(path);
                        } else {
                            found.push(path.display().to_string());
                        }
                    }
                }
                (found, 0)
            }
            Under::Bucket(endpoint, bucket) => (
                s3::objects(endpoint, bucket).await,
                s3::unfinished_uploads(endpoint, bucket).await,
            ),
        }
    }

    /// Waits (a bounded while: a dropped writer cleans up in the
    /// background) until the store holds nothing.
    async fn assert_empty(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let leftovers = self.leftovers().await;
            if leftovers == (Vec::new(), 0) {
                return;
            }
            assert!(Instant::now() < deadline, "left behind: {leftovers:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn read(&self, id: FileId) -> Vec<u8> {
        let chunks: Vec<Bytes> = self.blobs.read(id).await.unwrap().try_collect().await.unwrap();
        chunks.concat()
    }

    async fn write(&self, id: FileId, chunks: &[Bytes]) -> Box<dyn BlobWriter> {
        let mut writer = self.blobs.create(id).await.unwrap();
        for chunk in chunks {
            writer.write(chunk.clone()).await.unwrap();
        }
        writer
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Under::Dir(dir) = &self.under {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `len` bytes that differ from one offset to the next (a misplaced part
/// would show).
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect()
}

async fn a_blob_written_in_parts_reads_back_whole_and_by_range(store: Store) {
    let id = FileId::new();
    // Chunks larger than a part, one just over, and a small tail.
    let sizes = [PART_BYTES + PART_BYTES / 2, PART_BYTES + 1, 2 * PART_BYTES + 7, 123];
    let chunks: Vec<Bytes> =
        sizes.iter().zip(1..).map(|(len, seed)| Bytes::from(pattern(*len, seed))).collect();
    let whole: Vec<u8> = chunks.concat();
    let len = u64::try_from(whole.len()).unwrap();
    store.write(id, &chunks).await.finish().await.unwrap();

    assert!(store.read(id).await == whole, "the blob reads back as written");
    let part = u64::try_from(PART_BYTES).unwrap();
    for range in [0..10, part - 3..part + 3, len - 5..len, 3 * part..3 * part + 4096] {
        let got = store.blobs.read_range(id, range.clone()).await.unwrap();
        let want =
            &whole[usize::try_from(range.start).unwrap()..usize::try_from(range.end).unwrap()];
        assert!(got == want, "range {range:?}");
    }
    let tail = store.blobs.read_range(id, len - 5..len + 100).await.unwrap();
    assert!(tail == whole[whole.len() - 5..], "a range past the end is cut at it");
    assert!(store.blobs.read_range(id, len..len + 10).await.unwrap().is_empty());
    assert!(store.blobs.read_range(id, 7..7).await.unwrap().is_empty());
    let (objects, unfinished) = store.leftovers().await;
    assert_eq!((objects.len(), unfinished), (1, 0), "one object, its upload completed");
}

async fn a_small_blob_and_an_empty_one_read_back(store: Store) {
    let (small, empty) = (FileId::new(), FileId::new());
    let chunks: Vec<Bytes> = (0..5).map(|i| Bytes::from(pattern(1_000, i))).collect();
    store.write(small, &chunks).await.finish().await.unwrap();
    store.write(empty, &[]).await.finish().await.unwrap();
    assert!(store.read(small).await == chunks.concat());
    assert!(
        store.blobs.read_range(small, 999..1_001).await.unwrap() == chunks.concat()[999..1_001]
    );
    assert!(store.read(empty).await.is_empty());
    assert!(store.blobs.read_range(empty, 0..10).await.unwrap().is_empty());

    let missing = FileId::new();
    let error = store.blobs.read(missing).await.err().unwrap();
    assert!(!error.is_unavailable(), "a missing blob is not an outage: {error}");
    assert!(store.blobs.read_range(missing, 0..10).await.is_err());
}

async fn a_deleted_blob_is_gone_and_deleting_it_again_is_fine(store: Store) {
    let id = FileId::new();
    let chunks = [Bytes::from(pattern(PART_BYTES + 10, 9))];
    store.write(id, &chunks).await.finish().await.unwrap();
    store.blobs.delete(id).await.unwrap();
    assert!(store.blobs.read(id).await.is_err());
    assert!(store.blobs.read_range(id, 0..10).await.is_err());
    store.blobs.delete(id).await.unwrap();
    store.blobs.delete(FileId::new()).await.unwrap();
    store.assert_empty().await;
}

async fn an_aborted_blob_leaves_nothing(store: Store) {
    let (large, small) = (FileId::new(), FileId::new());
    let parts = [Bytes::from(pattern(PART_BYTES, 1)), Bytes::from(pattern(PART_BYTES + 5, 2))];
    store.write(large, &parts).await.abort().await;
    store.write(small, &[Bytes::from_static(b"hello")]).await.abort().await;
    assert!(store.blobs.read(large).await.is_err());
    assert!(store.blobs.read(small).await.is_err());
    store.assert_empty().await;
}

async fn an_interrupted_blob_leaves_nothing_visible(store: Store) {
    let id = FileId::new();
    let parts = [Bytes::from(pattern(2 * PART_BYTES + 1, 3))];
    // The request's task is cancelled mid-upload: the writer is dropped
    // without a finish or an abort.
    drop(store.write(id, &parts).await);
    assert!(store.blobs.read(id).await.is_err());
    store.assert_empty().await;
}

/// A store that cannot be reached fails as unavailable, and promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_is_unavailable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let settings = FilesSettings {
        store: FileStoreKind::S3,
        s3: s3::settings(&endpoint, "nowhere"),
        ..FilesSettings::default()
    };
    let blobs = blob_store(&settings, &DatabaseSettings::default()).unwrap();
    let started = Instant::now();
    let error = blobs.read(FileId::new()).await.err().unwrap();
    assert!(error.is_unavailable(), "{error}");
    let mut writer = blobs.create(FileId::new()).await.unwrap();
    writer.write(Bytes::from_static(b"x")).await.unwrap();
    let error = writer.finish().await.unwrap_err();
    assert!(error.is_unavailable(), "{error}");
    assert!(started.elapsed() < Duration::from_secs(40), "took {:?}", started.elapsed());
}
