//! Tokens: every way a bearer token can be wrong is the same `401`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pantheon_tests::{Backend, expect_json, expect_problem, process, spawn_app};
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

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "pantheon";

/// `401 unauthenticated` with `WWW-Authenticate: Bearer`, or `200`.
async fn answers(app: &pantheon_tests::TestApp, name: &str, claims: &Value, accepted: bool) {
    let token = sign(Algorithm::HS256, &app.settings.auth.jwt_secret, claims);
    let response =
        app.client.get(app.url("/api/v1/sessions")).bearer_auth(token).send().await.unwrap();
    if accepted {
        assert_eq!(response.status(), 200, "{name}: {claims}");
        return;
    }
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap());
    assert_eq!(challenge, Some("Bearer"), "{name}");
    expect_problem(response, 401, "unauthenticated").await;
}

#[tokio::test]
async fn issuer_and_audience_are_required_when_configured() {
    let app = pantheon_tests::spawn_app_with(Backend::Sqlite, |s| {
        s.auth.issuer = Some(ISSUER.into());
        s.auth.audience = Some(AUDIENCE.into());
    })
    .await;
    let base = json!({"sub": "alice", "exp": now() + 600, "iss": ISSUER, "aud": AUDIENCE});
    let with = |key: &str, value: Value| {
        let mut claims = base.clone();
        claims[key] = value;
        claims
    };
    let without = |key: &str| {
        let mut claims = base.clone();
        claims.as_object_mut().unwrap().remove(key);
        claims
    };
    let cases = [
        ("both right", base.clone(), true),
        ("no iss", without("iss"), false),
        ("null iss", with("iss", Value::Null), false),
        ("wrong iss", with("iss", "https://elsewhere.example".into()), false),
        ("iss as an array", with("iss", json!([ISSUER])), false),
        ("no aud", without("aud"), false),
        ("null aud", with("aud", Value::Null), false),
        ("wrong aud", with("aud", "other".into()), false),
        ("aud array holding ours", with("aud", json!(["other", AUDIENCE])), true),
        ("aud array without ours", with("aud", json!(["other", "third"])), false),
        ("empty aud array", with("aud", json!([])), false),
    ];
    for (name, claims, accepted) in &cases {
        answers(&app, name, claims, *accepted).await;
    }
}

#[tokio::test]
async fn clock_skew_is_forgiven_up_to_the_leeway_on_exp_nbf_and_iat() {
    // The default leeway, 60 s.
    let app = spawn_app(Backend::Sqlite).await;
    let claims = |extra: Value| {
        let mut claims = json!({"sub": "alice", "exp": now() + 600});
        claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        claims
    };
    let cases = [
        ("iat 30 s ahead", claims(json!({"iat": now() + 30})), true),
        ("iat 120 s ahead", claims(json!({"iat": now() + 120})), false),
        ("iat a year ahead", claims(json!({"iat": now() + 365 * 86_400})), false),
        ("nbf 30 s ahead", claims(json!({"nbf": now() + 30})), true),
        ("nbf 120 s ahead", claims(json!({"nbf": now() + 120})), false),
        ("exp 30 s ago", json!({"sub": "alice", "exp": now() - 30}), true),
        ("exp 120 s ago", json!({"sub": "alice", "exp": now() - 120}), false),
    ];
    for (name, claims, accepted) in &cases {
        answers(&app, name, claims, *accepted).await;
    }

    // A smaller leeway refuses what the default forgave.
    let strict = pantheon_tests::spawn_app_with(Backend::Sqlite, |s| s.auth.leeway_secs = 5).await;
    for (name, claims) in [
        ("iat 30 s ahead", json!({"sub": "bob", "exp": now() + 600, "iat": now() + 30})),
        ("nbf 30 s ahead", json!({"sub": "bob", "exp": now() + 600, "nbf": now() + 30})),
        ("exp 30 s ago", json!({"sub": "bob", "exp": now() - 30})),
    ] {
        answers(&strict, name, &claims, false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pantheon_token_mints_the_configured_issuer_and_audience() {
    let secret = format!("test-secret-{}", uuid::Uuid::new_v4());
    let env = [
        ("PANTHEON__AUTH__JWT_SECRET", secret.as_str()),
        ("PANTHEON__AUTH__ISSUER", ISSUER),
        ("PANTHEON__AUTH__AUDIENCE", AUDIENCE),
    ];
    let minted = process::run(process::binary(), &["token", "--user", "u"], &env).await;
    assert!(minted.status.success(), "{minted:?}");
    let token = minted.stdout.trim();
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!((claims["iss"].as_str(), claims["aud"].as_str()), (Some(ISSUER), Some(AUDIENCE)));
    assert_eq!(claims["sub"], "u");

    let app = pantheon_tests::spawn_app_with(Backend::Sqlite, |s| {
        s.auth.jwt_secret = secret.clone();
        s.auth.issuer = Some(ISSUER.into());
        s.auth.audience = Some(AUDIENCE.into());
    })
    .await;
    let response =
        app.client.get(app.url("/api/v1/sessions")).bearer_auth(token).send().await.unwrap();
    expect_json(response, 200).await;
}
