//! The derived versions log of a served raft node.
//!
//! Raft log indexes are not versions (blank, membership, report and
//! aborted entries take indexes too), yet Subscribe, the tail cache, purge
//! and status read a log whose LSN *is* the version (`record.rs`). So every
//! node keeps a second WAL in today's format: when the state machine
//! applies a committed certification, the record, stamped with its
//! version, is appended here. The serving code of the single certifier
//! then works on every node unchanged.
//!
//! Durability: appends are submitted, not awaited, so applying never waits
//! for this log's fdatasync, and the log syncs late
//! (`tashkent_wal::Durability::Deferred`, see `server::node`): when a
//! snapshot, a subscriber reading it or a checkpoint report waits for it,
//! else every 50 ms. An fdatasync per group would take half of the disk's
//! flushes from the raft log, which is the durable copy that answers
//! clients. So subscribers are shown a version as soon as it is applied
//! (it is then durable in the raft logs of a majority), from the tail
//! cache; what the tail no longer holds they read from this log once it is
//! synced. Two rules keep the two logs consistent across crashes:
//!
//! - a snapshot is persisted only once this log is durable through the
//!   snapshot's newest version (`VersionsLog::sync_through`), so a
//!   restart, which re-applies the raft log after the snapshot, finds every
//!   version up to the snapshot here, and re-applied versions already here
//!   are skipped;
//! - a node that installs a snapshot newer than this log (a wiped or
//!   lagging follower) copies the versions it lacks from a peer
//!   ([`VersionsLog::installed`], `gap.rs`) and makes them durable before
//!   it applies the next entry or keeps a snapshot; only
//!   what no peer holds any more is skipped: the log then restarts after
//!   it ([`VersionsLog::restored`]), and subscribers asking for those get
//!   the usual "purged: rebuild from a checkpoint".
//!
//! A node installs a snapshot only when it lags behind the raft log the
//! leader still holds, and that restarts its versions log, dropping what
//! it held. So the raft log must be kept as long as the versions log is:
//! openraft purges nothing by itself (`server::node`), and when a node's
//! versions log is purged below a version (checkpoints and replicas, see
//! `server::purge`), its raft log is purged through the newest snapshot
//! whose versions are all below it (`SnapshotMarks::purge_through`).
//! Without that, a follower that fell a snapshot behind (a restart under
//! load) dropped versions that no checkpoint allowed to drop, and after a
//! few such restarts no node held them (`tests/raft_random.rs` found it).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tashkent_wal::Wal;
use tokio::sync::{watch, Notify};

use super::gap::{Gap, PeerVersions};
use crate::error::CertifierError;
use crate::server::spool::Spool;
use crate::server::tail::Tail;
use crate::{record, Version};

/// The versions log, with the serving node's tail cache, the wake-up of
/// its durability follower and the newest version subscribers may read.
pub struct VersionsLog {
    pub(super) wal: Wal,
    tail: Arc<Mutex<Tail>>,
    pub(super) submitted: Arc<Notify>,
    readable: Arc<watch::Sender<Version>>,
    snapshots: Mutex<SnapshotMarks>,
    /// The versions an installed snapshot skips, being copied (`gap.rs`).
    pub(super) gap: Gap,
}

/// Snapshots taken or installed on a node (last raft log index → newest
/// version in it), which say how far its raft log may be purged.
#[derive(Debug, Default)]
struct SnapshotMarks {
    marks: BTreeMap<u64, Version>,
    /// The furthest purge answered.
    told: u64,
}

impl SnapshotMarks {
    fn snapshotted(&mut self, index: u64, latest: Version) {
        self.marks.insert(index, latest);
    }

    /// The raft log index to purge through now that no version below
    /// `point` is needed: the newest snapshot's whose versions are all
    /// below it (openraft purges only what a snapshot holds), and whether
    /// that is further than the last answer. Asked again, it answers the
    /// same index: a snapshot is marked here just before openraft takes
    /// it, and a purge asked in between stops short.
    fn purge_through(&mut self, point: Version) -> Option<(u64, bool)> {
        let index = self
            .marks
            .iter()
            .filter(|(_, latest)| **latest < point)
            .map(|(index, _)| *index)
            .max()?;
        // Older snapshots are behind it for good.
        self.marks = self.marks.split_off(&index);
        let further = index > self.told;
        self.told = self.told.max(index);
        Some((index, further))
    }
}

fn broken(reason: String) -> CertifierError {
    CertifierError::RaftStorage {
        what: "versions log".into(),
        reason,
    }
}

impl VersionsLog {
    /// Appends to `wal` (version == LSN), pushing into `tail` and waking
    /// `submitted`'s waiter as the single certifier does, and raising
    /// `readable` (what Subscribe serves) to each applied version.
    pub(crate) fn new(
        wal: Wal,
        tail: Arc<Mutex<Tail>>,
        submitted: Arc<Notify>,
        readable: Arc<watch::Sender<Version>>,
    ) -> VersionsLog {
        VersionsLog {
            wal,
            tail,
            submitted,
            readable,
            snapshots: Mutex::new(SnapshotMarks::default()),
            gap: Gap::default(),
        }
    }

