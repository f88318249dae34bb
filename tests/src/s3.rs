//! The S3 server of the file store's tests: the suite's
//! (`PANTHEON_TEST_S3_ENDPOINT`, moto's server, started by `scripts/test.sh`
//! or by hand with `scripts/s3.sh start DIR`), with a bucket of its own for
//! each test so they never see each other's objects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use pantheon_infrastructure::settings::S3Settings;

/// The suite's S3 endpoint; `None`, said on stderr, when none is set: the
/// caller then skips its S3 half.
pub fn endpoint() -> Option<String> {
    let endpoint = std::env::var("PANTHEON_TEST_S3_ENDPOINT").unwrap_or_default();
    if endpoint.is_empty() {
        eprintln!(
            "SKIPPED on S3: PANTHEON_TEST_S3_ENDPOINT is unset; run the suite with \
             scripts/test.sh, or start a server with scripts/s3.sh start DIR and export the \
             endpoint it prints"
        );
        return None;
    }
    Some(endpoint.trim_end_matches('/').to_owned())
}

/// Creates an empty bucket (moto takes an unsigned `PUT /bucket`) and
/// returns its name.
pub async fn new_bucket(endpoint: &str) -> String {
    let bucket = format!("pantheon-test-{}", uuid::Uuid::new_v4().simple());
    let response = reqwest::Client::new().put(format!("{endpoint}/{bucket}")).send().await.unwrap();
    assert!(response.status().is_success(), "creating {bucket}: {}", response.status());
    bucket
}

/// `files.s3.*` for `bucket` on the test server.
pub fn settings(endpoint: &str, bucket: &str) -> S3Settings {
    S3Settings {
        bucket: Some(bucket.to_owned()),
        endpoint: Some(endpoint.to_owned()),
        path_style: true,
        allow_http: true,
        access_key_id: Some("test".to_owned()),
        secret_access_key: Some("test".to_owned()),
        ..S3Settings::default()
    }
}

/// The XML `bucket` answers `query` with.
async fn listing(endpoint: &str, bucket: &str, query: &str) -> String {
    let response = reqwest::Client::new().get(format!("{endpoint}/{bucket}?{query}")).send();
    response.await.unwrap().text().await.unwrap()
}

/// The multipart uploads started in `bucket` and neither completed nor
/// aborted.
pub async fn unfinished_uploads(endpoint: &str, bucket: &str) -> usize {
    listing(endpoint, bucket, "uploads").await.matches("<UploadId>").count()
}

/// The keys of the objects in `bucket`.
pub async fn objects(endpoint: &str, bucket: &str) -> Vec<String> {
    listing(endpoint, bucket, "list-type=2")
        .await
        .split("<Key>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_owned()))
        .collect()
}
