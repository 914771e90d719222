//! openraft's `RaftStateMachine`: the certifier, fed by committed entries.
//!
//! Applying a `Certify` entry *is* certification: the writeset is checked
//! against the state the log prefix built, and a commit takes the next
//! version. A `Decided` entry carries the decisions its leader took at
//! proposal from that same state (`decided.rs`), and applying it records
//! them without checking again. So the version order is the log order of the committed
//! writesets, dense by construction and identical on every node; a leader
//! change cannot skip or reuse a version, because versions are only
//! assigned to entries raft has committed. The dedupe table is part of this
//! state, so a retried transaction id is answered its first outcome by
//! whichever node applies the retry.
//!
//! State is in memory and rebuilt at start from the last snapshot
//! (`<dir>/snapshot`, replaced atomically, `snapshot_file.rs`) plus the
//! log after it. A snapshot is the certifier's image (`CertifierImage`)
//! plus the writesets of the versions in its conflict window
//! (`snapshot.rs`), which this state machine keeps for that purpose, and
//! the writesets arriving in parts or chunks (`parts.rs`, `chunks.rs`; a
//! chunked one's chunks read back from the spool as the snapshot's file
//! is written, off this task).
//!
//! `snapshots.rs` builds, installs and keeps those snapshots; this module
//! applies entries.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, ErrorVerb, OptionalSend, StorageIOError, StoredMembership};
use parking_lot::Mutex;

use super::chunks::{ChunkError, Chunked, Complete, SnapshotAssembly};
use super::decided::Item;
use super::decider::{Base, TableSlot};
use super::parts::{Pending, PART_BYTES};
use super::snapshot::{SnapshotMeta, SnapshotState};
use super::snapshot_file::{self, SnapshotFile};
use super::types::{Command, Entry, LogId, NodeId, Response, StorageError, TypeConfig};
use super::versions::VersionsLog;
use crate::certifier::{Certifier, Decision, Limits};
use crate::error::CertifierError;
use crate::record_view::{RecordNames, RecordView};
use crate::rule::ConflictSet;
use crate::server::spool::Spool;
use crate::window::HorizonCause;
use crate::{record, writeset, Version};

mod snapshots;
#[cfg(test)]
mod tests;

use snapshots::{mark, read_snapshot, snap_err};
pub use snapshots::{KeptSnapshot, SnapshotBuilder, SnapshotWrites};

type Membership = StoredMembership<NodeId, openraft::BasicNode>;

/// The metadata of the snapshot in `<dir>/snapshot` (`snapshot_file.rs`),
/// the last one built or installed; its file is replaced and opened under
/// this lock, so the two match.
type Current = Arc<Mutex<Option<SnapshotMeta>>>;

/// The certifier as a raft state machine.
pub struct StateMachine {
    limits: Limits,
    /// Shared with the serving node (status, Subscribe's bounds), which
    /// only reads it.
    certifier: Arc<Mutex<Certifier>>,
    /// Where committed versions go (a served node); `None` in tests of the
    /// state machine alone.
    versions: Option<Arc<VersionsLog>>,
    /// The record of every version in the window, `(horizon, latest]`,
    /// oldest first (versions are dense: `Certifier::from_image` checks a
    /// snapshot's, and each commit is the next); a large one without its
    /// rows ([`keys_only`]): only its conflict keys are ever read back.
    window: VecDeque<(Version, Bytes)>,
    /// Records arriving in parts, not complete yet (`parts.rs`; only
    /// from logs and snapshots of earlier builds).
    pending: Pending,
    /// Writesets arriving in chunks, not complete yet (`chunks.rs`).
    chunked: Chunked,
    /// Where chunked writesets' rows go (the node's spool).
    spool: Arc<Spool>,
    last_applied: Option<LogId>,
    membership: Membership,
    dir: PathBuf,
    current: Current,
    writes: SnapshotWrites,
    /// Distinguishes snapshots built at the same log id.
    builds: u64,
    /// The versions log or the spool failed (disk full, an fsync error),
    /// or a decision did not fit the applied state: this node cannot
    /// serve what it applies any more. Not an answer to the
    /// writeset (the other nodes commit it): `apply` fails, which stops
    /// this node's raft core, and clients retry on the others.
    failed: Option<String>,
    /// Versions the entry being applied committed, with their records,
    /// for the versions log once the entry is done (one append each).
    unlogged: Vec<(Version, Bytes)>,
    /// This node's id and where its proposal tables go (`decider.rs`): a
    /// table is built from the applied state after each base entry of
    /// this node's and each of its entries certified here.
    deciding: Option<(NodeId, Arc<TableSlot>)>,
}

