//! The provider's shared capacity (`provider.max_concurrent`, the
//! `ProviderGate`): turns admitted by their user's limits wait in one queue
//! for the upstream's slots, over every instance sharing a Redis (a
//! test-local one, or a cluster of the test's own: the queue's keys are
//! fixed, so the suite's shared servers are left alone), or in the
//! process's memory for one instance. Against a fake upstream with a hard
//! capacity (`429` past it): never more in flight than the cap, `turn.queued`
//! before the first delta, `503 upstream_saturated` after the queue's
//! timeout, cancels and disconnects of queued turns, a killed instance's
//! slot freed by its ttl, back-pressure from `429`s, and the queue's place
//! in `GET /api/v1/rate-limit`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use pantheon_domain::SystemClock;
use pantheon_infrastructure::Settings;
use pantheon_infrastructure::auth::TokenMinter;
use pantheon_infrastructure::settings::{AuthSettings, OnDisconnect, ProviderKind};
use pantheon_tests::fake_openai::{Answer, FakeOpenAi, HardCapacity, Step, delta, slow_reply};
use pantheon_tests::process::ServerCommand;
use pantheon_tests::redis_cluster::RedisCluster;
use pantheon_tests::redis_server::RedisServer;
use pantheon_tests::{
    Backend, TestApp, TestDatabase, expect_json, expect_problem, header, spawn_app_on,
    spawn_app_with, spawn_instances,
};
use reqwest::{Method, Response};
use serde_json::{Value, json};

/// The longest any one event of a stream may take here.
const EVENT_WAIT: Duration = Duration::from_secs(20);

/// Points `s` at the fake upstream.
fn use_fake(s: &mut Settings, base_url: &str) {
    s.provider.kind = ProviderKind::Openai;
    let openai = &mut s.provider.openai;
    openai.base_url = Some(base_url.to_owned());
    openai.model = Some("fake-model".into());
    openai.first_byte_timeout_ms = 5_000;
    openai.idle_timeout_ms = 5_000;
    // Several turns per user at once, and no per-user window in the way.
    s.rate_limit.max_concurrent_turns = 16;
    s.rate_limit.per_minute = 1_000;
    s.rate_limit.per_hour = 10_000;
}

/// One server of the fake, with `max_concurrent` provider slots (in the
/// process's memory), then `adjust`.
async fn app_on(
    fake: &FakeOpenAi,
    max_concurrent: u32,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    let base_url = fake.base_url.clone();
    spawn_app_with(Backend::Sqlite, move |s| {
        use_fake(s, &base_url);
        s.provider.max_concurrent = Some(max_concurrent);
        adjust(s);
    })
    .await
}

/// A new user of `app` with a session: `(user, token, session id)`.
async fn user_with_session(app: &TestApp) -> (String, String, String) {
    let (user, token) = app.new_user();
    let session = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    (user, token, session)
}

/// Starts a streamed turn.
async fn stream(app: &TestApp, token: &str, session: &str, input: &str) -> Response {
    app.request(Method::POST, &format!("/api/v1/sessions/{session}/turns/stream"), token)
        .json(&json!({ "input": input }))
        .send()
        .await
        .unwrap()
}

fn turn_path(turn: &Value) -> String {
    format!(
        "/api/v1/sessions/{}/turns/{}",
        turn["session_id"].as_str().unwrap(),
        turn["id"].as_str().unwrap()
    )
}

async fn get_turn(app: &TestApp, token: &str, turn: &Value) -> Value {
    expect_json(app.request(Method::GET, &turn_path(turn), token).send().await.unwrap(), 200).await
}

/// `GET /api/v1/rate-limit`'s `provider_queue` for `token`'s user.
async fn provider_queue(app: &TestApp, token: &str) -> Value {
    let response = app.request(Method::GET, "/api/v1/rate-limit", token).send().await.unwrap();
    let body = expect_json(response, 200).await;
    assert!(body.as_object().unwrap().contains_key("provider_queue"), "{body}");
    body["provider_queue"].clone()
}

