//! The certifier on top of the WAL: certification (whole writesets here,
//! those streamed in chunks in `streamed.rs`), fair turns, progress
//! reports, checkpoints and purge, status.
//!
//! Pipelining: under the state lock a transaction is looked up, certified,
//! given `v = latest + 1` and submitted to the WAL (`submit` assigns LSN `v`
//! synchronously and never blocks on I/O); the lock is released and only
//! then is the WAL ticket awaited. Many transactions thus wait for the same
//! group `fdatasync` while later ones are being certified: throughput is
//! bounded by the CPU work under the lock, not by fsync latency.
//!
//! Answers: `Committed(v)` only once `v` is durable. `Aborted` only once the
//! version it conflicts with is durable, so that after a crash the same
//! transaction retried meets the same conflict (rebuilt from the WAL) or a
//! snapshot below the rebuilt horizon: it is aborted again.
//!
//! A WAL failure poisons the service: every later request is answered
//! `Unavailable` and nothing is acknowledged again until a restart.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tashkent_wal::{Wal, WalError};
use tokio::sync::{watch, Notify};

use super::spool::Spool;
use super::tail::Tail;
use crate::certifier::{Certifier, Decision};
use crate::dedupe::Prior;
use crate::error::{CertifierError, LogFailure};
use crate::outcome::Outcome;
use crate::proto::{self, Writeset};
use crate::rule::{self, ConflictSet, Names};
use crate::turns::{write_keys, Claim, Turn, Turns};
use crate::window::ConflictWindow;
use crate::writeset::{self};
use crate::{record, Version};

/// Longest an `AwaitTurn` call waits: a session's turn comes after each
/// one queued before it has had its turn, each bounded by `turns::HOLD`.
const AWAIT_TURN_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Limits the service enforces on requests.
#[derive(Debug, Clone, Copy)]
pub struct ServiceLimits {
    /// Sum of the encoded sizes of one Certify call's chunks.
    pub max_writeset_bytes: u64,
    /// Largest gRPC message, each way (Subscribe frames are cut to fit).
    pub max_message_bytes: usize,
    /// Log purge: a replica silent for longer is not waited for (see
    /// `purge`).
    pub purge_replica_timeout: std::time::Duration,
}

pub(crate) struct Inner {
    /// On a raft node, the state machine's (it writes, this reads).
    pub(crate) state: Arc<Mutex<Certifier>>,
    pub(crate) tail: Arc<Mutex<Tail>>,
    pub(crate) wal: Wal,
    /// Chunks of writesets certified in chunks (see `spool`).
    pub(crate) spool: Arc<Spool>,
    /// The newest version subscribers may read: durable in the WAL, or on
    /// a raft node applied (durable in a majority's raft logs; see
    /// `raft::versions`).
    pub(crate) durable: Arc<watch::Sender<Version>>,
    submitted: Arc<Notify>,
    stopping: AtomicBool,
    /// Flips to true on `stop()`: long-lived streams end.
    pub(crate) stop_signal: watch::Sender<bool>,
    /// The first WAL failure: how, and its message.
    poison: OnceLock<(LogFailure, String)>,
    /// Woken once `poison` is set: a certification waiting for its
    /// record's fdatasync is then answered that its outcome is unknown,
    /// rather than when (if ever) a hung disk returns.
    log_failed: Notify,
    pub(crate) limits: ServiceLimits,
    max_record_bytes: u64,
    /// Highest checkpoint version reported (0: none yet).
    checkpoint: AtomicU64,
    /// Highest purge point handed to the WAL; serialises purges.
    purged: tokio::sync::Mutex<Version>,
    started: Instant,
    pub(crate) metrics: Arc<super::metrics::CertifierMetrics>,
    /// A node of the replicated certifier: its raft side.
    pub(crate) node: Option<super::replicated::Node>,
    /// Sessions queued for their turn on hot rows (on a raft node, used
    /// while it leads, forgotten when it steps down and handed over with
    /// its leadership; locked after `state` when both are).
    turns: Arc<Mutex<Turns>>,
}

