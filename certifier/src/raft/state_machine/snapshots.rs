//! The state machine's snapshots: building one from a copy of the applied
//! state, installing one a leader sent, and keeping the newest as
//! `<dir>/snapshot` ([`SnapshotWrites`], [`KeptSnapshot`]), which the raft
//! log's purge waits for.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::Snapshot;
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use tokio::sync::watch;

use super::{Current, StateMachine};
use crate::error::CertifierError;
use crate::raft::chunks::{Chunked, Restoring, SnapshotAssembly};
use crate::raft::snapshot::{self, SnapshotMeta, SnapshotState};
use crate::raft::snapshot_file::{self, NewSnapshot, SnapshotFile};
use crate::raft::types::{StorageError, TypeConfig};
use crate::raft::versions::VersionsLog;
use crate::server::spool::Spool;
use crate::Version;

/// Builds a snapshot from a copy taken when it was asked for.
pub struct SnapshotBuilder {
    /// The copy, and the spool to read its chunks from; taken by the build.
    pub(super) state: Option<(SnapshotState, Vec<SnapshotAssembly>, Arc<Spool>)>,
    pub(super) versions: Option<Arc<VersionsLog>>,
    pub(super) dir: PathBuf,
    pub(super) current: Current,
    pub(super) writes: SnapshotWrites,
}

/// The snapshot writes of one state machine, which its node stops when it
/// shuts down: openraft runs a snapshot build in a task of its own, which
/// may still be writing once the raft core has stopped, into a directory
/// the caller may remove (a wiped node) or reopen.
#[derive(Clone)]
pub struct SnapshotWrites {
    /// Held (read) while a snapshot file is written; `true` once stopped.
    stopped: Arc<RwLock<bool>>,
    /// The last log index of the snapshot in `<dir>/snapshot`.
    kept: Arc<watch::Sender<KeptSnapshot>>,
}

/// What a purge of the raft log waits for ([`SnapshotWrites::kept`]):
/// the last log index of the snapshot on disk, as it rises, and whether
/// this node keeps no further snapshot (an install failed, which stops
/// the node, or the node is stopping). A purge past the snapshot on disk
/// waits until one reaching it is kept, however long the install takes,
/// and is refused once none will be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeptSnapshot {
    pub through: Option<u64>,
    pub no_more: bool,
}

impl KeptSnapshot {
    /// Whether the snapshot on disk reaches log index `index`.
    pub fn covers(&self, index: u64) -> bool {
        self.through.is_some_and(|t| t >= index)
    }
}

impl Default for SnapshotWrites {
    fn default() -> Self {
        SnapshotWrites {
            stopped: Arc::default(),
            kept: Arc::new(watch::channel(KeptSnapshot::default()).0),
        }
    }
}

impl SnapshotWrites {
    /// Waits for a snapshot being written, and refuses later ones.
    pub fn stop(&self) {
        self.no_more_kept();
        *self.stopped.write() = true;
    }

    /// No snapshot will be kept any more: a purge waiting for one is
    /// refused (and the raft core, waiting in it, can stop). Called before
    /// the core is shut down, and when an install fails.
    pub fn no_more_kept(&self) {
        self.kept
            .send_if_modified(|k| !std::mem::replace(&mut k.no_more, true));
    }

    /// Leave to write a snapshot file, held while it is written.
    fn writing(&self) -> Result<RwLockReadGuard<'_, bool>, CertifierError> {
        let stopped = self.stopped.read();
        if *stopped {
            return Err(CertifierError::RaftStorage {
                what: "snapshot".into(),
                reason: "the node stopped: not written".into(),
            });
        }
        Ok(stopped)
    }

    /// The last log index of the snapshot on disk, as it rises: the log
    /// store purges no further (`LogStore::purge_behind`).
    pub fn kept(&self) -> watch::Receiver<KeptSnapshot> {
        self.kept.subscribe()
    }

    pub(super) fn kept_through(&self, meta: &SnapshotMeta) {
        let index = meta.last_log_id.map(|l| l.index);
        self.kept.send_if_modified(|k| {
            let raised = index > k.through;
            k.through = k.through.max(index);
            raised
        });
    }
}

