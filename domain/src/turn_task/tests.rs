//! The turn's task on its own, with in-memory ports and a real lease: what
//! its caller hears, what the repository holds and what the lease gives
//! back, in which order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::*;
use crate::clock::SystemClock;
use crate::error::{ProviderError, StorageError};
use crate::lifecycle::Lifecycle;
use crate::limiter::{LeaseId, LeaseStore, Released, Releases, Reservation};
use crate::live::LiveOutputs;
use crate::observe::{Endpoint, Unobserved};
use crate::page::{Page, PageRequest};
use crate::ports::ReplyEvent;
use crate::ports::{Checkpoint, Committed, ModelProvider, ReplyStream, TurnRepository};
use crate::tokens::TokenCounter;
use crate::turn::{TurnEnd, TurnStatus, Usage};

/// One session's turns in memory; `begin` refuses any other session.
#[derive(Debug, Default)]
struct Repository {
    session: Mutex<Option<SessionId>>,
    turns: Mutex<Vec<Turn>>,
    /// The releases queued when `finish` was called: the order of the end's
    /// write and the lease's release.
    released_at_finish: Mutex<Option<usize>>,
    releases: Arc<Releases>,
}

#[async_trait]
impl TurnRepository for Repository {
    async fn begin(&self, start: TurnStart<'_>) -> Result<Option<Committed>, StorageError> {
        if *self.session.lock().unwrap() != Some(start.session_id) {
            return Ok(None);
        }
        let turn = start.begun(1);
        self.turns.lock().unwrap().push(turn.clone());
        Ok(Some(Committed { turn, session_files: false }))
    }

    async fn finish(&self, id: TurnId, end: TurnEnd) -> Result<Turn, StorageError> {
        let queued = self.releases.take();
        *self.released_at_finish.lock().unwrap() = Some(queued.len());
        let mut turns = self.turns.lock().unwrap();
        let turn =
            turns.iter_mut().find(|t| t.id == id).ok_or_else(|| StorageError::other("no"))?;
        turn.output = end.output;
        turn.status = end.status;
        turn.finish_reason = Some(end.finish_reason);
        turn.usage = end.usage;
        turn.completed_at = Some(end.completed_at);
        Ok(turn.clone())
    }

    async fn checkpoint(&self, _: &[Checkpoint]) -> Result<(), StorageError> {
        Ok(())
    }

    async fn expire_stale(&self, _: Duration, _: DateTime<Utc>) -> Result<u64, StorageError> {
        Ok(0)
    }

    async fn list(
        &self,
        _: &UserId,
        _: SessionId,
        _: PageRequest<i64>,
    ) -> Result<Option<Page<Turn>>, StorageError> {
        Ok(None)
    }

    async fn get(&self, _: &UserId, _: SessionId, _: TurnId) -> Result<Option<Turn>, StorageError> {
        Ok(None)
    }

    async fn completed_before(
        &self,
        _: SessionId,
        _: i64,
        _: usize,
    ) -> Result<Vec<Turn>, StorageError> {
        Ok(Vec::new())
    }
}

/// Replies its words, then never ends when `hang` is set.
#[derive(Debug, Default)]
struct Words {
    words: Vec<&'static str>,
    hang: bool,
    calls: Mutex<usize>,
}

#[async_trait]
impl ModelProvider for Words {
    async fn reply(&self, _: ReplyRequest) -> Result<ReplyStream, ProviderError> {
        *self.calls.lock().unwrap() += 1;
        let deltas = futures::stream::iter(self.words.clone())
            .map(|word| Ok(ReplyEvent::Delta(word.to_owned())));
        if self.hang {
            return Ok(deltas.chain(futures::stream::pending()).boxed());
        }
        Ok(deltas.boxed())
    }
}

/// One token per character.
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

const RESERVATION: Reservation = Reservation { input: 5, output_cap: 100, at_ms: 7 };

/// A task for a turn of `input` into `session`, holding a lease that
/// reserved [`RESERVATION`]; its events' receiver and cancel token.
fn task(
    repository: &Arc<Repository>,
    provider: &Arc<Words>,
    session: SessionId,
) -> (TurnTask, mpsc::Receiver<TurnEvent>) {
    let context = TurnContext {
        turns: repository.clone(),
        provider: provider.clone(),
        tokens: Arc::new(Chars),
        clock: Arc::new(SystemClock),
        policy: TurnPolicy {
            max_duration: Duration::from_secs(30),
            checkpoint_interval: Duration::from_secs(1),
            max_output_tokens: 1_000,
            min_output_tokens: 10,
            coalesce: Duration::ZERO,
            idempotency_ttl: Duration::from_secs(86_400),
            max_tool_rounds: 8,
        },
        live: LiveOutputs::default(),
        lifecycle: Arc::new(Lifecycle::default()),
        observer: Arc::new(Unobserved),
        bus: Arc::new(crate::ports::NoBus),
        files: None,
        tools: None,
        gate: None,
    };
    let user = UserId::parse("alice").unwrap();
    let lease =
        Lease::new(LeaseId::random(), user.clone(), LeaseStore::Redis, repository.releases.clone())
            .with_reservation(Some(RESERVATION));
    let (events, receiver) = mpsc::channel(8);
    let task = TurnTask {
        context: Arc::new(context),
        user,
        tier: None,
        session_id: session,
        turn_id: TurnId::new(),
        new: NewTurn::parse("hello".into(), 100).unwrap(),
        keyed: None,
        lease: Some(lease),
        events,
        cancel: CancellationToken::new(),
        measured: Measured { endpoint: Endpoint::Json, since: tokio::time::Instant::now() },
    };
    (task, receiver)
}

