//! The file repository on both databases: an upload's row from `begin` to
//! `remove`, pages newest first, quotas that hold exactly however many
//! reservations race, another user's files invisible to every call, a
//! session's deletion marking its files, and the sweep's view of what was
//! left behind.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use futures::future::join_all;
use migration::{Migrator, MigratorTrait};
use pantheon_domain::ports::{Deleting, FileRepository, Quota, SessionRepository};
use pantheon_domain::{
    FileId, NewSession, NewUpload, PageRequest, SessionId, StorageUsage, StoredFile, Uploaded,
    UserId,
};
use pantheon_infrastructure::db::{self, SeaOrmFileRepository, SeaOrmSessionRepository};
use pantheon_infrastructure::settings::DatabaseSettings;
use pantheon_tests::{Backend, TestDatabase};

on_both_databases!(
    an_upload_goes_from_reserved_to_ready_to_removed,
    ready_files_are_listed_newest_first_in_pages,
    concurrent_reservations_never_pass_the_quotas,
    another_users_files_are_invisible_to_every_call,
    a_turn_reads_the_files_it_names_and_its_sessions,
    deleting_a_session_marks_its_files_deleting,
    the_sweep_finds_stale_uploads_deletions_and_orphans,
);

struct Store {
    files: Arc<SeaOrmFileRepository>,
    sessions: SeaOrmSessionRepository,
    _database: TestDatabase,
}

/// A fresh database, migrated, through the pool options the server uses.
async fn store(backend: Backend) -> Store {
    let database = TestDatabase::create(backend).await;
    let settings = DatabaseSettings { url: database.url.clone(), ..DatabaseSettings::default() };
    let conn = db::connect(&settings).await.unwrap();
    Migrator::up(&conn, None).await.unwrap();
    Store {
        files: Arc::new(SeaOrmFileRepository::new(conn.clone())),
        sessions: SeaOrmSessionRepository::new(conn),
        _database: database,
    }
}

fn user(name: &str) -> UserId {
    UserId::parse(&format!("{name}-{}", uuid::Uuid::new_v4().simple())).unwrap()
}

const ROOMY: Quota = Quota { bytes: 1 << 30, files: 1_000 };

/// Microseconds, as both databases keep them.
fn at(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(1_800_000_000_000_000 + micros).unwrap()
}

fn sha(n: u64) -> String {
    format!("{n:064x}")
}

impl Store {
    async fn session(&self, owner: &UserId) -> SessionId {
        let id = SessionId::new();
        self.sessions.create(owner, id, &NewSession::default(), Utc::now()).await.unwrap();
        id
    }

    /// An `uploading` file of `owner`'s, begun at `now`.
    async fn begin(
        &self,
        owner: &UserId,
        session: Option<SessionId>,
        now: DateTime<Utc>,
    ) -> FileId {
        let upload = NewUpload {
            id: FileId::new(),
            session_id: session,
            filename: "notes.txt".to_owned(),
            content_type: "text/plain".to_owned(),
        };
        assert!(self.files.begin(owner, &upload, ROOMY, now).await.unwrap());
        upload.id
    }

    /// A `ready` file of `bytes` of `owner`'s, begun and completed at `now`.
    async fn ready(
        &self,
        owner: &UserId,
        session: Option<SessionId>,
        bytes: u64,
        now: DateTime<Utc>,
    ) -> StoredFile {
        let id = self.begin(owner, session, now).await;
        assert!(self.files.reserve(owner, id, bytes, ROOMY, now).await.unwrap());
        let done = Uploaded { bytes, sha256: sha(bytes) };
        self.files.complete(owner, id, &done, now).await.unwrap()
    }

    async fn usage(&self, owner: &UserId) -> StorageUsage {
        self.files.usage(owner).await.unwrap()
    }

    /// Every `ready` file of `owner`'s, page by page of `limit`.
    async fn list_all(&self, owner: &UserId, limit: u64) -> Vec<FileId> {
        let (mut ids, mut after) = (Vec::new(), None);
        loop {
            let page = self.files.list(owner, PageRequest { limit, after }).await.unwrap();
            assert!(page.items.len() <= usize::try_from(limit).unwrap());
            ids.extend(page.items.iter().map(|f| f.id));
            after = page.items.last().map(|f| f.id);
            if !page.has_more {
                return ids;
            }
        }
    }
}