impl Inner {
    /// The server is shutting down: subscriber streams end.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Refuses a request before anything of it is written, once the WAL
    /// failed.
    pub(crate) fn poisoned(&self) -> Result<(), CertifierError> {
        match self.poison.get() {
            Some(poison) => Err(answer(poison, false)),
            None => Ok(()),
        }
    }

    /// Records a failure of the WAL that holds the versions (the first
    /// failure of any log wins) and returns the error to answer a request
    /// with whose record was submitted: its outcome is unknown until the
    /// certifier restarts and recovers its log.
    pub(crate) fn fail(&self, e: WalError) -> CertifierError {
        let log = match self.node {
            Some(_) => "versions log",
            None => "log",
        };
        self.fail_log(log, &e)
    }

    /// [`Inner::fail`] for the certifier's log called `log` (`log_watch`
    /// names them), the cause naming the node and the log.
    pub(crate) fn fail_log(&self, log: &str, e: &WalError) -> CertifierError {
        let cause = match &self.node {
            Some(node) => format!("certifier node {}'s {log}: {e}", node.id),
            None => format!("the certifier's {log}: {e}"),
        };
        let mut first = false;
        let poison = self.poison.get_or_init(|| {
            first = true;
            (LogFailure::of(e), cause)
        });
        if first {
            self.log_failed.notify_waiters();
            // After the wake-up: the process's log may be on the failed disk.
            tracing::error!(error = %poison.1, "log failed; certifier stops acknowledging");
        }
        answer(poison, true)
    }

    /// `f`'s output, or `None` if the log fails first: a WAL ticket waits
    /// for a disk that, once a log failed, may never answer (a hung one;
    /// its stall is seen by the WAL's watchdog, then by `log_watch`).
    pub(crate) async fn unless_failed<T>(
        &self,
        f: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        // Woken by `notify_waiters` from its creation on, so a failure
        // after the look below is not missed.
        let failed = self.log_failed.notified();
        let already = self.poison.get().is_some();
        tokio::select! {
            biased;
            r = f => Some(r),
            () = async {
                if !already {
                    failed.await;
                }
            } => None,
        }
    }

    /// The log failure to answer a request with whose record was
    /// submitted and is not known durable.
    fn failed_in_flight(&self) -> CertifierError {
        match self.poison.get() {
            Some(poison) => answer(poison, true),
            None => CertifierError::OutcomeUnknown("the certifier's log failed".into()),
        }
    }
}

/// The answer to a request once a log failed (`poison`): whether the
/// request's own record may have been written.
fn answer(poison: &(LogFailure, String), outcome_unknown: bool) -> CertifierError {
    let (failure, cause) = poison;
    CertifierError::LogFailed {
        failure: *failure,
        cause: cause.clone(),
        outcome_unknown,
    }
}

/// What a raft node's state machine and its service share: the certifier
/// state, the tail cache, the durability follower's wake-up and the newest
/// version subscribers may read.
pub(crate) struct Parts {
    pub(crate) state: Arc<Mutex<Certifier>>,
    pub(crate) tail: Arc<Mutex<Tail>>,
    pub(crate) submitted: Arc<Notify>,
    pub(crate) readable: Arc<watch::Sender<Version>>,
    /// Fair turns; on a raft node shared with its hand-over.
    pub(crate) turns: Arc<Mutex<Turns>>,
}

/// The certification service; cheap to clone.
#[derive(Clone)]
pub struct CertifierService {
    pub(crate) inner: Arc<Inner>,
}

enum Step {
    Ticket(tashkent_wal::AppendTicket, Version),
    Committed(Version),
    /// With the key the session is queued on (0: none).
    Aborted(crate::rule::Abort, u64),
    Scan {
        from: Version,
        to: Version,
    },
}

