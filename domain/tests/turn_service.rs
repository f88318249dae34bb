//! `TurnService` with in-memory fakes: the order of work and the ways a
//! turn ends, without a database or a server. Time is paused and moved by
//! tokio, never slept through.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use pantheon_domain::limiter::{
    Admission, Decision, Denial, Fallback, HandleOptions, Lease, LeaseId, LeaseStore,
    LimiterCommand, Limits, Mode, Policy, RateLimitStatus, Refund, Releases, Reservation, Window,
    WindowUsage, limiter_channel,
};
use pantheon_domain::ports::{
    Checkpoint, Committed, ModelProvider, ReplyEvent, ReplyRequest, ReplyStream, TurnRepository,
    TurnStart,
};
use pantheon_domain::turn::TurnEnd;
use pantheon_domain::{
    Caller, Clock, FinishReason, NewTurn, Page, PageRequest, ProviderError, SessionId,
    StorageError, SystemClock, TokenCounter, Turn, TurnError, TurnId, TurnPolicy, TurnService,
    TurnStatus, Usage, UserId,
};

/// Turns in memory, every call counted.
#[derive(Debug, Default)]
struct FakeTurns {
    owner: Mutex<HashMap<SessionId, UserId>>,
    turns: Mutex<HashMap<TurnId, Turn>>,
    calls: AtomicUsize,
    /// Checkpoints written, in order.
    checkpoints: Mutex<Vec<Checkpoint>>,
    /// While set, every write fails as an outage.
    down: AtomicBool,
    /// Sweeps that reached the database.
    sweeps: AtomicUsize,
    /// What `completed_before` answers.
    history: Mutex<Vec<Turn>>,
    /// How long each begin waits before it commits (a locked session row).
    begin_wait: Mutex<Duration>,
}

impl FakeTurns {
    fn outage(&self) -> Result<(), StorageError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StorageError::unavailable("the database is down"));
        }
        Ok(())
    }
}

#[async_trait]
impl TurnRepository for FakeTurns {
    async fn begin(&self, start: TurnStart<'_>) -> Result<Option<Committed>, StorageError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let wait = *self.begin_wait.lock().unwrap();
        tokio::time::sleep(wait).await;
        if self.owner.lock().unwrap().get(&start.session_id) != Some(start.user) {
            return Ok(None);
        }
        let turn = start.begun(self.turns.lock().unwrap().len() as i64 + 1);
        self.turns.lock().unwrap().insert(turn.id, turn.clone());
        Ok(Some(Committed { turn, session_files: false }))
    }

    async fn finish(&self, id: TurnId, end: TurnEnd) -> Result<Turn, StorageError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.outage()?;
        let mut turns = self.turns.lock().unwrap();
        let turn = turns.get_mut(&id).ok_or_else(|| StorageError::other("gone"))?;
        turn.output = end.output;
        turn.status = end.status;
        turn.finish_reason = Some(end.finish_reason);
        turn.usage = end.usage;
        turn.error = end.error;
        turn.completed_at = Some(end.completed_at);
        Ok(turn.clone())
    }

    async fn checkpoint(&self, batch: &[Checkpoint]) -> Result<(), StorageError> {
        self.outage()?;
        self.checkpoints.lock().unwrap().extend_from_slice(batch);
        Ok(())
    }

    async fn expire_stale(&self, _: Duration, _: DateTime<Utc>) -> Result<u64, StorageError> {
        self.outage()?;
        self.sweeps.fetch_add(1, Ordering::SeqCst);
        Ok(0)
    }

    async fn list(
        &self,
        _: &UserId,
        _: SessionId,
        _: PageRequest<i64>,
    ) -> Result<Option<Page<Turn>>, StorageError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(None)
    }

    async fn get(
        &self,
        _: &UserId,
        _: SessionId,
        id: TurnId,
    ) -> Result<Option<Turn>, StorageError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(self.turns.lock().unwrap().get(&id).cloned())
    }

    async fn completed_before(
        &self,
        _: SessionId,
        _: i64,
        _: usize,
    ) -> Result<Vec<Turn>, StorageError> {
        Ok(self.history.lock().unwrap().clone())
    }
}

/// Replies `chunks` words, pausing `delay` before each.
#[derive(Debug)]
struct SlowProvider {
    chunks: usize,
    delay: Duration,
}

