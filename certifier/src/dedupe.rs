//! Idempotence: transaction id → the answer it got.
//!
//! Committed answers are kept for every version `>= floor`, where the floor
//! never passes `horizon + 1` (so every commit the conflict window remembers
//! is also remembered here) and otherwise trails the latest version by at
//! most `max_entries`. A lookup miss for a snapshot `s` with `s + 1 < floor`
//! is therefore ambiguous — the transaction may have committed at a version
//! this table forgot — and the caller resolves it from the WAL.
//!
//! Aborted answers are a convenience (the same reason text on a retry), kept
//! FIFO up to `max_entries`; correctness does not depend on them, because a
//! retried aborted transaction aborts again (the conflicting version is still
//! newer than its snapshot, or its snapshot is now below the horizon). The
//! exception is a refusal for another session's fair turn (`turns`): once
//! forgotten, a retry of the same id may commit. That is still sound, since
//! a client resends an id only when it got no answer for it.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::rule::Abort;
use crate::Version;

/// What a transaction id was answered before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prior {
    Committed(Version),
    Aborted(Abort),
    /// Not remembered, but it may have committed in `from..=to`: look there
    /// in the WAL.
    LookInWal {
        from: Version,
        to: Version,
    },
}

/// Transaction ids are hashed with foldhash under a random seed: SipHash
/// (std's default) was a measurable share of certification time.
type IdMap<V> = HashMap<Bytes, V, foldhash::fast::RandomState>;

pub struct Dedupe {
    committed: IdMap<Version>,
    order: VecDeque<(Version, Bytes)>,
    floor: Version,
    aborted: IdMap<Abort>,
    aborted_order: VecDeque<Bytes>,
    max_entries: usize,
}

impl Dedupe {
    /// Remembers commits from version `floor` on.
    pub fn new(max_entries: usize, floor: Version) -> Dedupe {
        Dedupe {
            committed: IdMap::default(),
            order: VecDeque::new(),
            floor,
            aborted: IdMap::default(),
            aborted_order: VecDeque::new(),
            max_entries,
        }
    }

    pub fn lookup(&self, txn_id: &[u8], snapshot: Version) -> Option<Prior> {
        if let Some(&v) = self.committed.get(txn_id) {
            return Some(Prior::Committed(v));
        }
        if let Some(a) = self.aborted.get(txn_id) {
            return Some(Prior::Aborted(a.clone()));
        }
        // A commit of this transaction has a version > snapshot.
        let from = snapshot.saturating_add(1);
        (from < self.floor).then(|| Prior::LookInWal {
            from,
            to: self.floor - 1,
        })
    }

    pub fn committed(&mut self, txn_id: Bytes, version: Version) {
        self.committed.insert(txn_id.clone(), version);
        self.order.push_back((version, txn_id));
    }

    pub fn aborted(&mut self, txn_id: Bytes, abort: Abort) {
        if self.aborted.insert(txn_id.clone(), abort).is_none() {
            self.aborted_order.push_back(txn_id);
        }
        while self.aborted_order.len() > self.max_entries {
            if let Some(old) = self.aborted_order.pop_front() {
                self.aborted.remove(&old);
            }
        }
    }

    /// Forgets commits below `min(horizon + 1, latest + 1 - max_entries)`.
    pub fn prune(&mut self, horizon: Version, latest: Version) {
        let by_size = (latest + 1).saturating_sub(self.max_entries as u64);
        let floor = (horizon + 1).min(by_size).max(self.floor);
        while let Some((v, _)) = self.order.front() {
            if *v >= floor {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.committed.remove(&id);
            }
        }
        self.floor = floor;
    }

    /// The committed ids remembered, oldest version first (what a raft
    /// snapshot carries; [`Dedupe::committed`] in this order rebuilds them).
    pub fn committed_in_order(&self) -> impl Iterator<Item = (Version, &Bytes)> {
        self.order.iter().map(|(v, id)| (*v, id))
    }