impl StateMachine {
    /// The state in `dir` (its snapshot, if any); the log after it is
    /// re-applied by openraft. `limits` must be the same on every node.
    /// Chunked writesets are spooled in `<dir>/spool`. Blocking: it reads
    /// the snapshot and spools its chunks again, waiting for the spool's
    /// writer as it goes; a node calls it on a blocking thread.
    pub fn open(dir: &Path, limits: Limits) -> Result<StateMachine, CertifierError> {
        let opts = tashkent_wal::WalOptions {
            segment_size: 4 << 20,
            ..tashkent_wal::WalOptions::default()
        };
        let spool = Arc::new(Spool::open(dir, opts)?);
        StateMachine::open_serving(dir, limits, None, spool)
    }

    /// [`StateMachine::open`], appending each committed version to
    /// `versions` (see [`VersionsLog`]), the rows of chunked writesets
    /// spooled in `spool` (which Subscribe reads them from). The caller then brings the
    /// versions log up to the snapshot ([`VersionsLog::restored`] with
    /// `certifier().latest()`) before raft re-applies the log.
    pub fn open_serving(
        dir: &Path,
        limits: Limits,
        versions: Option<Arc<VersionsLog>>,
        spool: Arc<Spool>,
    ) -> Result<StateMachine, CertifierError> {
        std::fs::create_dir_all(dir)?;
        let mut sm = StateMachine {
            limits,
            certifier: Arc::new(Mutex::new(Certifier::new(limits))),
            versions,
            window: VecDeque::new(),
            failed: None,
            unlogged: Vec::new(),
            pending: Pending::default(),
            chunked: Chunked::default(),
            spool,
            last_applied: None,
            membership: Membership::default(),
            dir: dir.to_path_buf(),
            current: Arc::new(Mutex::new(None)),
            writes: SnapshotWrites::default(),
            builds: 0,
            deciding: None,
        };
        snapshot_file::remove_unkept(dir)?;
        match snapshot_file::open_current(dir) {
            Ok(file) => {
                let (state, chunked) = read_snapshot(&sm.spool, file)?;
                let meta = sm.take(state, chunked)?;
                // The snapshot this node restarts from.
                mark(sm.versions.as_ref(), &meta, sm.certifier.lock().latest());
                sm.writes.kept_through(&meta);
                *sm.current.lock() = Some(meta);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(sm)
    }

    /// Builds a proposal table for node `me` into `slot` after each entry
    /// of `me` that a leader's deciding waits for (`decider.rs`).
    pub fn deciding_for(mut self, me: NodeId, slot: Arc<TableSlot>) -> StateMachine {
        self.deciding = Some((me, slot));
        self
    }

    /// The certifier's state as applied so far.
    pub fn certifier(&self) -> parking_lot::MutexGuard<'_, Certifier> {
        self.certifier.lock()
    }

    /// Its snapshot writes, for the node to stop when it shuts down.
    pub fn snapshot_writes(&self) -> SnapshotWrites {
        self.writes.clone()
    }

    /// The same state, shared (the serving node reads it).
    pub fn shared_certifier(&self) -> Arc<Mutex<Certifier>> {
        self.certifier.clone()
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        self.last_applied
    }

    /// Takes the state a snapshot held ([`read_snapshot`]), this state
    /// machine holding no assembly; its metadata.
    fn take(&mut self, s: SnapshotState, chunked: Chunked) -> Result<SnapshotMeta, CertifierError> {
        let certifier = rebuild(self.limits, s.image, &s.window);
        let certifier = match certifier {
            Ok(c) => c,
            Err(e) => {
                chunked.release(&self.spool);
                return Err(e);
            }
        };
        *self.certifier.lock() = certifier;
        self.window = s.window.into_iter().collect();
        self.pending = s.pending;
        self.chunked = chunked;
        self.last_applied = s.meta.last_log_id;
        self.membership = s.meta.last_membership.clone();
        Ok(s.meta)
    }

    fn apply_command(&mut self, index: u64, log_term: u64, cmd: Command) -> Response {
        let r = match cmd {
            Command::Chunk { .. } => unreachable!("chunks are applied by apply_chunk"),
            Command::Certify { record } => answer(self.certify(record)),
            Command::Part { tag, piece, last } => {
                match self.pending.apply(index, tag, piece, last) {
                    Ok(None) => Response::Applied,
                    Ok(Some(record)) => answer(self.certify(record)),
                    Err(reason) => Response::Lost { reason },
                }
            }
            Command::CertifyBatch { records } => Response::Batch(
                records
                    .into_iter()
                    .map(|r| answer(self.certify(r)))
                    .collect(),
            ),
            Command::Refuse { last, record } => answer(self.refuse(last, record)),
            Command::Decided {
                term,
                latest,
                items,
            } => self.apply_decided(log_term, term, latest, items),
            Command::Base => Response::Applied,
            Command::Report {
                replica,
                applied,
                oldest_snapshot,
            } => answer(
                self.certifier
                    .lock()
                    .report(replica, applied, oldest_snapshot, std::time::Instant::now())
                    .map(|horizon| Response::Horizon { horizon }),
            ),
        };
        self.trim_window();
        r
    }

    /// Drops the window's records at or below the horizon, which may have
    /// moved up (reports, memory bound).
    fn trim_window(&mut self) {
        let horizon = self.certifier.lock().window().horizon();
        while self.window.front().is_some_and(|(v, _)| *v <= horizon) {
            self.window.pop_front();
        }
    }

    /// Applies chunk `piece` of writeset `tag` (`Command::Chunk`), and
    /// certifies the writeset at its last.
    async fn apply_chunk(&mut self, index: u64, tag: u64, piece: Bytes, last: bool) -> Response {
        let r = match self.chunked.apply(&self.spool, index, tag, &piece, last) {
            Ok(None) => Response::Applied,
            Ok(Some(c)) => match self.certify_chunked(c).await {
                Ok(r) => r,
                Err(e) => {
                    self.spool.finished(tag, None);
                    answer(Err(e))
                }
            },
            Err(ChunkError::Lost(reason)) => Response::Lost { reason },
            Err(ChunkError::Invalid(reason)) => Response::Rejected { reason },
            Err(ChunkError::Spool(e)) => {
                self.failed = Some(format!("the spool failed: {e}"));
                Response::Rejected {
                    reason: e.to_string(),
                }
            }
        };
        // Applied at the pace of the spool's disk (a replay would
        // otherwise queue a whole writeset's chunks in memory).
        if let Err(e) = self.spool.keep_up().await {
            self.failed = Some(format!("the spool failed: {e}"));
        }
        self.trim_window();
        r
    }

    /// Certifies a writeset whose chunks were all applied; a commit's
    /// record in the versions log references its spool records, durable
    /// first.
    async fn certify_chunked(&mut self, c: Complete) -> Result<Response, CertifierError> {
        let tag = c.spool.tag;
        self.ensure_table()?;
        let (before, decision) = {
            let mut cert = self.certifier.lock();
            let before = cert.latest();
            let d = cert.certify_set(&c.header.txn_id, c.header.snapshot, &c.cs, &c.names)?;
            (before, d)
        };
        Ok(match decision {
            Decision::Commit(version) => {
                let new = version > before;
                let logged = match &self.versions {
                    Some(v) if new && !v.holds(version) => {
                        let appended = async {
                            self.spool.wal().wait_durable(c.spool.last).await?;
                            v.committed(version, &c.spooled_record())
                        };
                        if let Err(e) = appended.await {
                            self.failed = Some(format!("the versions log failed: {e}"));
                            return Err(e);
                        }
                        true
                    }
                    _ => false,
                };
                let kept = logged.then_some((version, c.spool.first));
                self.spool.finished(tag, kept);
                if new {
                    self.window.push_back((version, c.keys_record));
                }
                Response::Committed { version }
            }
            Decision::Abort(a) => {
                self.spool.finished(tag, None);
                Response::Aborted {
                    code: a.code as i32,
                    reason: a.reason,
                    conflict_version: a.conflict_version,
                }
            }
        })
    }

    fn certify(&mut self, rec: Bytes) -> Result<Response, CertifierError> {
        self.ensure_table()?;
        if record::is_spooled(&rec) {
            return Err(CertifierError::InvalidArgument(
                "spooled writesets are not replicated yet".into(),
            ));
        }
        if let Some(view) = RecordView::parse(&rec) {
            let (before, decision) = {
                let mut c = self.certifier.lock();
                let before = c.latest();
                let names = RecordNames(&rec);
                let d = c.certify_set(&view.txn_id, view.snapshot, &view.cs, &names)?;
                (before, d)
            };
            return self.decided(rec, None, before, decision);
        }
        // Version 0: assigned here, not by the proposer.
        let ws = record::decode(0, &rec)?;
        writeset::validate(&ws)?;
        let (before, decision) = {
            let mut c = self.certifier.lock();
            (c.latest(), c.certify(&ws)?)
        };
        self.decided(rec, Some(ws), before, decision)
    }

    /// Appends the versions the entry just applied committed to the
    /// versions log; a failure fails the entry (`failed`).
    fn log_versions(&mut self) {
        if self.unlogged.is_empty() {
            return;
        }
        let recs = std::mem::take(&mut self.unlogged);
        if let Some(v) = &self.versions {
            if let Err(e) = v.committed_many(recs) {
                self.failed = Some(format!("the versions log failed: {e}"));
            }
        }
    }

    /// A fair-turns refusal the leader logged (`Command::Refuse`): the
    /// transaction aborts unless it was decided before.
    fn refuse(&mut self, last: Version, rec: Bytes) -> Result<Response, CertifierError> {
        let ws = record::decode(0, &rec)?;
        writeset::validate(&ws)?;
        let abort = crate::turns::refusal_after(last, ws.snapshot);
        let (before, decision) = {
            let mut c = self.certifier.lock();
            (c.latest(), c.refuse(&ws.txn_id, ws.snapshot, abort)?)
        };
        self.decided(rec, Some(ws), before, decision)
    }

    /// The answer to `decision` on `rec` (`ws`, if decoded), taken when
    /// the latest version was `before`: a new version is appended to the
    /// versions log and kept in the window.
    fn decided(
        &mut self,
        rec: Bytes,
        ws: Option<crate::Writeset>,
        before: Version,
        decision: Decision,
    ) -> Result<Response, CertifierError> {
        Ok(match decision {
            Decision::Commit(version) => {
                if version > before {
                    self.keep_version(version, rec, ws)?;
                }
                Response::Committed { version }
            }
            Decision::Abort(a) => Response::Aborted {
                code: a.code as i32,
                reason: a.reason,
                conflict_version: a.conflict_version,
            },
        })
    }

    /// Keeps new version `version` of record `rec` (`ws`, if decoded): for
    /// the versions log, and in the window.
    fn keep_version(
        &mut self,
        version: Version,
        rec: Bytes,
        ws: Option<crate::Writeset>,
    ) -> Result<(), CertifierError> {
        if rec.len() > PART_BYTES {
            if self.versions.is_some() {
                self.unlogged.push((version, rec.clone()));
            }
            // A view's record is decoded here, once, and only when it
            // commits.
            let ws = match ws {
                Some(ws) => ws,
                None => record::decode(0, &rec)?,
            };
            self.window.push_back((version, keys_only(ws)));
            return Ok(());
        }
        // A copy: `rec` is a slice of its whole entry (on a follower, of
        // the whole AppendEntries message, which may carry a chunk's
        // megabyte of rows), and the window keeps it until the horizon
        // passes it. Stamped with its version, as the versions log takes
        // it: the one copy serves both.
        let stamped = record::stamped(&rec, version);
        if self.versions.is_some() {
            self.unlogged.push((version, stamped.clone()));
        }
        self.window.push_back((version, stamped));
        Ok(())
    }

    /// Makes the certifier able to certify here again (an entry of an
    /// earlier build, a chunked writeset's last chunk) after it applied
    /// decisions without their conflict keys: rebuilt from its image and
    /// its window's records.
    fn ensure_table(&mut self) -> Result<(), CertifierError> {
        if self.certifier.lock().tabled() {
            return Ok(());
        }
        let image = self.certifier.lock().image();
        let rebuilt = rebuild(self.limits, image, &self.window)?;
        *self.certifier.lock() = rebuilt;
        Ok(())
    }

    /// Applies the decisions of an entry of term `log_term` that the leader
    /// of `term` took (`decided.rs`) where the latest version was `latest`;
    /// they hold only in that term, on that latest version, and only if
    /// they fit the applied state (the versions next, the causes known),
    /// which every node finds alike: an entry that does not is
    /// answered `Lost` whole and changes nothing, so a leader's mistake
    /// costs retries, not the group.
    fn apply_decided(
        &mut self,
        log_term: u64,
        term: u64,
        latest: Version,
        items: Arc<Vec<Item>>,
    ) -> Response {
        let applied = self.certifier.lock().latest();
        let misfit = if term != log_term {
            Some(format!(
                "decided by the leader of term {term}, appended in term {log_term}"
            ))
        } else if latest != applied {
            Some(format!(
                "decided where the latest version was {latest}, applied where it is {applied}"
            ))
        } else {
            self.misfit(&items)
        };
        if let Some(why) = misfit {
            let reason = format!("{why}: not certified, retry");
            return Response::Batch(
                items
                    .iter()
                    .map(|_| Response::Lost {
                        reason: reason.clone(),
                    })
                    .collect(),
            );
        }
        let mut out = Vec::with_capacity(items.len());
        for item in items.iter() {
            let answer = item.response();
            if let Err(e) = self.apply_item(item) {
                // Checked above: only a broken invariant gets here.
                self.failed = Some(format!("a decision does not fit the applied state: {e}"));
            }
            out.push(answer);
        }
        Response::Batch(out)
    }

    /// Why `items` do not fit the applied state, if they do not.
    fn misfit(&self, items: &[Item]) -> Option<String> {
        let mut next = self.certifier.lock().latest() + 1;
        for item in items {
            if let Item::Commit {
                version,
                horizon,
                cause,
                txn_id,
                ..
            } = item
            {
                if let Some(why) = crate::certifier::commit_misfit(next, txn_id, *version, *horizon)
                {
                    return Some(why);
                }
                if HorizonCause::from_code(*cause, self.limits.window).is_none() {
                    return Some(format!("unknown horizon cause {cause}"));
                }
                next += 1;
            }
        }
        None
    }

    fn apply_item(&mut self, item: &Item) -> Result<(), CertifierError> {
        match item {
            Item::Commit {
                version,
                horizon,
                cause,
                txn_id,
                record,
            } => {
                let cause =
                    HorizonCause::from_code(*cause, self.limits.window).ok_or_else(|| {
                        CertifierError::CorruptRecord {
                            version: *version,
                            reason: format!("unknown horizon cause {cause}"),
                        }
                    })?;
                self.certifier
                    .lock()
                    .apply_commit(txn_id, *version, *horizon, cause)?;
                self.keep_version(*version, record.clone(), None)
            }
            Item::Abort {
                txn_id,
                code,
                conflict_version,
                reason,
            } => {
                let abort = crate::rule::Abort {
                    code: crate::proto::AbortCode::try_from(*code)
                        .unwrap_or(crate::proto::AbortCode::Unspecified),
                    reason: reason.clone(),
                    conflict_version: *conflict_version,
                };
                self.certifier.lock().record_abort(txn_id, abort);
                Ok(())
            }
            Item::CommittedBefore { .. } | Item::AbortedBefore { .. } => Ok(()),
        }
    }

    /// After entry `id` of this node's, which a leader deciding waits for
    /// (its base, one certified here): the proposal table the leader
    /// decides its next entries with.
    fn publish_table(&mut self, id: LogId) {
        let Some(slot) = self
            .deciding
            .as_ref()
            .filter(|(me, _)| id.leader_id.node_id == *me)
            .map(|(_, slot)| slot.clone())
        else {
            return;
        };
        // Rebuilt into the applied state itself, so that the next base
        // (after one whose answer was lost) needs a clone only.
        if let Err(e) = self.ensure_table() {
            self.failed = Some(format!("no proposal table after entry {id}: {e}"));
            return;
        }
        let certifier = self.certifier.lock().clone();
        slot.publish(Base {
            term: id.leader_id.term,
            index: id.index,
            certifier,
        });
    }

    /// The replicated state, for a snapshot; the chunks of the writesets
    /// in progress are read back from the spool as it is written.
    fn state(&mut self) -> (SnapshotState, Vec<SnapshotAssembly>, Arc<Spool>) {
        self.builds += 1;
        let id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.builds),
            None => format!("none-{}", self.builds),
        };
        let state = SnapshotState {
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id: id,
            },
            image: self.certifier.lock().image(),
            window: self.window.iter().cloned().collect(),
            pending: self.pending.clone(),
        };
        (
            state,
            self.chunked.snapshot(&self.spool),
            self.spool.clone(),
        )
    }
}