#[async_trait]
impl ModelProvider for SlowProvider {
    async fn reply(&self, _: ReplyRequest) -> Result<ReplyStream, ProviderError> {
        let delay = self.delay;
        let deltas = futures::stream::iter(0..self.chunks).then(move |i| async move {
            tokio::time::sleep(delay).await;
            Ok(ReplyEvent::Delta(format!("w{i} ")))
        });
        let done = futures::stream::once(async {
            Ok(ReplyEvent::Finished { finish_reason: FinishReason::Stop, usage: None })
        });
        Ok(deltas.chain(done).boxed())
    }
}

const LIMITS: Limits = Limits {
    per_minute: 1,
    per_hour: 1,
    max_concurrent: 1,
    tokens_per_minute: None,
    tokens_per_hour: None,
};

/// A tokenizer of one token per character: every boundary settles.
#[derive(Debug)]
struct Chars;

impl TokenCounter for Chars {
    fn count(&self, text: &str) -> u64 {
        text.chars().count() as u64
    }

    fn fit(&self, text: &str, max: u64) -> usize {
        text.char_indices().nth(max as usize).map_or(text.len(), |(i, _)| i)
    }

    fn settled_len(&self, text: &str) -> usize {
        text.len()
    }
}

fn policy(max_duration: Duration) -> TurnPolicy {
    TurnPolicy {
        max_duration,
        checkpoint_interval: CHECKPOINT,
        max_output_tokens: 4_096,
        min_output_tokens: 16,
        coalesce: Duration::ZERO,
        idempotency_ttl: Duration::from_secs(86_400),
        max_tool_rounds: 8,
    }
}

fn caller() -> Caller {
    Caller { user: UserId::parse("alice").unwrap(), tier: None, limits: LIMITS }
}

/// A ten-line limiter over the real protocol, answering every check alike;
/// an admission carries a lease whose release lands in `releases`.
fn fake_limiter(
    answer: Decision,
    releases: Arc<Releases>,
) -> pantheon_domain::limiter::LimiterHandle {
    reserving_limiter(answer, None, releases)
}

/// [`fake_limiter`] whose leases carry `reservation`.
fn reserving_limiter(
    answer: Decision,
    reservation: Option<Reservation>,
    releases: Arc<Releases>,
) -> pantheon_domain::limiter::LimiterHandle {
    let options = HandleOptions {
        fallback: Fallback::Allow,
        mode: Mode::Enforce,
        wait: Duration::from_secs(1),
    };
    let (handle, mut mailbox, _) = limiter_channel(8, options, Arc::new(SystemClock));
    tokio::spawn(async move {
        while let Some(command) = mailbox.recv().await {
            if let LimiterCommand::Check { user, respond_to, .. } = command {
                let lease = matches!(answer, Decision::Admitted(_)).then(|| {
                    Lease::new(LeaseId::random(), user, LeaseStore::Local, releases.clone())
                        .with_reservation(reservation)
                });
                let _ =
                    respond_to.send(Admission { decision: answer.clone(), lease, claimed: None });
            }
        }
    });
    handle
}

const CHECKPOINT: Duration = Duration::from_secs(1);

fn service(
    turns: Arc<FakeTurns>,
    provider: SlowProvider,
    max: Duration,
    limiter: Option<Decision>,
) -> (TurnService, SessionId) {
    let session = SessionId::new();
    turns.owner.lock().unwrap().insert(session, caller().user);
    let limiter = limiter.map(|answer| fake_limiter(answer, Arc::default()));
    let service = TurnService::new(
        turns,
        Arc::new(provider),
        Arc::new(Chars),
        Arc::new(SystemClock),
        policy(max),
        limiter,
    );
    (service, session)
}

fn input() -> NewTurn {
    NewTurn::parse("hello".into(), 100).unwrap()
}

#[tokio::test]
async fn a_refused_turn_never_reaches_the_repository() {
    let usage = [Window::Minute, Window::Hour].map(|window| WindowUsage {
        window,
        limit: 1,
        remaining: 0,
        reset_ms: 1_000,
    });
    let denial = Denial {
        limits: LIMITS,
        usage,
        violated: vec![Policy::Minute],
        retry_at_ms: 1_000,
        binding: Policy::Minute,
        active: 0,
        tokens: [None, None],
        requested: None,
        now_ms: 0,
    };
    let turns = Arc::new(FakeTurns::default());
    let provider = SlowProvider { chunks: 1, delay: Duration::ZERO };
    let (service, _) =
        service(turns.clone(), provider, Duration::from_secs(5), Some(Decision::Limited(denial)));
    let result = service.submit(&caller(), SessionId::new(), input()).await;
    assert!(matches!(result, Err(TurnError::RateLimited(_))), "{result:?}");
    assert_eq!(
        turns.calls.load(Ordering::SeqCst),
        0,
        "no repository call before the limiter says yes"
    );
}