    /// The aborts remembered, oldest first.
    pub fn aborted_in_order(&self) -> impl Iterator<Item = (&Bytes, &Abort)> {
        self.aborted_order
            .iter()
            .filter_map(|id| self.aborted.get(id).map(|a| (id, a)))
    }

    pub fn floor(&self) -> Version {
        self.floor
    }

    pub fn len(&self) -> usize {
        self.committed.len() + self.aborted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::AbortCode;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Commit(u8),
        Abort(u8),
        Prune { horizon_back: u64 },
        Lookup { id: u8, snapshot_back: u64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u8..40).prop_map(Step::Commit),
            1 => (0u8..40).prop_map(Step::Abort),
            1 => (0u64..8).prop_map(|horizon_back| Step::Prune { horizon_back }),
            4 => (0u8..40, 0u64..12).prop_map(|(id, snapshot_back)| Step::Lookup { id, snapshot_back }),
        ]
    }

    fn id(i: u8) -> Bytes {
        // Ids of different lengths, some sharing a prefix.
        Bytes::from(vec![i % 7; 1 + usize::from(i / 7)])
    }

    proptest! {
        /// The table answers as a plain list of what it was told would,
        /// pruned by the rule in the module header.
        #[test]
        fn answers_like_a_list_of_what_it_was_told(
            max in 1usize..10,
            steps in prop::collection::vec(step(), 1..200),
        ) {
            let mut d = Dedupe::new(max, 1);
            // The model: every commit, and the floor.
            let (mut commits, mut floor, mut latest) = (Vec::<(Version, Bytes)>::new(), 1, 0);
            let mut aborts = VecDeque::<(Bytes, Abort)>::new();
            for s in steps {
                match s {
                    Step::Commit(i) => {
                        if commits.iter().any(|(_, c)| *c == id(i)) {
                            continue; // the certifier answers a retry instead
                        }
                        latest += 1;
                        d.committed(id(i), latest);
                        commits.push((latest, id(i)));
                    }
                    Step::Abort(i) => {
                        let a = Abort {
                            code: AbortCode::Conflict,
                            reason: format!("r{i}"),
                            conflict_version: latest,
                        };
                        d.aborted(id(i), a.clone());
                        if let Some(old) = aborts.iter_mut().find(|(x, _)| *x == id(i)) {
                            old.1 = a;
                        } else {
                            aborts.push_back((id(i), a));
                        }
                        while aborts.len() > max {
                            aborts.pop_front();
                        }
                    }
                    Step::Prune { horizon_back } => {
                        let horizon = latest.saturating_sub(horizon_back);
                        d.prune(horizon, latest);
                        let by_size = (latest + 1).saturating_sub(max as u64);
                        floor = (horizon + 1).min(by_size).max(floor);
                        commits.retain(|(v, _)| *v >= floor);
                    }
                    Step::Lookup { id: i, snapshot_back } => {
                        let snapshot = latest.saturating_sub(snapshot_back);
                        let want = if let Some((v, _)) = commits.iter().find(|(_, c)| *c == id(i)) {
                            Some(Prior::Committed(*v))
                        } else if let Some((_, a)) = aborts.iter().find(|(x, _)| *x == id(i)) {
                            Some(Prior::Aborted(a.clone()))
                        } else {
                            (snapshot + 1 < floor).then(|| Prior::LookInWal {
                                from: snapshot + 1,
                                to: floor - 1,
                            })
                        };
                        prop_assert_eq!(d.lookup(&id(i), snapshot), want);
                    }
                }
                let listed: Vec<_> = d.committed_in_order().map(|(v, c)| (v, c.clone())).collect();
                prop_assert_eq!(&listed, &commits);
                prop_assert_eq!(d.len(), commits.len() + aborts.len());
                prop_assert_eq!(d.floor(), floor);
            }
        }
    }
}