impl CertifierService {
    /// Serves `certifier` (rebuilt from `wal`, see `recovery`) with `tail`.
    /// Spawns the durability follower on the current tokio runtime.
    pub fn new(
        wal: Wal,
        spool: Arc<Spool>,
        certifier: Certifier,
        tail: Tail,
        limits: ServiceLimits,
        max_record_bytes: u64,
    ) -> CertifierService {
        let parts = Parts {
            state: Arc::new(Mutex::new(certifier)),
            tail: Arc::new(Mutex::new(tail)),
            submitted: Arc::new(Notify::new()),
            readable: Arc::new(watch::channel(wal.durable_lsn()).0),
            turns: Arc::default(),
        };
        CertifierService::build(wal, spool, parts, limits, max_record_bytes, None)
    }

    /// A raft node's service: `parts` are shared with its state machine,
    /// which appends to `wal` (the versions log); certifications and
    /// reports go through `node`.
    pub(crate) fn new_replicated(
        wal: Wal,
        spool: Arc<Spool>,
        parts: Parts,
        limits: ServiceLimits,
        max_record_bytes: u64,
        node: super::replicated::Node,
    ) -> CertifierService {
        CertifierService::build(wal, spool, parts, limits, max_record_bytes, Some(node))
    }

    fn build(
        wal: Wal,
        spool: Arc<Spool>,
        parts: Parts,
        limits: ServiceLimits,
        max_record_bytes: u64,
        node: Option<super::replicated::Node>,
    ) -> CertifierService {
        let checkpoint = super::purge::load_checkpoint(wal.dir(), wal.last_lsn());
        let metrics = Arc::new(super::metrics::CertifierMetrics::new(node.is_some()));
        wal.observe_syncs(metrics.sync_observer());
        let inner = Arc::new(Inner {
            state: parts.state,
            tail: parts.tail,
            wal,
            spool,
            durable: parts.readable,
            submitted: parts.submitted,
            stopping: AtomicBool::new(false),
            stop_signal: watch::channel(false).0,
            poison: OnceLock::new(),
            log_failed: Notify::new(),
            limits,
            max_record_bytes,
            checkpoint: AtomicU64::new(checkpoint),
            purged: tokio::sync::Mutex::new(0),
            started: Instant::now(),
            metrics,
            node,
            turns: parts.turns,
        });
        tokio::spawn(follow_durability(inner.clone()));
        tokio::spawn(super::log_watch::watch(Arc::downgrade(&inner)));
        let svc = CertifierService { inner };
        tokio::spawn(purge_periodically(svc.clone()));
        svc
    }

