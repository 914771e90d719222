//! Certifying at proposal: the leader's proposal table, and the order in
//! which its entries reach the raft core.
//!
//! A leader decides each certification as it proposes it (`decided.rs`),
//! against its proposal table: a certifier holding the state applied
//! through a base entry plus every entry decided since. The table is
//! sound only while the log after the base holds exactly the entries it
//! decided, in that order, so:
//!
//! - a base is an entry of this node's: its first (blank) entry of a term,
//!   whose application applies every earlier term's, or an entry
//!   certified at apply (a chunked writeset's last chunk), which the
//!   state machine builds the table after ([`TableSlot`]);
//! - every entry that changes what certifying decides (decided entries,
//!   refusals, entries certified at apply) is handed to the core under
//!   one lock (`order`), so the core appends them in the order decided;
//! - an entry certified at apply is a barrier: the table is dropped before
//!   it, and the next one is the one built after it; if its answer is an
//!   error, only a table of a later term will do;
//! - a decided entry whose answer is an error drops its table: the node no
//!   longer leads that term, and any entry decided after it and appended
//!   in a later term is refused at apply (`Command::Decided` carries its
//!   term).
//!
//! Reports go through the same lock and also move the table's horizon;
//! a table whose horizon is ahead of the applied one (a report that never
//! got into the log) only aborts more as "snapshot too old", which is
//! always safe.
//!
//! A new leader certifies nothing until its blank entry is applied and its
//! table built; certifications arriving meanwhile wait (up to
//! [`TABLE_WAIT`], then they are refused unproposed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::error::{Fatal, RaftError};
use openraft::ServerState;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::decided::Item;
use super::types::{Command, Response};
use super::writes::{Submitted, WriteFailed, Writes, Written};
use crate::certifier::{Certifier, Decision};
use crate::error::CertifierError;
use crate::record_view::{RecordNames, RecordView};
use crate::rule::ConflictSet;
use crate::window::ConflictWindow;
use crate::{record, writeset, Version};

/// How long certifications wait for a new leader's table.
pub const TABLE_WAIT: Duration = Duration::from_secs(5);

/// A proposal table, built from the state applied through log entry
/// `index` of `term`.
pub struct Base {
    pub term: u64,
    pub index: u64,
    pub certifier: Certifier,
}

/// Where the state machine leaves the newest proposal table it built for
/// this node; the [`Decider`] takes it.
pub struct TableSlot {
    base: Mutex<Option<Base>>,
    published: watch::Sender<u64>,
}

impl Default for TableSlot {
    fn default() -> Self {
        TableSlot {
            base: Mutex::new(None),
            published: watch::channel(0).0,
        }
    }
}

impl TableSlot {
    /// Leaves `base`, replacing any older one.
    pub fn publish(&self, base: Base) {
        *self.base.lock() = Some(base);
        self.published.send_modify(|n| *n += 1);
    }

    /// The table built for `term` at or after log index `from`, taken; one
    /// older than that is dropped.
    pub fn take(&self, term: u64, from: u64) -> Option<Base> {
        let mut slot = self.base.lock();
        let (t, i) = slot.as_ref().map(|b| (b.term, b.index))?;
        if t == term && i >= from {
            return slot.take();
        }
        if (t, i) < (term, from) {
            *slot = None;
        }
        None
    }
}

/// What a leader proposes through its [`Decider`].
pub enum Proposal {
    /// Certify a record (version field 0).
    Certify(Bytes),
    /// Refuse a record for fair turns on a row version `last` wrote last.
    Refuse { last: Version, record: Bytes },
}

/// Proposals decided: per proposal, its answer when it needed no entry
/// (`Some`: a record that cannot be certified), else its place among the
/// entry's answers, in order; and the entry of the rest, handed to the
/// core in `term`.
pub struct Proposed {
    pub direct: Vec<Option<Response>>,
    pub entry: Option<(u64, Submitted)>,
}

/// A leader's certification at proposal (see the module doc).
pub struct Decider {
    slot: Arc<TableSlot>,
    /// Held from deciding an entry until the core has it.
    order: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    table: Option<Table>,
    /// The oldest base (term, log index) a table may be built at.
    from: (u64, u64),
}

struct Table {
    term: u64,
    certifier: Certifier,
}

