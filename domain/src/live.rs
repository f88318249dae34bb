//! The output of turns being generated in this process: a `GET` of an
//! in-progress turn shows its partial reply without a write per chunk, and
//! the checkpointer finds here what to save (so a crash loses at most one
//! checkpoint interval of output).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ids::TurnId;
use crate::ports::Checkpoint;

/// One turn being generated.
#[derive(Debug)]
struct Entry {
    output: String,
    /// When the turn was committed (tracking starts as `begin` returns): a
    /// turn younger than one interval with no output yet is not
    /// checkpointed, so a quick turn mostly costs no write, and its
    /// heartbeat, stamped at the commit, is fresh anyway.
    started: Instant,
    /// Output was appended since the last checkpoint was taken.
    dirty: bool,
    /// Stops the turn: what a cancel request reaching this process uses.
    cancel: CancellationToken,
}

/// Partial outputs by turn. The lock is held only to copy or append a
/// string, never across an `.await`.
#[derive(Debug, Default, Clone)]
pub struct LiveOutputs {
    outputs: Arc<Mutex<HashMap<TurnId, Entry>>>,
}

impl LiveOutputs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TurnId, Entry>> {
        self.outputs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts tracking `turn`, which `cancel` stops; tracking ends when the
    /// guard is dropped.
    pub fn track(&self, turn: TurnId, cancel: CancellationToken) -> LiveOutput {
        let entry = Entry { output: String::new(), started: Instant::now(), dirty: false, cancel };
        self.lock().insert(turn, entry);
        LiveOutput { outputs: self.clone(), turn }
    }

    /// The partial output of `turn`, when it is being generated here.
    pub fn get(&self, turn: TurnId) -> Option<String> {
        self.lock().get(&turn).map(|e| e.output.clone())
    }

    /// Cancels `turn`; `false` when it is not generating here.
    pub fn cancel(&self, turn: TurnId) -> bool {
        let token = self.lock().get(&turn).map(|e| e.cancel.clone());
        token.inspect(CancellationToken::cancel).is_some()
    }

    /// What to checkpoint now: every turn generating for at least `age`,
    /// with its output when it grew since the last checkpoint (else only
    /// the heartbeat), and every younger one that has output to save. With
    /// `age` the checkpointer's period, a new turn's output is saved no
    /// later than one period after its commit (a crash then loses at most
    /// that much of it, as of any older turn), and its heartbeat within
    /// two. Taking a checkpoint clears the turns' dirty marks;
    /// [`LiveOutputs::retake`] restores them when the write fails.
    pub fn take_checkpoints(&self, age: Duration) -> Vec<Checkpoint> {
        let now = Instant::now();
        let mut outputs = self.lock();
        outputs
            .iter_mut()
            .filter(|(_, e)| e.dirty || now.duration_since(e.started) >= age)
            .map(|(id, e)| Checkpoint {
                turn_id: *id,
                output: std::mem::take(&mut e.dirty).then(|| e.output.clone()),
            })
            .collect()
    }

    /// A checkpoint write failed: its outputs are sent again next time.
    pub fn retake(&self, failed: &[Checkpoint]) {
        let mut outputs = self.lock();
        for checkpoint in failed.iter().filter(|c| c.output.is_some()) {
            if let Some(entry) = outputs.get_mut(&checkpoint.turn_id) {
                entry.dirty = true;
            }
        }
    }
}

/// One tracked turn; appends go to the shared map.
#[derive(Debug)]
pub struct LiveOutput {
    outputs: LiveOutputs,
    turn: TurnId,
}

impl LiveOutput {
    /// Appends a chunk of the reply.
    pub fn append(&self, delta: &str) {
        if let Some(entry) = self.outputs.lock().get_mut(&self.turn) {
            entry.output.push_str(delta);
            entry.dirty = true;
        }
    }
}

impl Drop for LiveOutput {
    fn drop(&mut self) {
        self.outputs.lock().remove(&self.turn);
    }
}
