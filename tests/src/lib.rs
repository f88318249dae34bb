//! Test support: [`spawn_app`] starts the real server, wired by the same
//! [`pantheon_api::build`] as production, on a random loopback port, over a
//! database of its own (a fresh PostgreSQL database or SQLite file), so every
//! test can run in parallel with the others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod contract;
pub mod db;
pub mod fake_openai;
pub mod files;
pub mod headers;
pub mod limiter;
pub mod logs;
pub mod metrics;
pub mod postgres_server;
pub mod process;
pub mod redis_cluster;
pub mod redis_server;
pub mod rng;
pub mod s3;
pub mod sse;

use std::sync::Arc;
use std::time::Duration;

use pantheon_domain::{Clock, SystemClock};
use pantheon_infrastructure::Settings;
use pantheon_infrastructure::auth::TokenMinter;
use reqwest::{Client, RequestBuilder, Response};
use sea_orm::DatabaseConnection;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use db::{Backend, TestDatabase};

/// A running server and what a test needs to talk to it and look behind it.
#[derive(Debug)]
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// A plain HTTP client.
    pub client: Client,
    /// A connection to the server's database, for asserting what it holds.
    pub db: DatabaseConnection,
    /// The settings the server runs with.
    pub settings: Settings,
    /// `http://<metrics listener>`, when metrics are on (they are by
    /// default here, on a port of their own).
    pub metrics_address: Option<String>,
    database: TestDatabase,
    minter: TokenMinter,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// Starts a server on `backend` with default settings.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Starts a server on `backend` after `adjust` has changed the settings.
pub async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with_clock(backend, adjust, Arc::new(SystemClock)).await
}

/// Starts a server whose clock the test controls (limiter windows, retry
/// times), after `adjust` has changed the settings.
pub async fn spawn_app_with_clock(
    backend: Backend,
    adjust: impl FnOnce(&mut Settings),
    clock: Arc<dyn Clock>,
) -> TestApp {
    spawn_app_on(TestDatabase::create(backend).await, adjust, clock).await
}

/// Starts a server over `database` (e.g. one on a test's own PostgreSQL),
/// after `adjust` has changed the settings.
pub async fn spawn_app_on(
    database: TestDatabase,
    adjust: impl FnOnce(&mut Settings),
    clock: Arc<dyn Clock>,
) -> TestApp {
    let mut settings = Settings::default();
    settings.database.url = database.url.clone();
    settings.server.addr = "127.0.0.1:0".parse().unwrap();
    settings.server.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    settings.auth.jwt_secret = format!("test-secret-{}", uuid::Uuid::new_v4());
    settings.files.local_dir = Some(files_dir(&database.url));
    adjust(&mut settings);
    settings.validate().expect("test settings are valid");
    spawn_with_settings(database, settings, clock).await
}

/// The files directory of the servers over the database at `url`:
/// instances of one deployment share it, as they share the database.
pub fn files_dir(url: &str) -> std::path::PathBuf {
    use std::hash::{Hash, Hasher};
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    url.hash(&mut hash);
    std::env::temp_dir().join("pantheon-test-files").join(format!("{:016x}", hash.finish()))
}

/// `count` servers over one database (`database` stays the caller's), with
/// one JWT secret (a token minted by any is good on all) and `clock`, each
/// after `adjust`: instances of one deployment.
pub async fn spawn_instances(
    count: usize,
    database: &TestDatabase,
    clock: Arc<dyn Clock>,
    adjust: impl Fn(&mut Settings),
) -> Vec<TestApp> {
    let secret = format!("test-secret-{}", uuid::Uuid::new_v4());
    let mut apps = Vec::with_capacity(count);
    for _ in 0..count {
        let at = TestDatabase::at(database.url.clone());
        let app = spawn_app_on(
            at,
            |s| {
                s.auth.jwt_secret = secret.clone();
                adjust(s);
            },
            clock.clone(),
        )
        .await;
        apps.push(app);
    }
    apps
}