impl Decider {
    /// Decides with the tables the state machine leaves in `slot`.
    pub fn new(slot: Arc<TableSlot>) -> Decider {
        Decider {
            slot,
            order: tokio::sync::Mutex::new(()),
            state: Mutex::new(State::default()),
        }
    }

    /// Decides `proposals` in order and hands the entry of their decisions
    /// to the core through `writes`. Fails when this node does not lead
    /// (then nothing is proposed) or the entry could not be handed over.
    pub async fn propose(
        self: &Arc<Self>,
        writes: &Writes,
        proposals: Vec<Proposal>,
    ) -> Result<Proposed, CertifierError> {
        // In a task of its own: a caller that gives up must not cut it
        // short between deciding (the table moved on) and handing the
        // entry to the core.
        let (this, writes) = (self.clone(), writes.clone());
        tokio::spawn(async move { this.propose_now(&writes, proposals).await })
            .await
            .unwrap_or_else(|e| {
                Err(CertifierError::OutcomeUnknown(format!(
                    "deciding failed: {e}"
                )))
            })
    }

    async fn propose_now(
        &self,
        writes: &Writes,
        proposals: Vec<Proposal>,
    ) -> Result<Proposed, CertifierError> {
        let _order = self.order.lock().await;
        let term = self.ready(writes).await?;
        let mut direct = Vec::with_capacity(proposals.len());
        let mut items = Vec::with_capacity(proposals.len());
        {
            let mut state = self.state.lock();
            let Some(table) = state.table.as_mut().filter(|t| t.term == term) else {
                return Err(not_ready("its proposal table was dropped"));
            };
            for p in proposals {
                match decide(&mut table.certifier, p) {
                    Ok(item) => {
                        items.push(item);
                        direct.push(None);
                    }
                    Err(e) => direct.push(Some(Response::Rejected {
                        reason: e.to_string(),
                    })),
                }
            }
        }
        if items.is_empty() {
            return Ok(Proposed {
                direct,
                entry: None,
            });
        }
        match writes.submit(Command::Decided { term, items }).await {
            Ok(submitted) => Ok(Proposed {
                direct,
                entry: Some((term, submitted)),
            }),
            Err(e) => {
                self.lost(term);
                Err(super::proposer::write_error(&e))
            }
        }
    }

    /// An entry decided in `term` got no answer: this node no longer
    /// leads that term, and decides nothing more with its table.
    pub fn lost(&self, term: u64) {
        let mut state = self.state.lock();
        if state.table.as_ref().is_some_and(|t| t.term <= term) {
            state.table = None;
        }
        state.from = state.from.max((term + 1, 0));
    }

    /// Proposes `cmd`, an entry certified at apply (a chunked writeset's
    /// last chunk), as a barrier: nothing is decided past it until the
    /// table built after it is taken.
    pub async fn barrier(self: &Arc<Self>, writes: &Writes, cmd: Command) -> Written {
        // In a task of its own, as `propose`: the table must learn where
        // the barrier went.
        let (this, writes) = (self.clone(), writes.clone());
        match tokio::spawn(async move { this.barrier_now(&writes, cmd).await }).await {
            Ok(written) => written,
            Err(_) => Err(WriteFailed {
                error: RaftError::Fatal(Fatal::Panicked),
                may_have_led: true,
            }),
        }
    }

    async fn barrier_now(&self, writes: &Writes, cmd: Command) -> Written {
        let _order = self.order.lock().await;
        self.state.lock().table = None;
        let written = writes.write(cmd).await;
        let from = match &written {
            Ok(w) => (w.log_id.leader_id.term, w.log_id.index),
            // It may be in the log of any term this node led until now.
            Err(_) => match writes
                .raft()
                .with_raft_state(|st| st.vote_ref().leader_id().term)
                .await
            {
                Ok(term) => (term + 1, 0),
                Err(_) => (u64::MAX, 0),
            },
        };
        let mut state = self.state.lock();
        state.from = state.from.max(from);
        written
    }

    /// Proposes a report `cmd`, moving the table's horizon as applying it
    /// will.
    pub async fn report(&self, writes: &Writes, cmd: Command) -> Written {
        let submitted = {
            let _order = self.order.lock().await;
            if let Command::Report {
                replica,
                applied,
                oldest_snapshot,
            } = &cmd
            {
                if let Some(t) = self.state.lock().table.as_mut() {
                    // One the applied state would refuse changes nothing.
                    let _ =
                        t.certifier
                            .report(*replica, *applied, *oldest_snapshot, Instant::now());
                }
            }
            writes.submit(cmd).await?
        };
        submitted.answer().await
    }

