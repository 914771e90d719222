//! The client's transaction as the proxy tracks it: two small state
//! machines, one for what the transaction may still do (`Health`), one
//! for the proxy's own answers still unread on the backend connection
//! (`Pending`). Every change goes through a method here, so the rules
//! below hold wherever a session touches its transaction.

use tashkent_certifier::Version;

use super::Kind;
use crate::proxy::wire::TransactionStatus;

/// A transaction open on the backend.
///
/// Invariants:
/// - `snapshot` is set once the opening query's answer is read, and only
///   then (`Pending::Opening` ⇒ `snapshot == None`).
/// - Until then `floor` (the applied version when the opening was
///   queued, which the snapshot cannot be older than) stands in for it
///   among the proxy's open snapshots, so the certifier's horizon never
///   passes a snapshot whose answer is still on its way; `registered` is
///   the one the proxy counts.
/// - `Doomed` is final: an applier's early abort rolled the backend's
///   transaction back, so not even `ROLLBACK TO` revives it.
/// - `Pending::ReadOut` only on a `Running` transaction: the read-out is
///   sent behind the last statement of one that is about to commit.
#[derive(Debug)]
pub(super) struct Txn {
    /// Opened by BEGIN (else: an autocommit statement or extended batch).
    explicit: bool,
    snapshot: Option<Version>,
    floor: Option<Version>,
    health: Health,
    pending: Pending,
}

/// What the transaction may still do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Statements run.
    Running,
    /// An error happened: only ROLLBACK (or ROLLBACK TO) gets out.
    Failed,
    /// Aborted early for the applier: only its end gets out.
    Doomed,
}

/// Answers to the proxy's own queries the session has yet to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Nothing,
    /// The opening query was sent; an absorbing query for the applier's
    /// cancels up to this count precedes it when `Some`.
    Opening {
        absorb: Option<u64>,
    },
    /// The read-out of the captured entries was sent right behind the
    /// last statement: COMMIT reads it, anything else drains it first.
    ReadOut,
}

impl Txn {
    /// A transaction whose opening query is queued.
    pub(super) fn opening(explicit: bool, absorb: Option<u64>, floor: Version) -> Self {
        Self {
            explicit,
            snapshot: None,
            floor: Some(floor),
            health: Health::Running,
            pending: Pending::Opening { absorb },
        }
    }

    /// What stays of an explicit transaction the applier aborted while
    /// its client was away: the backend's transaction is gone, the client
    /// must still end its block.
    pub(super) fn doomed_remnant() -> Self {
        Self {
            explicit: true,
            snapshot: None,
            floor: None,
            health: Health::Doomed,
            pending: Pending::Nothing,
        }
    }

    pub(super) fn explicit(&self) -> bool {
        self.explicit
    }

    /// BEGIN inside an autocommit transaction (a batch's) makes it the
    /// client's.
    pub(super) fn make_explicit(&mut self) {
        self.explicit = true;
    }

    pub(super) fn snapshot(&self) -> Option<Version> {
        self.snapshot
    }

    /// Failed or doomed: only what ends it gets out.
    pub(super) fn failed(&self) -> bool {
        self.health != Health::Running
    }

    pub(super) fn doomed(&self) -> bool {
        self.health == Health::Doomed
    }

    pub(super) fn fail(&mut self) {
        if self.health == Health::Running {
            self.health = Health::Failed;
        }
    }

    pub(super) fn doom(&mut self) {
        self.health = Health::Doomed;
    }

    /// A `ROLLBACK TO` succeeded: a failed (not doomed) transaction runs
    /// again.
    pub(super) fn rolled_back_to(&mut self) {
        if self.health == Health::Failed {
            self.health = Health::Running;
        }
    }

    /// Whether a statement of `kind` runs as it is: always while running;
    /// then only what ends it, or ROLLBACK TO unless it was doomed.
    pub(super) fn admits(&self, kind: Option<&Kind>) -> bool {
        match self.health {
            Health::Running => true,
            Health::Failed | Health::Doomed => match kind {
                Some(Kind::Commit { .. } | Kind::Rollback { .. }) => true,
                Some(Kind::Savepoint { rollback_to: true }) => self.health == Health::Failed,
                _ => false,
            },
        }
    }

    pub(super) fn status(&self) -> TransactionStatus {
        match self.health {
            Health::Running => TransactionStatus::InBlock,
            Health::Failed | Health::Doomed => TransactionStatus::Failed,
        }
    }

    /// Takes the outstanding opening query: `Some(absorb)` if its answer
    /// (and the absorbing query's, for `Some(count)`) must be read now.
    pub(super) fn take_opening(&mut self) -> Option<Option<u64>> {
        match self.pending {
            Pending::Opening { absorb } => {
                self.pending = Pending::Nothing;
                Some(absorb)
            }
            _ => None,
        }
    }

    /// The opening query answered with the snapshot's version.
    /// The opening answered `snapshot`; returns the floor it replaces
    /// among the open snapshots.
    pub(super) fn opened_at(&mut self, snapshot: Version) -> Option<Version> {
        debug_assert!(self.snapshot.is_none());
        self.snapshot = Some(snapshot);
        self.floor.take()
    }

    /// The version counted for this transaction among the proxy's open
    /// snapshots: its snapshot, or until that is known its floor.
    pub(super) fn registered(&self) -> Option<Version> {
        self.snapshot.or(self.floor)
    }

    /// The read-out went out behind the last statement; false (and
    /// nothing changes) unless the transaction runs: the caller drains
    /// the answer then.
    pub(super) fn read_out_sent(&mut self) -> bool {
        if self.health != Health::Running || self.pending != Pending::Nothing {
            return false;
        }
        self.pending = Pending::ReadOut;
        true
    }

    /// Takes the outstanding read-out: true if its answer must be read now.
    pub(super) fn take_read_out(&mut self) -> bool {
        let was = self.pending == Pending::ReadOut;
        if was {
            self.pending = Pending::Nothing;
        }
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_transaction_admits_only_its_end_and_rollback_to() {
        let mut t = Txn::opening(true, None, 0);
        assert!(t.admits(Some(&Kind::Other)));
        t.fail();
        assert!(!t.admits(Some(&Kind::Other)));
        assert!(!t.admits(None));
        assert!(t.admits(Some(&Kind::Rollback { chain: false })));
        assert!(t.admits(Some(&Kind::Savepoint { rollback_to: true })));
        assert_eq!(t.status(), TransactionStatus::Failed);
        t.rolled_back_to();
        assert!(!t.failed());
        assert_eq!(t.status(), TransactionStatus::InBlock);
    }

    #[test]
    fn doomed_is_final() {
        let mut t = Txn::opening(true, None, 0);
        t.doom();
        t.fail();
        t.rolled_back_to();
        assert!(t.doomed() && t.failed());
        assert!(!t.admits(Some(&Kind::Savepoint { rollback_to: true })));
        assert!(t.admits(Some(&Kind::Commit { chain: false })));
        assert!(Txn::doomed_remnant().doomed());
    }

    #[test]
    fn answers_are_taken_once() {
        let mut t = Txn::opening(false, Some(3), 0);
        assert!(!t.read_out_sent(), "no read-out before the opening is read");
        assert_eq!(t.take_opening(), Some(Some(3)));
        assert_eq!(t.take_opening(), None);
        t.opened_at(7);
        assert_eq!(t.snapshot(), Some(7));
        assert!(t.read_out_sent());
        assert!(t.take_read_out());
        assert!(!t.take_read_out());
        t.fail();
        assert!(!t.read_out_sent(), "a failed transaction does not commit");
    }
}