/// One event of a stream. `turn.queued` has no `id`.
#[derive(Debug, Clone)]
struct Event {
    event: String,
    id: Option<String>,
    data: Value,
}

/// A stream read event by event, each checked against the OpenAPI
/// document's `TurnStreamEvent` as it arrives.
struct Events {
    body: Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    seen: Vec<Event>,
}

impl Events {
    fn of(response: Response) -> Self {
        assert_eq!(response.status(), 200, "a stream opens");
        assert!(header(&response, "content-type").starts_with("text/event-stream"));
        Self { body: Box::pin(response.bytes_stream()), buffer: String::new(), seen: Vec::new() }
    }

    /// The next event; `None` at the end of the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(at) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..at + 2).collect();
                if let Some(event) = parse_block(&block) {
                    self.seen.push(event.clone());
                    return Some(event);
                }
                continue;
            }
            match tokio::time::timeout(EVENT_WAIT, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(Some(Err(e))) => panic!("the stream broke: {e}; so far {:?}", self.seen),
                Ok(None) => return None,
                Err(_) => panic!("no event within {EVENT_WAIT:?}; so far {:?}", self.seen),
            }
        }
    }

    /// Reads up to (and including) the first event named `kind`.
    async fn until(&mut self, kind: &str) -> Event {
        while let Some(event) = self.next().await {
            if event.event == kind {
                return event;
            }
        }
        panic!("the stream ended without {kind}: {:?}", self.seen)
    }

    /// Reads to the end; every event, checked for order.
    async fn finish(mut self) -> Vec<Event> {
        while self.next().await.is_some() {}
        check_order(&self.seen);
        self.seen
    }
}

fn parse_block(block: &str) -> Option<Event> {
    let (event, id, data) = pantheon_tests::sse::parse_block(block, &mut 0)?;
    Some(Event { event, id, data })
}

/// `turn.created` first; `turn.queued` (no `id`, the turn's id, a place of
/// at least 1) before any delta; one terminal event, last.
fn check_order(events: &[Event]) {
    assert_eq!(events.first().map(|e| e.event.as_str()), Some("turn.created"), "{events:?}");
    let turn_id = events[0].data["turn"]["id"].clone();
    let first_delta = events.iter().position(|e| e.event == "turn.delta").unwrap_or(events.len());
    for (at, event) in events.iter().enumerate() {
        if event.event == "turn.queued" {
            assert!(at < first_delta, "turn.queued before the first delta: {events:?}");
            assert_eq!(event.id, None, "turn.queued has no id: {event:?}");
            assert_eq!(event.data["turn_id"], turn_id, "{event:?}");
            let place = &event.data["place"];
            assert!(place.is_null() || place.as_u64().is_some_and(|p| p >= 1), "{event:?}");
        } else {
            assert!(event.id.is_some(), "every other event has an id: {event:?}");
        }
    }
    let last = events.last().unwrap();
    assert!(
        last.event == "turn.completed" || last.event == "turn.failed",
        "a terminal event last: {events:?}"
    );
    let terminals =
        events.iter().filter(|e| e.event == "turn.completed" || e.event == "turn.failed").count();
    assert_eq!(terminals, 1, "{events:?}");
}

fn queued_places(events: &[Event]) -> Vec<Value> {
    events.iter().filter(|e| e.event == "turn.queued").map(|e| e.data["place"].clone()).collect()
}

/// What one turn of the crowd ended as.
#[derive(Debug)]
struct Outcome {
    status: String,
    /// The places of its `turn.queued` events (streams only).
    queued: Vec<Value>,
    streamed: bool,
}

