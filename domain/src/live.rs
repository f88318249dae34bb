//! The output of turns being generated in this process, so a `GET` of an
//! in-progress turn shows its partial reply without a write per chunk.
//! (Another instance sees the output when the turn ends.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::ids::TurnId;

/// Partial outputs by turn. The lock is held only to copy a string, never
/// across an `.await`.
#[derive(Debug, Default, Clone)]
pub struct LiveOutputs {
    outputs: Arc<Mutex<HashMap<TurnId, String>>>,
}

impl LiveOutputs {
    /// Starts tracking `turn`; tracking ends when the guard is dropped.
    pub fn track(&self, turn: TurnId) -> LiveOutput {
        self.outputs.lock().unwrap_or_else(PoisonError::into_inner).insert(turn, String::new());
        LiveOutput { outputs: self.outputs.clone(), turn }
    }

    /// The partial output of `turn`, when it is being generated here.
    pub fn get(&self, turn: TurnId) -> Option<String> {
        self.outputs.lock().unwrap_or_else(PoisonError::into_inner).get(&turn).cloned()
    }
}

/// One tracked turn; appends go to the shared map.
#[derive(Debug)]
pub struct LiveOutput {
    outputs: Arc<Mutex<HashMap<TurnId, String>>>,
    turn: TurnId,
}

impl LiveOutput {
    /// Appends a chunk of the reply.
    pub fn append(&self, delta: &str) {
        if let Some(output) =
            self.outputs.lock().unwrap_or_else(PoisonError::into_inner).get_mut(&self.turn)
        {
            output.push_str(delta);
        }
    }
}

impl Drop for LiveOutput {
    fn drop(&mut self) {
        self.outputs.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.turn);
    }
}