async fn spawn_with_settings(
    database: TestDatabase,
    settings: Settings,
    clock: Arc<dyn Clock>,
) -> TestApp {
    let built = pantheon_api::build(&settings, clock).await.expect("the app builds");
    let metrics_address = built.metrics_addr.map(|a| format!("http://{a}"));
    let listener = tokio::net::TcpListener::bind(settings.server.addr).await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (shutdown, stop) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        built
            .serve(listener, async {
                let _ = stop.await;
            })
            .await
            .unwrap();
    });
    let db = database.connect().await;
    let minter = TokenMinter::new(&settings.auth).unwrap();
    TestApp {
        address,
        client: Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
        db,
        settings,
        metrics_address,
        database,
        minter,
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

impl TestApp {
    /// A valid token for `user`.
    pub fn token(&self, user: &str) -> String {
        self.minter.mint(user, None, Duration::from_secs(3600)).unwrap()
    }

    /// A valid token for `user` in `tier`.
    pub fn token_with_tier(&self, user: &str, tier: &str) -> String {
        self.minter.mint(user, Some(tier), Duration::from_secs(3600)).unwrap()
    }

    /// A fresh user id and a token for it.
    pub fn new_user(&self) -> (String, String) {
        let user = format!("user-{}", uuid::Uuid::new_v4());
        let token = self.token(&user);
        (user, token)
    }

    /// The absolute URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A request with the bearer token.
    pub fn request(&self, method: reqwest::Method, path: &str, token: &str) -> RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(token)
    }

    /// Creates a session and returns its body.
    pub async fn create_session(&self, token: &str) -> Value {
        let response = self
            .request(reqwest::Method::POST, "/api/v1/sessions", token)
            .json(&json!({ "title": "test" }))
            .send()
            .await
            .unwrap();
        expect_json(response, 201).await
    }

    /// Submits a turn.
    pub async fn submit_turn(&self, token: &str, session_id: &str, input: &str) -> Response {
        self.request(reqwest::Method::POST, &format!("/api/v1/sessions/{session_id}/turns"), token)
            .json(&json!({ "input": input }))
            .send()
            .await
            .unwrap()
    }

    /// Rows in `table`.
    pub async fn count(&self, table: &str) -> i64 {
        db::count(&self.db, table).await
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }

    /// The test database (kept alive as long as the app).
    pub fn database(&self) -> &TestDatabase {
        &self.database
    }
}

/// A response header as text, empty when absent.
pub fn header(response: &Response, name: &str) -> String {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

/// Reads a response as JSON, asserting its status and content type first,
/// then that it matches the schema the OpenAPI document declares for it.
pub async fn expect_json(response: Response, status: u16) -> Value {
    let got = response.status().as_u16();
    let content_type = header(&response, "content-type");
    let path = response.url().path().to_owned();
    let body = response.text().await.unwrap();
    assert_eq!(got, status, "unexpected status; body: {body}");
    assert!(content_type.contains("json"), "content type {content_type:?}, body {body}");
    let body = serde_json::from_str(&body).unwrap();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    contract::check_response(&path, got, media_type, &body);
    body
}

/// Reads a JSON response whatever its status, checked against the OpenAPI
/// document as [`expect_json`] does.
pub async fn read_json(response: Response) -> Value {
    let status = response.status().as_u16();
    expect_json(response, status).await
}

/// Reads a problem response, asserting its status, media type, code and
/// the members every problem has.
pub async fn expect_problem(response: Response, status: u16, code: &str) -> Value {
    let content_type = header(&response, "content-type");
    let request_id = header(&response, "x-request-id");
    let body = expect_json(response, status).await;
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["type"], format!("urn:pantheon:problem:{code}"), "{body}");
    assert!(body["title"].is_string() && body["detail"].is_string(), "{body}");
    assert_eq!(body["request_id"], request_id.as_str(), "{body}");
    body
}
