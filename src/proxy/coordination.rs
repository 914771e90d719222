//! How one proxy's sessions and its applier coordinate: the replica's
//! applied version, the hand-off of certified local transactions to the
//! ordered committer, early aborts of sessions that block it, and the
//! open snapshots reported to the certifier.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tashkent_certifier::{CertifierClient, Version};
use tokio::sync::{oneshot, watch, Notify};

use super::commit_order::CommitOrder;
use super::ProxyConfig;

/// The applier's signal to a session: every version below `version` is
/// committed on the replica; commit yours now and say on `done` whether
/// the local commit succeeded (if not, or if `done` is dropped, the applier
/// applies the writeset from the log instead).
pub struct Turn {
    pub version: Version,
    pub done: oneshot::Sender<bool>,
}

/// How the applier reaches a session whose transaction blocks it.
#[derive(Default)]
pub struct SessionSignal {
    /// Set by the applier: roll the open transaction back (it holds a lock
    /// a certified writeset needs, and has not been certified itself, so it
    /// would fail certification anyway).
    pub doomed: AtomicBool,
    /// Set by the session while its transaction is being certified or
    /// committed: then it gives its locks up instead of being cancelled.
    pub committing: AtomicBool,
    /// The version the session commits (0: not known yet). A session is
    /// handed its version only after the applier is past every earlier
    /// one, so a doom from the applier never concerns a known version.
    pub commit_version: AtomicU64,
    /// The newest version the applier doomed this session's transaction
    /// for: a retry whose snapshot has it does not block that version.
    pub doomed_by: AtomicU64,
    /// Statement cancels of the applier, see [`Cancels`].
    pub cancels: Mutex<Cancels>,
    pub wake: Notify,
}

/// The applier's statement cancels for one session's backend.
///
/// A cancel (`pg_cancel_backend`) is asynchronous: it may land after the
/// doomed transaction ended, on whatever the backend runs next. So the
/// session counts them: a `57014` while some are outstanding is an early
/// abort, and before it opens a transaction with outstanding cancels it
/// waits until they are delivered and absorbs them with a query of its own
/// — a cancel that hit `BEGIN` could otherwise let the client's pipelined
/// statement run outside any transaction. One lock, so the applier never
/// requests a cancel for a transaction the session already ended.
#[derive(Debug, Default)]
pub struct Cancels {
    /// The session's transaction is open on the backend (its opening
    /// answered) and may be doomed.
    pub txn_open: bool,
    /// Cancels the applier decided to send.
    pub requested: u64,
    /// Cancels the applier sent (or gave up sending).
    pub delivered: u64,
}

impl SessionSignal {
    /// The applier sent a cancel [`Shared::doom`] counted (or gave up).
    pub fn cancel_delivered(&self) {
        self.cancels.lock().delivered += 1;
    }
}

/// What a proxy's sessions and its applier share.
///
/// Invariants (ARCHITECTURE.md I2–I4):
/// - `applied` only grows, and every version up to it is committed on the
///   replica (it is `max(tashkent.applied)` after each commit);
/// - a local transaction is in `pending` from before its certification
///   until the applier hands it its `Turn`: the applier never reaches a
///   local version it cannot find, and commits nothing after version `v`
///   until `v`'s turn reported back (or was dropped, and `v` applied from
///   the log instead);
/// - `snapshots` counts the open transactions by snapshot version: its
///   minimum is what the certifier may forget below;
/// - while `recovery_needed` or `apply_stuck` is set, no write commits.
pub struct Shared {
    pub cfg: ProxyConfig,
    pub certifier: CertifierClient,
    /// The replica's applied version (every version up to it is committed
    /// there).
    pub applied: watch::Sender<Version>,
    /// Local transactions sent to the certifier, by transaction id: the
    /// applier hands each its turn when it reaches the version.
    pending: Mutex<HashMap<Vec<u8>, oneshot::Sender<Turn>>>,
    /// Snapshot versions of open transactions (with counts).
    snapshots: Mutex<BTreeMap<Version, usize>>,
    /// Client sessions by their backend's process id.
    sessions: Mutex<HashMap<i32, Arc<SessionSignal>>>,
    nonce: u64,
    next_txn: AtomicU64,
    /// Set when the certifier no longer holds the versions this replica
    /// needs (they were purged): it cannot catch up and must be rebuilt
    /// from a checkpoint; until then writes are refused with this reason.
    recovery_needed: Mutex<Option<String>>,
    /// Set while the applier fails to apply a version: writes are refused
    /// (they could not commit before it), sessions waiting for their turn
    /// are told, and it clears once the version applies.
    pub apply_stuck: watch::Sender<Option<ApplyStuck>>,
    /// The commit order on the replica.
    pub order: CommitOrder,
    pub metrics: super::metrics::ProxyMetrics,
    /// Asks of the certifier's acknowledged version, shared (`acknowledged`).
    acked: AckedAsks,
    /// Answers clients' SSLRequests when a certificate is configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The group flush a COMMIT waits for (`ack_after_flush`).
    pub flusher: Option<Arc<super::flush::Flusher>>,
}

