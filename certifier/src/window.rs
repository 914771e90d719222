//! The conflict window: conflict key → the last version that wrote it, for
//! the versions above a horizon.
//!
//! Keys are 64-bit fingerprints (see `rule.rs`). Two different keys with the
//! same fingerprint can only produce a spurious abort, never a missed
//! conflict, so the fingerprinting is conservative.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};

use crate::Version;

/// Memory bounds of the window. When a commit would exceed either, the oldest
/// versions are forgotten and the horizon moves up (see [`HorizonCause`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimits {
    /// Maximum number of key entries held (summed over remembered versions).
    /// The table behind them holds at most twice as many (and a few
    /// thousand): keys of forgotten versions are swept in batches.
    pub max_entries: usize,
    /// Maximum number of versions remembered.
    pub max_versions: usize,
}

impl Default for WindowLimits {
    fn default() -> Self {
        WindowLimits {
            max_entries: 4_000_000,
            max_versions: 1_000_000,
        }
    }
}

/// Why the horizon is where it is; quoted in "snapshot too old" aborts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HorizonCause {
    /// Nothing forgotten yet.
    Start,
    /// The certifier restarted and rebuilt the window from this far back.
    Restart,
    /// Every reporting replica's oldest open snapshot is at least here.
    Reports,
    /// The memory bound (`WindowLimits`) forced it.
    MemoryLimit(WindowLimits),
}

impl HorizonCause {
    /// The cause as one byte (`raft::decided`), the limits left out: every
    /// node of a group runs with the same ones.
    pub fn code(&self) -> u8 {
        match self {
            HorizonCause::Start => 0,
            HorizonCause::Restart => 1,
            HorizonCause::Reports => 2,
            HorizonCause::MemoryLimit(_) => 3,
        }
    }

    /// The cause of `code`, a memory bound being `limits`.
    pub fn from_code(code: u8, limits: WindowLimits) -> Option<HorizonCause> {
        Some(match code {
            0 => HorizonCause::Start,
            1 => HorizonCause::Restart,
            2 => HorizonCause::Reports,
            3 => HorizonCause::MemoryLimit(limits),
            _ => return None,
        })
    }
}

impl fmt::Display for HorizonCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HorizonCause::Start => write!(f, "initial"),
            HorizonCause::Restart => write!(f, "certifier restarted; window rebuilt from the WAL"),
            HorizonCause::Reports => write!(f, "oldest snapshot still in use on every replica"),
            HorizonCause::MemoryLimit(l) => write!(
                f,
                "window memory limit reached (max_entries={}, max_versions={})",
                l.max_entries, l.max_versions
            ),
        }
    }
}

/// Where a fingerprint goes in the window's table: one multiply under a
/// key random per process. The fingerprints are uniform but public
/// (`rule.rs` seeds them alike in every process, so that replicated nodes
/// decide alike), and hashing them no further would let someone craft
/// keys that pile into one bucket; the key keeps placement private and
/// never changes a decision.
#[derive(Clone, Copy)]
pub(crate) struct TableState {
    key: u64,
}

impl TableState {
    fn new() -> TableState {
        static KEY: std::sync::LazyLock<u64> = std::sync::LazyLock::new(rand::random);
        TableState { key: *KEY }
    }
}

impl Default for TableState {
    fn default() -> Self {
        TableState::new()
    }
}

impl BuildHasher for TableState {
    type Hasher = FingerprintHasher;
    fn build_hasher(&self) -> FingerprintHasher {
        FingerprintHasher {
            key: self.key,
            value: 0,
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) struct FingerprintHasher {
    key: u64,
    value: u64,
}

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        // A folded multiply (as foldhash's): both halves of the product,
        // so the low bits hashbrown indexes by depend on every input bit.
        let p = u128::from(self.value ^ self.key) * 0x9E37_79B9_7F4A_7C15_u128;
        (p as u64) ^ ((p >> 64) as u64)
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; fold anything else in case of misuse.
        for &b in bytes {
            self.value = self.value.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.value = v;
    }
}

/// Forgotten entries a table swept by [`sweep_if_due`] may hold beyond as
/// many as the live ones before it is swept (so a small table is not swept
/// at every version).
pub(crate) const SWEEP_SLACK: usize = 4096;

/// Key → last writer version, for versions in `(horizon, latest]`.
///
/// Invariants:
/// - every version in `(horizon, latest]` that was inserted has all its keys
///   in `map` unless a later version overwrote them, so for any snapshot
///   `s >= horizon`, `get(k) > s` iff some version `> s` wrote `k`;
/// - `map` may also hold keys of forgotten versions (`<= horizon`), which
///   `get` hides: forgetting a version leaves its keys in place, and they
///   are swept in one pass over the table once they could be as many as
///   the live ones (`map.len() > 2 * keys.len() + SWEEP_SLACK`). A random
///   removal per key cost a cache miss each, several per certification;
///   the sweep reads the table in order;
/// - versions are inserted in increasing order, `versions` lists them oldest
///   first and `keys` holds their keys in the same order;
/// - `horizon` never decreases; `keys.len() <= max_entries` and
///   `versions.len() <= max_versions` after every insert.
#[derive(Clone)]
pub struct ConflictWindow {
    map: HashMap<u64, Version, TableState>,
    versions: VecDeque<(Version, u32)>,
    keys: VecDeque<u64>,
    horizon: Version,
    cause: HorizonCause,
    limits: WindowLimits,
    sweep_slack: usize,
}

impl ConflictWindow {
    /// An empty window that remembers nothing at or below `horizon`.
    pub fn new(limits: WindowLimits, horizon: Version, cause: HorizonCause) -> ConflictWindow {
        ConflictWindow {
            map: HashMap::with_hasher(TableState::new()),
            versions: VecDeque::new(),
            keys: VecDeque::new(),
            horizon,
            cause,
            limits,
            sweep_slack: SWEEP_SLACK,
        }
    }