/// A certifier from `image` and the records of its window's versions,
/// with every version's conflict keys (`Certifier::tabled`).
fn rebuild<'a>(
    limits: Limits,
    image: crate::certifier::CertifierImage,
    window: impl IntoIterator<Item = &'a (Version, Bytes)>,
) -> Result<Certifier, CertifierError> {
    let window = window.into_iter();
    let mut sets = Vec::with_capacity(window.size_hint().0);
    for (v, rec) in window {
        sets.push((*v, ConflictSet::of(&record::decode_kept(*v, rec)?)));
    }
    Certifier::from_image(limits, image, sets)
}

/// The record of `ws` without its rows: what a snapshot needs of a version
/// in the window (its conflict keys, `ConflictSet::of`), so a large
/// transaction is not held whole until the horizon passes it.
pub(super) fn keys_only(mut ws: crate::Writeset) -> Bytes {
    for item in &mut ws.items {
        item.row = Bytes::new();
    }
    record::encode(&ws).freeze()
}

/// An error of one command is its answer (every node reaches the same;
/// a leader deciding at proposal answers so at once, `decider.rs`).
pub(super) fn answer(r: Result<Response, CertifierError>) -> Response {
    r.unwrap_or_else(|e| Response::Rejected {
        reason: e.to_string(),
    })
}