async fn an_upload_goes_from_reserved_to_ready_to_removed(backend: Backend) {
    let store = store(backend).await;
    let owner = user("ann");
    let session = store.session(&owner).await;
    let quota = Quota { bytes: 1_000, files: 10 };
    let upload = NewUpload {
        id: FileId::new(),
        session_id: Some(session),
        filename: "report.pdf".to_owned(),
        content_type: "application/pdf".to_owned(),
    };
    assert_eq!(store.usage(&owner).await, StorageUsage::default(), "no row yet reads as zero");
    assert!(store.files.begin(&owner, &upload, quota, at(0)).await.unwrap());
    let id = upload.id;
    assert_eq!(store.usage(&owner).await, StorageUsage { bytes: 0, files: 1 });
    assert_eq!(store.files.get(&owner, id).await.unwrap(), None, "an upload is never shown");
    assert!(store.list_all(&owner, 10).await.is_empty());

    assert!(store.files.reserve(&owner, id, 300, quota, at(1)).await.unwrap());
    assert!(!store.files.reserve(&owner, id, 701, quota, at(2)).await.unwrap(), "over by one");
    assert_eq!(store.usage(&owner).await.bytes, 300, "a refused reservation changes nothing");
    assert!(store.files.reserve(&owner, id, 700, quota, at(3)).await.unwrap(), "exactly full");
    assert_eq!(store.usage(&owner).await.bytes, 1_000);

    let done = Uploaded { bytes: 640, sha256: sha(640) };
    let stored = store.files.complete(&owner, id, &done, at(4)).await.unwrap();
    let want = StoredFile {
        id,
        session_id: Some(session),
        filename: "report.pdf".to_owned(),
        content_type: "application/pdf".to_owned(),
        bytes: 640,
        sha256: sha(640),
        created_at: at(0),
    };
    assert_eq!(stored, want);
    assert_eq!(store.usage(&owner).await, StorageUsage { bytes: 640, files: 1 }, "excess back");
    assert_eq!(store.files.get(&owner, id).await.unwrap(), Some(want.clone()));
    assert!(store.files.complete(&owner, id, &done, at(5)).await.is_err(), "completed twice");
    assert!(store.files.reserve(&owner, id, 1, quota, at(5)).await.is_err(), "not uploading");
    assert!(
        !store.files.remove(id, Utc::now()).await.unwrap(),
        "a ready file's row is never removed"
    );

    assert_eq!(store.files.mark_deleting(&owner, id, at(6)).await.unwrap(), Deleting::Marked);
    assert_eq!(store.files.get(&owner, id).await.unwrap(), None);
    assert_eq!(
        store.files.mark_deleting(&owner, id, at(7)).await.unwrap(),
        Deleting::AlreadyDeleted,
        "already marked"
    );
    assert_eq!(store.usage(&owner).await, StorageUsage { bytes: 640, files: 1 }, "until removed");
    assert!(store.files.remove(id, at(8)).await.unwrap());
    assert!(!store.files.remove(id, at(8)).await.unwrap());
    assert_eq!(store.usage(&owner).await, StorageUsage::default());
    // Its deletion is remembered for its owner only, until forgotten.
    let again = store.files.mark_deleting(&owner, id, at(9)).await.unwrap();
    assert_eq!(again, Deleting::AlreadyDeleted, "deleting it again answers as the first time");
    let stranger = UserId::parse("stranger").unwrap();
    assert_eq!(store.files.mark_deleting(&stranger, id, at(9)).await.unwrap(), Deleting::NotFound);
    assert_eq!(store.files.forget_deleted(at(8)).await.unwrap(), 0, "not before its time");
    assert_eq!(store.files.forget_deleted(at(10)).await.unwrap(), 1);
    assert_eq!(store.files.mark_deleting(&owner, id, at(11)).await.unwrap(), Deleting::NotFound);

    // An upload that wrote more than it reserved is refused, not counted.
    let over = store.begin(&owner, None, at(8)).await;
    assert!(store.files.reserve(&owner, over, 10, quota, at(8)).await.unwrap());
    let too_much = Uploaded { bytes: 11, sha256: sha(11) };
    assert!(store.files.complete(&owner, over, &too_much, at(9)).await.is_err());
    assert_eq!(store.usage(&owner).await, StorageUsage { bytes: 10, files: 1 });
    // An abandoned upload gives back what it reserved when removed.
    assert!(store.files.remove(over, Utc::now()).await.unwrap());
    assert_eq!(store.usage(&owner).await, StorageUsage::default());
}