    /// The last version `> horizon` that wrote `fp`, if any.
    #[inline]
    pub fn get(&self, fp: u64) -> Option<Version> {
        self.map.get(&fp).copied().filter(|&v| v > self.horizon)
    }

    pub fn horizon(&self) -> Version {
        self.horizon
    }

    pub fn cause(&self) -> HorizonCause {
        self.cause
    }

    /// Number of key entries held (what `max_entries` bounds).
    pub fn entries(&self) -> usize {
        self.keys.len()
    }

    /// Number of versions remembered.
    pub fn versions(&self) -> usize {
        self.versions.len()
    }

    pub fn limits(&self) -> WindowLimits {
        self.limits
    }

    /// Records that `version` (greater than every version inserted before and
    /// than the horizon) wrote `fps`, then enforces the memory bound.
    pub fn insert(&mut self, version: Version, fps: impl IntoIterator<Item = u64>) {
        debug_assert!(version > self.horizon);
        debug_assert!(self.versions.back().is_none_or(|&(v, _)| v < version));
        let before = self.keys.len();
        for fp in fps {
            self.map.insert(fp, version);
            self.keys.push_back(fp);
        }
        let n = u32::try_from(self.keys.len() - before).unwrap_or(u32::MAX);
        self.versions.push_back((version, n));
        while self.keys.len() > self.limits.max_entries
            || self.versions.len() > self.limits.max_versions
        {
            let Some(&(v, _)) = self.versions.front() else {
                break;
            };
            self.forget_through(v);
            self.cause = HorizonCause::MemoryLimit(self.limits);
        }
    }

    /// Forgets every version's keys, keeping the horizon: a window that
    /// will no longer be checked against (`Certifier::apply_commit`).
    pub fn forget_keys(&mut self) {
        self.map = HashMap::with_hasher(TableState::new());
        self.versions = VecDeque::new();
        self.keys = VecDeque::new();
    }

    /// Moves the horizon up to `h` (no-op if it is already there), forgetting
    /// every version `<= h`. The caller guarantees that no snapshot `< h` will
    /// be certified successfully any more (they are aborted as too old).
    pub fn advance(&mut self, h: Version, cause: HorizonCause) {
        if h > self.horizon {
            self.forget_through(h);
            self.cause = cause;
        }
    }

