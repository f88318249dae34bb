//! The limiter under its own overload (`docs/API.md`, "Rate limiting"): a
//! limiter task that cannot take or answer a check in time never lets a
//! turn past a limit. Without Redis the decision is made on the caller's
//! thread, never skipped; with a stalled Redis and `fallback = local` the
//! in-process counts decide. And a server stopped with turns running on
//! Redis leaves none of their leases behind.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use pantheon_domain::ManualClock;
use pantheon_domain::limiter::{
    Admission, Decision, Fallback, HandleOptions, LimiterHandle, Limits, Mode, Policy,
    limiter_channel,
};
use pantheon_infrastructure::Settings;
use pantheon_infrastructure::auth::TokenMinter;
use pantheon_infrastructure::limiter::keys::active_key;
use pantheon_infrastructure::limiter::{LimiterActor, RedisLink, limiter};
use pantheon_infrastructure::settings::AuthSettings;
use pantheon_tests::limiter::unique_user;
use pantheon_tests::process::ServerCommand;
use pantheon_tests::redis_server::RedisServer;
use pantheon_tests::{Backend, TestDatabase};

use crate::limiter_faults::T0;

const CHECKS: usize = 600;
const CAP: u32 = 2;

fn capped() -> Limits {
    Limits {
        per_minute: 100_000,
        per_hour: 100_000,
        max_concurrent: CAP,
        tokens_per_minute: None,
        tokens_per_hour: None,
    }
}

/// Fires `CHECKS` checks of one user at once, each from its own task, and
/// returns every answer (the admissions keep their leases).
async fn fire(handle: &LimiterHandle) -> Vec<Admission> {
    let user = unique_user("overload");
    let checks = (0..CHECKS).map(|_| {
        let (handle, user) = (handle.clone(), user.clone());
        tokio::spawn(async move { handle.check(user, capped()).await })
    });
    join_all(checks).await.into_iter().map(Result::unwrap).collect()
}

/// Every answer was a decision (none skipped, none unavailable), exactly
/// `CAP` admitted, each holding a slot, the rest refused for concurrency.
fn assert_decided(answers: &[Admission]) {
    let undecided: Vec<_> = answers
        .iter()
        .filter(|a| matches!(a.decision, Decision::Skipped(_) | Decision::Unavailable(_)))
        .map(|a| a.decision.clone())
        .collect();
    assert!(
        undecided.is_empty(),
        "{} of {CHECKS} checks were not decided, e.g. {:?}",
        undecided.len(),
        undecided.first()
    );
    let admitted = answers.iter().filter(|a| matches!(a.decision, Decision::Admitted(_))).count();
    assert_eq!(admitted, CAP as usize, "admitted past the cap of {CAP}");
    assert!(answers.iter().filter(|a| a.lease.is_some()).count() == CAP as usize);
    for answer in answers {
        if let Decision::Limited(denial) = &answer.decision {
            assert_eq!(denial.violated, [Policy::Concurrency]);
        }
    }
}

/// No Redis: the handle decides on the caller's thread. Its task is never
/// run here (a task too busy to answer at all): every check is decided
/// anyway, at once, and a dropped lease frees its slot without the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_checks_are_decided_even_when_the_limiter_task_never_answers() {
    let mut settings = Settings::default();
    settings.redis.timeout_ms = 50;
    let clock = Arc::new(ManualClock::at(T0));
    let (handle, _stalled_task) = limiter(&settings, clock).await.expect("limiting is enabled");

    let answers = fire(&handle).await;
    assert_decided(&answers);

    let user = unique_user("overload-release");
    let first = handle.check(user.clone(), capped()).await;
    let second = handle.check(user.clone(), capped()).await;
    assert!(matches!(handle.check(user.clone(), capped()).await.decision, Decision::Limited(_)));
    drop((first, second));
    let again = handle.check(user, capped()).await;
    assert!(matches!(again.decision, Decision::Admitted(_)), "{:?}", again.decision);
}

