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

/// Key → last writer version, for versions in `(horizon, latest]`.
///
/// Invariants:
/// - every version in `(horizon, latest]` that was inserted has all its keys
///   in `map` unless a later version overwrote them, so for any snapshot
///   `s >= horizon`, `get(k) > s` iff some version `> s` wrote `k`;
/// - versions are inserted in increasing order, `versions` lists them oldest
///   first and `keys` holds their keys in the same order;
/// - `horizon` never decreases; `keys.len() <= max_entries` and
///   `versions.len() <= max_versions` after every insert.
pub struct ConflictWindow {
    map: HashMap<u64, Version, TableState>,
    versions: VecDeque<(Version, u32)>,
    keys: VecDeque<u64>,
    horizon: Version,
    cause: HorizonCause,
    limits: WindowLimits,
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
        }
    }

    /// The last version `> horizon` that wrote `fp`, if any.
    #[inline]
    pub fn get(&self, fp: u64) -> Option<Version> {
        self.map.get(&fp).copied()
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
            for _ in 0..n {
                if let Some(fp) = self.keys.pop_front() {
                    // Only drop the entry if no later version overwrote it.
                    if self.map.get(&fp) == Some(&v) {
                        self.map.remove(&fp);
                    }
                }
            }
        }
        self.horizon = self.horizon.max(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
