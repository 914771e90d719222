//! openraft's `RaftLogStorage` on the tashkent WAL.
//!
//! - entry index `i` is WAL record `i + 1` (`entry.rs`); appends go
//!   through `Wal::submit`, so one `append` call of many entries, and
//!   concurrent calls, share the WAL's group commit (one fdatasync per
//!   group); the callback fires when the last entry's ticket resolves;
//! - `truncate` is `Wal::truncate_after`, `purge` records the purge pointer
//!   in `raft-meta` first and then lets `Wal::purge_below` drop whole
//!   segments (the WAL may physically keep a few purged entries; they are
//!   never returned);
//! - when openraft purges past the last entry (a snapshot ahead of this
//!   node) or a fresh log's first entry is not index 0, the next append
//!   starts the WAL over at that entry's LSN (`Wal::restart_at`);
//! - the vote, committed and purged log ids live in `raft-meta` (`meta.rs`);
//!   the committed id is only written along with the other two.
//!
//! A failed WAL (poisoned: disk full, fsync error) fails the append's
//! callback and every later append; openraft then stops the node (a fatal
//! storage error), so it neither acknowledges anything again, as today, nor
//! holds up the others (`tests/raft_faults.rs`). A write of `raft-meta`
//! that fails, or has not returned within the WAL's stall timeout, fails
//! the raft log the same way ([`RaftLogFailure`]).

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use parking_lot::Mutex;
use tashkent_wal::{Wal, WalError, WalOptions};

use super::entry::{self, lsn_of};
use super::meta::{self, Meta, META_FILE};
use super::state_machine::KeptSnapshot;
use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::error::CertifierError;

/// Subdirectory of a node's raft directory that holds the WAL.
pub const WAL_DIR: &str = "wal";

struct Shared {
    wal: Wal,
    meta_path: PathBuf,
    meta: Mutex<Meta>,
    /// How long a write of the meta file may take before the raft log is
    /// failed (`WalOptions::stall_timeout`, the WAL's own bound).
    meta_stall_timeout: Option<Duration>,
    meta_failure: MetaFailure,
    /// The entries appended last, consecutive: openraft reads each entry
    /// back to apply it (and to replicate it) right after appending it,
    /// and a WAL reader must walk its segment from the start to find a
    /// record (checking every CRC on the way), which costs more the
    /// further the segment has grown.
    recent: Mutex<Recent>,
}

/// Most entries and bytes (of records) the recent-entries cache holds.
const RECENT_ENTRIES: usize = 8192;
const RECENT_BYTES: usize = 64 << 20;

