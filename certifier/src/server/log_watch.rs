//! A certifier whose log fails (disk full, an fsync error, a write that
//! hangs past `log_stall_timeout_ms`) never acknowledges again; a raft
//! node also gets out of the group's way so that the others carry on.
//!
//! Every log of the certifier is watched here, so that a failure is
//! recorded as the service's poison (clients are told what failed,
//! `53100` for a full disk, and `status` shows it) even when no request
//! of its own ran into it: a log whose disk hangs answers nobody, and a
//! certification waiting for its record is then answered that its
//! outcome is unknown (`Inner::unless_failed`). The logs:
//! - a single certifier's log and its spool;
//! - a raft node's raft log, its WAL and its meta file (the vote, written
//!   with the same stall bound, `raft::RaftLogFailure`): openraft stops the
//!   node's raft core itself (a fatal storage error), so it neither leads
//!   nor votes;
//! - a raft node's versions log (`raft::versions`) and spool: applying an
//!   entry then fails, which stops the raft core too (the raft log may
//!   still work, and the node would otherwise go on leading or voting);
//!   the core is shut down here if it still runs.
//!
//! Certifications refused, or failed in flight, on a poisoned node are
//! answered as a log failure (`certify_failed`), which clients retry on
//! another node; only when every node failed do they give up with it.

use std::sync::Weak;
use std::time::Duration;

use super::service::Inner;
use crate::error::CertifierError;

/// How often the logs are looked at: a failure is rare, and until it is
/// noticed here a request that meets the failed log fails on it, a raft
/// node whose core stopped refuses certifications (out of contact), and
/// `status` looks for itself.
const POLL: Duration = Duration::from_millis(100);

/// Watches the logs of `inner` until it is dropped or stopped, or until
/// one failed (and, on a raft node, its raft core is shut down).
pub(crate) async fn watch(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.stopping() {
            return;
        }
        note_log_failures(&inner);
        if inner.poisoned().is_err() {
            let Some(node) = &inner.node else { return };
            tracing::error!(
                node = node.id,
                "a log of this certifier node failed: its raft core stops, the others carry on"
            );
            if let Err(e) = node.raft().shutdown().await {
                tracing::warn!(node = node.id, "stopping the raft core: {e}");
            }
            return;
        }
    }
}

/// Records a failure of one of the certifier's logs as the service's
/// poison (the first one wins).
pub(crate) fn note_log_failures(inner: &Inner) {
    let spool = (inner.spool.wal().poison_cause(), "spool");
    let logs = match &inner.node {
        Some(node) => vec![
            (node.raft_log.get(), "raft log"),
            (inner.wal.poison_cause(), "versions log"),
            spool,
        ],
        None => vec![(inner.wal.poison_cause(), "log"), spool],
    };
    for (failure, log) in logs {
        if let Some(cause) = failure {
            inner.fail_log(log, &cause);
        }
    }
}

/// What a raft node answers when certifying failed with `e`: if one of
/// its logs failed, a log failure (the outcome is unknown unless the
/// certification was refused before it was proposed), else `e`.
pub(crate) fn certify_failed(inner: &Inner, e: CertifierError) -> CertifierError {
    note_log_failures(inner);
    let Err(CertifierError::LogFailed { failure, cause, .. }) = inner.poisoned() else {
        return e;
    };
    CertifierError::LogFailed {
        failure,
        cause,
        outcome_unknown: maybe_proposed(&e),
    }
}

/// Whether the certification that failed with `e` may have been proposed
/// (and so may have committed): all but a refusal before proposing.
fn maybe_proposed(e: &CertifierError) -> bool {
    !matches!(
        e,
        CertifierError::OutOfContact {
            outcome_unknown: false,
            ..
        } | CertifierError::NotLeader {
            outcome_unknown: false,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_before_proposing_says_not_proposed() {
        let not_leader = |outcome_unknown| CertifierError::NotLeader {
            leader: Some(2),
            addr: None,
            outcome_unknown,
        };
        let out_of_contact = |outcome_unknown| CertifierError::OutOfContact {
            node: 1,
            why: "no heartbeat",
            refused: "certify".into(),
            outcome_unknown,
        };
        assert!(!maybe_proposed(&not_leader(false)));
        assert!(!maybe_proposed(&out_of_contact(false)));
        // A leader that lost its entry unapplied: it may be in a snapshot.
        assert!(maybe_proposed(&not_leader(true)));
        assert!(maybe_proposed(&out_of_contact(true)));
        assert!(maybe_proposed(&CertifierError::OutcomeUnknown(
            "raft".into()
        )));
    }
}
