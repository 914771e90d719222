//! A raft node whose log fails (disk full, an fsync error) never
//! acknowledges again, like the single certifier, and also gets out of
//! the group's way so that the others carry on.
//!
//! Two logs can fail on a node:
//! - its raft log: openraft stops the node's raft core itself (a fatal
//!   storage error), so it neither leads nor votes; here the failure is
//!   recorded as the service's poison, so that clients are told what
//!   failed (`53100` for a full disk) and `status` shows it;
//! - its versions log (`raft::versions`): applying an entry then fails,
//!   which stops the raft core too (the raft log may still work, and the
//!   node would otherwise go on leading or voting); here the failure is
//!   recorded as the service's poison, as for the raft log, and the core
//!   is shut down if it still runs.
//!
//! Certifications refused, or failed in flight, on a poisoned node are
//! answered as a log failure (`certify_failed`), which clients retry on
//! another node; only when every node failed do they give up with it.

use std::sync::Weak;
use std::time::Duration;

use super::service::Inner;
use crate::error::{CertifierError, LogFailure};

/// How often the two logs are looked at: a failure is rare, and until it
/// is noticed here the node refuses certifications anyway (its core
/// stopped: out of contact) or they fail on the poisoned log.
const POLL: Duration = Duration::from_millis(100);

/// Watches the node of `inner` until it is dropped, stopped, or poisoned
/// with its raft core shut down.
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

/// Records a failure of the node's raft log or versions log as the
/// service's poison.
fn note_log_failures(inner: &Inner) {
    let Some(node) = &inner.node else { return };
    let logs = [(&node.raft_wal, "raft log"), (&inner.wal, "versions log")];
    for (wal, what) in logs {
        if let Some(cause) = wal.poison_cause() {
            inner.fail_with(
                LogFailure::of(&cause),
                format!("certifier node {}'s {what}: {cause}", node.id),
            );
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