#[derive(Default)]
struct Recent {
    entries: std::collections::VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Recent {
    fn push(&mut self, e: &Entry, size: usize) {
        if self
            .entries
            .back()
            .is_some_and(|(b, _)| b.log_id.index + 1 != e.log_id.index)
        {
            self.clear();
        }
        self.entries.push_back((e.clone(), size));
        self.bytes += size;
        while self.entries.len() > RECENT_ENTRIES || self.bytes > RECENT_BYTES {
            if let Some((_, s)) = self.entries.pop_front() {
                self.bytes -= s;
            }
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Drops the entries with index >= `index` (a truncation).
    fn truncate(&mut self, index: u64) {
        while self
            .entries
            .back()
            .is_some_and(|(b, _)| b.log_id.index >= index)
        {
            if let Some((_, s)) = self.entries.pop_back() {
                self.bytes -= s;
            }
        }
    }

    /// Entries `lo..hi` if all are here.
    fn get(&self, lo: u64, hi: u64) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.0.log_id.index;
        let last = self.entries.back()?.0.log_id.index;
        if lo < first || hi > last + 1 {
            return None;
        }
        let start = (lo - first) as usize;
        Some(
            self.entries
                .range(start..start + (hi - lo) as usize)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

/// Why the raft log's meta file (the vote, the purge point) can no longer
/// be written, once a write of it failed or did not return within the
/// WAL's stall timeout. Set once; from then on the store writes the file
/// no more: a write left hanging may still land, and another one would
/// race it on the same temporary file. openraft stops the node's raft
/// core on the failed write (a fatal storage error); `server::log_watch`
/// tells why ([`RaftLogFailure`]), as it does for the WAL's own failures.
#[derive(Clone, Default)]
struct MetaFailure(Arc<OnceLock<Arc<WalError>>>);

impl MetaFailure {
    fn get(&self) -> Option<Arc<WalError>> {
        self.0.get().cloned()
    }

    /// Records `e` unless a failure is recorded already; the recorded one.
    fn set(&self, e: WalError) -> Arc<WalError> {
        self.0.get_or_init(|| Arc::new(e)).clone()
    }
}

/// Why a node's raft log failed, if it did: its WAL (poisoned) or its meta
/// file (`MetaFailure`). Cheap to clone, and usable once the store has
/// gone to openraft (`server::log_watch` reads it).
#[derive(Clone)]
pub struct RaftLogFailure {
    wal: Wal,
    meta: MetaFailure,
}

impl RaftLogFailure {
    /// The failure, if the raft log failed.
    pub fn get(&self) -> Option<Arc<WalError>> {
        self.wal.poison_cause().or_else(|| self.meta.get())
    }
}

/// Meta files of this process with a write in flight. A write that hung
/// may outlive its store and still land (a rename of an older vote), so
/// the file is not opened again until the write has returned.
static WRITING: Mutex<BTreeSet<PathBuf>> = parking_lot::const_mutex(BTreeSet::new());

/// A meta path in [`WRITING`] while this lives: however its write ends
/// (returned, panicked, or its thread never started).
struct Writing(PathBuf);

impl Writing {
    fn start(path: PathBuf) -> Writing {
        WRITING.lock().insert(path.clone());
        Writing(path)
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        WRITING.lock().remove(&self.0);
    }
}

/// Waits until no write of `meta_path` from an earlier store of this
/// process is in flight (one cut short by a stop returns in moments), at
/// most `stall_timeout` (without end when there is none, as the WAL
/// waits); refuses after that: the write hung and may still land.
fn wait_for_earlier_write(
    meta_path: &Path,
    stall_timeout: Option<Duration>,
) -> Result<(), CertifierError> {
    let started = std::time::Instant::now();
    while WRITING.lock().contains(meta_path) {
        if stall_timeout.is_some_and(|limit| started.elapsed() >= limit) {
            return Err(CertifierError::RaftStorage {
                what: META_FILE.into(),
                reason: format!(
                    "an earlier write of {} has not returned (a hung disk?): not opened until it \
                     does",
                    meta_path.display()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// What a meta write answers once the meta file failed.
fn meta_failed(cause: &WalError) -> CertifierError {
    CertifierError::RaftStorage {
        what: META_FILE.into(),
        reason: cause.to_string(),
    }
}

/// A node's raft log: the WAL in `<dir>/wal` and `<dir>/raft-meta`.
pub struct LogStore {
    shared: Arc<Shared>,
    /// The last entry the WAL holds above the purge pointer, if any.
    last: Option<LogId>,
    /// The last index of the snapshot on disk, when purges wait for it
    /// ([`LogStore::purge_behind`]).
    kept: Option<tokio::sync::watch::Receiver<KeptSnapshot>>,
}

/// Reads entries; cheap to clone, usable while the store appends.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

fn storage_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: CertifierError) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn logs_err(verb: ErrorVerb) -> impl Fn(CertifierError) -> StorageError {
    move |e| storage_err(ErrorSubject::Logs, verb, e)
}

impl LogStore {
    /// Opens (creating if absent) the log in `dir`. Blocking.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<LogStore, CertifierError> {
        std::fs::create_dir_all(dir)?;
        let meta_path = dir.join(META_FILE);
        wait_for_earlier_write(&meta_path, opts.stall_timeout)?;
        let mut meta = meta::load(&meta_path)?;
        let meta_stall_timeout = opts.stall_timeout;
        let wal = Wal::open(dir.join(WAL_DIR), opts)?;
        let last = last_above(&wal, meta.purged)?;
        // The committed id rides along with vote and purge writes, which
        // can come before the leader's own flush of what it commits (a
        // majority of followers made it committed; `vendor/README.md`).
        // After a crash the log may then end before it, and openraft
        // refuses to start on a committed id past the log. What the log
        // holds is a prefix of what was committed, so its end is a
        // committed id too (an older one is always safe).
        let end = last.or(meta.purged);
        if meta.committed > end {
            meta.committed = end;
        }
        Ok(LogStore {
            shared: Arc::new(Shared {
                wal,
                meta_path,
                meta: Mutex::new(meta),
                meta_stall_timeout,
                meta_failure: MetaFailure::default(),
                recent: Mutex::default(),
            }),
            last,
            kept: None,
        })
    }

    /// Starts node `me`, of a group of several voters, as a follower even
    /// if it led when it stopped: its own committed vote, if that is the
    /// saved one, is read back uncommitted (same term, still its own).
    /// openraft would restore it as leader of the same term, and a
    /// leader's entries reach followers before its own flush
    /// (`vendor/README.md`): entries it sent and lost in a crash would get
    /// their log ids reused by its next ones, which followers holding the
    /// lost ones would take as matching. As a follower, the next leader is
    /// elected in a new term. Only in memory: the next vote openraft saves
    /// replaces it. Returns whether the vote was changed (the node led):
    /// the caller keeps it from standing for a while (`server::node`),
    /// since an uncommitted vote of its own, in a term above the group's
    /// leader's, would depose that leader.
    pub fn start_as_follower(&mut self, me: NodeId) -> bool {
        let mut m = self.shared.meta.lock();
        match m.vote {
            Some(v) if v.is_committed() && v.leader_id().voted_for() == Some(me) => {
                m.vote = Some(openraft::Vote::new(v.leader_id().term, me));
                true
            }
            _ => false,
        }
    }

    /// Purges only behind the snapshot on disk (`kept`, the state
    /// machine's `SnapshotWrites::kept`): openraft purges through a
    /// snapshot it installs as soon as it hands it to the state machine,
    /// and a crash before the snapshot file is written would leave a log
    /// purged past the snapshot a restart finds, which nothing rebuilds.
    pub fn purge_behind(&mut self, kept: tokio::sync::watch::Receiver<KeptSnapshot>) {
        self.kept = Some(kept);
    }

    /// The WAL underneath (for its positions and stats).
    pub fn wal(&self) -> &Wal {
        &self.shared.wal
    }

    /// Whether this raft log failed, shared ([`RaftLogFailure`]).
    pub fn failure(&self) -> RaftLogFailure {
        RaftLogFailure {
            wal: self.shared.wal.clone(),
            meta: self.shared.meta_failure.clone(),
        }
    }

    fn purged(&self) -> Option<LogId> {
        self.shared.meta.lock().purged
    }

    /// Applies `change` to the meta state and writes it durably, on a
    /// thread of its own: it fsyncs, and a write that hangs must not keep
    /// tokio's blocking pool, and so the runtime's shutdown, waiting. A
    /// write that fails, or has not returned within the stall timeout,
    /// fails the meta file for good ([`MetaFailure`]); the bound covers
    /// the whole write (temporary file, fsync, rename, directory fsync).
    async fn update_meta(&self, change: impl FnOnce(&mut Meta)) -> Result<(), CertifierError> {
        let failure = &self.shared.meta_failure;
        if let Some(cause) = failure.get() {
            return Err(meta_failed(&cause));
        }
        let path = &self.shared.meta_path;
        let bytes = {
            let mut m = self.shared.meta.lock();
            change(&mut m);
            meta::encode(path, &m)?
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let writing = Writing::start(path.clone());
        let spawned = std::thread::Builder::new()
            .name("raft-meta".into())
            .spawn(move || {
                let written = meta::write_atomically(&writing.0, &bytes);
                drop(writing);
                let _ = tx.send(written);
            });
        let answer = async {
            rx.await
                .unwrap_or_else(|_| Err(std::io::Error::other("meta writer ended")))
        };
        let outcome = match (spawned, self.shared.meta_stall_timeout) {
            (Err(e), _) => Some(Err(e)),
            (Ok(_), Some(limit)) => tokio::time::timeout(limit, answer).await.ok(),
            (Ok(_), None) => Some(answer.await),
        };
        let failed = match outcome {
            Some(Ok(())) => return Ok(()),
            Some(Err(e)) => WalError::io(path, e),
            None => WalError::Stalled {
                dir: path.parent().unwrap_or(path).to_path_buf(),
                after: self.shared.meta_stall_timeout.unwrap_or_default(),
            },
        };
        let cause = failure.set(failed);
        tracing::error!(error = %cause, "the raft log's meta file failed; the node stops");
        Err(meta_failed(&cause))
    }

    /// The log id of the entry at `index`, read back from the WAL.
    async fn log_id_at(&self, index: u64) -> Result<LogId, CertifierError> {
        read_entries(&self.shared, index, index + 1)
            .await?
            .pop()
            .map(|e| e.log_id)
            .ok_or_else(|| CertifierError::RaftStorage {
                what: format!("log entry {index}"),
                reason: "missing".into(),
            })
    }
}

/// The last entry of the WAL if it is above `purged`.
fn last_above(wal: &Wal, purged: Option<LogId>) -> Result<Option<LogId>, CertifierError> {
    let last_lsn = wal.last_lsn();
    if last_lsn == 0 || last_lsn < wal.first_lsn() {
        return Ok(None);
    }
    let index = last_lsn - 1;
    if purged.is_some_and(|p| index <= p.index) {
        return Ok(None);
    }
    let mut reader = wal.read_from(last_lsn)?;
    match reader.next() {
        Some(rec) => {
            let (lsn, payload) = rec?;
            Ok(Some(entry::decode(lsn, &payload)?.log_id))
        }
        None => Err(CertifierError::RaftStorage {
            what: format!("log entry at LSN {last_lsn}"),
            reason: "the WAL's last record is not readable".into(),
        }),
    }
}

/// Entries with index in `from..to` that exist and are not purged.
async fn read_entries(shared: &Shared, from: u64, to: u64) -> Result<Vec<Entry>, CertifierError> {
    let wal = &shared.wal;
    let purged_next = shared.meta.lock().purged.map_or(0, |p| p.index + 1);
    let lo = from.max(purged_next).max(wal.first_lsn() - 1);
    // Index `i` is LSN `i + 1`, so the last LSN is one past the last index.
    let hi = to.min(wal.last_lsn());
    if lo >= hi {
        return Ok(Vec::new());
    }
    // Entries just appended are read from memory without waiting for their
    // flush here: raft may replicate an entry before it is durable on the
    // leader (it commits once a majority has it durable). The patched
    // openraft (`vendor/README.md`) replicates a leader's entries before
    // their flush here returns, so the two flushes overlap.
    if let Some(hit) = shared.recent.lock().get(lo, hi) {
        return Ok(hit);
    }
    // The WAL reader yields durable records only.
    wal.wait_durable(hi).await?;
    let mut out = Vec::with_capacity((hi - lo) as usize);
    let reader = match wal.read_from(lsn_of(lo)) {
        Err(WalError::Purged { .. }) => return Ok(out),
        r => r?,
    };
    for rec in reader.take((hi - lo) as usize) {
        match rec {
            Ok((lsn, payload)) => out.push(entry::decode(lsn, &payload)?),
            // Purged (or truncated) while we read: openraft accepts a
            // shorter prefix ("entry that is not found is allowed") and
            // checks the count itself where it needs all of them.
            Err(WalError::Purged { .. }) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

fn index_range<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let from = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (from, to)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (from, to) = index_range(&range);
        read_entries(&self.shared, from, to)
            .await
            .map_err(logs_err(ErrorVerb::Read))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.get_log_reader().await.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged = self.purged();
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: self.last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &openraft::Vote<NodeId>) -> Result<(), StorageError> {
        let vote = *vote;
        self.update_meta(|m| m.vote = Some(vote))
            .await
            .map_err(|e| storage_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<openraft::Vote<NodeId>>, StorageError> {
        Ok(self.shared.meta.lock().vote)
    }

    /// Kept in memory and written with the next vote or purge, not on
    /// every commit (that would cost two fsyncs per commit on every node).
    /// A committed id older than the truth is always safe: at start openraft
    /// re-applies only up to it and learns the rest from the leader.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.shared.meta.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.shared.meta.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let wal = &self.shared.wal;
        let mut callback = Some(callback);
        let purged = self.purged();
        let mut entries = entries.into_iter().peekable();
        while let Some(e) = entries.next() {
            let err = |e| storage_err(ErrorSubject::Logs, ErrorVerb::Write, e);
            if purged.is_some_and(|p| e.log_id.index <= p.index) {
                // Already covered by the snapshot behind the purge pointer
                // (openraft's suite does this; a running node does not).
                continue;
            }
            let lsn = lsn_of(e.log_id.index);
            if lsn != wal.last_lsn() + 1 {
                // Only legal where nothing above the purge pointer is held:
                // the log continues right after a snapshot.
                let expected = self.last.or(purged).map_or(0, |l| l.index + 1);
                if self.last.is_some() || (e.log_id.index != expected && purged.is_some()) {
                    return Err(err(CertifierError::RaftStorage {
                        what: format!("append of entry {}", e.log_id),
                        reason: format!("the log continues at index {expected}"),
                    }));
                }
                wal.restart_at(lsn).await.map_err(|w| err(w.into()))?;
                self.shared.recent.lock().clear();
            }
            let rec = entry::encode(&e).map_err(err)?;
            self.shared.recent.lock().push(&e, rec.len());
            let is_last = entries.peek().is_none();
            let submitted = match callback.take_if(|_| is_last) {
                // The WAL acknowledges in LSN order, so the last entry's
                // flush covers every entry of this call: its callback is
                // called by the WAL's writer right after it (no task in
                // between to await a ticket).
                Some(cb) => wal.submit_then(rec, move |r| {
                    cb.log_io_completed(r.map(|_| ()).map_err(std::io::Error::other))
                }),
                None => wal.submit(rec).map(|t| t.lsn),
            };
            let submitted = submitted.map_err(|w| err(w.into()))?;
            debug_assert_eq!(submitted, lsn);
            self.last = Some(e.log_id);
        }
        // Nothing handed to the WAL: no entries, or all of them behind the
        // purge pointer. (Entries come in index order, so those skipped
        // are a prefix: whenever one was appended, so was the last, which
        // took the callback.)
        if let Some(cb) = callback {
            cb.log_io_completed(Ok(()));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let err = logs_err(ErrorVerb::Delete);
        let wal = &self.shared.wal;
        // Keep indexes < log_id.index, i.e. LSNs <= log_id.index.
        self.shared.recent.lock().truncate(log_id.index);
        if log_id.index < wal.last_lsn() {
            wal.truncate_after(log_id.index)
                .await
                .map_err(|w| err(w.into()))?;
        }
        let purged = self.purged();
        self.last = match log_id.index.checked_sub(1) {
            Some(prev) if purged.is_none_or(|p| prev > p.index) && prev < wal.last_lsn() => {
                Some(self.log_id_at(prev).await.map_err(err)?)
            }
            _ => None,
        };
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let err = logs_err(ErrorVerb::Delete);
        if let Some(kept) = &mut self.kept {
            // However long the install takes (one re-spooling a large
            // chunked writeset may take minutes): one that fails, and the
            // node's shutdown, end the wait (`KeptSnapshot::no_more`).
            let index = log_id.index;
            let seen = kept.wait_for(|k| k.covers(index) || k.no_more).await;
            if !seen.is_ok_and(|k| k.covers(index)) {
                return Err(err(CertifierError::RaftStorage {
                    what: "raft log".into(),
                    reason: format!(
                        "not purged through {log_id}: no snapshot through it will be kept \
                         (the install failed, or the node is stopping)"
                    ),
                }));
            }
        }
        // The pointer first: a crash after it leaves purged entries on disk,
        // which are ignored; the reverse could lose entries not yet purged.
        self.update_meta(|m| m.purged = Some(log_id))
            .await
            .map_err(&err)?;
        if self.last.is_some_and(|l| l.index <= log_id.index) {
            self.last = None;
        }
        // Whole segments whose entries are all <= log_id.index.
        self.shared
            .wal
            .purge_below(lsn_of(log_id.index) + 1)
            .await
            .map_err(|w| err(w.into()))
    }
}