fn repository(session: SessionId) -> Arc<Repository> {
    let repository = Repository::default();
    *repository.session.lock().unwrap() = Some(session);
    Arc::new(repository)
}

/// Every event until the channel closes: deltas joined, and the outcome.
async fn drain(
    events: &mut mpsc::Receiver<TurnEvent>,
) -> (String, Option<Result<Turn, TurnError>>) {
    let (mut text, mut outcome) = (String::new(), None);
    while let Some(event) = events.recv().await {
        match event {
            TurnEvent::Delta(delta) => text.push_str(&delta),
            TurnEvent::Finished(end) => outcome = Some(*end),
            TurnEvent::Tool(_) | TurnEvent::Queued { .. } => {}
        }
    }
    (text, outcome)
}

#[tokio::test]
async fn a_run_commits_then_streams_then_gives_its_lease_back_with_the_unused_tokens() {
    let session = SessionId::new();
    let repository = repository(session);
    let words = Arc::new(Words { words: vec!["one ", "two"], ..Words::default() });
    let (task, mut events) = task(&repository, &words, session);
    let (committed, begun) = oneshot::channel();
    let running = tokio::spawn(task.run(committed));

    let turn = begun.await.unwrap().unwrap();
    assert_eq!(turn.status, TurnStatus::InProgress);
    let (text, outcome) = drain(&mut events).await;
    running.await.unwrap();

    assert_eq!(text, "one two");
    assert_eq!(*words.calls.lock().unwrap(), 1);
    let ended = outcome.unwrap().unwrap();
    assert_eq!((ended.id, ended.status), (turn.id, TurnStatus::Completed));
    assert_eq!(ended.output, "one two");
    // Charged the prompt as reserved and the 7 characters received.
    assert_eq!(ended.usage, Some(Usage::of(5, 7)));
    assert_eq!(repository.turns.lock().unwrap().clone(), vec![ended]);
    // The lease was still held when the end was written, and released
    // after, refunding what the turn did not use.
    assert_eq!(*repository.released_at_finish.lock().unwrap(), Some(0));
    let released: Vec<Released> = repository.releases.take();
    assert_eq!(released.len(), 1);
    let refund = released[0].refund.unwrap();
    assert_eq!((refund.tokens, refund.at_ms), (RESERVATION.total() - 12, RESERVATION.at_ms));
}

#[tokio::test]
async fn a_begin_refused_answers_its_caller_and_refunds_the_whole_reservation() {
    let repository = repository(SessionId::new());
    let words = Arc::new(Words { words: vec!["never"], ..Words::default() });
    let (task, mut events) = task(&repository, &words, SessionId::new());
    let (committed, begun) = oneshot::channel();
    task.run(committed).await;

    assert!(matches!(begun.await.unwrap(), Err(NotBegun::Failed(TurnError::SessionNotFound))));
    assert!(events.recv().await.is_none(), "no event for a turn never committed");
    assert!(repository.turns.lock().unwrap().is_empty());
    assert_eq!(*words.calls.lock().unwrap(), 0, "nothing reached the provider");
    let released = repository.releases.take();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].refund.map(|r| r.tokens), Some(RESERVATION.total()));
}

#[tokio::test]
async fn a_cancelled_task_persists_its_partial_output_and_settles_the_prompt() {
    let session = SessionId::new();
    let repository = repository(session);
    let words = Arc::new(Words { words: vec!["partial"], hang: true, ..Words::default() });
    let (task, mut events) = task(&repository, &words, session);
    let cancel = task.cancel.clone();
    let (committed, begun) = oneshot::channel();
    let running = tokio::spawn(task.run(committed));
    begun.await.unwrap().unwrap();

    assert!(matches!(events.recv().await, Some(TurnEvent::Delta(d)) if d == "partial"));
    cancel.cancel();
    let (_, outcome) = drain(&mut events).await;
    running.await.unwrap();

    let ended = outcome.unwrap().unwrap();
    assert_eq!((ended.status, ended.output.as_str()), (TurnStatus::Cancelled, "partial"));
    assert_eq!(ended.usage, Some(Usage::of(5, 7)));
    let released = repository.releases.take();
    assert_eq!(released[0].refund.map(|r| r.tokens), Some(RESERVATION.total() - 12));
}
