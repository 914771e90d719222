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
use std::hash::BuildHasher;

use bytes::Bytes;

use crate::rule::Abort;
use crate::window::{sweep_if_due, TableState, SWEEP_SLACK};
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

#[derive(Clone)]
pub struct Dedupe {
    committed: CommittedIds,
    floor: Version,
    aborted: IdMap<Abort>,
    aborted_order: VecDeque<Bytes>,
    max_entries: usize,
}

impl Dedupe {
    /// Remembers commits from version `floor` on.
    pub fn new(max_entries: usize, floor: Version) -> Dedupe {
        Dedupe::with_table(max_entries, floor, u64::MAX, SWEEP_SLACK)
    }

    /// [`Dedupe::new`] keeping only the fingerprint bits in `mask` (tests
    /// narrow it to make ids collide) and sweeping forgotten fingerprints
    /// once they exceed the live ones by `sweep_slack`.
    fn with_table(max_entries: usize, floor: Version, mask: u64, sweep_slack: usize) -> Dedupe {
        Dedupe {
            committed: CommittedIds {
                by_fingerprint: HashMap::default(),
                order: VecDeque::new(),
                bytes: Vec::new(),
                head: 0,
                dropped: 0,
                collided: HashMap::default(),
                seed: foldhash::fast::RandomState::default(),
                mask,
                sweep_slack,
            },
            floor,
            aborted: IdMap::default(),
            aborted_order: VecDeque::new(),
            max_entries,
        }
    }

