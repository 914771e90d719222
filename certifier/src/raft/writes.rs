//! The one way this node proposes raft entries, and the gate a leadership
//! hand-over closes.
//!
//! Every `client_write` of a served node (the proposer's batches, chunks,
//! refusals, reports; membership changes take `Writes::pass`) goes
//! through [`Writes::write`], which holds a shared
//! pass through the gate until the entry is committed and applied. A hand-
//! over (`transfer.rs`) closes the gate: it waits for the entries in
//! flight to finish, and later writes wait until it reopens. So the node
//! taking over can be brought level with this one's log, which raft asks
//! of a candidate before any node votes for it; with writes coming in,
//! the leader would always hold an entry the candidate lacks.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, Fatal, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::ServerState;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use super::decider::Decider;
use super::types::{Command, NodeId, Raft, TypeConfig};
use crate::Version;

/// What `client_write` returns; a failure says whether this node may have
/// led when asked.
pub type Written = Result<ClientWriteResponse<TypeConfig>, WriteFailed>;

/// A `client_write` that failed.
#[derive(Debug)]
pub struct WriteFailed {
    pub error: RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>,
    /// This node may have led when the write was asked of it (it was not
    /// a follower in an unchanged term): it may have appended the entry,
    /// which may have committed although it answers ForwardToLeader (an
    /// entry left unapplied behind a snapshot it installs, see the
    /// vendored core's `answer_unapplied`).
    pub may_have_led: bool,
}

/// An entry handed to the raft core, holding its pass through the gate
/// until its answer.
pub struct Submitted {
    writes: Writes,
    asked: Asked,
    answer: tokio::sync::oneshot::Receiver<ClientWriteResult>,
    _pass: OwnedRwLockReadGuard<()>,
}

/// This node's role and term when a write was asked of it.
#[derive(Clone, Copy)]
struct Asked {
    state: ServerState,
    term: u64,
}

impl Asked {
    /// `error`, for a write asked as `self` of `writes`.
    fn failed(
        self,
        writes: &Writes,
        error: RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>,
    ) -> WriteFailed {
        // The metrics lag the core: a follower may have been elected
        // since (a new term), a candidate may lead in its term.
        let follower = matches!(self.state, ServerState::Follower | ServerState::Learner);
        let may_have_led = !(follower && writes.role().1 == self.term);
        WriteFailed {
            error,
            may_have_led,
        }
    }
}

type ClientWriteResult =
    Result<ClientWriteResponse<TypeConfig>, ClientWriteError<NodeId, openraft::BasicNode>>;

impl Submitted {
    /// The entry's answer: once committed and applied, or why not.
    pub async fn answer(self) -> Written {
        let Submitted {
            writes,
            asked,
            answer,
            _pass,
        } = self;
        match answer.await {
            Ok(Ok(written)) => Ok(written),
            Ok(Err(e)) => Err(asked.failed(&writes, RaftError::APIError(e))),
            // The core dropped the answer: it stopped.
            Err(_) => Err(asked.failed(&writes, RaftError::Fatal(Fatal::Stopped))),
        }
    }
}

/// Proposes entries through `raft`, past a gate. Cheap to clone; clones
/// share the gate.
#[derive(Clone)]
pub struct Writes {
    raft: Raft,
    /// Writes hold it shared; a hand-over holds it alone. tokio's lock is
    /// fair: once a hand-over waits for it, later writes queue behind.
    gate: Arc<RwLock<()>>,
    /// Certifies at proposal (`decider.rs`); without it, entries are
    /// certified at apply on every node.
    decider: Option<Arc<Decider>>,
}

/// The gate, closed: writes wait until it is dropped.
pub(crate) type Closed = OwnedRwLockWriteGuard<()>;

impl From<Raft> for Writes {
    fn from(raft: Raft) -> Writes {
        Writes {
            raft,
            gate: Arc::default(),
            decider: None,
        }
    }
}

/// A replica's report, as proposed: only a report moves the proposal
/// table's horizon ([`Decider::report`]).
#[derive(Clone, Copy, Debug)]
pub struct Report {
    pub replica: u32,
    pub applied: Version,
    pub oldest_snapshot: Version,
}

impl Report {
    /// The entry that logs it.
    pub fn command(self) -> Command {
        Command::Report {
            replica: self.replica,
            applied: self.applied,
            oldest_snapshot: self.oldest_snapshot,
        }
    }
}

impl Writes {
    /// The raft node written to.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// These writes, certifying at proposal with `decider`.
    pub fn deciding(mut self, decider: Arc<Decider>) -> Writes {
        self.decider = Some(decider);
        self
    }

    /// The decider, if these writes certify at proposal.
    pub fn decider(&self) -> Option<&Arc<Decider>> {
        self.decider.as_ref()
    }

    /// Proposes replica `replica`'s report (`Command::Report`).
    pub async fn report(
        &self,
        replica: u32,
        applied: Version,
        oldest_snapshot: Version,
    ) -> Written {
        let report = Report {
            replica,
            applied,
            oldest_snapshot,
        };
        match &self.decider {
            Some(d) => d.report(self, report).await,
            None => self.write(report.command()).await,
        }
    }

    /// Proposes an entry that is certified at apply (a chunked writeset's
    /// last chunk).
    pub async fn certified_at_apply(&self, cmd: Command) -> Written {
        match &self.decider {
            Some(d) => d.barrier(self, cmd).await,
            None => self.write(cmd).await,
        }
    }

    /// Proposes `cmd` once the gate is open, and awaits its answer.
    pub async fn write(&self, cmd: Command) -> Written {
        self.submit(cmd).await?.answer().await
    }

    /// Hands `cmd` to the raft core once the gate is open, without
    /// awaiting its answer: entries submitted one after the other reach
    /// the core, and its log, in that order.
    pub async fn submit(&self, cmd: Command) -> Result<Submitted, WriteFailed> {
        let pass = self.gate.clone().read_owned().await;
        let (state, term) = self.role();
        let asked = Asked { state, term };
        match self.raft.client_write_ff(cmd).await {
            Ok(answer) => Ok(Submitted {
                writes: self.clone(),
                asked,
                answer,
                _pass: pass,
            }),
            Err(fatal) => Err(asked.failed(self, RaftError::Fatal(fatal))),
        }
    }

    /// This node's role and term, as its metrics last said.
    pub(super) fn role(&self) -> (ServerState, u64) {
        let m = self.raft.server_metrics();
        let m = m.borrow();
        (m.state, m.vote.leader_id().term)
    }

    /// A pass through the gate, for a change of the log that is not a
    /// `client_write` (membership): a hand-over waits for it, and it waits
    /// for a hand-over.
    pub(crate) async fn pass(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// Closes the gate, once the writes in flight have their answers; none
    /// if they have not within `within` (the gate then stays open).
    pub(crate) async fn close(&self, within: Duration) -> Option<Closed> {
        tokio::time::timeout(within, self.gate.clone().write_owned())
            .await
            .ok()
    }
}