/// Fires `turns` turns at once across `apps` and `users` (even ones
/// streamed, odd ones JSON), each replied by the fake; what each ended as.
async fn crowd(apps: &[TestApp], users: &[(String, String, String)], turns: usize) -> Vec<Outcome> {
    let tasks = (0..turns).map(|i| {
        let app = &apps[i % apps.len()];
        let (_, token, session) = &users[i % users.len()];
        async move {
            let input = format!("turn {i}");
            if i % 2 == 0 {
                let events = Events::of(stream(app, token, session, &input).await).finish().await;
                let last = events.last().unwrap();
                let status = match last.event.as_str() {
                    "turn.completed" => last.data["turn"]["status"].as_str().unwrap().to_owned(),
                    _ => format!("failed: {}", last.data["error"]),
                };
                Outcome { status, queued: queued_places(&events), streamed: true }
            } else {
                let response = app.submit_turn(token, session, &input).await;
                let code = response.status().as_u16();
                let body = pantheon_tests::read_json(response).await;
                let status = match code {
                    201 => body["status"].as_str().unwrap().to_owned(),
                    _ => format!("{code}: {body}"),
                };
                Outcome { status, queued: Vec::new(), streamed: false }
            }
        }
    });
    futures::future::join_all(tasks).await
}

/// Where the instances share their queue.
enum SharedRedis {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl SharedRedis {
    fn configure(&self, s: &mut Settings) {
        match self {
            Self::Single(server) => {
                s.redis.url = Some(server.url());
                s.redis.cluster_urls.clear();
            }
            Self::Cluster(cluster) => {
                s.redis.url = None;
                s.redis.cluster_urls = cluster.urls();
            }
        }
        s.redis.timeout_ms = 2_000;
    }
}

/// `turns` turns of four users at three instances sharing `redis` and one
/// database, against an upstream that takes two at once (a 429 past that)
/// with `provider.max_concurrent = 2`: the upstream never sees more than
/// two, refuses none, every turn completes, and streams that waited said
/// so with their place.
async fn never_more_than_the_cap_in_flight(redis: SharedRedis, turns: usize) {
    const CAP: usize = 2;
    let capacity = HardCapacity::new(CAP);
    let upstream = capacity.clone();
    let fake = FakeOpenAi::start(move |_| {
        upstream.admit(slow_reply(&["one", " two", " three"], Duration::from_millis(100)))
    })
    .await;
    let database = TestDatabase::create(Backend::Postgres).await;
    let base_url = fake.base_url.clone();
    let apps = spawn_instances(3, &database, Arc::new(SystemClock), |s| {
        use_fake(s, &base_url);
        redis.configure(s);
        s.provider.max_concurrent = Some(CAP as u32);
    })
    .await;
    let mut users = Vec::new();
    for i in 0..4 {
        users.push(user_with_session(&apps[i % 3]).await);
    }

    let started = Instant::now();
    let outcomes = crowd(&apps, &users, turns).await;
    let took = started.elapsed();

    let statuses: Vec<&str> = outcomes.iter().map(|o| o.status.as_str()).collect();
    assert!(statuses.iter().all(|s| *s == "completed"), "every turn completed: {outcomes:?}");
    assert_eq!(capacity.refused(), 0, "no 429: the queue kept the turns back");
    assert!(
        capacity.most_tried() <= CAP,
        "at most {CAP} requests in flight upstream, saw {}",
        capacity.most_tried()
    );
    assert_eq!(capacity.most_served(), CAP, "the capacity was used");
    assert_eq!(fake.calls(), turns, "one request per turn");
    let waited: Vec<&Outcome> = outcomes.iter().filter(|o| !o.queued.is_empty()).collect();
    assert!(!waited.is_empty(), "some streams waited and said so: {outcomes:?}");
    for outcome in &waited {
        assert!(outcome.streamed);
        assert!(outcome.queued[0].as_u64().is_some_and(|p| p >= 1), "{outcome:?}");
    }
    // The turns went two by two: no faster than the upstream allows.
    let rounds = turns.div_ceil(CAP) as u32;
    assert!(took >= Duration::from_millis(300) * rounds, "{turns} turns took {took:?}");
    println!(
        "provider_queue: {turns} turns in {took:?}; {} streams queued: {:?}",
        waited.len(),
        waited.iter().map(|o| &o.queued).collect::<Vec<_>>()
    );
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_redis_never_send_more_than_the_cap() {
    never_more_than_the_cap_in_flight(SharedRedis::Single(RedisServer::start()), 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_a_redis_cluster_never_send_more_than_the_cap() {
    let cluster =
        tokio::task::spawn_blocking(|| RedisCluster::start_with(3, 0, 5_000)).await.unwrap();
    never_more_than_the_cap_in_flight(SharedRedis::Cluster(cluster), 8).await;
}

/// `provider.queue_timeout_secs = 1` while the one slot is held by a long
/// reply: a JSON turn fails `503 upstream_saturated` (with `Retry-After`)
/// after about a second, a streamed one says `turn.queued` then
/// `turn.failed` with that code; both persisted `failed` with no usage,
/// neither reached the upstream; the long one completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_that_waits_past_the_queue_timeout_fails_upstream_saturated() {
    let capacity = HardCapacity::new(1);
    let upstream = capacity.clone();
    let fake = FakeOpenAi::start(move |seen| match seen.input().as_str() {
        "long" => {
            upstream.admit(slow_reply(&["a", "b", "c", "d", "e"], Duration::from_millis(600)))
        }
        _ => upstream.admit(slow_reply(&["quick"], Duration::ZERO)),
    })
    .await;
    let app = app_on(&fake, 1, |s| s.provider.queue_timeout_secs = 1).await;
    let (_, token, session) = user_with_session(&app).await;

    let mut long = Events::of(stream(&app, &token, &session, "long").await);
    long.until("turn.delta").await;

    let started = Instant::now();
    let (json_turn, streamed) = tokio::join!(app.submit_turn(&token, &session, "json"), async {
        Events::of(stream(&app, &token, &session, "streamed").await).finish().await
    });
    let waited = started.elapsed();
    assert_eq!(header(&json_turn, "retry-after"), "5");
    let problem = expect_problem(json_turn, 503, "upstream_saturated").await;
    assert!(waited >= Duration::from_millis(900), "it waited the queue's timeout: {waited:?}");
    assert!(waited < Duration::from_millis(2_800), "and no longer: {waited:?}");

    let persisted = get_turn(&app, &token, &problem["turn"]).await;
    assert_eq!(persisted["status"], "failed", "{persisted}");
    assert_eq!(persisted["error"]["code"], "upstream_saturated", "{persisted}");
    assert_eq!(persisted["error"]["status"], 503, "{persisted}");
    assert_eq!(persisted["usage"], Value::Null, "charged nothing: {persisted}");
    assert_eq!(persisted["output"], "", "{persisted}");

    assert_eq!(queued_places(&streamed).len(), 1, "queued once: {streamed:?}");
    let end = streamed.last().unwrap();
    assert_eq!(end.event, "turn.failed", "{streamed:?}");
    assert_eq!(end.data["error"]["code"], "upstream_saturated", "{end:?}");
    assert_eq!(end.data["error"]["status"], 503, "{end:?}");
    let failed = get_turn(&app, &token, &end.data["turn"]).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "upstream_saturated");
    assert_eq!(failed["usage"], Value::Null);

    let long = long.finish().await;
    let end = long.last().unwrap();
    assert_eq!(end.event, "turn.completed", "{long:?}");
    assert_eq!(end.data["turn"]["output"], "abcde");
    assert_eq!(queued_places(&long), Vec::<Value>::new(), "the first went at once");

    let inputs: Vec<String> = fake.seen().iter().map(|s| s.input()).collect();
    assert_eq!(inputs, ["long"], "the saturated turns never reached the upstream");
    assert_eq!(capacity.refused(), 0);
    let metrics = pantheon_tests::metrics::scrape(&app).await;
    assert_eq!(metrics.value("pantheon_provider_queue_timeouts_total", &[]), 2.0);
}

/// With one slot held by a long reply, three turns wait: one cancelled by
/// `POST …/cancel`, one whose client hangs up (`turns.on_disconnect =
/// cancel`), and a third behind them. The first two end `cancelled` and
/// never reach the upstream; the third gets the slot once the long one
/// ends, and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_turns_cancelled_or_abandoned_leave_the_queue_to_the_next() {
    let capacity = HardCapacity::new(1);
    let upstream = capacity.clone();
    let fake = FakeOpenAi::start(move |seen| match seen.input().as_str() {
        "long" => {
            upstream.admit(slow_reply(&["a", "b", "c", "d", "e"], Duration::from_millis(500)))
        }
        _ => upstream.admit(slow_reply(&["next"], Duration::ZERO)),
    })
    .await;
    let app = app_on(&fake, 1, |s| {
        s.provider.queue_timeout_secs = 20;
        s.turns.on_disconnect = OnDisconnect::Cancel;
    })
    .await;
    let (_, token, session) = user_with_session(&app).await;

    let mut long = Events::of(stream(&app, &token, &session, "long").await);
    long.until("turn.delta").await;
    let mut cancelled = Events::of(stream(&app, &token, &session, "cancelled").await);
    let cancelled_turn = cancelled.until("turn.created").await.data["turn"].clone();
    let place = cancelled.until("turn.queued").await.data["place"].clone();
    assert_eq!(place, 1, "next in line");
    let mut abandoned = Events::of(stream(&app, &token, &session, "abandoned").await);
    let abandoned_turn = abandoned.until("turn.created").await.data["turn"].clone();
    assert_eq!(abandoned.until("turn.queued").await.data["place"], 2);
    let mut next = Events::of(stream(&app, &token, &session, "next").await);
    assert_eq!(next.until("turn.queued").await.data["place"], 3);

    // Cancelled by the endpoint.
    let path = format!("{}/cancel", turn_path(&cancelled_turn));
    let response = app.request(Method::POST, &path, &token).send().await.unwrap();
    let ended = expect_json(response, 200).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    assert_eq!(ended["finish_reason"], "cancelled", "{ended}");
    assert_eq!(ended["output"], "");
    let events = cancelled.finish().await;
    assert_eq!(events.last().unwrap().data["turn"]["status"], "cancelled", "{events:?}");

    // Its client gone.
    drop(abandoned);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let turn = get_turn(&app, &token, &abandoned_turn).await;
        if turn["status"] == "cancelled" {
            assert_eq!(turn["output"], "");
            break;
        }
        assert_eq!(turn["status"], "in_progress", "{turn}");
        assert!(Instant::now() < deadline, "the abandoned turn is still {turn}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fake.calls(), 1, "only the long turn went upstream so far");

    let long = long.finish().await;
    assert_eq!(long.last().unwrap().event, "turn.completed", "{long:?}");
    let next = next.finish().await;
    let end = next.last().unwrap();
    assert_eq!(end.event, "turn.completed", "{next:?}");
    assert_eq!(end.data["turn"]["output"], "next");

    let inputs: Vec<String> = fake.seen().iter().map(|s| s.input()).collect();
    assert_eq!(inputs, ["long", "next"], "the cancelled turns never reached the upstream");
    assert_eq!(capacity.refused(), 0);
    assert_eq!(provider_queue(&app, &token).await, Value::Null, "nothing waits");
}

/// The real binary holding the one slot (a reply that never ends) is
/// `SIGKILL`ed: a turn on another instance sharing its Redis waits, then
/// gets the slot once the dead one's expires (`rate_limit.lease_ttl_secs`
/// after its last renewal), and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_s_slot_frees_within_the_lease_ttl() {
    const TTL_SECS: u64 = 3;
    let redis = RedisServer::start();
    let fake = FakeOpenAi::start(|seen| match seen.input().as_str() {
        "hold" => Answer::Stream(vec![delta("held"), Step::Stall]),
        _ => slow_reply(&["after"], Duration::ZERO),
    })
    .await;
    let database = TestDatabase::create(Backend::Postgres).await;
    let secret = format!("test-secret-{}", uuid::Uuid::new_v4());
    let mut command = ServerCommand::new(&database.url);
    command
        .set("PANTHEON__AUTH__JWT_SECRET", &secret)
        .set("PANTHEON__REDIS__URL", &redis.url())
        .set("PANTHEON__PROVIDER__KIND", "openai")
        .set("PANTHEON__PROVIDER__OPENAI__BASE_URL", &fake.base_url)
        .set("PANTHEON__PROVIDER__OPENAI__MODEL", "fake-model")
        .set("PANTHEON__PROVIDER__MAX_CONCURRENT", "1")
        .set("PANTHEON__PROVIDER__QUEUE_TIMEOUT_SECS", "15")
        .set("PANTHEON__RATE_LIMIT__LEASE_TTL_SECS", &TTL_SECS.to_string());
    let mut doomed = command.spawn().await;
    let (base_url, redis_url) = (fake.base_url.clone(), redis.url());
    let survivor = spawn_app_on(
        TestDatabase::at(database.url.clone()),
        |s| {
            use_fake(s, &base_url);
            s.auth.jwt_secret = secret.clone();
            s.redis.url = Some(redis_url);
            s.provider.max_concurrent = Some(1);
            s.provider.queue_timeout_secs = 15;
            s.rate_limit.lease_ttl_secs = TTL_SECS;
        },
        Arc::new(SystemClock),
    )
    .await;
    let minter =
        TokenMinter::new(&AuthSettings { jwt_secret: secret, ..AuthSettings::default() }).unwrap();
    let client = reqwest::Client::new();
    let token = minter.mint(&format!("doomed-{}", uuid::Uuid::new_v4()), None, EVENT_WAIT).unwrap();
    let session = doomed.create_session(&client, &token).await;
    let mut held = Events::of(doomed.stream(&client, &token, &session, "hold").await);
    held.until("turn.delta").await;
    assert_eq!(held.seen.iter().filter(|e| e.event == "turn.queued").count(), 0);

    doomed.kill();
    let killed = Instant::now();
    let (_, token, session) = user_with_session(&survivor).await;
    let mut waiting = Events::of(stream(&survivor, &token, &session, "after").await);
    assert_eq!(waiting.until("turn.queued").await.data["place"], 1, "the dead slot is held");
    let events = waiting.finish().await;
    let freed_after = killed.elapsed();
    let end = events.last().unwrap();
    assert_eq!(end.event, "turn.completed", "{events:?}");
    assert_eq!(end.data["turn"]["output"], "after");
    // Renewed every ttl / 3: expired between 2/3 ttl and ttl after the kill.
    let ttl = Duration::from_secs(TTL_SECS);
    assert!(freed_after >= ttl / 2, "the slot outlived its instance: {freed_after:?}");
    assert!(freed_after < ttl + Duration::from_secs(3), "freed after {freed_after:?}");
    println!("provider_queue: the dead instance's slot freed {freed_after:?} after the kill");
    survivor.stop().await;
}

/// An upstream that takes one request at a time while
/// `provider.max_concurrent = 4`: the turns it refuses (`429`) go back in
/// the queue instead of failing, the effective capacity drops below 4, and
/// every turn completes with only a few refusals. In the process's memory
/// and on a Redis of the test's own.
async fn upstream_refusals_shrink_the_capacity(redis: Option<SharedRedis>) {
    const TURNS: usize = 8;
    let capacity = HardCapacity::new(1);
    let upstream = capacity.clone();
    let fake = FakeOpenAi::start(move |_| {
        upstream.admit(slow_reply(&["x", "y", "z"], Duration::from_millis(100)))
    })
    .await;
    let app = app_on(&fake, 4, |s| {
        s.provider.queue_timeout_secs = 20;
        if let Some(redis) = &redis {
            redis.configure(s);
        }
    })
    .await;
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(user_with_session(&app).await);
    }

    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let running = running.clone();
        let metrics_address = app.metrics_address.clone().unwrap();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut lowest = f64::INFINITY;
            while running.load(Ordering::SeqCst) {
                let text = client
                    .get(format!("{metrics_address}/metrics"))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                // 0 until the gate's task first reads the store's figures.
                if let Some(value) = gauge(&text, "pantheon_provider_effective_capacity")
                    && value > 0.0
                {
                    lowest = lowest.min(value);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            lowest
        })
    };
    let started = Instant::now();
    let outcomes = crowd(std::slice::from_ref(&app), &users, TURNS).await;
    let took = started.elapsed();
    // The gauge is read from the store once a second.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    running.store(false, Ordering::SeqCst);
    let lowest = sampler.await.unwrap();

    assert!(
        outcomes.iter().all(|o| o.status == "completed"),
        "every turn completed (re-queued, not failed): {outcomes:?}"
    );
    assert_eq!(capacity.served(), TURNS, "each turn served once");
    assert_eq!(capacity.most_served(), 1);
    assert!(lowest < 4.0, "the effective capacity dropped below 4 (lowest {lowest})");
    let refused = capacity.refused();
    assert!(refused >= 1, "the upstream refused some at first");
    let queued: Vec<usize> =
        outcomes.iter().filter(|o| o.streamed).map(|o| o.queued.len()).collect();
    println!(
        "provider_queue: back-pressure: {TURNS} turns in {took:?}, {refused} refused, lowest \
         effective capacity {lowest}; turn.queued per stream: {queued:?}"
    );
    assert!(refused <= 2 * TURNS, "few refusals for {TURNS} turns: {refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refusals_shrink_the_effective_capacity_and_requeue_the_turn() {
    upstream_refusals_shrink_the_capacity(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refusals_shrink_the_effective_capacity_on_redis() {
    upstream_refusals_shrink_the_capacity(Some(SharedRedis::Single(RedisServer::start()))).await;
}

/// The value of an unlabelled gauge in a scrape's text.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `provider_queue` names the place of a user whose turn waits, and is
/// `null` for the user holding the slot, and for everyone once nothing
/// waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_endpoint_shows_the_place_of_a_queued_turn() {
    let capacity = HardCapacity::new(1);
    let upstream = capacity.clone();
    let fake = FakeOpenAi::start(move |seen| match seen.input().as_str() {
        "long" => upstream.admit(slow_reply(&["a", "b", "c", "d"], Duration::from_millis(400))),
        _ => upstream.admit(slow_reply(&["b"], Duration::ZERO)),
    })
    .await;
    let app = app_on(&fake, 1, |s| s.provider.queue_timeout_secs = 20).await;
    let (_, holder, holder_session) = user_with_session(&app).await;
    let (_, waiter, waiter_session) = user_with_session(&app).await;
    assert_eq!(provider_queue(&app, &waiter).await, Value::Null);

    let mut long = Events::of(stream(&app, &holder, &holder_session, "long").await);
    long.until("turn.delta").await;
    let mut queued = Events::of(stream(&app, &waiter, &waiter_session, "queued").await);
    let place = queued.until("turn.queued").await.data["place"].clone();
    assert_eq!(place, 1);
    assert_eq!(provider_queue(&app, &waiter).await, json!({ "place": 1 }));
    assert_eq!(provider_queue(&app, &holder).await, Value::Null, "the holder waits for nothing");

    assert_eq!(long.finish().await.last().unwrap().event, "turn.completed");
    assert_eq!(queued.finish().await.last().unwrap().event, "turn.completed");
    assert_eq!(provider_queue(&app, &waiter).await, Value::Null, "no longer waiting");
}

/// With no capacity configured, nothing queues: `provider_queue` is `null`
/// and streams never say `turn.queued`, however many run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_capacity_nothing_queues() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.provider.builtin.chunk_delay_ms = 20;
        s.rate_limit.max_concurrent_turns = 8;
    })
    .await;
    let (_, token, session) = user_with_session(&app).await;
    assert_eq!(provider_queue(&app, &token).await, Value::Null);
    let streams = (0..4).map(|i| {
        let (app, token, session) = (&app, &token, &session);
        async move {
            Events::of(stream(app, token, session, &format!("hello {i}")).await).finish().await
        }
    });
    let before = provider_queue(&app, &token);
    let (all, during) = tokio::join!(futures::future::join_all(streams), before);
    assert_eq!(during, Value::Null);
    for events in all {
        assert_eq!(events.last().unwrap().event, "turn.completed", "{events:?}");
        assert!(queued_places(&events).is_empty(), "{events:?}");
    }
}