    /// Stops the durability follower (and thereby lets subscriber streams
    /// end); call before closing the WAL.
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.stop_signal.send_replace(true);
        self.inner.submitted.notify_one();
    }

    pub fn wal(&self) -> &Wal {
        &self.inner.wal
    }

    /// The metrics as of now, as OpenMetrics text.
    pub fn render_metrics(&self) -> String {
        self.inner.metrics.render(self)
    }

    /// Certifies one complete writeset: the whole Certify call minus the
    /// chunking. Answers only when the outcome is durable.
    pub async fn certify(&self, ws: Writeset) -> Result<Outcome, CertifierError> {
        writeset::validate(&ws)?;
        let inner = &*self.inner;
        inner.poisoned()?;
        let rec = record::encode(&ws);
        if rec.len() as u64 > inner.max_record_bytes {
            return Err(CertifierError::WritesetTooLarge {
                max: inner.limits.max_writeset_bytes,
            });
        }
        if let Some(node) = &inner.node {
            // Fair turns are the leader's (see `turns`). Their conflict
            // keys are kept for a session's transaction that fits in one
            // entry; larger ones take no part.
            let turn = Turn::from(&ws);
            let cs = (turn.session != 0 && rec.len() <= crate::raft::parts::PART_BYTES)
                .then(|| ConflictSet::of(&ws));
            let snapshot = ws.snapshot;
            // The record is all raft needs (apply finds the conflict keys
            // in it): the writeset goes now, not after the raft round, so
            // that a large one is not held twice meanwhile.
            drop(ws);
            let refused = cs.as_ref().and_then(|cs| self.turn_refuses(turn, cs));
            let proposed = match refused {
                Some((key, _)) => {
                    let last = self.with_window(|w| rule::last_write(w, key));
                    node.refuse(last, rec.freeze()).await
                }
                None => node.certify(rec.freeze()).await,
            };
            let mut outcome = proposed.map_err(|e| super::log_watch::certify_failed(inner, e))?;
            match &cs {
                Some(cs) => {
                    self.turn_after(turn, cs, snapshot, &mut outcome, refused);
                    self.raft_decided(&outcome);
                }
                None => self.large_decided(turn, &outcome),
            }
            return Ok(outcome);
        }
        let cs = ConflictSet::of(&ws);
        let (outcome, _) = self
            .decide(&ws.txn_id, ws.snapshot, Turn::from(&ws), &cs, &ws, rec)
            .await?;
        Ok(outcome)
    }

    /// A raft node's transaction too large to take part in fair turns
    /// was decided: its end still ends the session's turn.
    pub(crate) fn large_decided(&self, turn: Turn, outcome: &Outcome) {
        if turn.session != 0 {
            let mut turns = self.inner.turns.lock();
            match outcome {
                Outcome::Committed { .. } => turns.committed(turn.session, Instant::now()),
                _ => turns.aborted(turn.session, 0, Instant::now()),
            }
        }
        self.raft_decided(outcome);
    }

    /// `f` of the conflict window the turns read: a leader's proposal
    /// table, which decides (`raft::decider`), else the applied state's
    /// (which holds no keys once it has applied decisions: then turns
    /// see no last writer until the leader's next table).
    fn with_window<R>(&self, mut f: impl FnMut(&ConflictWindow) -> R) -> R {
        let inner = &*self.inner;
        if let Some(r) = inner
            .node
            .as_ref()
            .and_then(|n| n.with_decided_window(&mut f))
        {
            return r;
        }
        f(inner.state.lock().window())
    }

    /// Counts a raft node's decision. A retry's earlier answer counts again
    /// here: the state machine does not tell it apart.
    fn raft_decided(&self, outcome: &Outcome) {
        self.inner.metrics.decided(match outcome {
            Outcome::Committed { .. } => "committed",
            Outcome::Aborted { .. } => "aborted",
        });
    }

    /// The decision for `txn_id` (conflict keys `cs`) and, on commit, its
    /// record `rec` in the WAL; answers once the outcome is durable. The
    /// flag says whether this call committed it (not a retry's earlier
    /// answer).
    pub(super) async fn decide(
        &self,
        txn_id: &Bytes,
        snapshot: Version,
        turn: Turn,
        cs: &ConflictSet,
        names: &(impl Names + Sync),
        mut rec: bytes::BytesMut,
    ) -> Result<(Outcome, bool), CertifierError> {
        let inner = &*self.inner;
        let mut consult_dedupe = true;
        loop {
            let step = {
                let mut c = inner.state.lock();
                inner.poisoned()?;
                let prior = if consult_dedupe {
                    c.prior(txn_id, snapshot)
                } else {
                    None
                };
                if prior.is_some() {
                    inner.metrics.decided("repeated");
                }
                match prior {
                    Some(Prior::Committed(v)) => Step::Committed(v),
                    Some(Prior::Aborted(a)) => {
                        // Answered without a turn key: the session waits
                        // for none, so it holds no place (state, then turns).
                        inner.turns.lock().aborted(turn.session, 0, Instant::now());
                        Step::Aborted(a, 0)
                    }
                    Some(Prior::LookInWal { from, to }) => Step::Scan { from, to },
                    None => {
                        match self.turn_rule(&c, c.check(snapshot, cs, names)?, turn, cs, snapshot)
                        {
                            (Decision::Commit(v), _) => {
                                record::set_version(&mut rec, v);
                                let payload = std::mem::take(&mut rec).freeze();
                                // Into the tail first, so that by the time the
                                // WAL reports `v` durable, subscribers find it in
                                // memory. Subscribers only read durable versions,
                                // and if the submit fails nothing becomes durable
                                // again (poisoned), so the early push is harmless.
                                inner.tail.lock().push(v, payload.clone());
                                let ticket =
                                    inner.wal.submit(payload).map_err(|e| inner.fail(e))?;
                                if ticket.lsn != v {
                                    // Someone else wrote to our WAL: nothing we
                                    // answer from here on could be trusted.
                                    let e = WalError::InvalidLsn {
                                        lsn: ticket.lsn,
                                        reason: format!("certifier expected version {v}"),
                                    };
                                    return Err(inner.fail(e));
                                }
                                c.commit(txn_id, cs);
                                inner.turns.lock().committed(turn.session, Instant::now());
                                inner.submitted.notify_one();
                                Step::Ticket(ticket, v)
                            }
                            (Decision::Abort(a), turn_key) => {
                                inner.metrics.decided("aborted");
                                c.record_abort(txn_id, a.clone());
                                Step::Aborted(a, turn_key)
                            }
                        }
                    }
                }
            };
            match step {
                Step::Ticket(ticket, version) => {
                    let durable = inner.unless_failed(ticket).await;
                    durable
                        .ok_or_else(|| inner.failed_in_flight())?
                        .map_err(|e| inner.fail(e))?;
                    inner.metrics.decided("committed");
                    return Ok((Outcome::Committed { version }, true));
                }
                Step::Committed(version) => {
                    inner
                        .wal
                        .wait_durable(version)
                        .await
                        .map_err(|e| inner.fail(e))?;
                    inner.poisoned()?;
                    return Ok((Outcome::Committed { version }, false));
                }
                Step::Aborted(a, turn_key) => {
                    if a.conflict_version > 0 {
                        let w = inner.wal.wait_durable(a.conflict_version).await;
                        w.map_err(|e| inner.fail(e))?;
                    }
                    inner.poisoned()?;
                    return Ok((
                        Outcome::Aborted {
                            code: a.code,
                            reason: a.reason,
                            conflict_version: a.conflict_version,
                            turn_key,
                        },
                        false,
                    ));
                }
                Step::Scan { from, to } => {
                    if let Some(version) = self.scan_wal(txn_id.clone(), from, to).await? {
                        return Ok((Outcome::Committed { version }, false));
                    }
                    // Never committed; certify normally (its snapshot is
                    // below the horizon, so it aborts as too old).
                    consult_dedupe = false;
                }
            }
        }
    }

    /// Fair turns (see `turns`) on the rule's decision `d` for a
    /// transaction of `turn` with `cs` and `snapshot`: a commit writing a row
    /// another session has its turn on aborts instead, and a loser that has
    /// been losing is queued. With the key its session is queued on (0:
    /// none). Called under the state lock (`c`).
    fn turn_rule(
        &self,
        c: &Certifier,
        d: Decision,
        turn: Turn,
        cs: &ConflictSet,
        snapshot: Version,
    ) -> (Decision, u64) {
        let inner = &*self.inner;
        if inner.node.is_some() {
            return (d, 0);
        }
        let now = Instant::now();
        let mut turns = inner.turns.lock();
        let decided = match d {
            Decision::Commit(_) if turns.is_empty() => (d, 0),
            Decision::Commit(v) => match turns.admit(turn, &write_keys(cs), now) {
                None => (Decision::Commit(v), 0),
                Some((key, queued)) => (
                    Decision::Abort(crate::turns::refusal(c.window(), key, snapshot)),
                    if queued { key } else { 0 },
                ),
            },
            Decision::Abort(a) if a.code == proto::AbortCode::Conflict => {
                let key = turns.lost_conflict(c.window(), turn, snapshot, cs, now);
                (Decision::Abort(a), key)
            }
            d => (d, 0),
        };
        if matches!(decided.0, Decision::Abort(_)) {
            turns.aborted(turn.session, decided.1, now);
        }
        decided
    }

    /// Fair turns on a raft leader, before proposing (see `turns`): the
    /// row another session has its turn on that `turn`'s transaction
    /// (conflict keys `cs`) writes, and whether its session was queued
    /// behind; `None` to certify it.
    fn turn_refuses(&self, turn: Turn, cs: &ConflictSet) -> Option<(u64, bool)> {
        let mut turns = self.inner.turns.lock();
        if turns.is_empty() {
            return None;
        }
        turns.admit(turn, &write_keys(cs), Instant::now())
    }

    /// Fair turns on a raft leader, once `outcome` is known for `turn`'s
    /// transaction (`cs`, `snapshot`; `refused` as `turn_refuses` said): a
    /// commit passes the session's turns on, a loser that has been losing
    /// is queued. Sets the answer's `turn_key`.
    fn turn_after(
        &self,
        turn: Turn,
        cs: &ConflictSet,
        snapshot: Version,
        outcome: &mut Outcome,
        refused: Option<(u64, bool)>,
    ) {
        let inner = &*self.inner;
        let now = Instant::now();
        match outcome {
            Outcome::Committed { .. } => {
                let mut turns = inner.turns.lock();
                if let Some((key, true)) = refused {
                    // A resend refused, whose earlier attempt had
                    // committed: its session was queued for nothing.
                    turns.leave(turn.session, key, now);
                }
                turns.committed(turn.session, now);
            }
            Outcome::Aborted { turn_key, .. } if refused.is_some() => {
                *turn_key = refused.filter(|r| r.1).map_or(0, |r| r.0);
                inner.turns.lock().aborted(turn.session, *turn_key, now);
            }
            Outcome::Aborted { code, turn_key, .. } if *code == proto::AbortCode::Conflict => {
                // Lock order: the window's, then turns.
                *turn_key = self.with_window(|w| {
                    let mut turns = inner.turns.lock();
                    let key = turns.lost_conflict(w, turn, snapshot, cs, now);
                    turns.aborted(turn.session, key, now);
                    key
                });
            }
            Outcome::Aborted { .. } => inner.turns.lock().aborted(turn.session, 0, now),
        }
    }

    /// `AwaitTurn`: waits until `session` has its turn on `key` or is not
    /// queued on it, at most `AWAIT_TURN_MAX` (then it leaves the queue).
    /// The newest version that wrote the key, and whether the turn is the
    /// session's.
    pub async fn await_turn(&self, session: u64, key: u64) -> (Version, bool) {
        let inner = &*self.inner;
        let give_up = tokio::time::Instant::now() + AWAIT_TURN_MAX;
        // Only a leader's turns are live: a node that stepped down may
        // still see a decision of its last moments land in them, or hold
        // those a leader handing over gave it.
        let leads = || inner.node.as_ref().is_none_or(|n| n.leads());
        let granted = loop {
            if !leads() {
                break false;
            }
            let claim = inner.turns.lock().claim(session, key, Instant::now());
            match claim {
                Claim::Yours => break true,
                Claim::NotQueued => break false,
                Claim::Wait { mut changed, until } => {
                    let until = tokio::time::Instant::from_std(until).min(give_up);
                    let _ = tokio::time::timeout_at(until, changed.changed()).await;
                    if tokio::time::Instant::now() >= give_up {
                        // The proxy goes on without the turn when told
                        // "not yours": a place it kept would hold the row
                        // against everyone behind it once it reached the
                        // head, until its unclaimed turn lapsed.
                        inner.turns.lock().leave(session, key, Instant::now());
                        break false;
                    }
                }
            }
        };
        let last = self.with_window(|w| rule::last_write(w, key));
        (last, granted)
    }

    /// `LeaveTurn`: `session` gives up its place on `key`.
    pub fn leave_turn(&self, session: u64, key: u64) {
        self.inner.turns.lock().leave(session, key, Instant::now());
    }

    /// Looks for `txn_id` in the WAL records `from..=to` (all durable): the
    /// retry of a transaction older than the dedupe table remembers.
    async fn scan_wal(
        &self,
        txn_id: Bytes,
        from: Version,
        to: Version,
    ) -> Result<Option<Version>, CertifierError> {
        let wal = self.inner.wal.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<_, CertifierError> {
            let first = wal.first_lsn();
            if from < first {
                return Err(CertifierError::OutcomeUnknown(format!(
                    "transaction not remembered and versions {from}..{first} were purged from \
                     the WAL"
                )));
            }
            for r in wal.read_from(from)? {
                let (lsn, rec) = r?;
                if lsn > to {
                    break;
                }
                if record::decode(lsn, &rec)?.txn_id == txn_id {
                    return Ok(Some(lsn));
                }
            }
            Ok(None)
        })
        .await
        .map_err(|e| CertifierError::Io(std::io::Error::other(e)))??;
        Ok(found)
    }

    /// A replica's progress; returns the horizon. On a raft node it is
    /// replicated (see `replicated`), else as [`Self::report_applied`].
    pub async fn report(
        &self,
        replica: u32,
        applied: Version,
        oldest_snapshot: Version,
    ) -> Result<Version, CertifierError> {
        match &self.inner.node {
            Some(node) => {
                let horizon = self.inner.state.lock().window().horizon();
                node.report(replica, applied, oldest_snapshot, horizon)
                    .await
            }
            None => self.report_applied(replica, applied, oldest_snapshot),
        }
    }

    /// The node's raft side, when it is one of a replicated certifier.
    pub(crate) fn node(&self) -> Option<&super::replicated::Node> {
        self.inner.node.as_ref()
    }

    /// A replica's progress (see the .proto); returns the horizon.
    pub fn report_applied(
        &self,
        replica: u32,
        applied: Version,
        oldest_snapshot: Version,
    ) -> Result<Version, CertifierError> {
        self.inner
            .state
            .lock()
            .report(replica, applied, oldest_snapshot, Instant::now())
    }

    /// The oldest kept checkpoint is at `version`: remember it and purge
    /// what nobody needs any more (see `purge`). Returns the purge point
    /// and the first version still in the log.
    pub async fn report_checkpoint(
        &self,
        version: Version,
    ) -> Result<(Version, Version), CertifierError> {
        let inner = &*self.inner;
        inner.poisoned()?;
        if inner.node.is_some() && version > inner.wal.durable_lsn() {
            // A raft node's versions log syncs late (`raft::versions`); a
            // replica reports versions it applied, which it holds.
            if version <= inner.wal.last_lsn() {
                inner
                    .wal
                    .wait_durable(version)
                    .await
                    .map_err(|e| inner.fail(e))?;
            }
        }
        let durable = inner.wal.durable_lsn();
        if version > durable {
            return Err(CertifierError::InvalidArgument(format!(
                "checkpoint version {version} is beyond the durable version {durable}"
            )));
        }
        if inner.checkpoint.fetch_max(version, Ordering::AcqRel) < version {
            // Under the purge lock: concurrent reports store in order.
            let _serial = inner.purged.lock().await;
            let (dir, v) = (
                inner.wal.dir().to_path_buf(),
                inner.checkpoint.load(Ordering::Acquire),
            );
            let stored =
                tokio::task::spawn_blocking(move || super::purge::store_checkpoint(&dir, v))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r);
            if let Err(e) = stored {
                // Only purging after a restart waits for the next report.
                tracing::warn!("storing checkpoint version {v}: {e}");
            }
        }
        self.purge().await
    }

    /// Purges the WAL segments below the purge point of
    /// [`super::purge::purge_point`]; returns that point and the first
    /// version still in the log.
    pub async fn purge(&self) -> Result<(Version, Version), CertifierError> {
        let inner = &*self.inner;
        let mut purged = inner.purged.lock().await;
        let point = {
            let c = inner.state.lock();
            super::purge::purge_point(
                inner.checkpoint.load(Ordering::Acquire),
                c.replicas(),
                inner.started,
                Instant::now(),
                inner.limits.purge_replica_timeout,
            )
        };
        if point > *purged && point > inner.wal.first_lsn() {
            inner.wal.purge_below(point).await?;
            *purged = point;
            tracing::info!(
                purge_below = point,
                first_version = inner.wal.first_lsn(),
                "purged the certifier log"
            );
        }
        inner.spool.purge(inner.wal.first_lsn()).await?;
        if let Some(node) = &inner.node {
            node.purge_raft_log(point).await;
        }
        Ok((point, inner.wal.first_lsn()))
    }

    /// The newest version any client may have been told is committed:
    /// only durable versions are answered.
    pub fn acknowledged(&self) -> Version {
        let latest = self.inner.state.lock().latest();
        if self.inner.node.is_some() {
            // Applied versions are committed in raft: answered already.
            return latest;
        }
        self.inner.wal.durable_lsn().min(latest)
    }

    pub fn status(&self) -> proto::StatusResponse {
        let inner = &*self.inner;
        // A failed log shows with its cause at once, not after the next
        // look of `log_watch` (nor as the raft core's stop it caused).
        super::log_watch::note_log_failures(inner);
        let now = Instant::now();
        // A leader deciding at proposal holds the keys in its proposal
        // table; a node applying decisions holds none.
        let (entries, versions) = self.with_window(|w| (w.entries(), w.versions()));
        let c = inner.state.lock();
        let w = c.window();
        let mut s = proto::StatusResponse {
            latest_version: c.latest(),
            durable_version: inner.wal.durable_lsn().min(c.latest()),
            horizon: w.horizon(),
            horizon_cause: w.cause().to_string(),
            window_entries: entries as u64,
            window_versions: versions as u64,
            replicas: c
                .replicas()
                .iter()
                .map(|(&id, p)| proto::ReplicaStatus {
                    replica_id: id,
                    applied_version: p.applied,
                    oldest_snapshot: p.oldest_snapshot,
                    millis_since_report: now.duration_since(p.reported_at).as_millis() as u64,
                })
                .collect(),
            first_version: inner.wal.first_lsn(),
            poisoned: inner.poison.get().is_some(),
            poison_cause: inner
                .poisoned()
                .err()
                .map_or_else(String::new, |e| e.to_string()),
            checkpoint_version: inner.checkpoint.load(Ordering::Acquire),
            ..Default::default()
        };
        drop(c);
        match &inner.node {
            Some(node) => node.fill_status(&mut s),
            None => s.committed_version = s.durable_version,
        }
        s
    }
}