/// Redis stalled (`CLIENT PAUSE`), `fallback = local`, and a mailbox of
/// one: the actor's pipelines hang until its Redis timeout, its mailbox is
/// full, and the callers it cannot take are decided with the in-process
/// counts — exactly as many admitted as the cap, none skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_with_fallback_local_admits_no_more_than_the_cap() {
    let redis = RedisServer::start();
    let timeout = Duration::from_millis(300);
    // The production handle's wait for this timeout (see `limiter`).
    let wait = timeout + timeout / 2;
    let clock = Arc::new(ManualClock::at(T0));
    let options = HandleOptions { fallback: Fallback::Local, mode: Mode::Enforce, wait };
    let (handle, mailbox, shared) = limiter_channel(1, options, clock.clone());
    let client = redis::Client::open(redis.url()).unwrap();
    let link = RedisLink::start(client, timeout, Fallback::Local, shared.clone()).await;
    let lease_ttl = Duration::from_secs(30);
    let actor = LimiterActor::new(mailbox, clock, Fallback::Local, shared, Some(link), lease_ttl);
    tokio::spawn(actor.run());
    // Long enough for every check to be answered while it lasts.
    redis.pause(20_000);

    let answers = fire(&handle).await;
    assert_decided(&answers);
}

/// `SIGTERM` with streamed turns running on Redis: once the process has
/// exited, their user's lease set holds no member — the actor sent the
/// last releases and awaited their answer before it ended, rather than
/// being cancelled with them (which left the leases to expire
/// `lease_ttl_secs` later).
///
/// Redis is slow to answer at that moment (`CLIENT PAUSE` for 1.5 s, under
/// the 4 s `redis.timeout_ms`): a release still unanswered when its
/// process exits is lost with the connection (Redis drops a closed
/// client's unprocessed commands).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_no_lease_of_the_running_turns_remains_in_redis() {
    const TURNS: usize = 8;
    let redis = RedisServer::start();
    let database = TestDatabase::create(Backend::Postgres).await;
    let secret = format!("test-secret-{}", uuid::Uuid::new_v4());
    let mut command = ServerCommand::new(&database.url);
    command
        .set("PANTHEON__AUTH__JWT_SECRET", &secret)
        .set("PANTHEON__REDIS__URL", &redis.url())
        .set("PANTHEON__REDIS__TIMEOUT_MS", "4000")
        .set("PANTHEON__RATE_LIMIT__MAX_CONCURRENT_TURNS", &TURNS.to_string())
        .set("PANTHEON__RATE_LIMIT__LEASE_TTL_SECS", "600")
        .set("PANTHEON__SERVER__SHUTDOWN_GRACE_SECS", "0")
        .set("PANTHEON__PROVIDER__BUILTIN__CHUNK_DELAY_MS", "200");
    let mut server = command.spawn().await;
    let minter =
        TokenMinter::new(&AuthSettings { jwt_secret: secret, ..AuthSettings::default() }).unwrap();
    let user = unique_user("sigterm");
    let token = minter.mint(user.as_str(), None, Duration::from_secs(600)).unwrap();
    let client = reqwest::Client::new();
    let input = (1..=60).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
    let mut streams = Vec::new();
    for _ in 0..TURNS {
        let session = server.create_session(&client, &token).await;
        let response = server.stream(&client, &token, &session, &input).await;
        assert_eq!(response.status(), 200);
        streams.push(tokio::spawn(async move { response.text().await }));
    }
    let key = active_key(&user);
    let members = || redis.command(&["ZCARD", &key]);
    assert_eq!(members(), TURNS.to_string(), "one lease per running turn");

    redis.pause(1_500);
    let status = server.terminate().await;
    assert!(status.success(), "exit status {status}; output:\n{}", server.output());
    for stream in streams {
        let _ = stream.await;
    }
    // Answered once the pause is over.
    assert_eq!(members(), "0", "leases left in Redis after the exit; output:\n{}", server.output());
}