async fn ready_files_are_listed_newest_first_in_pages(backend: Backend) {
    let store = store(backend).await;
    let owner = user("ben");
    let mut stored = Vec::new();
    for i in 0..7 {
        // Two pairs share a `created_at`: the id breaks the tie.
        let micros = [0, 10, 10, 20, 30, 30, 40][i];
        stored.push(store.ready(&owner, None, 5, at(micros)).await);
    }
    // Neither an upload nor a file being deleted is listed.
    store.begin(&owner, None, at(50)).await;
    let gone = store.ready(&owner, None, 5, at(60)).await;
    assert_eq!(store.files.mark_deleting(&owner, gone.id, at(61)).await.unwrap(), Deleting::Marked);

    let mut want: Vec<&StoredFile> = stored.iter().collect();
    want.sort_by_key(|f| std::cmp::Reverse((f.created_at, f.id)));
    let want: Vec<FileId> = want.into_iter().map(|f| f.id).collect();
    for limit in [1, 2, 3, 7, 100] {
        assert_eq!(store.list_all(&owner, limit).await, want, "pages of {limit}");
    }
    let first = store.files.list(&owner, PageRequest { limit: 7, after: None }).await.unwrap();
    assert!(!first.has_more);
    assert_eq!(first.items.len(), 7);

    // A cursor whose file is gone altogether still pages on, by the time
    // its UUIDv7 id carries.
    let older = store.ready(&owner, None, 1, Utc::now()).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cursor = store.ready(&owner, None, 1, Utc::now()).await;
    assert_eq!(
        store.files.mark_deleting(&owner, cursor.id, Utc::now()).await.unwrap(),
        Deleting::Marked
    );
    assert!(store.files.remove(cursor.id, Utc::now()).await.unwrap());
    let after = PageRequest { limit: 1, after: Some(cursor.id) };
    let page = store.files.list(&owner, after).await.unwrap();
    assert_eq!(page.items.iter().map(|f| f.id).collect::<Vec<_>>(), [older.id]);
    assert!(!page.has_more, "the other files were made later (in 2027)");
}

async fn concurrent_reservations_never_pass_the_quotas(backend: Backend) {
    let store = store(backend).await;
    let owner = user("cat");

    // 30 uploads begin at once against a quota of 10 files.
    let quota = Quota { bytes: 1_000, files: 10 };
    let begins = (0..30).map(|_| {
        let (files, owner) = (Arc::clone(&store.files), owner.clone());
        tokio::spawn(async move {
            let upload = NewUpload {
                id: FileId::new(),
                session_id: None,
                filename: "f".to_owned(),
                content_type: "text/plain".to_owned(),
            };
            files.begin(&owner, &upload, quota, Utc::now()).await.unwrap().then_some(upload.id)
        })
    });
    let begun: Vec<FileId> =
        join_all(begins).await.into_iter().filter_map(|task| task.unwrap()).collect();
    assert_eq!(begun.len(), 10, "exactly the quota's files began");
    assert_eq!(store.usage(&owner).await, StorageUsage { bytes: 0, files: 10 });

    // 50 reservations of 37 bytes at once, five on each upload: 1,850
    // bytes asked against 1,000. Exactly 27 fit (999 bytes).
    let reserves = (0..50).map(|i| {
        let (files, owner, id) = (Arc::clone(&store.files), owner.clone(), begun[i % 10]);
        tokio::spawn(async move {
            let granted = files.reserve(&owner, id, 37, quota, Utc::now()).await.unwrap();
            (id, granted)
        })
    });
    let results: Vec<(FileId, bool)> =
        join_all(reserves).await.into_iter().map(Result::unwrap).collect();
    let granted = results.iter().filter(|(_, granted)| *granted).count();
    assert_eq!(granted, 27);
    let usage = store.usage(&owner).await;
    assert_eq!(usage.bytes, 27 * 37, "the counter is the sum of the granted reservations");

    // Each file's row holds what was granted to it: completing every one
    // with what it reserved leaves the counter as it is.
    let mut total = 0;
    for id in &begun {
        let reserved = 37 * results.iter().filter(|(f, granted)| f == id && *granted).count();
        let reserved = u64::try_from(reserved).unwrap();
        let done = Uploaded { bytes: reserved, sha256: sha(reserved) };
        total += store.files.complete(&owner, *id, &done, Utc::now()).await.unwrap().bytes;
    }
    assert_eq!(total, usage.bytes);
    assert_eq!(store.usage(&owner).await, StorageUsage { bytes: total, files: 10 });
}

