//! The certifier's state machine, without I/O: version counter, conflict
//! window, idempotence table and replica progress. The service wraps it in a
//! short lock and adds the WAL.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;

use crate::dedupe::{Dedupe, Prior};
use crate::error::CertifierError;
use crate::proto::{AbortCode, Writeset};
use crate::rule::{self, Abort, ConflictSet};
use crate::window::{ConflictWindow, HorizonCause, WindowLimits};
use crate::Version;

/// Memory bounds of the certifier's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub window: WindowLimits,
    /// Transaction ids remembered (committed ones: at least every version in
    /// the window; aborted ones: at most this many).
    pub max_dedupe: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            window: WindowLimits::default(),
            // ~150 bytes each; a retry older than this is found by
            // scanning the WAL instead.
            max_dedupe: 100_000,
        }
    }
}

/// The decision for one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Commit(Version),
    Abort(Abort),
}

/// A remembered transaction id read back (a snapshot, the WAL) is one a
/// client could have sent: `1..=MAX_TXN_ID_LEN` bytes.
fn check_id(txn_id: &[u8]) -> Result<(), String> {
    if !crate::writeset::txn_id_fits(txn_id) {
        return Err(format!(
            "a transaction id of {} bytes (1..={} expected)",
            txn_id.len(),
            crate::writeset::MAX_TXN_ID_LEN
        ));
    }
    Ok(())
}

/// Why a commit decided elsewhere (`raft::decided`) of `txn_id` as
/// `version`, the window's horizon then `horizon`, does not fit where
/// `next` is the next version, if it does not.
pub fn commit_misfit(
    next: Version,
    txn_id: &[u8],
    version: Version,
    horizon: Version,
) -> Option<String> {
    if version != next || horizon > version {
        return Some(format!(
            "version {version} (horizon {horizon}) decided where {next} is next"
        ));
    }
    check_id(txn_id).err()
}

/// What a replica last reported.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaProgress {
    pub applied: Version,
    pub oldest_snapshot: Version,
    pub reported_at: Instant,
}

/// A certifier's state without its conflict window's fingerprints (which
/// are recomputed from the writesets, see `rule.rs`): with the writesets of the
/// versions in the window, enough to rebuild the certifier on another node
/// ([`Certifier::from_image`]). What a raft snapshot carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifierImage {
    pub latest: Version,
    pub horizon: Version,
    pub cause: HorizonCause,
    pub dedupe_floor: Version,
    /// The dedupe table's committed ids, oldest version first.
    pub committed: Vec<(Version, Bytes)>,
    /// The dedupe table's aborts, oldest first.
    pub aborted: Vec<(Bytes, Abort)>,
    /// Replica id, applied version, oldest snapshot (the inputs of the
    /// horizon; report times are local and not carried).
    pub replicas: Vec<(u32, Version, Version)>,
}

/// GSI certification with a strictly dense version order.
///
/// Invariants:
/// - versions are assigned `latest + 1`, one per commit, never reused;
/// - a transaction with snapshot `s` commits iff `horizon <= s <= latest`
///   and no version in `(s, latest]` conflicts with it (see `rule`); a
///   snapshot below the horizon aborts with `SnapshotTooOld`, never certified
///   against a window that forgot history;
/// - the horizon never decreases and never exceeds `latest`; it moves up to
///   the minimum `oldest_snapshot` over the replicas that have reported (a
///   replica that never reported holds nothing back; one that stopped
///   reporting holds it where it was), or further when the window's memory
///   bound is hit;
/// - a transaction id that committed is answered with its version again
///   (see `dedupe` for how long);
/// - a certifier that applied a decision taken elsewhere
///   ([`Certifier::apply_commit`]) holds no conflict keys for it: it is
///   not `tabled` any more, and refuses to check until it is rebuilt
///   ([`Certifier::from_image`] with its window's writesets).
#[derive(Clone)]
pub struct Certifier {
    window: ConflictWindow,
    tabled: bool,
    latest: Version,
    dedupe: Dedupe,
    replicas: BTreeMap<u32, ReplicaProgress>,
}

