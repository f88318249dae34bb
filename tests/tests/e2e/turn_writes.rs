//! The turn repository under concurrent writers, on both databases: on
//! PostgreSQL concurrent begins and finishes share statements
//! (`infrastructure/src/db/turn_batch.rs`), and sharing must change nothing
//! a caller sees: seqs gap-free per session in arrival order, another
//! user's session refused without a write, one bad row failing alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use futures::future::join_all;
use migration::{Migrator, MigratorTrait};
use pantheon_domain::ports::{Checkpoint, SessionRepository, TurnRepository, TurnStart};
use pantheon_domain::tool::ToolRecord;
use pantheon_domain::{
    FailureKind, FinishReason, NewSession, SessionId, TurnEnd, TurnFailure, TurnId, TurnStatus,
    Usage, UserId,
};
use pantheon_infrastructure::db::entity::{session, turn};
use pantheon_infrastructure::db::{SeaOrmSessionRepository, SeaOrmTurnRepository};
use pantheon_tests::{Backend, TestDatabase};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};

on_both_databases!(
    concurrent_begins_number_each_session_gap_free_and_refuse_other_users,
    concurrent_finishes_each_persist_their_own_outcome,
    a_row_the_database_refuses_fails_alone,
    checkpoints_keep_output_and_heartbeat_and_the_sweep_ends_only_stale_turns,
);

struct Store {
    db: DatabaseConnection,
    sessions: SeaOrmSessionRepository,
    turns: Arc<SeaOrmTurnRepository>,
    _database: TestDatabase,
}

async fn store(backend: Backend) -> Store {
    let database = TestDatabase::create(backend).await;
    let db = database.connect().await;
    Migrator::up(&db, None).await.unwrap();
    let (turns, writers) = SeaOrmTurnRepository::new(db.clone());
    for writer in writers {
        tokio::spawn(writer);
    }
    Store {
        sessions: SeaOrmSessionRepository::new(db.clone()),
        turns: Arc::new(turns),
        db,
        _database: database,
    }
}

fn user(name: &str) -> UserId {
    UserId::parse(&format!("{name}-{}", uuid::Uuid::new_v4().simple())).unwrap()
}

impl Store {
    async fn session(&self, owner: &UserId) -> SessionId {
        let id = SessionId::new();
        self.sessions.create(owner, id, &NewSession::default(), Utc::now()).await.unwrap();
        id
    }

    /// `(seq, input)` of a session's turns, in seq order.
    async fn turns_of(&self, session: SessionId) -> Vec<(i64, String)> {
        turn::Entity::find()
            .filter(turn::Column::SessionId.eq(session.as_uuid()))
            .order_by_asc(turn::Column::Seq)
            .all(&self.db)
            .await
            .unwrap()
            .into_iter()
            .map(|t| (t.seq, t.input))
            .collect()
    }

    async fn turn_count(&self, session: SessionId) -> i64 {
        session::Entity::find_by_id(session.as_uuid())
            .one(&self.db)
            .await
            .unwrap()
            .unwrap()
            .turn_count
    }
}

/// Begins `input` for `user` in `session` on a task of its own.
fn begin(
    turns: &Arc<SeaOrmTurnRepository>,
    user: &UserId,
    session: SessionId,
    input: String,
) -> tokio::task::JoinHandle<Result<Option<pantheon_domain::Turn>, pantheon_domain::StorageError>> {
    let (turns, user) = (Arc::clone(turns), user.clone());
    tokio::spawn(async move {
        let start = TurnStart {
            user: &user,
            idempotency: None,
            session_id: session,
            turn_id: TurnId::new(),
            input: &input,
            now: Utc::now(),
        };
        turns.begin(start).await.map(|begun| begun.map(|c| c.turn))
    })
}

