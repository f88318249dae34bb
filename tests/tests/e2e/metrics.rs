//! `/metrics` as Prometheus scrapes it: parsed by an independent parser,
//! moved by exactly the traffic sent, on a listener of its own that
//! answers nothing else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pantheon_domain::ManualClock;
use pantheon_tests::limiter::redis_url;
use pantheon_tests::metrics::{Metrics, scrape};
use pantheon_tests::process::{binary, run};
use pantheon_tests::redis_server::free_port;
use pantheon_tests::sse::parse_raw;
use pantheon_tests::{Backend, expect_json, expect_problem, spawn_app_with, spawn_app_with_clock};

use crate::concurrency::started;
use crate::streaming::{LONG_INPUT, stream, user_with_session};

const NOW: i64 = 1_800_000_000_000;
const TURNS: &str = "/api/v1/sessions/:session_id/turns";
const STREAM: &str = "/api/v1/sessions/:session_id/turns/stream";

/// How far each of `series` moved between two scrapes.
fn moved(before: &Metrics, after: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_traffic_moves_the_counters_by_exactly_that_much() {
    const ADMITTED: u64 = 3;
    const REFUSED: u64 = 4;
    let clock = Arc::new(ManualClock::at(NOW));
    let app = spawn_app_with_clock(
        Backend::Postgres,
        |s| {
            s.redis.url = Some(redis_url());
            s.redis.timeout_ms = 2_000;
            // The JSON turns and the stream fit; every turn after them is refused.
            s.rate_limit.per_minute = u32::try_from(ADMITTED + 1).unwrap();
            // No lease renewal pipeline runs during the test.
            s.rate_limit.lease_ttl_secs = 3_600;
        },
        clock,
    )
    .await;
    let (token, session) = user_with_session(&app).await;
    let before = scrape(&app).await;

    let mut input_tokens = 0;
    let mut output_tokens = 0;
    for i in 0..ADMITTED {
        let turn =
            expect_json(app.submit_turn(&token, &session, &format!("turn {i}")).await, 201).await;
        input_tokens += turn["usage"]["input_tokens"].as_u64().unwrap();
        output_tokens += turn["usage"]["output_tokens"].as_u64().unwrap();
    }
    let streamed = stream(&app, &token, &session, "one streamed turn").await;
    assert_eq!(streamed.status(), 200);
    let events = parse_raw(&streamed.text().await.unwrap()).events;
    let completed = &events.last().unwrap().data["turn"];
    assert_eq!(completed["status"], "completed");
    input_tokens += completed["usage"]["input_tokens"].as_u64().unwrap();
    output_tokens += completed["usage"]["output_tokens"].as_u64().unwrap();
    for _ in 0..REFUSED {
        let refusal = expect_json(app.submit_turn(&token, &session, "over").await, 429).await;
        assert_eq!(refusal["code"], "rate_limited");
    }

    // The stream's body is dropped just after its last byte is read.
    let started = Instant::now();
    let after = loop {
        let after = scrape(&app).await;
        if after.value("pantheon_sse_streams_open", &[]) == 0.0
            || started.elapsed() > Duration::from_secs(5)
        {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (admitted, refused) = (ADMITTED as f64, REFUSED as f64);
    let m = |name, labels: &[(&str, &str)]| moved(&before, &after, name, labels);

    assert_eq!(m("pantheon_limiter_decisions_total", &[("outcome", "admitted")]), admitted + 1.0);
    assert_eq!(
        m("pantheon_limiter_decisions_total", &[("outcome", "limited"), ("policy", "minute")]),
        refused
    );
    assert_eq!(m("pantheon_limiter_decisions_total", &[("outcome", "skipped")]), 0.0);
    // The first refusal is Redis's answer; the cache answers the others.
    assert_eq!(m("pantheon_limiter_cache_refusals_total", &[]), refused - 1.0);
    // Items sent to Redis: every admitted check and the first refusal, and
    // each admitted turn's lease release (sequential turns: one apiece).
    assert_eq!(m("pantheon_limiter_batch_size_sum", &[]), (admitted + 2.0) + (admitted + 1.0));
    let pipelines = m("pantheon_limiter_redis_duration_seconds_count", &[]);
    assert!((1.0..=2.0 * admitted + 3.0).contains(&pipelines), "{pipelines} pipelines");
    assert_eq!(after.value("pantheon_limiter_state", &[("state", "healthy")]), 1.0);
    assert_eq!(after.value("pantheon_limiter_state", &[("state", "degraded")]), 0.0);

    let json = [("endpoint", "json"), ("status", "completed")];
    assert_eq!(m("pantheon_turns_total", &json), admitted);
    assert_eq!(m("pantheon_turns_total", &[("endpoint", "stream"), ("status", "completed")]), 1.0);
    assert_eq!(m("pantheon_turns_total", &[("endpoint", "json"), ("status", "failed")]), 0.0);
    assert_eq!(m("pantheon_turn_duration_seconds_count", &[]), admitted + 1.0);
    assert_eq!(m("pantheon_turn_first_delta_seconds_count", &[]), admitted + 1.0);
    assert_eq!(m("pantheon_tokens_total", &[("direction", "input")]), input_tokens as f64);
    assert_eq!(m("pantheon_tokens_total", &[("direction", "output")]), output_tokens as f64);
    assert_eq!(after.value("pantheon_turns_in_progress", &[]), 0.0);
    assert_eq!(after.value("pantheon_sse_streams_open", &[]), 0.0);

    let post = |route, status| [("method", "POST"), ("route", route), ("status", status)];
    assert_eq!(m("pantheon_http_requests_total", &post(TURNS, "201")), admitted);
    assert_eq!(m("pantheon_http_requests_total", &post(TURNS, "429")), refused);
    assert_eq!(m("pantheon_http_requests_total", &post(STREAM, "200")), 1.0);
    let route = [("method", "POST"), ("route", TURNS)];
    assert_eq!(m("pantheon_http_request_duration_seconds_count", &route), admitted + refused);
    assert!(
        !after.text.contains(&session),
        "no raw path (with its session id) is ever a label value"
    );

    assert_eq!(after.value("pantheon_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    let open = after.value("pantheon_db_pool_connections", &[("state", "idle")])
        + after.value("pantheon_db_pool_connections", &[("state", "in_use")]);
    assert!(open >= 1.0, "the pool has connections: {open}");
    for (name, kind) in [
        ("pantheon_http_requests_total", "counter"),
        ("pantheon_http_request_duration_seconds", "histogram"),
        ("pantheon_limiter_decisions_total", "counter"),
        ("pantheon_limiter_cache_refusals_total", "counter"),
        ("pantheon_limiter_state", "gauge"),
        ("pantheon_limiter_redis_duration_seconds", "histogram"),
        ("pantheon_limiter_batch_size", "histogram"),
        ("pantheon_turns_total", "counter"),
        ("pantheon_turns_in_progress", "gauge"),
        ("pantheon_turn_first_delta_seconds", "histogram"),
        ("pantheon_turn_duration_seconds", "histogram"),
        ("pantheon_tokens_total", "counter"),
        ("pantheon_sse_streams_open", "gauge"),
        ("pantheon_db_pool_connections", "gauge"),
        ("pantheon_build_info", "gauge"),
    ] {
        assert!(after.has_type(name, kind), "# TYPE {name} {kind}");
    }
}

#[tokio::test]
async fn the_metrics_listener_is_its_own_port_and_serves_only_metrics() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let metrics = app.metrics_address.clone().unwrap();
    assert_ne!(metrics, app.address, "not the API's port");

    // The API knows no /metrics; the metrics listener knows nothing else.
    expect_problem(
        app.client.get(app.url("/metrics")).send().await.unwrap(),
        404,
        "route_not_found",
    )
    .await;
    for path in ["/", "/healthz", "/api/v1/sessions", "/openapi.json", "/metrics/x"] {
        let response = app.client.get(format!("{metrics}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 404, "GET {path} on the metrics listener");
    }
    let post = app.client.post(format!("{metrics}/metrics")).send().await.unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(pantheon_tests::header(&post, "allow"), "GET, HEAD");
    let head = app.client.head(format!("{metrics}/metrics")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let scraped = scrape(&app).await;
    assert_eq!(scraped.value("pantheon_limiter_state", &[("state", "in_process")]), 1.0);
}

#[tokio::test]
async fn with_metrics_off_no_listener_opens_and_turns_are_served() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.server.metrics_addr = None).await;
    assert_eq!(app.metrics_address, None);
    let (token, session) = user_with_session(&app).await;
    expect_json(app.submit_turn(&token, &session, "hello").await, 201).await;
}

#[tokio::test]
async fn a_metrics_address_in_use_stops_the_start_naming_the_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let api = format!("127.0.0.1:{}", free_port());
    let dir = std::env::temp_dir().join(format!("pantheon-metrics-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}/p.db?mode=rwc", dir.display());
    let env = [
        ("PANTHEON__DATABASE__URL", db.as_str()),
        ("PANTHEON__SERVER__ADDR", api.as_str()),
        ("PANTHEON__SERVER__METRICS_ADDR", taken_addr.as_str()),
    ];
    let output = run(binary(), &[], &env).await;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(output.stderr.contains("server.metrics_addr"), "{}", output.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    drop(taken);
}

#[tokio::test]
async fn a_refusal_counts_under_the_policy_that_bound_it() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.rate_limit.max_concurrent_turns = 1;
        s.provider.builtin.chunk_delay_ms = 200;
    })
    .await;
    let (token, session) = user_with_session(&app).await;
    let before = scrape(&app).await;
    for policy in ["minute", "hour", "tokens-minute", "tokens-hour", "concurrency"] {
        assert!(
            before.text.contains(&format!("outcome=\"limited\",policy=\"{policy}\"")),
            "every policy's series is exported from the start: {policy}"
        );
    }

    let running = started(stream(&app, &token, &session, LONG_INPUT).await).await;
    let refused = expect_json(app.submit_turn(&token, &session, "again").await, 429).await;
    assert_eq!(refused["window"], "concurrency");
    let after = scrape(&app).await;
    let limited = |policy| [("outcome", "limited"), ("policy", policy)];
    assert_eq!(
        moved(&before, &after, "pantheon_limiter_decisions_total", &limited("concurrency")),
        1.0
    );
    for policy in ["minute", "hour", "tokens-minute", "tokens-hour"] {
        let m = moved(&before, &after, "pantheon_limiter_decisions_total", &limited(policy));
        assert_eq!(m, 0.0, "{policy}");
    }
    assert_eq!(after.value("pantheon_turns_in_progress", &[]), 1.0, "{running}");
}

#[tokio::test]
async fn a_token_refusal_counts_under_its_window() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        // A running turn reserves what is left of the minute's budget.
        s.rate_limit.tokens_per_minute = Some(200);
        s.provider.builtin.chunk_delay_ms = 200;
    })
    .await;
    let (token, session) = user_with_session(&app).await;
    let before = scrape(&app).await;
    let running = started(stream(&app, &token, &session, LONG_INPUT).await).await;
    let refused = expect_json(app.submit_turn(&token, &session, "again").await, 429).await;
    assert_eq!(refused["window"], "tokens-minute", "{refused}");
    let after = scrape(&app).await;
    let limited = |policy| [("outcome", "limited"), ("policy", policy)];
    let m = |policy| moved(&before, &after, "pantheon_limiter_decisions_total", &limited(policy));
    assert_eq!(m("tokens-minute"), 1.0);
    for policy in ["minute", "hour", "tokens-hour", "concurrency"] {
        assert_eq!(m(policy), 0.0, "{policy}");
    }
    assert_eq!(after.value("pantheon_turns_in_progress", &[]), 1.0, "{running}");
}
