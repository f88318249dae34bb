//! Tokens: every way a bearer token can be wrong is the same `401`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pantheon_tests::{Backend, expect_json, expect_problem, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn sign(alg: Algorithm, secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .unwrap()
}

fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

#[tokio::test]
async fn every_bad_token_is_401_with_www_authenticate_and_no_hint() {
    let app = spawn_app(Backend::Sqlite).await;
    let secret = app.settings.auth.jwt_secret.clone();
    let valid_claims = json!({ "sub": "alice", "exp": now() + 600 });
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("not a bearer scheme", Some(format!("Basic {}", URL_SAFE_NO_PAD.encode("alice:pw")))),
        ("malformed", Some("Bearer not.a.jwt".into())),
        ("empty", Some("Bearer ".into())),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                sign(Algorithm::HS256, &secret, &json!({"sub": "alice", "exp": now() - 3600}))
            )),
        ),
        (
            "no exp",
            Some(format!("Bearer {}", sign(Algorithm::HS256, &secret, &json!({"sub": "alice"})))),
        ),
        (
            "not yet valid",
            Some(format!(
                "Bearer {}",
                sign(
                    Algorithm::HS256,
                    &secret,
                    &json!({"sub": "alice", "exp": now() + 600, "nbf": now() + 300})
                )
            )),
        ),
        (
            "wrong key",
            Some(format!(
                "Bearer {}",
                sign(Algorithm::HS256, "another-secret-that-is-long-enough-000", &valid_claims)
            )),
        ),
        ("alg none", Some(format!("Bearer {}", unsigned(&valid_claims)))),
        (
            "disallowed algorithm",
            Some(format!("Bearer {}", sign(Algorithm::HS512, &secret, &valid_claims))),
        ),
        (
            "sub with a space",
            Some(format!(
                "Bearer {}",
                sign(Algorithm::HS256, &secret, &json!({"sub": "al ice", "exp": now() + 600}))
            )),
        ),
        (
            "sub with braces",
            Some(format!(
                "Bearer {}",
                sign(Algorithm::HS256, &secret, &json!({"sub": "a{b}", "exp": now() + 600}))
            )),
        ),
        (
            "sub too long",
            Some(format!(
                "Bearer {}",
                sign(
                    Algorithm::HS256,
                    &secret,
                    &json!({"sub": "a".repeat(129), "exp": now() + 600})
                )
            )),
        ),
    ];
    let mut details = Vec::new();
    for (name, authorization) in cases {
        let mut request = app.client.request(Method::GET, app.url("/api/v1/sessions"));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.headers().get("www-authenticate").map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "{name}"
        );
        let problem = expect_problem(response, 401, "unauthenticated").await;
        details.push(problem["detail"].as_str().unwrap().to_owned());
    }
    details.dedup();
    assert_eq!(details.len(), 1, "the body never says which check failed: {details:?}");
    assert_eq!(app.count("users").await, 0);

    let good = sign(Algorithm::HS256, &secret, &valid_claims);
    let ok = app.client.get(app.url("/api/v1/sessions")).bearer_auth(good).send().await.unwrap();
    expect_json(ok, 200).await;
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let app = pantheon_tests::spawn_app_with(Backend::Sqlite, |s| {
        s.auth.issuer = Some("https://issuer.example".into());
        s.auth.audience = Some("pantheon".into());
    })
    .await;
    let secret = app.settings.auth.jwt_secret.clone();
    let base = json!({"sub": "alice", "exp": now() + 600, "iss": "https://issuer.example", "aud": "pantheon"});
    let mut wrong_iss = base.clone();
    wrong_iss["iss"] = "https://elsewhere.example".into();
    let mut wrong_aud = base.clone();
    wrong_aud["aud"] = "other".into();
    for (claims, status) in [(&base, 200), (&wrong_iss, 401), (&wrong_aud, 401)] {
        let token = sign(Algorithm::HS256, &secret, claims);
        let response =
            app.client.get(app.url("/api/v1/sessions")).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status(), status, "{claims}");
    }
    // Tokens minted by `pantheon token` carry the configured iss and aud.
    let minted = app.token("alice");
    let response =
        app.client.get(app.url("/api/v1/sessions")).bearer_auth(minted).send().await.unwrap();
    assert_eq!(response.status(), 200);
}