    fn forget_through(&mut self, h: Version) {
        while let Some(&(v, n)) = self.versions.front() {
            if v > h {
                break;
            }
            self.versions.pop_front();
            self.keys.drain(..(n as usize).min(self.keys.len()));
        }
        self.horizon = self.horizon.max(h);
        let horizon = self.horizon;
        sweep_if_due(&mut self.map, self.keys.len(), self.sweep_slack, |v| {
            *v > horizon
        });
    }
}

/// Sweeps a table whose forgotten entries are left in place (the window's
/// and the dedupe table's): once it holds more than twice its `live`
/// entries and the slack, keeps only the entries `keep` accepts. A sweep
/// reads every bucket, so a table that grew for a peak and now holds few
/// entries would make each sweep cost its peak: once it could hold eight
/// times what is left, it shrinks to four times. Between sweeps a table
/// grows to at most twice its live entries and the slack, so in a steady
/// state it never shrinks only to grow again.
pub(crate) fn sweep_if_due<K: Eq + std::hash::Hash, V, S: BuildHasher>(
    map: &mut HashMap<K, V, S>,
    live: usize,
    sweep_slack: usize,
    mut keep: impl FnMut(&V) -> bool,
) {
    if map.len() <= 2 * live + sweep_slack {
        return;
    }
    map.retain(|_, v| keep(v));
    let room = map.len().max(sweep_slack);
    if map.capacity() > 8 * room {
        map.shrink_to(4 * room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Insert(Vec<u64>),
        Advance(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => prop::collection::vec(0u64..30, 0..6).prop_map(Step::Insert),
            1 => (0u64..6).prop_map(Step::Advance),
        ]
    }

    proptest! {
        /// The window answers as the list of every version's keys would,
        /// cut at the horizon, whether or not forgotten keys were swept;
        /// the table stays within its bound.
        #[test]
        fn answers_like_the_list_of_writes_above_the_horizon(
            steps in prop::collection::vec(step(), 1..150),
            max_entries in 1usize..40,
            max_versions in 1usize..20,
            sweep_slack in 0usize..8,
        ) {
            let limits = WindowLimits { max_entries, max_versions };
            let mut w = ConflictWindow::new(limits, 0, HorizonCause::Start);
            w.sweep_slack = sweep_slack;
            let mut writes: Vec<(Version, Vec<u64>)> = Vec::new();
            for s in steps {
                match s {
                    Step::Insert(fps) => {
                        let v = writes.last().map_or(1, |(v, _)| v + 1);
                        w.insert(v, fps.iter().copied());
                        writes.push((v, fps));
                    }
                    Step::Advance(back) => {
                        let latest = writes.last().map_or(0, |(v, _)| *v);
                        w.advance(latest.saturating_sub(back), HorizonCause::Reports);
                    }
                }
                let h = w.horizon();
                for fp in 0..30 {
                    let want = writes
                        .iter()
                        .filter(|(v, fps)| *v > h && fps.contains(&fp))
                        .map(|(v, _)| *v)
                        .max();
                    prop_assert_eq!(w.get(fp), want, "key {} at horizon {}", fp, h);
                }
                prop_assert!(w.entries() <= max_entries && w.versions() <= max_versions);
                prop_assert!(w.map.len() <= 2 * w.entries() + sweep_slack + 6);
            }
        }
    }

    #[test]
    fn remembers_last_writer_and_forgets_below_horizon() {
        let mut w = ConflictWindow::new(WindowLimits::default(), 0, HorizonCause::Start);
        w.insert(1, [10, 11]);
        w.insert(2, [11]);
        assert_eq!(w.get(10), Some(1));
        assert_eq!(w.get(11), Some(2));
        w.advance(1, HorizonCause::Reports);
        assert_eq!(w.get(10), None);
        assert_eq!(w.get(11), Some(2), "overwritten by a later version: kept");
        assert_eq!((w.horizon(), w.versions(), w.entries()), (1, 1, 1));
        w.advance(0, HorizonCause::Start);
        assert_eq!(w.horizon(), 1, "the horizon never goes back");
        assert_eq!(w.cause(), HorizonCause::Reports);
    }

    /// After a peak the table shrinks with what it holds, so a sweep
    /// (which reads every bucket) costs what is left, not the peak.
    #[test]
    fn the_table_shrinks_after_a_peak() {
        let mut w = ConflictWindow::new(WindowLimits::default(), 0, HorizonCause::Start);
        for v in 1..=200_000u64 {
            w.insert(v, [v]);
        }
        let peak = w.map.capacity();
        for v in 200_001..=220_000u64 {
            w.insert(v, [v]);
            w.advance(v - 10, HorizonCause::Reports);
        }
        assert_eq!(w.get(219_995), Some(219_995));
        assert_eq!(w.get(200_000), None);
        assert!(
            w.map.capacity() * 4 < peak,
            "capacity {} after a peak of {peak}",
            w.map.capacity()
        );
    }

    #[test]
    fn memory_limit_moves_the_horizon() {
        let limits = WindowLimits {
            max_entries: 5,
            max_versions: 100,
        };
        let mut w = ConflictWindow::new(limits, 0, HorizonCause::Start);
        w.insert(1, [1, 2]);
        w.insert(2, [3, 4]);
        assert_eq!(w.horizon(), 0);
        w.insert(3, [5, 6]);
        assert_eq!(w.horizon(), 1);
        assert_eq!(w.entries(), 4);
        assert_eq!(w.cause(), HorizonCause::MemoryLimit(limits));
        assert_eq!(w.get(1), None);
        assert_eq!(w.get(6), Some(3));
        let limits = WindowLimits {
            max_entries: 100,
            max_versions: 2,
        };
        let mut w = ConflictWindow::new(limits, 0, HorizonCause::Start);
        for v in 1..=5 {
            w.insert(v, [v]);
        }
        assert_eq!((w.horizon(), w.versions()), (3, 2));
    }
}