pub(super) fn snap_err(
    meta: Option<&SnapshotMeta>,
    verb: ErrorVerb,
    e: CertifierError,
) -> StorageError {
    let subject = ErrorSubject::Snapshot(meta.map(|m| m.signature()));
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

/// A snapshot's blocking task that panicked or was cancelled.
fn task_failed(task: &str, e: tokio::task::JoinError) -> CertifierError {
    CertifierError::RaftStorage {
        what: "snapshot".into(),
        reason: format!("{task} task failed: {e}"),
    }
}

/// Reads the snapshot in `file` (blocking): its state, and its writesets
/// arriving in chunks, spooled again in `spool`.
pub(super) fn read_snapshot(
    spool: &Spool,
    file: std::fs::File,
) -> Result<(SnapshotState, Chunked), CertifierError> {
    let mut chunked = Restoring::new(spool);
    let state = snapshot::read(file, &mut chunked)?;
    Ok((state, chunked.done()))
}

/// Tells `versions` that the snapshot `meta` holds the versions up to
/// `latest`: how far the raft log may be purged (`versions.rs`).
pub(super) fn mark(versions: Option<&Arc<VersionsLog>>, meta: &SnapshotMeta, latest: Version) {
    if let (Some(v), Some(last)) = (versions, meta.last_log_id) {
        v.snapshotted(last.index, latest);
    }
}

/// Makes the snapshot `meta` in `new` (durable already) `<dir>/snapshot`,
/// unless a newer one is there already: a build that started before an
/// install may end after it, and the raft log may be purged through the
/// installed one. The current snapshot then, and its file to read. The
/// caller holds `writes` ([`SnapshotWrites::writing`]).
fn keep(
    dir: &Path,
    current: &Mutex<Option<SnapshotMeta>>,
    writes: &SnapshotWrites,
    meta: SnapshotMeta,
    new: NewSnapshot,
) -> Result<(SnapshotMeta, std::fs::File), CertifierError> {
    let mut current = current.lock();
    if !matches!(current.as_ref(), Some(newer) if newer.last_log_id > meta.last_log_id) {
        new.rename()?;
        // What is sent from now on matches the file, whatever follows.
        *current = Some(meta.clone());
        snapshot_file::sync_dir(dir)?;
        writes.kept_through(&meta);
    }
    let kept = current.clone().expect("a snapshot was kept");
    Ok((kept, snapshot_file::open_current(dir)?))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let state = self.state.take().ok_or_else(|| {
            let e = CertifierError::RaftStorage {
                what: "snapshot".into(),
                reason: "builder used twice".into(),
            };
            snap_err(None, ErrorVerb::Write, e)
        })?;
        let (state, chunked, spool) = state;
        let meta = state.meta.clone();
        let latest = state.image.latest;
        if let Some(v) = &self.versions {
            // A restart re-applies only the log after this snapshot, so
            // the versions it covers must be in the versions log for good.
            v.fill_gap()
                .await
                .map_err(|e| snap_err(Some(&meta), ErrorVerb::Write, e))?;
            v.sync_through(latest)
                .await
                .map_err(|e| snap_err(Some(&meta), ErrorVerb::Write, e))?;
        }
        let (dir, current, writes) = (self.dir.clone(), self.current.clone(), self.writes.clone());
        let m = meta.clone();
        // Writing, reading the spool and the fsync are blocking work.
        let (kept, file) = tokio::task::spawn_blocking(move || {
            // Held while the file is written: a node that stops waits.
            let _writing = writes.writing()?;
            let copies = chunked
                .iter()
                .map(|a| a.copy(&spool))
                .collect::<Result<Vec<_>, _>>()?;
            let (file, new) = NewSnapshot::create(&dir)?;
            snapshot::write(
                std::io::BufWriter::with_capacity(256 << 10, &file),
                &state,
                copies,
            )?;
            snapshot_file::durable(&file)?;
            drop(chunked);
            keep(&dir, &current, &writes, m, new)
        })
        .await
        .unwrap_or_else(|e| Err(task_failed("builder", e)))
        .map_err(|e| snap_err(Some(&meta), ErrorVerb::Write, e))?;
        if kept.last_log_id == meta.last_log_id {
            mark(self.versions.as_ref(), &meta, latest);
        }
        Ok(Snapshot {
            meta: kept,
            snapshot: Box::new(SnapshotFile::reading(file)),
        })
    }
}

impl StateMachine {
    /// [`openraft::storage::RaftStateMachine::install_snapshot`]'s work.
    pub(super) async fn install(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let err = |e| snap_err(Some(meta), ErrorVerb::Write, e);
        let (file, new) = snapshot.into_new_in(&self.dir).await.map_err(err)?;
        // The assemblies held go first: the snapshot may hold the same
        // ones (a follower that applied part of a stream), and the spool
        // keeps one registration per tag.
        std::mem::take(&mut self.chunked).release(&self.spool);
        let spool = self.spool.clone();
        // Reading it (and spooling its chunks again) is blocking work.
        let (state, chunked) = tokio::task::spawn_blocking(move || {
            snapshot_file::durable(&file)?;
            read_snapshot(&spool, file)
        })
        .await
        .unwrap_or_else(|e| Err(task_failed("install", e)))
        .map_err(err)?;
        self.take(state, chunked).map_err(err)?;
        // The sender's id for these bytes wins over the one inside them.
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        if let Some(v) = &self.versions {
            let latest = self.certifier.lock().latest();
            v.installed(latest).await.map_err(err)?;
        }
        let writing = self.writes.writing().map_err(err)?;
        keep(&self.dir, &self.current, &self.writes, meta.clone(), new).map_err(err)?;
        drop(writing);
        mark(self.versions.as_ref(), meta, self.certifier.lock().latest());
        Ok(())
    }
}