    /// Copies the versions an installed snapshot skips from `peers`.
    /// A large version copied goes to `spool` as it comes
    /// (`gap_copy.rs`).
    pub(crate) fn with_peers(self, peers: PeerVersions, spool: Arc<Spool>) -> VersionsLog {
        VersionsLog {
            gap: Gap::new(peers, spool),
            ..self
        }
    }

    /// A snapshot through raft log index `index` holds versions up to
    /// `latest`.
    pub(crate) fn snapshotted(&self, index: u64, latest: Version) {
        self.snapshots.lock().snapshotted(index, latest);
    }

    /// See [`SnapshotMarks::purge_through`].
    pub(crate) fn raft_purge_through(&self, point: Version) -> Option<(u64, bool)> {
        self.snapshots.lock().purge_through(point)
    }

    /// Whether `version` is in this log already (appended by a run before
    /// a restart).
    pub(crate) fn holds(&self, version: Version) -> bool {
        version <= self.wal.last_lsn()
    }

    /// `version` committed with `rec` (a record with version field 0 or
    /// `version`): append it, unless a run before a restart already did.
    pub(crate) fn committed(&self, version: Version, rec: &Bytes) -> Result<(), CertifierError> {
        self.committed_many(vec![(version, rec.clone())])
    }

    /// The versions one raft entry committed, in order, each with its
    /// record (version field 0, stamped here, or its version already):
    /// appended together (one lock, one wake-up of subscribers), skipping
    /// those a run before a restart appended.
    pub(crate) fn committed_many(&self, recs: Vec<(Version, Bytes)>) -> Result<(), CertifierError> {
        let last = self.wal.last_lsn();
        let mut stamped = Vec::with_capacity(recs.len());
        for (version, rec) in recs {
            if version <= last {
                continue;
            }
            let next = last + 1 + stamped.len() as u64;
            if version != next {
                return Err(broken(format!(
                    "version {version} applied while the log ends at {}",
                    next - 1
                )));
            }
            if record::version_field(&rec) == Some(version) {
                stamped.push(rec);
            } else {
                stamped.push(record::stamped(&rec, version));
            }
        }
        self.append_many(last + 1, stamped)
    }

    /// Appends `payload`, the record of `version` (stamped), which must be
    /// the next LSN.
    pub(super) fn append(&self, version: Version, payload: Bytes) -> Result<(), CertifierError> {
        self.append_many(version, vec![payload])
    }

    /// Appends `payloads`, the stamped records of the versions from
    /// `first` on, which must be the next LSNs.
    fn append_many(&self, first: Version, payloads: Vec<Bytes>) -> Result<(), CertifierError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let last = first + payloads.len() as u64 - 1;
        // Into the tail first: subscribers read it from there.
        {
            let mut tail = self.tail.lock();
            for (version, p) in (first..).zip(&payloads) {
                tail.push(version, p.clone());
            }
        }
        let lsn = self.wal.submit_many(payloads)?;
        if lsn != first {
            return Err(broken(format!(
                "version {first} got LSN {lsn}: someone else writes this log"
            )));
        }
        self.submitted.notify_one();
        self.readable.send_if_modified(|r| {
            let raised = last > *r;
            *r = (*r).max(last);
            raised
        });
        Ok(())
    }

    /// Waits until the versions `<= version` this log holds are durable.
    pub(crate) async fn sync_through(&self, version: Version) -> Result<(), CertifierError> {
        let upto = version.min(self.wal.last_lsn());
        if upto > self.wal.durable_lsn() {
            self.wal.wait_durable(upto).await?;
        }
        Ok(())
    }

    /// The state is now a snapshot whose newest version is `latest`: when
    /// this log ends before it, it restarts at `latest + 1`.
    pub async fn restored(&self, latest: Version) -> Result<(), CertifierError> {
        if self.wal.last_lsn() < latest {
            tracing::info!(
                from = self.wal.last_lsn() + 1,
                to = latest,
                "versions log restarts after a snapshot: older versions are not served here"
            );
            self.wal.restart_at(latest + 1).await?;
            self.submitted.notify_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::SnapshotMarks;

    #[test]
    fn the_raft_log_is_purged_through_the_newest_snapshot_below_the_purge_point() {
        let mut m = SnapshotMarks::default();
        // Nothing snapshotted: nothing purged.
        assert_eq!(m.purge_through(100), None);
        // Snapshots at indexes 40, 80, 120 holding versions up to 30, 70, 110.
        for (index, latest) in [(40, 30), (80, 70), (120, 110)] {
            m.snapshotted(index, latest);
        }
        // No snapshot has all its versions below 30.
        assert_eq!(m.purge_through(30), None);
        assert_eq!(m.purge_through(31), Some((40, true)));
        // Version 70 is still needed: the snapshot at 80 holds it.
        assert_eq!(m.purge_through(70), Some((40, false)));
        assert_eq!(m.purge_through(71), Some((80, true)));
        // Asked again (openraft may not have taken the snapshot yet).
        assert_eq!(m.purge_through(71), Some((80, false)));
        // A purge point that goes back down (a replica reappeared) purges
        // nothing further, and never less than before.
        assert_eq!(m.purge_through(50), None);
        assert_eq!(m.purge_through(1_000), Some((120, true)));
        m.snapshotted(160, 150);
        assert_eq!(m.purge_through(1_000), Some((160, true)));
        assert_eq!(m.marks.len(), 1, "older marks are dropped");
    }
}
