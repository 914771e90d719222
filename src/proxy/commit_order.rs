//! The commit order of one replica, as the proxy tracks it: which versions
//! have taken their turn in PostgreSQL, and whether the order broke.
//!
//! Versions become visible in version order because each committer (a
//! client's session, or the applier for versions from the log) runs
//! `tashkent.take_turns` first — it holds a lock until its transaction is
//! visible — and `tashkent.wait_turn` on its predecessor just before its
//! COMMIT (`capture/sql/60_commit_order.sql`). The one thing PostgreSQL
//! cannot order is the taking of turns: a committer that waited for a
//! predecessor that had not taken its turn yet would not wait at all. So a
//! committer sends its `wait_turn(v - 1)` only after the committer of
//! `v - 1` took its turn ([`CommitOrder::wait_place`]); the commits
//! themselves overlap.

use tashkent_certifier::Version;
use tokio::sync::watch;

/// Where the commit order stands.
///
/// Invariants: every version up to `positioned` has taken its turn (its
/// committer ran `take_turns`), and only the committer of
/// `positioned + 1` moves it; `xid` is the transaction of `positioned`
/// while it may not have committed (`None`: known committed); once
/// `broken` is set, no committer of a later version commits itself (the
/// applier applies them from the log after [`CommitOrder::reset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderState {
    pub positioned: Version,
    pub xid: Option<u64>,
    pub broken: Option<Version>,
}

/// What a committer of version `v` may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Take the turn and wait for `v - 1`, whose transaction is
    /// `prev_xid` (`None`: committed, nothing to wait for).
    Go { prev_xid: Option<u64> },
    /// The committer of this version failed: do not commit.
    Broken(Version),
}

pub struct CommitOrder {
    state: watch::Sender<OrderState>,
}

impl CommitOrder {
    /// The order of a replica whose versions up to `applied` are committed.
    pub fn new(applied: Version) -> CommitOrder {
        CommitOrder {
            state: watch::Sender::new(OrderState {
                positioned: applied,
                xid: None,
                broken: None,
            }),
        }
    }

    #[cfg(test)]
    fn state(&self) -> OrderState {
        *self.state.borrow()
    }

    /// Waits until the committer of `first - 1` took its turn (or the
    /// order broke before `first`).
    pub async fn wait_place(&self, first: Version) -> Place {
        let mut rx = self.state.subscribe();
        let s = match rx
            .wait_for(|s| s.positioned + 1 >= first || s.broken.is_some_and(|b| b < first))
            .await
        {
            Ok(s) => *s,
            // The sender lives as long as `self`.
            Err(_) => return Place::Broken(first),
        };
        match s.broken {
            Some(b) if b < first => Place::Broken(b),
            _ => Place::Go {
                prev_xid: if s.positioned + 1 == first {
                    s.xid
                } else {
                    None
                },
            },
        }
    }

    /// Versions `first..=last` took their turn in transaction `xid`.
    /// False (and the order is not moved) when that was out of order: the
    /// committer must not commit.
    #[must_use]
    pub fn took_turn(&self, first: Version, last: Version, xid: u64) -> bool {
        let mut in_order = false;
        self.state.send_if_modified(|s| {
            in_order = s.positioned + 1 == first;
            if in_order {
                s.positioned = last;
                s.xid = Some(xid);
            } else {
                tracing::error!(
                    "commit order: versions {first}..={last} took their turn after {}",
                    s.positioned
                );
            }
            in_order
        });
        in_order
    }

    /// Version `v` committed: if no later version took its turn yet, its
    /// successor need not wait for it.
    pub fn committed(&self, v: Version) {
        self.state.send_if_modified(|s| {
            if s.positioned == v && s.xid.is_some() {
                s.xid = None;
                true
            } else {
                false
            }
        });
    }

    /// The committer of `v` failed: later committers must not commit.
    pub fn break_at(&self, v: Version) {
        self.state.send_modify(|s| {
            s.broken = Some(s.broken.map_or(v, |b| b.min(v)));
        });
    }

    /// Every committer has finished and `applied` is what the replica
    /// holds: start over from there.
    pub fn reset(&self, applied: Version) {
        self.state.send_replace(OrderState {
            positioned: applied,
            xid: None,
            broken: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_committer_waits_for_its_predecessor_to_take_its_turn() {
        let order = std::sync::Arc::new(CommitOrder::new(10));
        assert_eq!(order.wait_place(11).await, Place::Go { prev_xid: None });
        let waiter = {
            let order = order.clone();
            tokio::spawn(async move { order.wait_place(12).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(order.took_turn(11, 11, 700));
        assert_eq!(
            waiter.await.unwrap(),
            Place::Go {
                prev_xid: Some(700)
            }
        );
        // A batch moves it by several versions.
        assert!(order.took_turn(12, 14, 701));
        // Out of order: refused.
        assert!(!order.took_turn(12, 12, 702));
        assert_eq!(order.state().positioned, 14);
        // Once 14 committed, 15 has nothing to wait for.
        order.committed(13);
        assert_eq!(
            order.wait_place(15).await,
            Place::Go {
                prev_xid: Some(701)
            }
        );
        order.committed(14);
        assert_eq!(order.wait_place(15).await, Place::Go { prev_xid: None });
    }

    #[tokio::test]
    async fn a_broken_order_stops_later_committers_until_reset() {
        let order = CommitOrder::new(10);
        assert!(order.took_turn(11, 11, 700));
        order.break_at(11);
        assert_eq!(order.wait_place(12).await, Place::Broken(11));
        order.reset(10);
        assert_eq!(order.wait_place(11).await, Place::Go { prev_xid: None });
        assert_eq!(order.state().broken, None);
    }
}
