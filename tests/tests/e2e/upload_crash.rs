//! An instance `SIGKILL`ed mid-upload, on the real binary: its upload
//! leaves an `uploading` row holding a reservation, and bytes in the store
//! (a multipart upload's parts under way). Another instance's sweep,
//! once its clock is past `files.orphan_grace_secs`, removes the bytes and
//! the row and gives the reservation back.

use std::sync::Arc;
use std::time::Duration;

use pantheon_domain::ManualClock;
use pantheon_infrastructure::auth::TokenMinter;
use pantheon_infrastructure::settings::AuthSettings;
use pantheon_tests::files::{Part, file_rows, form, storage_of, upload_head, wait_for};
use pantheon_tests::process::ServerCommand;
use pantheon_tests::{Backend, TestDatabase, files_dir, spawn_app_on};
use tokio::io::AsyncWriteExt;

const GRACE_SECS: u64 = 120;
/// How long the sweep of another instance may take to come round.
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_instance_was_killed_is_swept_by_another() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let dir = files_dir(&database.url);
    let secret = format!("test-secret-{}", uuid::Uuid::new_v4());
    let mut command = ServerCommand::new(&database.url);
    command
        .set("PANTHEON__AUTH__JWT_SECRET", &secret)
        .set("PANTHEON__FILES__LOCAL_DIR", dir.to_str().unwrap())
        .set("PANTHEON__FILES__MAX_UPLOAD_SECS", "60")
        .set("PANTHEON__FILES__ORPHAN_GRACE_SECS", &GRACE_SECS.to_string());
    let mut first = command.spawn().await;
    let minter =
        TokenMinter::new(&AuthSettings { jwt_secret: secret.clone(), ..AuthSettings::default() })
            .unwrap();
    let user = format!("crash-{}", uuid::Uuid::new_v4());
    let token = minter.mint(&user, None, Duration::from_secs(600)).unwrap();
    let db = database.connect().await;

    // 12 MiB announced, 8 MiB sent: past one 5 MiB part, short of the end.
    let body = form(&[Part::file("big.txt", Some("text/plain"), &vec![b'k'; 12 << 20])]);
    let address = first.address().trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = upload_head(&address, &token, body.len());
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&body[..8 << 20]).await.unwrap();
    wait_for(WAIT, || async { storage_of(&db, &user).await.0 >= 6 << 20 }).await;
    first.kill();
    drop(socket);
    assert_eq!(file_rows(&db, &user).await, 1, "the dead instance left its row");
    let (reserved, files) = storage_of(&db, &user).await;
    assert!(reserved >= 6 << 20 && files == 1, "and its reservation: {reserved}");

    // Another instance, whose clock the test moves past the grace.
    let clock = Arc::new(ManualClock::at(chrono::Utc::now().timestamp_millis()));
    let second = spawn_app_on(
        TestDatabase::at(database.url.clone()),
        |s| {
            s.auth.jwt_secret = secret.clone();
            s.files.max_upload_secs = 60;
            s.files.orphan_grace_secs = GRACE_SECS;
            s.files.sweep_interval_secs = 1;
        },
        clock.clone(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(file_rows(&db, &user).await, 1, "not swept within the grace");
    clock.advance(i64::try_from(GRACE_SECS + 1).unwrap() * 1_000);
    wait_for(WAIT, || async { file_rows(&db, &user).await == 0 }).await;
    assert_eq!(storage_of(&db, &user).await, (0, 0), "the reservation is given back");
    assert!(second.blobs().is_empty(), "no bytes are left: {:?}", second.blobs());
}