impl Certifier {
    /// A certifier with nothing committed yet.
    pub fn new(limits: Limits) -> Certifier {
        Certifier::resume(limits, 0, HorizonCause::Start)
    }

    /// A certifier whose versions `<= latest` are history it does not
    /// remember; feed the versions after that to [`Certifier::replay`].
    pub fn resume(limits: Limits, latest: Version, cause: HorizonCause) -> Certifier {
        Certifier {
            window: ConflictWindow::new(limits.window, latest, cause),
            tabled: true,
            latest,
            dedupe: Dedupe::new(limits.max_dedupe, latest + 1),
            replicas: BTreeMap::new(),
        }
    }

    pub fn latest(&self) -> Version {
        self.latest
    }

    /// The state to carry to another node (see [`CertifierImage`]).
    pub fn image(&self) -> CertifierImage {
        CertifierImage {
            latest: self.latest,
            horizon: self.window.horizon(),
            cause: self.window.cause(),
            dedupe_floor: self.dedupe.floor(),
            committed: self.dedupe.committed_in_order(),
            aborted: self
                .dedupe
                .aborted_in_order()
                .map(|(id, a)| (id.clone(), a.clone()))
                .collect(),
            replicas: self
                .replicas
                .iter()
                .map(|(r, p)| (*r, p.applied, p.oldest_snapshot))
                .collect(),
        }
    }

    /// Rebuilds a certifier from `image` and the conflict sets of every
    /// version in `(horizon, latest]`, in order. `limits` must be those the
    /// image was taken under (a smaller window would forget differently).
    pub fn from_image(
        limits: Limits,
        image: CertifierImage,
        window: impl IntoIterator<Item = (Version, ConflictSet)>,
    ) -> Result<Certifier, CertifierError> {
        let bad =
            |reason: String| CertifierError::InvalidArgument(format!("certifier image: {reason}"));
        if image.horizon > image.latest || image.dedupe_floor > image.latest + 1 {
            return Err(bad(format!(
                "horizon {} / dedupe floor {} beyond latest {}",
                image.horizon, image.dedupe_floor, image.latest
            )));
        }
        let mut w = ConflictWindow::new(limits.window, image.horizon, image.cause);
        let mut next = image.horizon + 1;
        for (v, cs) in window {
            if v != next || v > image.latest {
                return Err(bad(format!("window version {v}, expected {next}")));
            }
            w.insert(v, cs.window_entries());
            next += 1;
        }
        if next != image.latest + 1 {
            return Err(bad(format!(
                "window ends at {}, latest is {}",
                next - 1,
                image.latest
            )));
        }
        let mut dedupe = Dedupe::new(limits.max_dedupe, image.dedupe_floor);
        let mut after = image.dedupe_floor.saturating_sub(1);
        for (v, id) in image.committed {
            if v <= after || v > image.latest {
                return Err(bad(format!(
                    "remembered commit at version {v}, expected one in {}..={}",
                    after + 1,
                    image.latest
                )));
            }
            check_id(&id).map_err(bad)?;
            dedupe.committed(&id, v);
            after = v;
        }
        for (id, a) in image.aborted {
            check_id(&id).map_err(bad)?;
            dedupe.aborted(&id, a);
        }
        let now = Instant::now();
        let replicas = image
            .replicas
            .into_iter()
            .map(|(r, applied, oldest_snapshot)| {
                let p = ReplicaProgress {
                    applied,
                    oldest_snapshot,
                    reported_at: now,
                };
                (r, p)
            })
            .collect();
        Ok(Certifier {
            window: w,
            tabled: true,
            latest: image.latest,
            dedupe,
            replicas,
        })
    }

    pub fn window(&self) -> &ConflictWindow {
        &self.window
    }

    pub fn replicas(&self) -> &BTreeMap<u32, ReplicaProgress> {
        &self.replicas
    }

    pub fn dedupe_len(&self) -> usize {
        self.dedupe.len()
    }

