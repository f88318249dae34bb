//! Uploads as a client sends them: `multipart/form-data` bodies built by
//! hand (so a test can send any part type, name or order), and what a
//! server keeps of a file behind the API.

use reqwest::{Method, Response};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

use crate::TestApp;

/// The boundary of the bodies built here.
pub const BOUNDARY: &str = "pantheon-test-boundary-7d1e";

/// One part of a form.
#[derive(Debug, Clone)]
pub struct Part<'a> {
    /// Its field name.
    pub name: &'a str,
    /// Its file name, for a file part.
    pub filename: Option<&'a str>,
    /// Its `Content-Type`.
    pub content_type: Option<&'a str>,
    /// Its bytes.
    pub body: &'a [u8],
}

impl<'a> Part<'a> {
    /// A `file` part.
    pub fn file(filename: &'a str, content_type: Option<&'a str>, body: &'a [u8]) -> Self {
        Self { name: "file", filename: Some(filename), content_type, body }
    }

    /// A text field.
    pub fn field(name: &'a str, value: &'a str) -> Self {
        Self { name, filename: None, content_type: None, body: value.as_bytes() }
    }
}

/// A `multipart/form-data` body of `parts`, with [`BOUNDARY`].
pub fn form(parts: &[Part<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        let mut disposition = format!("Content-Disposition: form-data; name=\"{}\"", part.name);
        if let Some(filename) = part.filename {
            disposition.push_str(&format!("; filename=\"{filename}\""));
        }
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(b"\r\n");
        if let Some(content_type) = part.content_type {
            body.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(part.body);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// The `Content-Type` of [`form`]'s bodies.
pub fn form_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

impl TestApp {
    /// Uploads `body` as `filename` (with `content_type` on its part), in
    /// `session` when given.
    pub async fn upload(
        &self,
        token: &str,
        filename: &str,
        content_type: Option<&str>,
        body: &[u8],
        session: Option<&str>,
    ) -> Response {
        let mut parts = Vec::new();
        if let Some(session) = session {
            parts.push(Part::field("session_id", session));
        }
        parts.push(Part::file(filename, content_type, body));
        self.request(Method::POST, "/api/v1/files", token)
            .header("content-type", form_type())
            .body(form(&parts))
            .send()
            .await
            .unwrap()
    }

    /// Uploads and returns the file's body, asserting the `201`.
    pub async fn upload_ok(
        &self,
        token: &str,
        filename: &str,
        body: &[u8],
        session: Option<&str>,
    ) -> serde_json::Value {
        crate::expect_json(self.upload(token, filename, None, body, session).await, 201).await
    }

    /// The blobs in the server's local files directory.
    pub fn blobs(&self) -> Vec<std::path::PathBuf> {
        let Some(dir) = &self.settings.files.local_dir else {
            return Vec::new();
        };
        let mut found = Vec::new();
        let mut pending = vec![dir.clone()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    found.push(path);
                }
            }
        }
        found
    }
}

/// The user's storage counters `(bytes, files)` as the database holds them.
pub async fn storage_of(db: &DatabaseConnection, user: &str) -> (i64, i64) {
    let backend = db.get_database_backend();
    let sql = match backend {
        sea_orm::DatabaseBackend::Postgres => {
            "SELECT bytes, files FROM user_storage WHERE user_id = $1"
        }
        _ => "SELECT bytes, files FROM user_storage WHERE user_id = ?",
    };
    let row = db
        .query_one_raw(Statement::from_sql_and_values(backend, sql, [user.into()]))
        .await
        .unwrap();
    row.map_or((0, 0), |row| {
        (row.try_get::<i64>("", "bytes").unwrap(), row.try_get::<i64>("", "files").unwrap())
    })
}

/// The rows of `uploaded_files` of `user` (test user ids need no quoting).
pub async fn file_rows(db: &DatabaseConnection, user: &str) -> i64 {
    crate::db::count_where(db, "uploaded_files", &format!("user_id = '{user}'")).await
}

/// The head of an upload of a `body_len`-byte [`form`] body, for a test
/// that writes the body itself on a raw socket (and stops when it likes).
pub fn upload_head(address: &str, token: &str, body_len: usize) -> String {
    format!(
        "POST /api/v1/files HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {token}\r\n\
         content-type: {}\r\ncontent-length: {body_len}\r\n\r\n",
        form_type()
    )
}

/// Polls `done` until it holds, at most `limit`: for what a server does in
/// a task of its own after a response (an upload's cleanup, a sweep).
pub async fn wait_for<F, Fut>(limit: std::time::Duration, done: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "not within {limit:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