async fn another_users_files_are_invisible_to_every_call(backend: Backend) {
    let store = store(backend).await;
    let (owner, other) = (user("dan"), user("eve"));
    let session = store.session(&owner).await;
    let file = store.ready(&owner, Some(session), 42, at(0)).await;
    let upload = store.begin(&owner, Some(session), at(1)).await;
    assert!(store.files.reserve(&owner, upload, 8, ROOMY, at(1)).await.unwrap());
    let before = store.usage(&owner).await;

    assert_eq!(store.files.get(&other, file.id).await.unwrap(), None);
    assert!(store.list_all(&other, 10).await.is_empty());
    assert!(store.files.readable(&other, session, &[file.id]).await.unwrap().is_empty());
    assert_eq!(
        store.files.mark_deleting(&other, file.id, at(2)).await.unwrap(),
        Deleting::NotFound
    );
    assert!(store.files.reserve(&other, upload, 1, ROOMY, at(2)).await.is_err());
    let done = Uploaded { bytes: 8, sha256: sha(8) };
    assert!(store.files.complete(&other, upload, &done, at(2)).await.is_err());
    assert!(!store.sessions.delete(&other, session).await.unwrap());

    assert_eq!(store.usage(&other).await, StorageUsage::default());
    assert_eq!(store.usage(&owner).await, before, "the owner's counters are untouched");
    assert_eq!(store.files.get(&owner, file.id).await.unwrap(), Some(file.clone()));
    assert!(store.files.deleting_in_session(session).await.unwrap().is_empty());
    let done = store.files.complete(&owner, upload, &done, at(3)).await.unwrap();
    assert_eq!(store.list_all(&owner, 10).await, [done.id, file.id]);
}

async fn a_turn_reads_the_files_it_names_and_its_sessions(backend: Backend) {
    let store = store(backend).await;
    let owner = user("fay");
    let (session, elsewhere) = (store.session(&owner).await, store.session(&owner).await);
    let attached = store.ready(&owner, Some(session), 1, at(0)).await;
    let also = store.ready(&owner, Some(session), 2, at(1)).await;
    let named = store.ready(&owner, Some(elsewhere), 3, at(2)).await;
    let loose = store.ready(&owner, None, 4, at(3)).await;
    store.begin(&owner, Some(session), at(4)).await;
    let deleted = store.ready(&owner, Some(session), 5, at(5)).await;
    assert_eq!(
        store.files.mark_deleting(&owner, deleted.id, at(6)).await.unwrap(),
        Deleting::Marked
    );

    let ids = |files: Vec<StoredFile>| files.into_iter().map(|f| f.id).collect::<BTreeSet<_>>();
    let read = |names: Vec<FileId>| {
        let files = Arc::clone(&store.files);
        let owner = owner.clone();
        async move { ids(files.readable(&owner, session, &names).await.unwrap()) }
    };
    assert_eq!(read(vec![]).await, BTreeSet::from([attached.id, also.id]));
    assert_eq!(
        read(vec![named.id, loose.id, attached.id, deleted.id, FileId::new()]).await,
        BTreeSet::from([attached.id, also.id, named.id, loose.id]),
    );
    let listed = store.files.readable(&owner, session, &[attached.id, attached.id]).await.unwrap();
    assert_eq!(listed.len(), 2, "a file named and attached comes once: {listed:?}");
}

