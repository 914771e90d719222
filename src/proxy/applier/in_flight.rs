//! The commits the applier has handed out or made, settled in version
//! order.

use std::collections::VecDeque;

use tashkent_certifier::Version;
use tokio::sync::oneshot;

use crate::proxy::coordination::Shared;

/// Commits not yet seen to finish, in version order: versions handed to
/// their sessions (which say on a channel whether they committed) and
/// versions the applier committed itself. The applied version moves as
/// the front finishes; a commit that failed breaks the commit order, and
/// everything after it is applied from the log again.
#[derive(Default)]
pub(super) struct InFlight {
    queue: VecDeque<Handed>,
}

struct Handed {
    first: Version,
    last: Version,
    outcome: Outcome,
}

enum Outcome {
    /// The session says on this channel whether it committed.
    Waiting(oneshot::Receiver<bool>),
    Known(bool),
}

impl InFlight {
    /// Versions `first..=last` handed to a session (`done`), or committed
    /// by the applier (`None`).
    pub(super) fn push(
        &mut self,
        first: Version,
        last: Version,
        done: Option<oneshot::Receiver<bool>>,
    ) {
        let outcome = match done {
            Some(rx) => Outcome::Waiting(rx),
            None => Outcome::Known(true),
        };
        self.queue.push_back(Handed {
            first,
            last,
            outcome,
        });
    }

    /// True when no commit is in flight.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The last version handed or committed (0: none in flight).
    pub(super) fn last(&self) -> Version {
        self.queue.back().map_or(0, |h| h.last)
    }

    /// True when the front waits for a session.
    pub(super) fn waiting(&self) -> bool {
        self.queue
            .front()
            .is_some_and(|h| matches!(h.outcome, Outcome::Waiting(_)))
    }

    /// Moves the applied version past the commits that finished; the
    /// first version of a failed one, if the front failed.
    pub(super) fn settle_ready(&mut self, shared: &Shared) -> Option<Version> {
        while let Some(front) = self.queue.front_mut() {
            if let Outcome::Waiting(rx) = &mut front.outcome {
                match rx.try_recv() {
                    Ok(ok) => front.outcome = Outcome::Known(ok),
                    Err(oneshot::error::TryRecvError::Empty) => return None,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        front.outcome = Outcome::Known(false)
                    }
                }
            }
            if matches!(front.outcome, Outcome::Known(false)) {
                return Some(front.first);
            }
            shared.applied.send_replace(front.last);
            self.queue.pop_front();
        }
        None
    }

    /// Waits for the front session's commit, then settles.
    pub(super) async fn settle_next(&mut self, shared: &Shared) -> Option<Version> {
        if let Some(front) = self.queue.front_mut() {
            if let Outcome::Waiting(rx) = &mut front.outcome {
                front.outcome = Outcome::Known(rx.await.unwrap_or(false));
            }
        }
        self.settle_ready(shared)
    }

    /// Waits until every commit in flight finished (after a failure, the
    /// later ones fail too: the order is broken at the first failure so
    /// that none waits for a turn that never comes), then starts the
    /// commit order over from the applied version.
    pub(super) async fn drain(&mut self, shared: &Shared) {
        let mut failed = false;
        while let Some(h) = self.queue.pop_front() {
            let ok = match h.outcome {
                Outcome::Known(ok) => ok,
                Outcome::Waiting(rx) => rx.await.unwrap_or(false),
            };
            if ok && !failed {
                shared.applied.send_replace(h.last);
            } else if ok {
                tracing::error!(
                    "versions {}..={} committed after an earlier version failed",
                    h.first,
                    h.last
                );
            } else if !failed {
                failed = true;
                shared.order.break_at(h.first);
            }
        }
        shared.order.reset(*shared.applied.borrow());
    }
}