async fn concurrent_begins_number_each_session_gap_free_and_refuse_other_users(backend: Backend) {
    let store = store(backend).await;
    let (alice, bob) = (user("alice"), user("bob"));
    let sessions = [store.session(&alice).await, store.session(&alice).await];
    let bobs = store.session(&bob).await;

    // 3 × 40 begins at once, interleaved: Alice's two sessions, and Bob
    // writing into Alice's first (refused) while his own gets turns.
    let mut tasks = Vec::new();
    for i in 0..40 {
        tasks.push(("alice-0", begin(&store.turns, &alice, sessions[0], format!("a0-{i}"))));
        tasks.push(("alice-1", begin(&store.turns, &alice, sessions[1], format!("a1-{i}"))));
        let (target, label) =
            if i % 2 == 0 { (sessions[0], "bob-in-alice") } else { (bobs, "bob") };
        tasks.push((label, begin(&store.turns, &bob, target, format!("b-{i}"))));
    }
    let mut seqs: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (label, task) in tasks {
        let begun = task.await.unwrap().unwrap();
        match (label, begun) {
            ("bob-in-alice", None) => {}
            ("bob-in-alice", Some(turn)) => panic!("Bob began a turn in Alice's session: {turn:?}"),
            (label, Some(turn)) => {
                assert_eq!(turn.status, TurnStatus::InProgress);
                seqs.entry(label).or_default().push(turn.seq);
            }
            (label, None) => panic!("{label}: an owner's begin was refused"),
        }
    }
    for (label, mut got) in seqs {
        got.sort_unstable();
        let want: Vec<i64> = (1..=i64::try_from(got.len()).unwrap()).collect();
        assert_eq!(got, want, "{label}: seqs are 1..n with no gap or repeat");
    }
    for (session, n) in [(sessions[0], 40), (sessions[1], 40), (bobs, 20)] {
        let stored = store.turns_of(session).await;
        assert_eq!(stored.len(), n, "nothing else was written");
        assert_eq!(store.turn_count(session).await, i64::try_from(n).unwrap());
        assert!(stored.iter().all(|(_, input)| !input.starts_with("b-") || session == bobs));
    }
}

async fn concurrent_finishes_each_persist_their_own_outcome(backend: Backend) {
    let store = store(backend).await;
    let owner = user("carol");
    let session = store.session(&owner).await;
    let mut begun = Vec::new();
    for i in 0..60 {
        begun.push(begin(&store.turns, &owner, session, format!("q{i}")).await.unwrap().unwrap());
    }
    let at = Utc.timestamp_micros(1_800_000_000_123_456).unwrap();
    let finishes = begun.into_iter().enumerate().map(|(i, turn)| {
        let turns = Arc::clone(&store.turns);
        let turn = turn.unwrap();
        tokio::spawn(async move {
            let failed = i % 3 == 0;
            let end = TurnEnd {
                output: format!("reply {i}"),
                status: if failed { TurnStatus::Failed } else { TurnStatus::Completed },
                finish_reason: if failed { FinishReason::Error } else { FinishReason::Stop },
                usage: (!failed).then_some(Usage {
                    input_tokens: i as i64,
                    output_tokens: 2,
                    total_tokens: i as i64 + 2,
                }),
                error: failed.then(|| TurnFailure {
                    kind: FailureKind::UpstreamError,
                    detail: format!("d{i}"),
                }),
                completed_at: at,
                tool_calls: i.is_multiple_of(2).then(|| tool_record(i)).into_iter().collect(),
            };
            (i, turn.id, turns.finish(turn.id, end).await.unwrap())
        })
    });
    for (i, id, persisted) in join_all(finishes).await.into_iter().map(Result::unwrap) {
        assert_eq!(persisted.id, id);
        assert_eq!(persisted.input, format!("q{i}"), "the row of this turn, not a neighbour's");
        assert_eq!(persisted.output, format!("reply {i}"));
        assert_eq!(persisted.completed_at, Some(at));
        let recorded: Vec<ToolRecord> =
            i.is_multiple_of(2).then(|| tool_record(i)).into_iter().collect();
        assert_eq!(persisted.tool_calls, recorded, "its own tool calls, read back");
        if i % 3 == 0 {
            assert_eq!(persisted.status, TurnStatus::Failed);
            assert_eq!(persisted.usage, None);
            assert_eq!(
                persisted.error.as_ref().map(|e| e.detail.as_str()),
                Some(format!("d{i}").as_str())
            );
        } else {
            assert_eq!(persisted.status, TurnStatus::Completed);
            assert_eq!(persisted.usage.map(|u| u.total_tokens), Some(i as i64 + 2));
            assert_eq!(persisted.error, None);
        }
    }
    // A turn whose session is gone: an error for that caller only.
    let gone = TurnId::new();
    let end = TurnEnd {
        output: String::new(),
        status: TurnStatus::Completed,
        finish_reason: FinishReason::Stop,
        usage: None,
        error: None,
        completed_at: at,
        tool_calls: Vec::new(),
    };
    assert!(store.turns.finish(gone, end).await.is_err());
}