    /// `f` of the proposal table's window, if there is a table: the
    /// versions this leader decided, in flight or applied.
    pub fn with_window<R>(&self, f: impl FnOnce(&ConflictWindow) -> R) -> Option<R> {
        self.state
            .lock()
            .table
            .as_ref()
            .map(|t| f(t.certifier.window()))
    }

    /// The term this node leads with a table for, once it has one: taken
    /// from the slot when the state machine has built it.
    async fn ready(&self, writes: &Writes) -> Result<u64, CertifierError> {
        let mut metrics = writes.raft().server_metrics();
        let mut published = self.slot.published.subscribe();
        let deadline = tokio::time::Instant::now() + TABLE_WAIT;
        loop {
            let (state, term, leader) = {
                let m = metrics.borrow_and_update();
                (m.state, m.vote.leader_id().term, m.current_leader)
            };
            published.borrow_and_update();
            {
                let mut s = self.state.lock();
                if s.table.as_ref().is_some_and(|t| {
                    t.term < term || (t.term == term && state != ServerState::Leader)
                }) {
                    s.table = None;
                }
                if state != ServerState::Leader {
                    return Err(CertifierError::NotLeader {
                        leader,
                        addr: None,
                        outcome_unknown: false,
                    });
                }
                if s.table.as_ref().is_some_and(|t| t.term == term) {
                    return Ok(term);
                }
                if s.table.is_none() && term >= s.from.0 {
                    let from = if term == s.from.0 { s.from.1 } else { 0 };
                    if let Some(base) = self.slot.take(term, from) {
                        s.table = Some(Table {
                            term,
                            certifier: base.certifier,
                        });
                        return Ok(term);
                    }
                }
            }
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return Err(not_ready("its raft core stopped"));
                    }
                }
                _ = published.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(not_ready("it is still applying the log of earlier leaders"));
                }
            }
        }
    }
}

/// Nothing was proposed: this node cannot decide now; the client retries.
fn not_ready(why: &str) -> CertifierError {
    CertifierError::Rpc(tonic::Status::unavailable(format!(
        "this certifier node is not ready to certify ({why}); nothing was proposed, retry"
    )))
}

/// The decision on `p` with `c`, applied to `c`.
pub fn decide(c: &mut Certifier, p: Proposal) -> Result<Item, CertifierError> {
    let (txn_id, record, (decision, new)) = match p {
        Proposal::Certify(rec) => {
            if record::is_spooled(&rec) {
                return Err(CertifierError::InvalidArgument(
                    "spooled writesets are not replicated yet".into(),
                ));
            }
            match RecordView::parse(&rec) {
                Some(view) => {
                    let d =
                        c.decide_set(&view.txn_id, view.snapshot, &view.cs, &RecordNames(&rec))?;
                    (view.txn_id, rec, d)
                }
                None => {
                    let ws = record::decode(0, &rec)?;
                    writeset::validate(&ws)?;
                    let d = c.decide_set(&ws.txn_id, ws.snapshot, &ConflictSet::of(&ws), &ws)?;
                    (ws.txn_id, rec, d)
                }
            }
        }
        Proposal::Refuse { last, record: rec } => {
            let ws = record::decode(0, &rec)?;
            writeset::validate(&ws)?;
            let abort = crate::turns::refusal_after(last, ws.snapshot);
            let d = c.decide_refusal(&ws.txn_id, ws.snapshot, abort)?;
            (ws.txn_id, rec, d)
        }
    };
    Ok(match (decision, new) {
        (Decision::Commit(version), true) => Item::Commit {
            version,
            horizon: c.window().horizon(),
            cause: c.window().cause().code(),
            txn_id,
            record,
        },
        (Decision::Commit(version), false) => Item::CommittedBefore { version },
        (Decision::Abort(a), true) => Item::Abort {
            txn_id,
            code: a.code as i32,
            conflict_version: a.conflict_version,
            reason: a.reason,
        },
        (Decision::Abort(a), false) => Item::AbortedBefore {
            code: a.code as i32,
            conflict_version: a.conflict_version,
            reason: a.reason,
        },
    })
}
