//! Certifying at proposal: the leader's proposal table, and the order in
//! which its entries reach the raft core.
//!
//! A leader decides each certification as it proposes it (`decided.rs`),
//! against its proposal table: a certifier holding the state applied
//! through a base entry plus every entry decided since. The table is
//! sound only while the log after the base holds exactly the entries it
//! decided, in that order, so:
//!
//! - a base is an entry this process proposed and awaited, with nothing
//!   of this node's in between: a [`Command::Base`] when it needs a table
//!   (leading without one), or an entry certified at apply (a chunked
//!   writeset's last chunk). The state machine builds the table from the
//!   state applied through it ([`TableSlot`]), before answering it. Not
//!   openraft's blank entry: a node restarted as leader of its term
//!   appends none;
//! - every entry that changes what certifying decides (decided entries,
//!   refusals, bases, entries certified at apply) is handed to the core
//!   under one lock (`order`), in a task of its own so that a caller
//!   giving up cannot leave the table ahead of the log, and the core
//!   appends them in that order: within one term only its leader
//!   appends, and after a base only this process;
//! - a decided entry that gets no answer, or is refused at apply, drops
//!   the table (the node may no longer lead its term), as does a term
//!   change in the metrics; an entry decided in one term and appended in
//!   a later one (the node led again) is refused at apply on every node
//!   (`Command::Decided` carries its term), as is one whose decisions do
//!   not fit the applied state.
//!
//! While there is a table, reports go through the same lock and also
//! move its horizon (see [`Decider::report`]).
//!
//! A leader without a table certifies nothing until its base is applied
//! (certifications wait for it: they could not be answered before the log
//! ahead of them is applied anyway), for `BASE_WAIT` at most. A follower
//! refuses at once, without queueing on `order`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::error::{Fatal, RaftError};
use openraft::ServerState;
use parking_lot::Mutex;

use super::decided::Item;
use super::types::{Command, Response};
use super::writes::{Report, Submitted, WriteFailed, Writes, Written};
use crate::certifier::{Certifier, Decision};
use crate::error::CertifierError;
use crate::record_view::{RecordNames, RecordView};
use crate::rule::ConflictSet;
use crate::window::ConflictWindow;
use crate::{record, writeset, Version};

/// How long a leader's certifications wait for its base entry: a base
/// normally commits within milliseconds, but one appended just before the
/// node was deposed is answered only once the next leader reaches it.
/// Past this, the table is dropped and the certifications are refused
/// (retried); a later base builds the next table.
const BASE_WAIT: Duration = Duration::from_secs(5);

/// A proposal table, built from the state applied through log entry
/// `index` of `term`.
pub struct Base {
    pub term: u64,
    pub index: u64,
    pub certifier: Certifier,
}

/// Where the state machine leaves the newest proposal table it built for
/// this node; the [`Decider`] takes it.
#[derive(Default)]
pub struct TableSlot {
    base: Mutex<Option<Base>>,
}

impl TableSlot {
    /// Leaves `base`, replacing any older one.
    pub fn publish(&self, base: Base) {
        *self.base.lock() = Some(base);
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
    table: Mutex<Option<Table>>,
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
            table: Mutex::new(None),
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
        match tokio::spawn(async move { this.propose_now(&writes, proposals).await }).await {
            Ok(proposed) => proposed,
            Err(e) => {
                // It may have decided without handing the entry over.
                self.lost(u64::MAX);
                Err(CertifierError::OutcomeUnknown(format!(
                    "deciding failed: {e}"
                )))
            }
        }
    }