/// A `file_read` call as a turn records it.
fn tool_record(i: usize) -> ToolRecord {
    ToolRecord {
        name: "file_read".into(),
        arguments: format!(r#"{{"offset":{i}}}"#),
        file_id: None,
        bytes: i as u64,
        error: i.is_multiple_of(4).then(|| "no such file among this turn's files".into()),
    }
}

/// PostgreSQL's `text` cannot hold a NUL: such an input (the API refuses it
/// with a 422 first; the repository must not rely on that) fails its own
/// begin, and the turns that shared its statement are written. SQLite
/// stores it.
async fn a_row_the_database_refuses_fails_alone(backend: Backend) {
    let store = store(backend).await;
    let owner = user("dave");
    let session = store.session(&owner).await;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let input = if i == 25 { "bad\0input".to_owned() } else { format!("fine {i}") };
            begin(&store.turns, &owner, session, input)
        })
        .collect();
    let mut failed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("an owner's begin was refused"),
            Err(_) => failed += 1,
        }
    }
    let stored = store.turns_of(session).await;
    let want_failed = usize::from(backend == Backend::Postgres);
    assert_eq!(failed, want_failed);
    assert_eq!(stored.len(), 50 - want_failed);
    let seqs: Vec<i64> = stored.iter().map(|(seq, _)| *seq).collect();
    let want: Vec<i64> = (1..=i64::try_from(stored.len()).unwrap()).collect();
    assert_eq!(seqs, want, "the failed begin took no seq");
}

async fn checkpoints_keep_output_and_heartbeat_and_the_sweep_ends_only_stale_turns(
    backend: Backend,
) {
    let store = store(backend).await;
    let alice = user("alice");
    let session = store.session(&alice).await;
    let mut ids = Vec::new();
    for input in ["talkative", "silent", "finished"] {
        let turn =
            begin(&store.turns, &alice, session, input.into()).await.unwrap().unwrap().unwrap();
        ids.push(turn.id);
    }
    let [talkative, silent, finished] = [ids[0], ids[1], ids[2]];
    let end = TurnEnd {
        output: "done".into(),
        status: TurnStatus::Completed,
        finish_reason: FinishReason::Stop,
        usage: None,
        error: None,
        completed_at: Utc::now(),
        tool_calls: Vec::new(),
    };
    store.turns.finish(finished, end).await.unwrap();

    let row = |id: TurnId| {
        let db = store.db.clone();
        async move { turn::Entity::find_by_id(id.as_uuid()).one(&db).await.unwrap().unwrap() }
    };
    let begun = row(silent).await.heartbeat_at.expect("stamped at the commit");
    let checkpoints = [
        Checkpoint { turn_id: talkative, output: Some("so far".into()) },
        Checkpoint { turn_id: silent, output: None },
        Checkpoint { turn_id: finished, output: Some("late".into()) },
    ];
    store.turns.checkpoint(&checkpoints).await.unwrap();
    let beat = row(talkative).await.heartbeat_at.expect("stamped");
    assert!(beat > begun, "the checkpoint stamps a later heartbeat: {begun} then {beat}");
    assert_eq!(row(silent).await.heartbeat_at, Some(beat), "one stamp per checkpoint");
    let done = row(finished).await;
    assert_eq!(
        (done.status.as_str(), done.output.as_str()),
        ("completed", "done"),
        "left as it was"
    );

    // Heartbeats younger than the bound (by the store's clock): nothing is stale.
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    assert_eq!(store.turns.expire_stale(Duration::from_secs(60), now).await.unwrap(), 0);
    assert_eq!(store.turns.expire_stale(Duration::ZERO, now).await.unwrap(), 2);
    let kept = row(talkative).await;
    assert_eq!((kept.status.as_str(), kept.output.as_str()), ("incomplete", "so far"));
    assert_eq!(kept.completed_at, Some(now));
    let quiet = row(silent).await;
    assert_eq!((quiet.status.as_str(), quiet.output.as_str()), ("incomplete", ""));
    assert_eq!(row(finished).await.status, "completed");
}