    /// The answer `txn_id` got before, if it must get it again.
    pub fn prior(&self, txn_id: &[u8], snapshot: Version) -> Option<Prior> {
        self.dedupe.lookup(txn_id, snapshot)
    }

    /// The decision for a transaction not seen before (see [`Self::prior`]),
    /// without changing anything: `Commit(v)` names the version
    /// [`Self::commit`] will assign.
    pub fn check(
        &self,
        snapshot: Version,
        cs: &ConflictSet,
        names: &impl rule::Names,
    ) -> Result<Decision, CertifierError> {
        if !self.tabled {
            return Err(CertifierError::Protocol(
                "certifying on a state that applied decisions without their conflict keys".into(),
            ));
        }
        if snapshot > self.latest {
            return Err(CertifierError::InvalidArgument(format!(
                "snapshot {snapshot} is ahead of the latest version {}",
                self.latest
            )));
        }
        let horizon = self.window.horizon();
        if snapshot < horizon {
            return Ok(Decision::Abort(Abort {
                code: AbortCode::SnapshotTooOld,
                reason: format!(
                    "snapshot {snapshot} is older than the certifier's conflict window \
                     (horizon {horizon}: {}); retry the transaction",
                    self.window.cause()
                ),
                conflict_version: 0,
            }));
        }
        Ok(match rule::check(&self.window, snapshot, cs, names) {
            Ok(()) => Decision::Commit(self.latest + 1),
            Err(a) => Decision::Abort(a),
        })
    }

    /// Commits the transaction [`Self::check`] approved: assigns
    /// `latest + 1` and records its keys.
    pub fn commit(&mut self, txn_id: &[u8], cs: &ConflictSet) -> Version {
        let v = self.latest + 1;
        self.latest = v;
        self.window.insert(v, cs.window_entries());
        self.dedupe.committed(txn_id, v);
        self.dedupe.prune(self.window.horizon(), v);
        v
    }

    /// Whether the conflict window holds every version's keys (see the
    /// invariants).
    pub fn tabled(&self) -> bool {
        self.tabled
    }

    /// Applies a commit decided elsewhere (`raft::decided`): `txn_id`
    /// committed as `version`, which must be `latest + 1`, after which the
    /// deciding window's horizon was `horizon` for `cause`. Its keys are
    /// not recorded: this certifier stops being `tabled`.
    pub fn apply_commit(
        &mut self,
        txn_id: &[u8],
        version: Version,
        horizon: Version,
        cause: HorizonCause,
    ) -> Result<(), CertifierError> {
        if let Some(reason) = commit_misfit(self.latest + 1, txn_id, version, horizon) {
            return Err(CertifierError::CorruptRecord { version, reason });
        }
        if self.tabled {
            self.window.forget_keys();
            self.tabled = false;
        }
        self.latest = version;
        self.window.advance(horizon, cause);
        self.dedupe.committed(txn_id, version);
        self.dedupe.prune(self.window.horizon(), version);
        Ok(())
    }

    /// Re-applies a version read back from the WAL at restart; `version`
    /// must be `latest + 1`.
    pub fn replay(
        &mut self,
        version: Version,
        txn_id: &[u8],
        cs: &ConflictSet,
    ) -> Result<(), CertifierError> {
        if version != self.latest + 1 {
            return Err(CertifierError::CorruptRecord {
                version,
                reason: format!("expected version {}", self.latest + 1),
            });
        }
        check_id(txn_id).map_err(|reason| CertifierError::CorruptRecord { version, reason })?;
        self.commit(txn_id, cs);
        Ok(())
    }

    /// Remembers an abort so a retry gets the same reason.
    pub fn record_abort(&mut self, txn_id: &[u8], abort: Abort) {
        self.dedupe.aborted(txn_id, abort);
    }

    /// `prior`, `check`, then `commit`/`record_abort` in one step; for callers
    /// without a log (tests, benchmarks).
    pub fn certify(&mut self, ws: &Writeset) -> Result<Decision, CertifierError> {
        self.certify_set(&ws.txn_id, ws.snapshot, &ConflictSet::of(ws), ws)
    }