impl Drop for StateMachine {
    /// openraft's state machine worker owns this and drops it when it
    /// stops, after a failed command or a panic, dropping the commands
    /// still queued: an install queued behind a failed apply never runs,
    /// and a purge waiting for its snapshot must end.
    fn drop(&mut self) {
        self.writes.no_more_kept();
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Some(v) = &self.versions {
            // The versions an installed snapshot skipped come first.
            v.fill_gap().await.map_err(|e| {
                let e = CertifierError::RaftStorage {
                    what: "the versions an installed snapshot skips".into(),
                    reason: e.to_string(),
                };
                StorageError::from(StorageIOError::write_state_machine(AnyError::new(&e)))
            })?;
        }
        let mut out = Vec::new();
        for e in entries {
            self.last_applied = Some(e.log_id);
            // What a leader deciding waits for (`decider.rs`): its base,
            // a chunked writeset's last chunk.
            let waited = matches!(
                &e.payload,
                EntryPayload::Normal(Command::Base | Command::Chunk { last: true, .. })
            );
            out.push(match e.payload {
                EntryPayload::Blank => Response::Applied,
                EntryPayload::Membership(m) => {
                    self.membership = Membership::new(Some(e.log_id), m);
                    Response::Applied
                }
                EntryPayload::Normal(cmd) => {
                    let index = e.log_id.index;
                    self.pending.expire(index);
                    self.chunked.expire(&self.spool, index);
                    match cmd {
                        Command::Chunk { tag, piece, last } => {
                            self.apply_chunk(index, tag, piece, last).await
                        }
                        cmd => self.apply_command(index, e.log_id.leader_id.term, cmd),
                    }
                }
            });
            self.log_versions();
            if waited {
                self.publish_table(e.log_id);
            }
            if let Some(reason) = self.failed.take() {
                let e = CertifierError::RaftStorage {
                    what: format!("applying entry {}", e.log_id),
                    reason,
                };
                let e = StorageIOError::write_state_machine(AnyError::new(&e));
                return Err(e.into());
            }
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        if !self.chunked.is_empty() {
            // The spool's writer may not have written the newest chunks
            // to its file yet.
            let last = self.spool.wal().last_lsn();
            if let Err(e) = self.spool.wal().wait_durable(last).await {
                self.failed = Some(format!("the spool failed: {e}"));
            }
        }
        SnapshotBuilder {
            state: Some(self.state()),
            versions: self.versions.clone(),
            dir: self.dir.clone(),
            current: self.current.clone(),
            writes: self.writes.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        let file = SnapshotFile::receiving(&self.dir)
            .map_err(|e| snap_err(None, ErrorVerb::Write, CertifierError::from(e)))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        let installed = self.install(meta, snapshot).await;
        if installed.is_err() {
            // The raft core purges its log through this snapshot as soon
            // as it hands it over; the error stops the node, and the purge
            // must not go ahead of a snapshot that will never be on disk.
            self.writes.no_more_kept();
        }
        installed
    }
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self.current.lock();
        let Some(meta) = current.clone() else {
            return Ok(None);
        };
        let file = snapshot_file::open_current(&self.dir)
            .map_err(|e| snap_err(Some(&meta), ErrorVerb::Read, CertifierError::from(e)))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile::reading(file)),
        }))
    }
}