/// Publishes the durable version to subscribers: waits for whatever was
/// submitted last (one wait per group, not per record) and detects a
/// poisoned WAL even when no request is waiting.
/// Purges again every `purge_replica_timeout` (1..10 s): replicas that
/// caught up, or went silent, since the last checkpoint report let the log
/// shrink without waiting for the next one, also after a restart.
async fn purge_periodically(svc: CertifierService) {
    let every = svc.inner.limits.purge_replica_timeout.clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(10),
    );
    let mut stop = svc.inner.stop_signal.subscribe();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let inner = &svc.inner;
        if inner.stopping()
            || inner.poisoned().is_err()
            || inner.checkpoint.load(Ordering::Acquire) == 0
        {
            continue;
        }
        if let Err(e) = svc.purge().await {
            tracing::warn!("purging the log: {e}");
        }
    }
}

async fn follow_durability(inner: Arc<Inner>) {
    if inner.node.is_some() {
        // A raft node raises `durable` as it applies (`raft::versions`):
        // waiting here for its versions log would sync it per group.
        let mut stop = inner.stop_signal.subscribe();
        let _ = stop.wait_for(|s| *s).await;
        inner.durable.send_modify(|_| {});
        return;
    }
    let mut seen = inner.wal.durable_lsn();
    loop {
        if inner.stopping.load(Ordering::Acquire) {
            break;
        }
        let target = inner.wal.last_lsn();
        if target <= seen {
            inner.submitted.notified().await;
            continue;
        }
        if let Err(e) = inner.wal.wait_durable(target).await {
            if !inner.stopping.load(Ordering::Acquire) {
                inner.fail(e);
            }
            break;
        }
        seen = target;
        inner.durable.send_if_modified(|d| {
            let changed = target > *d;
            *d = (*d).max(target);
            changed
        });
    }
    // Wake subscribers so they notice the end.
    inner.durable.send_modify(|_| {});
}