    pub fn lookup(&self, txn_id: &[u8], snapshot: Version) -> Option<Prior> {
        if let Some(v) = self.committed.get(txn_id) {
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

    /// Remembers that `txn_id` committed at `version` (greater than every
    /// version remembered before).
    pub fn committed(&mut self, txn_id: &[u8], version: Version) {
        self.committed.push(txn_id, version);
    }

    pub fn aborted(&mut self, txn_id: &[u8], abort: Abort) {
        // A copy: the caller's bytes are usually a slice of a whole request
        // or raft entry, which a table this long-lived must not keep alive.
        let txn_id = Bytes::copy_from_slice(txn_id);
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
        self.committed.forget_below(floor);
        self.floor = floor;
    }

    /// The committed ids remembered, oldest version first (what a raft
    /// snapshot carries; [`Dedupe::committed`] in this order rebuilds them).
    pub fn committed_in_order(&self) -> Vec<(Version, Bytes)> {
        self.committed.in_order()
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

/// The committed ids, compactly: every certification on every node adds one
/// and prunes one, so this is on the hot path of the replicated certifier.
///
/// Layout and invariants:
/// - `order` lists the remembered commits by increasing version; commit `i`'s
///   id is `bytes[order[i].start - dropped ..][.. order[i].len]` — the ids
///   are copied end to end into one buffer (a caller's id is a slice of its
///   request or raft entry, which must not be kept alive this long), and
///   `bytes[.. head]` is what forgotten ids left behind;
/// - `by_fingerprint` maps a 64-bit fingerprint of an id (foldhash under a
///   random per-process seed) to a version whose id has that fingerprint;
///   every remembered id is either found there under its own fingerprint
///   or, when a later id with the same fingerprint took its place, in
///   `collided`. A fingerprint match is only a candidate: the id's bytes,
///   looked up by version in `order`, decide;
/// - the table may also map fingerprints to forgotten versions (below the
///   oldest in `order`, so never confirmed): forgetting an id leaves its
///   entry, and such entries are swept in one pass once they could be as
///   many as the live ones. A removal per forgotten id cost a cache miss
///   on every certification; the sweep reads the table in order.
#[derive(Clone)]
struct CommittedIds {
    by_fingerprint: HashMap<u64, Version, TableState>,
    order: VecDeque<Remembered>,
    bytes: Vec<u8>,
    head: usize,
    dropped: u64,
    collided: HashMap<Bytes, Version, foldhash::fast::RandomState>,
    seed: foldhash::fast::RandomState,
    mask: u64,
    sweep_slack: usize,
}

#[derive(Clone, Copy)]
struct Remembered {
    version: Version,
    start: u64,
    len: usize,
}

impl CommittedIds {
    fn len(&self) -> usize {
        self.order.len()
    }

    fn fingerprint(&self, txn_id: &[u8]) -> u64 {
        self.seed.hash_one(txn_id) & self.mask
    }

    fn id(&self, r: &Remembered) -> &[u8] {
        let at = usize::try_from(r.start - self.dropped).expect("ids fit in memory");
        &self.bytes[at..at + r.len]
    }

    /// The id remembered at `version`, if any.
    fn id_at(&self, version: Version) -> Option<&[u8]> {
        let first = self.order.front()?.version;
        // Remembered versions are usually dense (every commit is one).
        let guess = usize::try_from(version.checked_sub(first)?).ok()?;
        let i = match self.order.get(guess) {
            Some(r) if r.version == version => guess,
            _ => self
                .order
                .binary_search_by_key(&version, |r| r.version)
                .ok()?,
        };
        Some(self.id(&self.order[i]))
    }

    fn get(&self, txn_id: &[u8]) -> Option<Version> {
        let fingerprint = self.fingerprint(txn_id);
        if let Some(&v) = self.by_fingerprint.get(&fingerprint) {
            if self.id_at(v) == Some(txn_id) {
                return Some(v);
            }
        }
        if self.collided.is_empty() {
            return None;
        }
        self.collided.get(txn_id).copied()
    }

    fn push(&mut self, txn_id: &[u8], version: Version) {
        debug_assert!(self.order.back().is_none_or(|r| r.version < version));
        let len = txn_id.len();
        let fingerprint = self.fingerprint(txn_id);
        if let Some(other) = self.by_fingerprint.insert(fingerprint, version) {
            if let Some(id) = self.id_at(other).filter(|id| *id != txn_id) {
                let id = Bytes::copy_from_slice(id);
                self.collided.insert(id, other);
            }
        }
        let start = self.dropped + self.bytes.len() as u64;
        self.bytes.extend_from_slice(txn_id);
        self.order.push_back(Remembered {
            version,
            start,
            len,
        });
    }

    fn forget_below(&mut self, floor: Version) {
        while let Some(&r) = self.order.front() {
            if r.version >= floor {
                break;
            }
            if !self.collided.is_empty() {
                let id = self.id(&r);
                if self.collided.get(id) == Some(&r.version) {
                    let id = Bytes::copy_from_slice(id);
                    self.collided.remove(&id);
                }
            }
            self.order.pop_front();
            self.head += r.len;
        }
        let first = self.order.front().map_or(Version::MAX, |r| r.version);
        sweep_if_due(
            &mut self.by_fingerprint,
            self.order.len(),
            self.sweep_slack,
            |v| *v >= first,
        );
        // Move the live ids to the front once the dead ones are the larger
        // part: amortised, every byte is copied at most once per halving.
        if self.head > 4096 && self.head * 2 > self.bytes.len() {
            self.bytes.drain(..self.head);
            self.dropped += self.head as u64;
            self.head = 0;
        }
    }

    /// Every remembered commit, oldest first; the ids share one copy of
    /// the buffer.
    fn in_order(&self) -> Vec<(Version, Bytes)> {
        let live = Bytes::copy_from_slice(&self.bytes[self.head..]);
        let base = self.dropped + self.head as u64;
        self.order
            .iter()
            .map(|r| {
                let at = usize::try_from(r.start - base).expect("ids fit in memory");
                (r.version, live.slice(at..at + r.len))
            })
            .collect()
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

    /// Long ids through many prunes: the buffer is compacted again and
    /// again, and every id still remembered reads back the same.
    #[test]
    fn ids_survive_compaction_of_the_buffer() {
        let id = |v: u64| Bytes::from(format!("{v:0>40}-{}", v % 13));
        for (mask, sweep_slack) in [(u64::MAX, SWEEP_SLACK), (0b111, 0)] {
            let mut d = Dedupe::with_table(100, 1, mask, sweep_slack);
            for v in 1..=10_000u64 {
                d.committed(&id(v), v);
                d.prune(v, v);
                if v % 997 == 0 {
                    let listed = d.committed_in_order();
                    assert_eq!(listed.len(), 100);
                    for (w, got) in listed {
                        assert_eq!(got, id(w));
                        assert_eq!(d.lookup(&id(w), 0), Some(Prior::Committed(w)));
                    }
                    assert!(matches!(
                        d.lookup(&id(v - 100), v - 101),
                        Some(Prior::LookInWal { .. })
                    ));
                }
            }
            assert!(
                d.committed.bytes.len() < 2 * 4096 + 100 * 60,
                "the buffer is compacted"
            );
        }
    }

    proptest! {
        /// The table answers as a plain list of what it was told would,
        /// pruned by the rule in the module header.
        #[test]
        fn answers_like_a_list_of_what_it_was_told(
            max in 1usize..10,
            steps in prop::collection::vec(step(), 1..200),
            colliding in any::<bool>(),
            sweep_slack in 0usize..4,
        ) {
            // Two fingerprint bits make most ids share a fingerprint with
            // another remembered one.
            let mask = if colliding { 0b11 } else { u64::MAX };
            let mut d = Dedupe::with_table(max, 1, mask, sweep_slack);
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
                        d.committed(&id(i), latest);
                        commits.push((latest, id(i)));
                    }
                    Step::Abort(i) => {
                        let a = Abort {
                            code: AbortCode::Conflict,
                            reason: format!("r{i}"),
                            conflict_version: latest,
                        };
                        d.aborted(&id(i), a.clone());
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
                let listed = d.committed_in_order();
                prop_assert_eq!(&listed, &commits);
                prop_assert_eq!(d.len(), commits.len() + aborts.len());
                prop_assert_eq!(d.floor(), floor);
                prop_assert!(d.committed.collided.len() <= d.committed.len());
                prop_assert!(
                    d.committed.by_fingerprint.len()
                        <= 2 * d.committed.len() + d.committed.sweep_slack + 1
                );
            }
        }
    }
}