fn admitted() -> Decision {
    let usage = [Window::Minute, Window::Hour].map(|window| WindowUsage {
        window,
        limit: 1,
        remaining: 0,
        reset_ms: 0,
    });
    Decision::Admitted(RateLimitStatus { limits: LIMITS, usage, active: 1, tokens: [None, None] })
}

#[tokio::test]
async fn a_turn_gives_its_slot_back_once_persisted_and_before_its_end_is_reported() {
    let releases = Arc::new(Releases::default());
    let turns = Arc::new(FakeTurns::default());
    let session = SessionId::new();
    turns.owner.lock().unwrap().insert(session, caller().user);
    let provider = SlowProvider { chunks: 3, delay: Duration::from_millis(5) };
    let limiter = fake_limiter(admitted(), releases.clone());
    let service = TurnService::new(
        turns,
        Arc::new(provider),
        Arc::new(Chars),
        Arc::new(SystemClock),
        policy(Duration::from_secs(5)),
        Some(limiter),
    );

    let run = service.start(&caller(), session, input()).await.unwrap();
    assert!(releases.take().is_empty(), "the slot is held while the turn generates");
    let turn = run.outcome().await.unwrap();
    assert_eq!(turn.status, TurnStatus::Completed);
    let released = releases.take();
    assert_eq!(released.len(), 1, "released exactly once, before the end was reported");
    assert_eq!(released[0].user, caller().user);

    // Admitted, but the session is not the caller's: nothing runs, the slot is back.
    let result = service.start(&caller(), SessionId::new(), input()).await;
    assert!(matches!(result, Err(TurnError::SessionNotFound)), "{result:?}");
    assert_eq!(releases.take().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_reply_slower_than_the_maximum_duration_fails_with_its_partial_output() {
    let turns = Arc::new(FakeTurns::default());
    let provider = SlowProvider { chunks: 10, delay: Duration::from_secs(1) };
    let (service, session) = service(turns, provider, Duration::from_millis(3_500), None);
    match service.submit(&caller(), session, input()).await {
        Err(TurnError::Provider { turn, source: ProviderError::Timeout }) => {
            assert_eq!(turn.status, TurnStatus::Failed);
            assert_eq!(turn.output, "w0 w1 w2 ", "what came before the deadline is kept");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn drain_lets_short_turns_finish_and_ends_long_ones_incomplete() {
    let turns = Arc::new(FakeTurns::default());
    let provider = SlowProvider { chunks: 100, delay: Duration::from_secs(1) };
    let (service, session) = service(turns, provider, Duration::from_secs(3_600), None);
    let run = service.start(&caller(), session, input()).await.unwrap();
    service.drain(Duration::from_secs(5)).await;
    match run.outcome().await {
        Err(TurnError::Interrupted { turn }) => {
            assert_eq!(turn.status, TurnStatus::Incomplete);
            assert!(turn.output.starts_with("w0 w1 w2 w3 "), "{}", turn.output);
        }
        other => panic!("expected an interrupted turn, got {other:?}"),
    }
    let late = service.start(&caller(), session, input()).await;
    assert!(matches!(late, Err(TurnError::ShuttingDown)), "no new turns while draining");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_run_persists_its_partial_output_as_cancelled() {
    let turns = Arc::new(FakeTurns::default());
    let provider = SlowProvider { chunks: 100, delay: Duration::from_secs(1) };
    let (service, session) = service(turns.clone(), provider, Duration::from_secs(3_600), None);
    let mut run = service.start(&caller(), session, input()).await.unwrap();
    let id = run.turn.id;
    for _ in 0..2 {
        run.events.recv().await.unwrap();
    }
    run.canceller().cancel();
    let ended = run.outcome().await.unwrap();
    assert_eq!(ended.status, TurnStatus::Cancelled);
    assert_eq!(ended.output, "w0 w1 ");
    assert_eq!(turns.turns.lock().unwrap()[&id].status, TurnStatus::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn an_end_the_database_refuses_for_an_outage_is_answered_503_and_written_once_it_is_back() {
    let turns = Arc::new(FakeTurns::default());
    let provider = SlowProvider { chunks: 3, delay: Duration::from_millis(10) };
    let (service, session) = service(turns.clone(), provider, Duration::from_secs(60), None);
    let mut run = service.start(&caller(), session, input()).await.unwrap();
    let id = run.turn.id;
    turns.down.store(true, Ordering::SeqCst);
    let mut outcome = None;
    while let Some(event) = run.events.recv().await {
        if let pantheon_domain::TurnEvent::Finished(end) = event {
            outcome = Some(*end);
        }
    }
    match outcome {
        Some(Err(TurnError::Storage(e))) => assert!(e.is_unavailable(), "{e}"),
        other => panic!("expected an outage, got {other:?}"),
    }
    assert_eq!(turns.turns.lock().unwrap()[&id].status, TurnStatus::InProgress);
    // While it retries, this process still shows the output.
    let shown = service.get(&caller(), session, id).await.unwrap();
    assert_eq!(shown.output, "w0 w1 w2 ");

    tokio::time::sleep(Duration::from_secs(3)).await;
    turns.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let stored = turns.turns.lock().unwrap()[&id].clone();
    assert_eq!((stored.status, stored.output.as_str()), (TurnStatus::Completed, "w0 w1 w2 "));
}

#[tokio::test(start_paused = true)]
async fn an_unwritten_end_is_retried_no_longer_than_the_maximum_duration() {
    let turns = Arc::new(FakeTurns::default());
    let provider = SlowProvider { chunks: 1, delay: Duration::ZERO };
    let (service, session) = service(turns.clone(), provider, Duration::from_secs(10), None);
    turns.down.store(true, Ordering::SeqCst);
    let result = service.submit(&caller(), session, input()).await;
    assert!(matches!(result, Err(TurnError::Storage(_))), "{result:?}");
    let calls_after = |turns: &FakeTurns| turns.calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let settled = calls_after(&turns);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(calls_after(&turns), settled, "no attempt after max_duration");
    // begin, the first finish, and a bounded number of retries.
    assert!((4..=10).contains(&settled), "{settled} repository calls");
}

#[tokio::test(start_paused = true)]
async fn a_long_turn_is_checkpointed_and_a_quick_one_is_not() {
    let turns = Arc::new(FakeTurns::default());
    let provider = SlowProvider { chunks: 5, delay: Duration::from_millis(500) };
    let (long, session) = service(turns.clone(), provider, Duration::from_secs(60), None);
    let run = long.start(&caller(), session, input()).await.unwrap();
    let id = run.turn.id;
    let waiting = tokio::spawn(run.outcome());
    // Younger than one interval, nothing to save: nothing to write.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(long.checkpoint().await.unwrap(), 0);
    // Still younger, with output: saved at this tick, not an interval later.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(long.checkpoint().await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(long.checkpoint().await.unwrap(), 1);
    // No new chunk since: the heartbeat only.
    assert_eq!(long.checkpoint().await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    turns.down.store(true, Ordering::SeqCst);
    assert!(long.checkpoint().await.is_err());
    turns.down.store(false, Ordering::SeqCst);
    assert_eq!(long.checkpoint().await.unwrap(), 1);
    let written: Vec<_> = turns.checkpoints.lock().unwrap().clone();
    let outputs: Vec<_> = written.iter().map(|c| (c.turn_id, c.output.clone())).collect();
    assert_eq!(
        outputs,
        [
            (id, Some("w0 ".to_owned())),
            (id, Some("w0 w1 ".to_owned())),
            (id, None),
            (id, Some("w0 w1 w2 ".to_owned()))
        ],
        "the output refused by the failed write is sent again"
    );
    waiting.await.unwrap().unwrap();
    assert_eq!(long.checkpoint().await.unwrap(), 0, "an ended turn is not checkpointed");

    let quick = SlowProvider { chunks: 1, delay: Duration::ZERO };
    let fresh = Arc::new(FakeTurns::default());
    let (quick_service, session) = service(fresh.clone(), quick, Duration::from_secs(60), None);
    quick_service.submit(&caller(), session, input()).await.unwrap();
    assert_eq!(quick_service.checkpoint().await.unwrap(), 0);
    assert!(fresh.checkpoints.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn after_an_outage_the_sweep_waits_until_heartbeats_could_be_stamped_again() {
    let turns = Arc::new(FakeTurns::default());
    let provider = SlowProvider { chunks: 1, delay: Duration::ZERO };
    let (service, _) = service(turns.clone(), provider, Duration::from_secs(60), None);
    service.sweep_stale().await.unwrap();
    assert_eq!(turns.sweeps.load(Ordering::SeqCst), 1);
    turns.down.store(true, Ordering::SeqCst);
    assert!(service.sweep_stale().await.is_err());
    turns.down.store(false, Ordering::SeqCst);
    // Three checkpoint intervals from the failure, no sweep reaches the store.
    tokio::time::sleep(CHECKPOINT * 2).await;
    service.sweep_stale().await.unwrap();
    assert_eq!(turns.sweeps.load(Ordering::SeqCst), 1, "held back");
    tokio::time::sleep(CHECKPOINT * 2).await;
    service.sweep_stale().await.unwrap();
    assert_eq!(turns.sweeps.load(Ordering::SeqCst), 2, "resumed");
}

/// A service whose limiter admits every turn with `reservation`, over a
/// provider of `chunks` words of 3 characters (tokens, for [`Chars`]) that
/// ignores any cap.
fn budgeted(
    chunks: usize,
    reservation: Reservation,
    releases: Arc<Releases>,
) -> (TurnService, SessionId, Arc<FakeTurns>) {
    let provider = Arc::new(SlowProvider { chunks, delay: Duration::ZERO });
    counted_service(provider, Arc::new(Chars), reservation, releases)
}

fn budget_caller() -> Caller {
    Caller { limits: Limits { tokens_per_minute: Some(1_000), ..LIMITS }, ..caller() }
}

#[tokio::test]
async fn a_reply_that_ignores_its_cap_is_cut_there_and_charged_its_reservation_only() {
    let releases = Arc::new(Releases::default());
    let reservation = Reservation { input: 5, output_cap: 10, at_ms: 3 };
    let (service, session, _) = budgeted(100, reservation, releases.clone());
    let turn = service.submit(&budget_caller(), session, input()).await.unwrap().turn;
    assert_eq!(turn.output, "w0 w1 w2 w", "cut at the tenth character");
    assert_eq!(turn.finish_reason, Some(FinishReason::Length));
    assert_eq!(
        turn.usage,
        Some(Usage::of(5, 10)),
        "the input and the cut output, by the tokenizer"
    );
    let released = releases.take();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].refund, None, "it used all of its reservation, no more");
}

#[tokio::test]
async fn a_short_reply_refunds_the_rest_of_its_reservation() {
    let releases = Arc::new(Releases::default());
    let reservation = Reservation { input: 5, output_cap: 100, at_ms: 3 };
    let (service, session, _) = budgeted(2, reservation, releases.clone());
    let turn = service.submit(&budget_caller(), session, input()).await.unwrap().turn;
    assert_eq!((turn.output.as_str(), turn.finish_reason), ("w0 w1 ", Some(FinishReason::Stop)));
    assert_eq!(turn.usage, Some(Usage::of(5, 6)));
    let refund = releases.take().pop().and_then(|r| r.refund);
    assert_eq!(refund, Some(Refund { tokens: 105 - 11, at_ms: 3 }));
}

#[tokio::test]
async fn a_turn_whose_session_is_missing_refunds_its_whole_reservation() {
    let releases = Arc::new(Releases::default());
    let reservation = Reservation { input: 5, output_cap: 100, at_ms: 3 };
    let (service, _, _) = budgeted(2, reservation, releases.clone());
    let result = service.submit(&budget_caller(), SessionId::new(), input()).await;
    assert!(matches!(result, Err(TurnError::SessionNotFound)), "{result:?}");
    let refund = releases.take().pop().and_then(|r| r.refund);
    assert_eq!(refund.map(|r| r.tokens), Some(105));
}

#[tokio::test]
async fn an_input_that_can_never_fit_its_token_budget_is_refused_before_anything_else() {
    let releases = Arc::new(Releases::default());
    let reservation = Reservation { input: 5, output_cap: 100, at_ms: 3 };
    let (service, session, turns) = budgeted(2, reservation, releases.clone());
    // 5 input tokens + 16 least output > 20.
    let caller = Caller { limits: Limits { tokens_per_minute: Some(20), ..LIMITS }, ..caller() };
    let result = service.submit(&caller, session, input()).await;
    let Err(TurnError::InputExceedsTokenBudget { input_tokens, requested, limit, policy }) = result
    else {
        panic!("refused: {result:?}");
    };
    assert_eq!((input_tokens, requested, limit, policy), (5, 21, 20, Policy::TokensMinute));
    assert_eq!(turns.calls.load(Ordering::SeqCst), 0, "nothing looked up or written");
    assert!(releases.take().is_empty(), "the limiter was never asked: no lease, no count");
}

/// One token per character, recording every text it tokenized.
#[derive(Debug, Default)]
struct Counting {
    texts: Mutex<Vec<String>>,
}

impl Counting {
    /// How many times `text` was tokenized.
    fn times(&self, text: &str) -> usize {
        self.texts.lock().unwrap().iter().filter(|t| *t == text).count()
    }

    /// Bytes tokenized in all.
    fn bytes(&self) -> usize {
        self.texts.lock().unwrap().iter().map(String::len).sum()
    }
}

impl TokenCounter for Counting {
    fn count(&self, text: &str) -> u64 {
        self.texts.lock().unwrap().push(text.to_owned());
        Chars.count(text)
    }

    fn fit(&self, text: &str, max: u64) -> usize {
        Chars.fit(text, max)
    }

    fn settled_len(&self, text: &str) -> usize {
        Chars.settled_len(text)
    }

    fn fewest_tokens(&self, bytes: usize) -> u64 {
        // A character is at most 4 bytes.
        bytes.div_ceil(4) as u64
    }
}

/// [`SlowProvider`] that wants up to three earlier turns as context.
#[derive(Debug)]
struct WithHistory(SlowProvider);

#[async_trait]
impl ModelProvider for WithHistory {
    async fn reply(&self, request: ReplyRequest) -> Result<ReplyStream, ProviderError> {
        self.0.reply(request).await
    }

    fn context_turns(&self) -> usize {
        3
    }
}

/// Fails before any reply opens, as an upstream that never sent its head.
#[derive(Debug)]
struct NoHead;

#[async_trait]
impl ModelProvider for NoHead {
    async fn reply(&self, _: ReplyRequest) -> Result<ReplyStream, ProviderError> {
        Err(ProviderError::Timeout)
    }
}

/// Streams `chunks` words, then reports a usage of zero tokens.
#[derive(Debug)]
struct ReportsZero {
    chunks: usize,
}

#[async_trait]
impl ModelProvider for ReportsZero {
    async fn reply(&self, _: ReplyRequest) -> Result<ReplyStream, ProviderError> {
        let deltas = (0..self.chunks).map(|i| Ok(ReplyEvent::Delta(format!("w{i} "))));
        let usage = Some(Usage { input_tokens: 0, output_tokens: 0, total_tokens: 0 });
        let done = Ok(ReplyEvent::Finished { finish_reason: FinishReason::Stop, usage });
        Ok(futures::stream::iter(deltas.chain([done])).boxed())
    }
}

/// A service over `provider` and `counter`, under a budget, whose limiter
/// admits every turn with `reservation`; its leases release into `releases`.
fn counted_service(
    provider: Arc<dyn ModelProvider>,
    counter: Arc<dyn TokenCounter>,
    reservation: Reservation,
    releases: Arc<Releases>,
) -> (TurnService, SessionId, Arc<FakeTurns>) {
    let turns = Arc::new(FakeTurns::default());
    let session = SessionId::new();
    turns.owner.lock().unwrap().insert(session, caller().user);
    let limiter = reserving_limiter(admitted(), Some(reservation), releases);
    let service = TurnService::new(
        turns.clone(),
        provider,
        counter,
        Arc::new(SystemClock),
        policy(Duration::from_secs(5)),
        Some(limiter),
    );
    (service, session, turns)
}

#[tokio::test]
async fn a_cached_refusal_under_a_budget_answers_before_the_input_is_tokenized() {
    let limits = Limits { tokens_per_minute: Some(1_000_000), ..LIMITS };
    let options =
        HandleOptions { fallback: Fallback::Allow, mode: Mode::Enforce, wait: Duration::ZERO };
    // No task reads the mailbox: only the cache can answer.
    let (limiter, _mailbox, shared) = limiter_channel(8, options, Arc::new(SystemClock));
    let now = SystemClock.now_ms();
    let usage = |window, limit, remaining| WindowUsage { window, limit, remaining, reset_ms: 0 };
    let denial = Denial {
        limits,
        usage: [usage(Window::Minute, 1, 0), usage(Window::Hour, 1, 0)],
        violated: vec![Policy::Minute],
        retry_at_ms: now + 60_000,
        binding: Policy::Minute,
        active: 0,
        tokens: [Some(usage(Window::Minute, 1_000_000, 999_000)), None],
        requested: Some(21),
        now_ms: now,
    };
    shared.refusals().insert(&caller().user, &denial);
    let counter = Arc::new(Counting::default());
    let turns = Arc::new(FakeTurns::default());
    let service = TurnService::new(
        turns.clone(),
        Arc::new(SlowProvider { chunks: 1, delay: Duration::ZERO }),
        counter.clone(),
        Arc::new(SystemClock),
        policy(Duration::from_secs(5)),
        Some(limiter),
    );
    let caller = Caller { limits, ..caller() };
    let long = NewTurn::parse("lorem ipsum ".repeat(2_700), 40_000).unwrap();
    let result = service.submit(&caller, SessionId::new(), long).await;
    let Err(TurnError::RateLimited(refused)) = result else { panic!("refused: {result:?}") };
    assert_eq!((refused.binding, refused.retry_at_ms), (Policy::Minute, now + 60_000));
    assert_eq!(counter.bytes(), 0, "nothing tokenized for a refusal the cache knew");
    assert_eq!(turns.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_input_too_long_for_its_budget_by_its_size_alone_is_refused_without_tokenizing() {
    let releases = Arc::new(Releases::default());
    let counter = Arc::new(Counting::default());
    let reservation = Reservation { input: 5, output_cap: 100, at_ms: 3 };
    let provider = Arc::new(SlowProvider { chunks: 1, delay: Duration::ZERO });
    let (service, session, turns) =
        counted_service(provider, counter.clone(), reservation, releases.clone());
    let caller = Caller { limits: Limits { tokens_per_minute: Some(1_000), ..LIMITS }, ..caller() };
    // 8,000 bytes are at least 2,000 tokens, whatever they say.
    let long = NewTurn::parse("abcd".repeat(2_000), 10_000).unwrap();
    let result = service.submit(&caller, session, long).await;
    let Err(TurnError::InputExceedsTokenBudget { input_tokens, requested, limit, .. }) = result
    else {
        panic!("refused: {result:?}");
    };
    assert_eq!((input_tokens, requested, limit), (2_000, 2_016, 1_000));
    assert_eq!(counter.bytes(), 0, "refused by its size, never tokenized");
    assert_eq!(turns.calls.load(Ordering::SeqCst), 0);
    assert!(releases.take().is_empty(), "the limiter was never asked");
}

#[tokio::test]
async fn the_input_is_tokenized_once_per_turn_with_its_history() {
    let releases = Arc::new(Releases::default());
    let counter = Arc::new(Counting::default());
    let reservation = Reservation { input: 5, output_cap: 100, at_ms: 3 };
    let provider = Arc::new(WithHistory(SlowProvider { chunks: 2, delay: Duration::ZERO }));
    let (service, session, turns) =
        counted_service(provider, counter.clone(), reservation, releases.clone());
    let earlier = |i: usize| {
        let start = TurnStart {
            user: &caller().user,
            idempotency: None,
            session_id: session,
            turn_id: TurnId::new(),
            input: &format!("question {i}"),
            now: Utc::now(),
        };
        Turn {
            output: format!("answer {i}"),
            status: TurnStatus::Completed,
            ..start.begun(i as i64)
        }
    };
    *turns.history.lock().unwrap() = (1..=3).map(earlier).collect();
    let caller = Caller { limits: Limits { tokens_per_minute: Some(1_000), ..LIMITS }, ..caller() };
    let turn = service.submit(&caller, session, input()).await.unwrap().turn;
    assert_eq!(counter.times("hello"), 1, "the input, tokenized at admission only");
    for i in 1..=3 {
        assert_eq!(counter.times(&format!("question {i}")), 1, "each history turn once");
    }
    // The prompt: the admission's count and the history's (10 + 8 per turn).
    let history: i64 = 3 * (10 + 8);
    assert_eq!(turn.usage.map(|u| u.input_tokens), Some(5 + history));
}

#[tokio::test]
async fn a_prompt_sent_upstream_is_charged_though_no_reply_ever_opened() {
    let releases = Arc::new(Releases::default());
    let reservation = Reservation { input: 5, output_cap: 100, at_ms: 3 };
    let (service, session, _) = counted_service(
        Arc::new(NoHead),
        Arc::new(Counting::default()),
        reservation,
        releases.clone(),
    );
    let result = service.submit(&budget_caller(), session, input()).await;
    let Err(TurnError::Provider { turn, source: ProviderError::Timeout }) = result else {
        panic!("a timeout: {result:?}");
    };
    assert_eq!(turn.usage, Some(Usage::of(5, 0)), "the prompt, as counted at admission");
    let refund = releases.take().pop().and_then(|r| r.refund);
    assert_eq!(refund.map(|r| r.tokens), Some(100), "all but the prompt given back");
}

#[tokio::test]
async fn a_reported_usage_below_the_count_is_charged_the_count() {
    let releases = Arc::new(Releases::default());
    let reservation = Reservation { input: 5, output_cap: 100, at_ms: 3 };
    let (service, session, _) = counted_service(
        Arc::new(ReportsZero { chunks: 4 }),
        Arc::new(Counting::default()),
        reservation,
        releases.clone(),
    );
    let turn = service.submit(&budget_caller(), session, input()).await.unwrap().turn;
    assert_eq!(turn.output, "w0 w1 w2 w3 ");
    assert_eq!(turn.usage, Some(Usage::of(5, 12)), "the prompt and the 12 characters received");
    let refund = releases.take().pop().and_then(|r| r.refund);
    assert_eq!(refund.map(|r| r.tokens), Some(105 - 17));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_reads_nothing_cannot_hold_its_turn_past_the_deadline() {
    let turns = Arc::new(FakeTurns::default());
    // Far more deltas than the stream buffers, all at once.
    let provider = SlowProvider { chunks: 1_000, delay: Duration::ZERO };
    let (service, session) = service(turns.clone(), provider, Duration::from_secs(2), None);
    let run = service.start(&caller(), session, input()).await.unwrap();
    let id = run.turn.id;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let stored = turns.turns.lock().unwrap()[&id].clone();
    assert_eq!(stored.status, TurnStatus::Failed, "ended at its deadline, unread");
    assert!(stored.output.starts_with("w0 w1 "), "{}", stored.output);
    // The terminal event waits a while for room, then the task ends.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(service.turns_in_progress(), 0);
    drop(run);
}

#[tokio::test(start_paused = true)]
async fn drain_ends_a_turn_whose_client_reads_nothing() {
    let turns = Arc::new(FakeTurns::default());
    let provider = SlowProvider { chunks: 1_000, delay: Duration::ZERO };
    let (service, session) = service(turns.clone(), provider, Duration::from_secs(3_600), None);
    let run = service.start(&caller(), session, input()).await.unwrap();
    let id = run.turn.id;
    service.drain(Duration::from_secs(1)).await;
    assert_eq!(turns.turns.lock().unwrap()[&id].status, TurnStatus::Incomplete);
    assert_eq!(service.turns_in_progress(), 0, "drained within the grace and the abort");
    drop(run);
}

#[tokio::test(start_paused = true)]
async fn a_caller_gone_before_the_commit_cancels_its_turn_only_when_it_asked_to() {
    for (cancel_on_drop, ends) in [(true, TurnStatus::Cancelled), (false, TurnStatus::Completed)] {
        let turns = Arc::new(FakeTurns::default());
        *turns.begin_wait.lock().unwrap() = Duration::from_secs(3);
        let provider = SlowProvider { chunks: 3, delay: Duration::from_millis(100) };
        let (service, session) = service(turns.clone(), provider, Duration::from_secs(60), None);
        let start = async {
            if cancel_on_drop {
                service.start_cancel_on_drop(&caller(), session, input()).await
            } else {
                service.start(&caller(), session, input()).await
            }
        };
        // The caller stops waiting while the begin is held (its client hung up).
        let gave_up = tokio::time::timeout(Duration::from_secs(1), start).await;
        assert!(gave_up.is_err(), "the begin was still waiting");
        tokio::time::sleep(Duration::from_secs(10)).await;
        let stored: Vec<Turn> = turns.turns.lock().unwrap().values().cloned().collect();
        let statuses: Vec<TurnStatus> = stored.iter().map(|t| t.status).collect();
        assert_eq!(statuses, [ends], "cancel_on_drop = {cancel_on_drop}");
        assert_eq!(service.turns_in_progress(), 0);
    }
}