    async fn propose_now(
        &self,
        writes: &Writes,
        proposals: Vec<Proposal>,
    ) -> Result<Proposed, CertifierError> {
        // A follower answers at once rather than queueing behind a base
        // that waits for the next leader.
        leading(writes)?;
        let _order = self.order.lock().await;
        let term = self.ready(writes).await?;
        let mut direct = Vec::with_capacity(proposals.len());
        let mut items = Vec::with_capacity(proposals.len());
        let latest = {
            let mut table = self.table.lock();
            let Some(table) = table.as_mut().filter(|t| t.term == term) else {
                return Err(not_ready("its proposal table was dropped"));
            };
            let latest = table.certifier.latest();
            for p in proposals {
                match decide(&mut table.certifier, p) {
                    Ok(item) => {
                        items.push(item);
                        direct.push(None);
                    }
                    Err(e) => direct.push(Some(super::state_machine::answer(Err(e)))),
                }
            }
            latest
        };
        if items.is_empty() {
            return Ok(Proposed {
                direct,
                entry: None,
            });
        }
        let cmd = Command::Decided {
            term,
            latest,
            items: std::sync::Arc::new(items),
        };
        match writes.submit(cmd).await {
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

    /// An entry decided in `term` got no answer, or was refused at apply:
    /// the table may hold decisions the log does not, and decides nothing
    /// more (the next proposal starts a new one).
    pub fn lost(&self, term: u64) {
        let mut table = self.table.lock();
        if table.as_ref().is_some_and(|t| t.term <= term) {
            *table = None;
        }
    }

    /// The answer of `submitted`, an entry decided in `term`, noted (see
    /// `lost`) in a task of its own, so that a caller giving up does not
    /// skip the note.
    pub async fn answer(self: &Arc<Self>, term: u64, submitted: Submitted) -> Written {
        let this = self.clone();
        in_task(async move {
            let written = submitted.answer().await;
            this.answered(term, &written);
            written
        })
        .await
    }

    /// Notes how an entry decided in `term` was answered (see `lost`).
    fn answered(&self, term: u64, written: &Written) {
        let refused = match written {
            Ok(w) => match &w.data {
                Response::Batch(answers) => {
                    answers.iter().any(|a| matches!(a, Response::Lost { .. }))
                }
                other => matches!(other, Response::Lost { .. }),
            },
            Err(_) => true,
        };
        if refused {
            self.lost(term);
        }
    }

    /// Proposes `cmd`, an entry certified at apply (a chunked writeset's
    /// last chunk), as a barrier: the table is dropped before it, and the
    /// one built after it is taken.
    pub async fn barrier(self: &Arc<Self>, writes: &Writes, cmd: Command) -> Written {
        // In a task of its own, as `propose`: the table must be the one
        // built after the barrier.
        let (this, writes) = (self.clone(), writes.clone());
        in_task(async move {
            let _order = this.order.lock().await;
            this.rebase(&writes, cmd).await
        })
        .await
    }

    /// Proposes `cmd` (a base, or an entry certified at apply) with the
    /// table dropped, and takes the table the state machine built once it
    /// applied it (before it answers). The caller holds `order`, so no
    /// entry of this node's comes between.
    async fn rebase(&self, writes: &Writes, cmd: Command) -> Written {
        *self.table.lock() = None;
        let written = writes.write(cmd).await;
        if let Ok(w) = &written {
            let (term, index) = (w.log_id.leader_id.term, w.log_id.index);
            if let Some(base) = self.slot.take(term, index) {
                *self.table.lock() = Some(Table {
                    term,
                    certifier: base.certifier,
                });
            }
        }
        written
    }

    /// Proposes a report `cmd`, moving the table's horizon as applying it
    /// will (a table that misses a report only keeps more history; one
    /// ahead of the applied horizon, a report never logged, only aborts
    /// more as "snapshot too old": both are safe).
    pub async fn report(&self, writes: &Writes, report: Report) -> Written {
        // Without a table there is no horizon to move, and a report must
        // not queue behind a base (which may wait for the next leader): a
        // table built after it then misses it, which is safe (above).
        if self.table.lock().is_none() {
            return writes.write(report.command()).await;
        }
        let submitted = {
            let _order = self.order.lock().await;
            if let Some(t) = self.table.lock().as_mut() {
                // One the applied state would refuse changes nothing.
                let _ = t.certifier.report(
                    report.replica,
                    report.applied,
                    report.oldest_snapshot,
                    Instant::now(),
                );
            }
            writes.submit(report.command()).await?
        };
        submitted.answer().await
    }

    /// `f` of the proposal table's window, if there is a table: the
    /// versions this leader decided, in flight or applied.
    pub fn with_window<R>(&self, f: impl FnOnce(&ConflictWindow) -> R) -> Option<R> {
        self.table.lock().as_ref().map(|t| f(t.certifier.window()))
    }

    /// The term of the table to decide with: the one held, unless this
    /// node has left its term since; else, if this node leads, one started
    /// with a base entry of its own ([`Command::Base`]): its first entry
    /// of a term is not enough, as a node restarted as leader of its term
    /// appends none, and the log before a base is all applied when the
    /// table is built. The caller holds `order`.
    async fn ready(&self, writes: &Writes) -> Result<u64, CertifierError> {
        let (state, term) = writes.role();
        {
            let mut table = self.table.lock();
            // A table's term is that of an entry this node appended as
            // leader: the metrics may lag behind it, never the other way.
            if table
                .as_ref()
                .is_some_and(|t| t.term < term || (t.term == term && state != ServerState::Leader))
            {
                *table = None;
            }
            if let Some(t) = &*table {
                return Ok(t.term);
            }
        }
        leading(writes)?;
        // One base at a time (`order`), so a slow apply cannot pile bases
        // up; bounded, so a base left behind by a lost leadership does not
        // hold every certification (and `order`) until the next leader
        // reaches this node. A base answered after that is harmless: the
        // next one takes only a table built at or after itself.
        match tokio::time::timeout(BASE_WAIT, self.rebase(writes, Command::Base)).await {
            // `rebase` dropped the table before proposing.
            Err(_) => {
                tracing::warn!(
                    "raft: this leader's base entry was not applied within {} s; \
                     certifications are refused until one is",
                    BASE_WAIT.as_secs()
                );
                return Err(not_ready("its base entry was not applied in time"));
            }
            // Nothing was proposed for the certifications waiting here.
            Ok(Err(e)) => {
                return Err(match super::proposer::write_error(&e) {
                    CertifierError::NotLeader { leader, addr, .. } => CertifierError::NotLeader {
                        leader,
                        addr,
                        outcome_unknown: false,
                    },
                    _ => not_ready("its base entry failed"),
                })
            }
            Ok(Ok(_)) => {}
        }
        let mut table = self.table.lock();
        // A base the next leader committed is answered here too: a table
        // of a term this node no longer leads decides nothing.
        let (state, term) = writes.role();
        if table
            .as_ref()
            .is_some_and(|t| t.term != term || state != ServerState::Leader)
        {
            *table = None;
        }
        match &*table {
            Some(t) => Ok(t.term),
            None => Err(not_ready("no proposal table was built")),
        }
    }
}

/// Refuses (nothing proposed) unless this node's metrics say it leads.
fn leading(writes: &Writes) -> Result<(), CertifierError> {
    let m = writes.raft().server_metrics();
    let m = m.borrow();
    match m.state {
        ServerState::Leader => Ok(()),
        _ => Err(CertifierError::NotLeader {
            leader: m.current_leader,
            addr: None,
            outcome_unknown: false,
        }),
    }
}

/// `write` run in a task of its own, which a caller giving up does not
/// cut short.
async fn in_task(write: impl std::future::Future<Output = Written> + Send + 'static) -> Written {
    match tokio::spawn(write).await {
        Ok(written) => written,
        Err(_) => Err(WriteFailed {
            error: RaftError::Fatal(Fatal::Panicked),
            may_have_led: true,
        }),
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
