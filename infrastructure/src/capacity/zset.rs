//! A Redis sorted set in memory, for the in-process store: members
//! ordered by score, ties by member, as Redis orders them.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

/// A counter as a sorted set's score: ordered totally, as Redis orders
/// doubles (counters are never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Score(pub(super) f64);

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A Redis sorted set: each member's score, and the members in order.
#[derive(Debug)]
pub(super) struct ZSet<M, S> {
    scores: HashMap<M, S>,
    order: BTreeSet<(S, M)>,
}

impl<M, S> Default for ZSet<M, S> {
    fn default() -> Self {
        Self { scores: HashMap::new(), order: BTreeSet::new() }
    }
}

impl<M: Ord + Hash + Clone, S: Ord + Copy> ZSet<M, S> {
    pub(super) fn add(&mut self, member: M, score: S) {
        if let Some(old) = self.scores.insert(member.clone(), score) {
            self.order.remove(&(old, member.clone()));
        }
        self.order.insert((score, member));
    }

    pub(super) fn remove(&mut self, member: &M) -> bool {
        let Some(score) = self.scores.remove(member) else { return false };
        self.order.remove(&(score, member.clone()));
        true
    }

    pub(super) fn score(&self, member: &M) -> Option<S> {
        self.scores.get(member).copied()
    }

    pub(super) fn first(&self) -> Option<&(S, M)> {
        self.order.first()
    }

    /// The members in order, with their scores.
    pub(super) fn iter(&self) -> impl Iterator<Item = &(S, M)> {
        self.order.iter()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.scores.len()
    }

    /// `ZRANK`: how many members come before `member`.
    pub(super) fn rank(&self, member: &M) -> Option<u64> {
        let score = self.score(member)?;
        Some(self.order.range(..(score, member.clone())).count() as u64)
    }

    /// Removes and returns the members scored at most `max`.
    pub(super) fn pop_upto(&mut self, max: S) -> Vec<M> {
        let mut gone = Vec::new();
        while let Some((score, member)) = self.order.first().cloned() {
            if score > max {
                break;
            }
            self.order.pop_first();
            self.scores.remove(&member);
            gone.push(member);
        }
        gone
    }

    /// The members scored above `min`.
    pub(super) fn above(&self, min: S) -> impl Iterator<Item = &M> {
        self.order.iter().filter(move |(score, _)| *score > min).map(|(_, member)| member)
    }
}