/// The asks of the certifier's acknowledged version, one at a time: a
/// caller may take the answer of an ask that began after it arrived (that
/// answer covers everything acknowledged before the caller arrived), so
/// under load one round trip serves every session that was waiting.
#[derive(Default)]
struct AckedAsks {
    /// Asks begun so far.
    begun: AtomicU64,
    /// One ask at a time.
    turn: tokio::sync::Mutex<()>,
    /// The last answer and the number of the ask that got it.
    last: Mutex<(u64, Version)>,
}

/// Why the applier cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyStuck {
    pub version: Version,
    pub cause: String,
}

impl Shared {
    pub fn new(
        cfg: ProxyConfig,
        certifier: CertifierClient,
        applied: Version,
        tls: Option<tokio_rustls::TlsAcceptor>,
        flusher: Option<Arc<super::flush::Flusher>>,
    ) -> Shared {
        Shared {
            cfg,
            certifier,
            applied: watch::Sender::new(applied),
            pending: Mutex::new(HashMap::new()),
            snapshots: Mutex::new(BTreeMap::new()),
            sessions: Mutex::new(HashMap::new()),
            // Distinct per proxy process, so transaction ids of an earlier
            // incarnation are never mistaken for this one's.
            nonce: RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now())),
            next_txn: AtomicU64::new(1),
            recovery_needed: Mutex::new(None),
            apply_stuck: watch::Sender::new(None),
            order: CommitOrder::new(applied),
            metrics: Default::default(),
            acked: AckedAsks::default(),
            tls,
            flusher,
        }
    }

    /// A transaction id unique across replicas and proxy restarts.
    pub fn new_txn_id(&self) -> bytes::Bytes {
        let mut id = Vec::with_capacity(20);
        id.extend_from_slice(&self.txn_prefix());
        id.extend_from_slice(&self.next_txn.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        id.into()
    }

    /// A client session's id at the certifier's fair turns: unique among
    /// this process's sessions, and (by the nonce) unlikely to meet another
    /// proxy's; never 0.
    pub fn new_session_id(&self) -> u64 {
        let n = self.next_txn.fetch_add(1, Ordering::Relaxed);
        let mixed = self.nonce ^ u64::from(self.cfg.replica_id).rotate_left(40);
        // An odd multiplier is a bijection: distinct counters, distinct ids.
        mixed
            .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .max(1)
    }

    /// What every transaction id of this proxy process starts with (its
    /// replica and its incarnation): the certifier leaves these
    /// transactions' changes out of the applier's stream.
    pub fn txn_prefix(&self) -> bytes::Bytes {
        let mut p = Vec::with_capacity(12);
        p.extend_from_slice(&self.cfg.replica_id.to_be_bytes());
        p.extend_from_slice(&self.nonce.to_be_bytes());
        p.into()
    }

    pub fn expect_turn(&self, txn_id: &[u8]) -> oneshot::Receiver<Turn> {
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(txn_id.to_vec(), tx);
        rx
    }

    /// Withdraws a pending hand-off; false when the applier already took it
    /// (the transaction is committed and its turn is on the way).
    pub fn withdraw(&self, txn_id: &[u8]) -> bool {
        self.pending.lock().remove(txn_id).is_some()
    }

    /// True while a local session waits for the turn of `txn_id`.
    pub fn is_pending(&self, txn_id: &[u8]) -> bool {
        self.pending.lock().contains_key(txn_id)
    }

    pub fn take_pending(&self, txn_id: &[u8]) -> Option<oneshot::Sender<Turn>> {
        self.pending.lock().remove(txn_id)
    }

    pub fn open_snapshot(&self, v: Version) {
        *self.snapshots.lock().entry(v).or_default() += 1;
    }

    pub fn close_snapshot(&self, v: Version) {
        let mut s = self.snapshots.lock();
        if let Some(n) = s.get_mut(&v) {
            *n -= 1;
            if *n == 0 {
                s.remove(&v);
            }
        }
    }

    /// The oldest snapshot still in use (the applied version when none is).
    pub fn oldest_snapshot(&self) -> Version {
        let applied = *self.applied.borrow();
        self.snapshots
            .lock()
            .keys()
            .next()
            .map_or(applied, |&v| v.min(applied))
    }

    pub fn register_session(&self, backend_pid: i32) -> Arc<SessionSignal> {
        let signal = Arc::new(SessionSignal::default());
        self.sessions.lock().insert(backend_pid, signal.clone());
        signal
    }

    pub fn unregister_session(&self, backend_pid: i32) {
        self.sessions.lock().remove(&backend_pid);
    }

    /// Dooms the transaction of the session on `backend_pid`, which holds
    /// a lock the applier waits for. An uncommitted one is rolled back (its
    /// running statement cancelled: the caller sends the cancel counted
    /// here when this returns the session, and reports it with
    /// [`SessionSignal::cancel_delivered`]); a committing one gives its
    /// locks up and lets the applier apply its writeset from the log (see
    /// `session::commit`). `None`: nothing to cancel.
    ///
    /// `applying` is the version the applier is at: a session committing
    /// an earlier version commits before it, so it is left alone.
    pub fn doom(&self, backend_pid: i32, applying: Version) -> Option<Arc<SessionSignal>> {
        let signal = self.sessions.lock().get(&backend_pid).cloned()?;
        let cancel = {
            let mut c = signal.cancels.lock();
            if !c.txn_open {
                return None;
            }
            let committing = signal.committing.load(Ordering::Acquire);
            let version = signal.commit_version.load(Ordering::Acquire);
            if committing && version != 0 && version < applying {
                return None;
            }
            let cancel = !committing;
            if cancel {
                c.requested += 1;
            }
            // Under the lock: the session clears it when it opens its next
            // transaction, so it never dooms that one.
            signal.doomed_by.fetch_max(applying, Ordering::AcqRel);
            signal.doomed.store(true, Ordering::Release);
            cancel
        };
        signal.wake.notify_one();
        cancel.then_some(signal)
    }

    /// Why this replica must be rebuilt from a checkpoint, if it must.
    pub fn recovery_needed(&self) -> Option<String> {
        self.recovery_needed.lock().clone()
    }

    /// Records that the replica cannot catch up from the log; true the
    /// first time.
    pub fn set_recovery_needed(&self, why: String) -> bool {
        let first = self.recovery_needed.lock().replace(why).is_none();
        // Sessions waiting for a turn that cannot come are told (08007).
        self.pending.lock().clear();
        first
    }

    /// Waits until the replica has applied `v`.
    /// The newest version the certifier has acknowledged, asked after
    /// this call began (strong consistency).
    pub async fn acknowledged(&self) -> Result<Version, tashkent_certifier::CertifierError> {
        let arrived = self.acked.begun.load(Ordering::Acquire);
        let _turn = self.acked.turn.lock().await;
        let (ask, version) = *self.acked.last.lock();
        if ask > arrived {
            return Ok(version);
        }
        let ask = self.acked.begun.fetch_add(1, Ordering::AcqRel) + 1;
        let version = self.certifier.acknowledged().await?;
        *self.acked.last.lock() = (ask, version);
        Ok(version)
    }

    pub async fn wait_applied(&self, v: Version) {
        let mut rx = self.applied.subscribe();
        let _ = rx.wait_for(|&a| a >= v).await;
    }
}