    /// [`Self::certify`] of a writeset known by its conflict keys `cs` and
    /// `names` (one that arrived in chunks, whose rows are not in memory).
    pub fn certify_set(
        &mut self,
        txn_id: &Bytes,
        snapshot: Version,
        cs: &ConflictSet,
        names: &impl rule::Names,
    ) -> Result<Decision, CertifierError> {
        self.decide_set(txn_id, snapshot, cs, names).map(|(d, _)| d)
    }

    /// [`Self::certify_set`], also saying whether the decision is new
    /// (`false`: the one `txn_id` got before).
    pub fn decide_set(
        &mut self,
        txn_id: &Bytes,
        snapshot: Version,
        cs: &ConflictSet,
        names: &impl rule::Names,
    ) -> Result<(Decision, bool), CertifierError> {
        if let Some(d) = self.decided_before(txn_id, snapshot)? {
            return Ok((d, false));
        }
        let d = self.check(snapshot, cs, names)?;
        match &d {
            Decision::Commit(_) => {
                self.commit(txn_id, cs);
            }
            Decision::Abort(a) => self.record_abort(txn_id, a.clone()),
        }
        Ok((d, true))
    }

    /// The decision `txn_id` got before, if it must get it again.
    fn decided_before(
        &self,
        txn_id: &[u8],
        snapshot: Version,
    ) -> Result<Option<Decision>, CertifierError> {
        match self.prior(txn_id, snapshot) {
            Some(Prior::Committed(v)) => Ok(Some(Decision::Commit(v))),
            Some(Prior::Aborted(a)) => Ok(Some(Decision::Abort(a))),
            Some(Prior::LookInWal { from, to }) => Err(CertifierError::OutcomeUnknown(format!(
                "transaction may have committed in versions {from}..={to}, not remembered"
            ))),
            None => Ok(None),
        }
    }

    /// Aborts `txn_id` with `abort` (a fair-turns refusal decided before,
    /// `raft::Command::Refuse`), unless it was decided already: then that
    /// decision, as `certify` would answer it.
    pub fn refuse(
        &mut self,
        txn_id: &[u8],
        snapshot: Version,
        abort: Abort,
    ) -> Result<Decision, CertifierError> {
        self.decide_refusal(txn_id, snapshot, abort).map(|(d, _)| d)
    }

    /// [`Self::refuse`], also saying whether the decision is new.
    pub fn decide_refusal(
        &mut self,
        txn_id: &[u8],
        snapshot: Version,
        abort: Abort,
    ) -> Result<(Decision, bool), CertifierError> {
        if let Some(d) = self.decided_before(txn_id, snapshot)? {
            return Ok((d, false));
        }
        self.record_abort(txn_id, abort.clone());
        Ok((Decision::Abort(abort), true))
    }

    /// A replica's progress; returns the (possibly advanced) horizon.
    pub fn report(
        &mut self,
        replica: u32,
        applied: Version,
        oldest_snapshot: Version,
        now: Instant,
    ) -> Result<Version, CertifierError> {
        if applied > self.latest {
            return Err(CertifierError::InvalidArgument(format!(
                "replica {replica} reports applied version {applied} beyond the latest version {}",
                self.latest
            )));
        }
        if oldest_snapshot > applied {
            return Err(CertifierError::InvalidArgument(format!(
                "replica {replica} reports oldest snapshot {oldest_snapshot} above its applied \
                 version {applied}"
            )));
        }
        self.replicas.insert(
            replica,
            ReplicaProgress {
                applied,
                oldest_snapshot,
                reported_at: now,
            },
        );
        if let Some(h) = self.replicas.values().map(|p| p.oldest_snapshot).min() {
            self.window.advance(h, HorizonCause::Reports);
            self.dedupe.prune(self.window.horizon(), self.latest);
        }
        Ok(self.window.horizon())
    }
}