async fn deleting_a_session_marks_its_files_deleting(backend: Backend) {
    let store = store(backend).await;
    let owner = user("gus");
    let (doomed, kept) = (store.session(&owner).await, store.session(&owner).await);
    let ready = store.ready(&owner, Some(doomed), 10, at(0)).await;
    let uploading = store.begin(&owner, Some(doomed), at(1)).await;
    assert!(store.files.reserve(&owner, uploading, 5, ROOMY, at(1)).await.unwrap());
    let other = store.ready(&owner, Some(kept), 20, at(2)).await;
    let loose = store.ready(&owner, None, 30, at(3)).await;

    assert!(store.sessions.delete(&owner, doomed).await.unwrap());
    let marked: BTreeSet<FileId> =
        store.files.deleting_in_session(doomed).await.unwrap().into_iter().collect();
    assert_eq!(marked, BTreeSet::from([ready.id, uploading]));
    assert_eq!(store.files.get(&owner, ready.id).await.unwrap(), None);
    assert_eq!(store.list_all(&owner, 10).await, [loose.id, other.id]);
    assert!(store.files.reserve(&owner, uploading, 1, ROOMY, at(4)).await.is_err());
    assert!(store.files.deleting_in_session(kept).await.unwrap().is_empty());

    assert_eq!(store.usage(&owner).await, StorageUsage { bytes: 65, files: 4 });
    for id in marked {
        assert!(store.files.remove(id, Utc::now()).await.unwrap());
    }
    assert_eq!(store.usage(&owner).await, StorageUsage { bytes: 50, files: 2 });
}

async fn the_sweep_finds_stale_uploads_deletions_and_orphans(backend: Backend) {
    let store = store(backend).await;
    let owner = user("hal");
    let session = store.session(&owner).await;
    let stale_upload = store.begin(&owner, Some(session), at(0)).await;
    assert!(store.files.reserve(&owner, stale_upload, 7, ROOMY, at(10)).await.unwrap());
    let stale_deletion = store.ready(&owner, None, 1, at(0)).await;
    assert_eq!(
        store.files.mark_deleting(&owner, stale_deletion.id, at(20)).await.unwrap(),
        Deleting::Marked
    );
    let live_upload = store.begin(&owner, None, at(1_000)).await;
    let live = store.ready(&owner, Some(session), 2, at(0)).await;
    // Uploads into a session deleted before their rows were written: the
    // deletion could not mark them.
    let gone = SessionId::new();
    let orphan = store.ready(&owner, Some(gone), 3, at(30)).await;
    let orphan_uploading = store.begin(&owner, Some(gone), at(1_000)).await;

    let stale = |before: DateTime<Utc>, limit: u64| {
        let files = Arc::clone(&store.files);
        async move { files.stale(before, limit).await.unwrap().into_iter().collect::<BTreeSet<_>>() }
    };
    assert_eq!(
        stale(at(100), 100).await,
        BTreeSet::from([stale_upload, stale_deletion.id, orphan.id])
    );
    assert_eq!(store.files.get(&owner, orphan.id).await.unwrap(), None, "now marked deleting");
    assert_eq!(store.files.get(&owner, live.id).await.unwrap(), Some(live.clone()));
    assert_eq!(stale(at(100), 2).await.len(), 2, "at most the limit");
    assert_eq!(
        stale(at(2_000), 100).await,
        BTreeSet::from([stale_upload, stale_deletion.id, orphan.id, live_upload, orphan_uploading]),
        "the orphaned upload was marked too, and is stale once old enough"
    );

    for id in [stale_upload, stale_deletion.id, orphan.id, live_upload, orphan_uploading] {
        assert!(store.files.remove(id, Utc::now()).await.unwrap());
    }
    assert!(stale(at(2_000), 100).await.is_empty());
    assert_eq!(store.usage(&owner).await, StorageUsage { bytes: 2, files: 1 });
}
