//! Uploads through the API: what is stored, what is refused and why, and
//! that a refusal or a failure leaves nothing behind (no row, no blob, no
//! byte of quota).

use pantheon_tests::files::{Part, file_rows, form, form_type, storage_of, upload_head, wait_for};
use pantheon_tests::{Backend, expect_json, expect_problem, header, spawn_app, spawn_app_with};
use reqwest::Method;
use serde_json::Value;
use sha2::{Digest, Sha256};

on_both_databases!(
    a_file_is_stored_listed_read_and_deleted,
    another_users_file_is_404_everywhere_and_unchanged,
    spoofed_and_unlisted_types_are_refused_and_leave_nothing,
    files_over_a_limit_are_refused_before_or_while_they_stream,
    deleting_a_session_deletes_its_files
);

/// How long an upload's cleanup may take after its client left.
const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

const PNG: &[u8] =
    b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

async fn a_file_is_stored_listed_read_and_deleted(backend: Backend) {
    let app = spawn_app(backend).await;
    let (user, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    let text = "# Notes\n\nnaïve café, 3 × 4\n".as_bytes();
    let file = app.upload_ok(&token, "../../etc/notes.md", text, Some(&session)).await;
    assert_eq!(file["filename"], "notes.md", "the name keeps its last component only");
    assert_eq!(file["content_type"], "text/markdown");
    assert_eq!(file["bytes"], text.len());
    assert_eq!(file["sha256"], sha256(text));
    assert_eq!(file["session_id"], session.as_str());
    let id = file["id"].as_str().unwrap().to_owned();
    let second = app.upload_ok(&token, "pixel.png", PNG, None).await;
    let third = app.upload_ok(&token, "data.csv", b"a,b\n1,2\n", None).await;
    assert_eq!(second["content_type"], "image/png");
    assert_eq!(second["session_id"], Value::Null);
    assert_eq!(third["content_type"], "text/csv");

    let page = expect_json(
        app.request(Method::GET, "/api/v1/files?limit=2", &token).send().await.unwrap(),
        200,
    )
    .await;
    let ids: Vec<&str> =
        page["data"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [third["id"].as_str().unwrap(), second["id"].as_str().unwrap()],
        "newest first"
    );
    assert_eq!(page["has_more"], true);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = expect_json(
        app.request(Method::GET, &format!("/api/v1/files?limit=2&after={cursor}"), &token)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(rest["data"][0]["id"], id.as_str());
    assert_eq!(rest["has_more"], false);

    let one = expect_json(
        app.request(Method::GET, &format!("/api/v1/files/{id}"), &token).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(one, file);
    let content = app
        .request(Method::GET, &format!("/api/v1/files/{id}/content"), &token)
        .send()
        .await
        .unwrap();
    assert_eq!(content.status(), 200);
    assert_eq!(header(&content, "content-type"), "text/markdown");
    assert_eq!(header(&content, "x-content-type-options"), "nosniff");
    assert_eq!(
        header(&content, "content-disposition"),
        "attachment; filename=\"notes.md\"; filename*=UTF-8''notes.md"
    );
    assert_eq!(content.bytes().await.unwrap(), text);
    let total = text.len() + PNG.len() + 8;
    assert_eq!(storage_of(&app.db, &user).await, (total as i64, 3));
    assert_eq!(app.blobs().len(), 3);

    let deleted =
        app.request(Method::DELETE, &format!("/api/v1/files/{id}"), &token).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let again =
        app.request(Method::DELETE, &format!("/api/v1/files/{id}"), &token).send().await.unwrap();
    assert_eq!(again.status(), 204, "deleting it again answers as the first time did");
    for path in [format!("/api/v1/files/{id}"), format!("/api/v1/files/{id}/content")] {
        let gone = app.request(Method::GET, &path, &token).send().await.unwrap();
        expect_problem(gone, 404, "file_not_found").await;
    }
    assert_eq!(storage_of(&app.db, &user).await, ((PNG.len() + 8) as i64, 2));
    assert_eq!(file_rows(&app.db, &user).await, 2);
    assert_eq!(app.blobs().len(), 2);
}

async fn another_users_file_is_404_everywhere_and_unchanged(backend: Backend) {
    let app = spawn_app(backend).await;
    let (owner_id, owner) = app.new_user();
    let (_, intruder) = app.new_user();
    let file = app.upload_ok(&owner, "secret.txt", b"the owner's words", None).await;
    let id = file["id"].as_str().unwrap();
    for (method, path) in [
        (Method::GET, format!("/api/v1/files/{id}")),
        (Method::GET, format!("/api/v1/files/{id}/content")),
        (Method::DELETE, format!("/api/v1/files/{id}")),
    ] {
        let response = app.request(method.clone(), &path, &intruder).send().await.unwrap();
        let problem = expect_problem(response, 404, "file_not_found").await;
        assert!(!problem.to_string().contains("owner's"), "{method} {path}");
    }
    let listed = expect_json(
        app.request(Method::GET, "/api/v1/files", &intruder).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(listed["data"], serde_json::json!([]));
    assert_eq!(file_rows(&app.db, &owner_id).await, 1);
    let still = app
        .request(Method::GET, &format!("/api/v1/files/{id}/content"), &owner)
        .send()
        .await
        .unwrap();
    assert_eq!(still.bytes().await.unwrap(), &b"the owner's words"[..]);
}

async fn spoofed_and_unlisted_types_are_refused_and_leave_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (user, token) = app.new_user();
    let mut late_binary = "text ".repeat(4000).into_bytes();
    late_binary.extend_from_slice(b"\xff\xfe\x00\x01");
    let zip = b"PK\x03\x04\x14\x00\x00\x00\x08\x00rest of a zip";
    let cases: [(&str, Option<&str>, &[u8], &str); 6] = [
        ("report.pdf", None, PNG, "file_type_mismatch"),
        ("report", Some("application/pdf"), PNG, "file_type_mismatch"),
        ("pixel.png", Some("image/png"), b"just text", "file_type_mismatch"),
        ("long.txt", Some("text/plain"), &late_binary, "file_type_mismatch"),
        ("archive.zip", None, zip, "file_type_not_allowed"),
        ("page.html", Some("text/html"), b"<html></html>", "file_type_not_allowed"),
    ];
    for (name, part_type, body, code) in cases {
        let response = app.upload(&token, name, part_type, body, None).await;
        let problem = expect_problem(response, 415, code).await;
        assert!(problem["detected"].is_string(), "{name}: {problem}");
    }
    assert_eq!(file_rows(&app.db, &user).await, 0);
    assert_eq!(storage_of(&app.db, &user).await.0, 0);
    assert!(app.blobs().is_empty(), "no blob is left: {:?}", app.blobs());
}

async fn files_over_a_limit_are_refused_before_or_while_they_stream(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.files.max_file_bytes = 100_000;
        s.files.quota_bytes = 250_000;
        s.files.max_files = 3;
    })
    .await;
    let (user, token) = app.new_user();
    // Told from Content-Length, before reading.
    let big = vec![b'a'; 200_000];
    let response = app.upload(&token, "big.txt", None, &big, None).await;
    let problem = expect_problem(response, 413, "file_too_large").await;
    assert_eq!(problem["limit"], 100_000);
    // Told while streaming: a chunked body has no length.
    let body = form(&[Part::file("big.txt", Some("text/plain"), &big)]);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
    let streamed = app
        .request(Method::POST, "/api/v1/files", &token)
        .header("content-type", form_type())
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    expect_problem(streamed, 413, "file_too_large").await;
    assert_eq!(storage_of(&app.db, &user).await, (0, 0));

    let ninety = vec![b'b'; 90_000];
    app.upload_ok(&token, "one.txt", &ninety, None).await;
    app.upload_ok(&token, "two.txt", &ninety, None).await;
    let over = app.upload(&token, "three.txt", None, &ninety, None).await;
    let problem = expect_problem(over, 413, "storage_quota_exceeded").await;
    assert_eq!(problem["quota"]["unit"], "bytes");
    assert_eq!(storage_of(&app.db, &user).await, (180_000, 2), "the refused one gave all back");
    let fits = vec![b'c'; 70_000];
    app.upload_ok(&token, "three.txt", &fits, None).await;
    let fourth = app.upload(&token, "four.txt", None, b"x", None).await;
    let problem = expect_problem(fourth, 413, "storage_quota_exceeded").await;
    assert_eq!(problem["quota"]["unit"], "files");
    assert_eq!(storage_of(&app.db, &user).await, (250_000, 3), "exactly the quota");
    assert_eq!(app.blobs().len(), 3);
}

async fn deleting_a_session_deletes_its_files(backend: Backend) {
    let app = spawn_app(backend).await;
    let (user, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    for name in ["a.txt", "b.txt"] {
        app.upload_ok(&token, name, b"attached", Some(&session)).await;
    }
    let kept = app.upload_ok(&token, "kept.txt", b"mine alone", None).await;
    let deleted = app
        .request(Method::DELETE, &format!("/api/v1/sessions/{session}"), &token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(file_rows(&app.db, &user).await, 1, "rows of the session's files are gone");
    assert_eq!(app.blobs().len(), 1, "and their blobs");
    assert_eq!(storage_of(&app.db, &user).await, (10, 1));
    let listed =
        expect_json(app.request(Method::GET, "/api/v1/files", &token).send().await.unwrap(), 200)
            .await;
    assert_eq!(listed["data"][0]["id"], kept["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_have_a_window_of_their_own() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.rate_limit.uploads_per_minute = 2).await;
    let (_, token) = app.new_user();
    for name in ["1.txt", "2.txt"] {
        app.upload_ok(&token, name, b"ok", None).await;
    }
    let limited = app.upload(&token, "3.txt", None, b"ok", None).await;
    assert_eq!(limited.status(), 429);
    assert!(header(&limited, "retry-after").parse::<u64>().unwrap() >= 1);
    // Turns are counted apart: the user's turn window is untouched.
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    expect_json(app.submit_turn(&token, &session, "hello").await, 201).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_mid_upload_leaves_no_row_no_blob_no_quota() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app(Backend::Sqlite).await;
    let (user, token) = app.new_user();
    let body = form(&[Part::file("half.txt", Some("text/plain"), &vec![b'h'; 1_000_000])]);
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = upload_head(&address, &token, body.len());
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&body[..600_000]).await.unwrap();
    // Wait until the upload is under way (its row reserved), then leave.
    wait_for(WAIT, || async { file_rows(&app.db, &user).await == 1 }).await;
    drop(socket);
    wait_for(WAIT, || async { file_rows(&app.db, &user).await == 0 }).await;
    assert_eq!(storage_of(&app.db, &user).await, (0, 0));
    assert!(app.blobs().is_empty(), "{:?}", app.blobs());
}

/// 100 uploads by one user fired at once at two instances over one
/// PostgreSQL: exactly as many as fit are stored, and the user's bytes are
/// never over the quota, neither at the end nor at any moment a sampler
/// looked while they ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_uploads_over_two_instances_never_pass_the_quota() {
    const SIZE: usize = 10_000;
    const QUOTA: u64 = 25 * SIZE as u64 + 5_000;
    let database = pantheon_tests::TestDatabase::create(Backend::Postgres).await;
    let clock = std::sync::Arc::new(pantheon_domain::SystemClock);
    let apps = pantheon_tests::spawn_instances(2, &database, clock, |s| {
        s.files.quota_bytes = QUOTA;
        s.files.max_file_bytes = 2 * SIZE as u64;
        s.rate_limit.uploads_per_minute = 1_000;
    })
    .await;
    let user = format!("racer-{}", uuid::Uuid::new_v4());
    let token = apps[0].token(&user);
    let body = vec![b'r'; SIZE];
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (db, user, sampling) = (apps[0].db.clone(), user.clone(), sampling.clone());
        tokio::spawn(async move {
            let mut samples = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let (bytes, _) = storage_of(&db, &user).await;
                assert!(bytes as u64 <= QUOTA, "{bytes} bytes held, over the quota of {QUOTA}");
                samples += 1;
            }
            samples
        })
    };
    let uploads = (0..100).map(|i| {
        let app = &apps[i % 2];
        let (token, body) = (token.clone(), body.clone());
        async move { app.upload(&token, &format!("{i}.txt"), None, &body, None).await }
    });
    let mut stored = 0;
    for response in futures::future::join_all(uploads).await {
        match response.status().as_u16() {
            201 => stored += 1,
            413 => {
                expect_problem(response, 413, "storage_quota_exceeded").await;
            }
            other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
        }
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.await.unwrap();
    assert_eq!(stored, 25, "as many as fit, no more, no fewer");
    assert_eq!(storage_of(&apps[0].db, &user).await, (25 * SIZE as i64, 25));
    assert_eq!(file_rows(&apps[0].db, &user).await, 25);
    assert_eq!(apps[0].blobs().len(), 25, "no blob of a refused upload is left");
    assert!(samples > 0);
}

/// The endpoints on an S3 store (moto's server, which the test script
/// starts): a file larger than one multipart part round-trips, a turn reads
/// it, and a refused upload and a deletion leave no object and no
/// unfinished multipart upload behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoints_work_on_an_s3_store() {
    use pantheon_infrastructure::settings::FileStoreKind;
    use pantheon_tests::s3;
    let Some(endpoint) = s3::endpoint() else { return };
    let bucket = s3::new_bucket(&endpoint).await;
    let app = spawn_app_with(Backend::Postgres, |s| {
        s.files.store = FileStoreKind::S3;
        s.files.s3 = s3::settings(&endpoint, &bucket);
    })
    .await;
    let (user, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    // Over one 5 MiB part: stored as a multipart upload.
    let big: Vec<u8> = (0..6 * 1024 * 1024).map(|i| b"abcdefghij\n"[i % 11]).collect();
    let file = app.upload_ok(&token, "big.txt", &big, Some(&session)).await;
    assert_eq!(file["sha256"], sha256(&big));
    let id = file["id"].as_str().unwrap().to_owned();
    let content = app
        .request(Method::GET, &format!("/api/v1/files/{id}/content"), &token)
        .send()
        .await
        .unwrap();
    assert_eq!(content.bytes().await.unwrap().as_ref(), &big[..]);
    let turn = expect_json(app.submit_turn(&token, &session, "what is in it?").await, 201).await;
    assert!(turn["output"].as_str().unwrap().starts_with("Read 2048 bytes of big.txt"), "{turn}");

    let refused = app.upload(&token, "x.png", Some("image/png"), &big, None).await;
    expect_problem(refused, 415, "file_type_mismatch").await;
    assert_eq!(s3::objects(&endpoint, &bucket).await.len(), 1);
    let deleted =
        app.request(Method::DELETE, &format!("/api/v1/files/{id}"), &token).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(s3::objects(&endpoint, &bucket).await.is_empty(), "the object is gone");
    assert_eq!(s3::unfinished_uploads(&endpoint, &bucket).await, 0);
    assert_eq!(storage_of(&app.db, &user).await, (0, 0));
}

/// What a hostile or broken client sends instead of a form: each is a
/// clear 4xx, and nothing is kept or counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_forms_are_refused_and_change_nothing() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.rate_limit.uploads_per_minute = 100).await;
    let (user, token) = app.new_user();
    let (_, other) = app.new_user();
    let theirs = app.create_session(&other).await["id"].as_str().unwrap().to_owned();
    let post = |content_type: String, body: Vec<u8>| {
        app.request(Method::POST, "/api/v1/files", &token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let json = post("application/json".into(), b"{}".to_vec()).await.unwrap();
    expect_problem(json, 415, "unsupported_media_type").await;
    let no_file = post(form_type(), form(&[Part::field("session_id", &theirs)])).await.unwrap();
    expect_problem(no_file, 400, "malformed_upload").await;
    let garbage = post(form_type(), b"not a form at all".to_vec()).await.unwrap();
    assert_eq!(garbage.status(), 400, "{}", garbage.text().await.unwrap());
    let unknown = form(&[Part::field("other", "x"), Part::file("a.txt", None, b"hi")]);
    expect_problem(post(form_type(), unknown).await.unwrap(), 400, "malformed_upload").await;
    let bad_session = form(&[Part::field("session_id", "nope"), Part::file("a.txt", None, b"hi")]);
    let problem =
        expect_problem(post(form_type(), bad_session).await.unwrap(), 422, "validation_failed")
            .await;
    assert_eq!(problem["errors"][0]["field"], "session_id");
    let mine = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    let twice = form(&[
        Part::field("session_id", &mine),
        Part::field("session_id", &mine),
        Part::file("a.txt", None, b"hi"),
    ]);
    expect_problem(post(form_type(), twice).await.unwrap(), 400, "malformed_upload").await;
    let elsewhere = form(&[Part::field("session_id", &theirs), Part::file("a.txt", None, b"hi")]);
    expect_problem(post(form_type(), elsewhere).await.unwrap(), 404, "session_not_found").await;
    assert_eq!(file_rows(&app.db, &user).await, 0);
    assert_eq!(storage_of(&app.db, &user).await, (0, 0));
    assert!(app.blobs().is_empty());
}

/// A client that stops sending mid-file is answered `408` once the body
/// has been silent for `server.body_read_timeout_ms`, and nothing is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_a_408_and_leaves_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(Backend::Sqlite, |s| s.server.body_read_timeout_ms = 300).await;
    let (user, token) = app.new_user();
    let body = form(&[Part::file("slow.txt", Some("text/plain"), &vec![b's'; 200_000])]);
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    socket.write_all(upload_head(&address, &token, body.len()).as_bytes()).await.unwrap();
    socket.write_all(&body[..50_000]).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, socket.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server answers and closes");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("upload_timeout"), "{answer}");
    wait_for(WAIT, || async { file_rows(&app.db, &user).await == 0 }).await;
    assert_eq!(storage_of(&app.db, &user).await, (0, 0));
}
