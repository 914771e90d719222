//! Whether this node's peers answer it, for the operator's log.
//!
//! openraft tries a peer that is down again and again (twice a second)
//! and, patched, logs each failure at debug only (`vendor/README.md`).
//! Here each peer's state is kept for all connections to it (openraft
//! makes one per replication stream and per election), so that a peer
//! lost, a peer refusing, and a peer answering again are logged once each,
//! however many connections and tries see it.
//!
//! Only a leader or a candidate sends to its peers. A node that goes back
//! to following forgets what it saw ([`Peers::forget`]): it would
//! otherwise never hear that a peer it lost came back, and its log's last
//! word on that peer would stay "unreachable". A request is told apart by
//! when it was sent (`Sent`): one still in flight when its node forgot
//! its peers says nothing of them afterwards, whatever becomes of it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tonic::{Code, Status};

use super::types::NodeId;
use crate::error::CertifierError;

/// The peers of node `node`, as its requests found them.
#[derive(Debug, Default)]
pub struct Peers {
    node: NodeId,
    reach: Mutex<BTreeMap<NodeId, Arc<Reach>>>,
}

impl Peers {
    pub fn new(node: NodeId) -> Peers {
        Peers {
            node,
            reach: Mutex::default(),
        }
    }

    /// The state of peer `target` at `addr`, shared by every connection
    /// to it. A peer at a new address (a membership change) starts afresh.
    pub(super) fn reach(&self, target: NodeId, addr: &str) -> Arc<Reach> {
        let fresh = || Arc::new(Reach::new(self.node, target, addr));
        let mut reach = self.reach.lock();
        let r = reach.entry(target).or_insert_with(fresh);
        if r.addr != addr {
            *r = fresh();
        }
        r.clone()
    }

    /// The peers whose last answer did not come, and those that refused:
    /// each in id order.
    pub fn troubled(&self) -> (Vec<NodeId>, Vec<NodeId>) {
        let (mut lost, mut refusing) = (Vec::new(), Vec::new());
        for (id, r) in self.reach.lock().iter() {
            match r.word.load(Ordering::Relaxed) & STATE {
                LOST => lost.push(*id),
                REFUSES => refusing.push(*id),
                _ => {}
            }
        }
        (lost, refusing)
    }

    /// This node no longer sends to its peers (it follows): what it saw
    /// of them is forgotten, without a word. Sending again later (as a
    /// candidate or leader) starts a new account.
    pub fn forget(&self) {
        for r in self.reach.lock().values() {
            // A new account: requests sent before it no longer count.
            let _ = r
                .word
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                    Some(((w >> EPOCH_SHIFT) + 1) << EPOCH_SHIFT | ANSWERS)
                });
        }
    }
}

// A peer's state: in the low bits of its word, under the account's epoch.
const ANSWERS: u64 = 0;
const LOST: u64 = 1;
const REFUSES: u64 = 2;
const STATE: u64 = 3;
const EPOCH_SHIFT: u32 = 2;

/// How one peer answered this node's last request to it, in this node's
/// current account of it (see [`Peers::forget`]).
#[derive(Debug)]
pub(super) struct Reach {
    node: NodeId,
    target: NodeId,
    addr: String,
    /// The account's epoch (high bits) and the peer's state in it (low
    /// bits), in one word so that a request's news and a new account
    /// cannot interleave.
    word: AtomicU64,
}

/// A request to a peer, sent in the account current then: what becomes
/// of it is news only while that account lasts.
#[derive(Debug, Clone)]
pub(super) struct Sent {
    reach: Arc<Reach>,
    epoch: u64,
}

impl Sent {
    /// It got no answer, or an error status (`why`): see
    /// [`Reach::failed`]. True when that is news.
    pub(super) fn failed(&self, why: &Status) -> bool {
        self.reach.failed(self.epoch, why)
    }

    /// It got an answer. True when that is news.
    pub(super) fn answered(&self) -> bool {
        self.reach.answered(self.epoch)
    }
}

impl Reach {
    fn new(node: NodeId, target: NodeId, addr: &str) -> Reach {
        Reach {
            node,
            target,
            addr: addr.to_owned(),
            word: AtomicU64::new(ANSWERS),
        }
    }

    /// A request about to be sent.
    pub(super) fn send(self: &Arc<Self>) -> Sent {
        Sent {
            reach: self.clone(),
            epoch: self.word.load(Ordering::Relaxed) >> EPOCH_SHIFT,
        }
    }

    /// Sets the state to `now` if the account is still `epoch`'s: true
    /// when it was another state before.
    fn set(&self, epoch: u64, now: u64) -> bool {
        let was = self
            .word
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                (w >> EPOCH_SHIFT == epoch && w & STATE != now)
                    .then_some(epoch << EPOCH_SHIFT | now)
            });
        was.is_ok()
    }

    /// A request sent in account `epoch` got no answer, or an error status
    /// (`why`): lost when the status says the transport failed, else the
    /// peer refused (it holds its vote after losing its disk, wants a
    /// client certificate, runs another build). True when that is news.
    fn failed(&self, epoch: u64, why: &Status) -> bool {
        let lost = matches!(
            why.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        );
        let news = self.set(epoch, if lost { LOST } else { REFUSES });
        if news {
            let (node, peer, addr) = (self.node, self.target, &self.addr);
            let why = CertifierError::Rpc(why.clone());
            if lost {
                tracing::warn!(node, peer, addr, "raft peer unreachable: {why}");
            } else {
                tracing::warn!(node, peer, addr, "raft peer refuses: {why}");
            }
        }
        news
    }

    /// The peer answered a request sent in account `epoch` (a raft error
    /// it sent counts). True when that is news.
    fn answered(&self, epoch: u64) -> bool {
        // A load first: the common case writes nothing.
        let w = self.word.load(Ordering::Relaxed);
        let news = w & STATE != ANSWERS && self.set(epoch, ANSWERS);
        if news {
            let (node, peer, addr) = (self.node, self.target, &self.addr);
            tracing::info!(node, peer, addr, "raft peer answers again");
        }
        news
    }

    /// Whether the last request got no answer.
    #[cfg(test)]
    pub(super) fn lost(&self) -> bool {
        self.word.load(Ordering::Relaxed) & STATE == LOST
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_change_is_news_once_and_forgetting_is_silent() {
        let peers = Peers::new(1);
        let a = peers.reach(2, "h:1");
        let b = peers.reach(2, "h:1");
        assert!(Arc::ptr_eq(&a, &b), "one state per peer");
        assert!(!a.send().answered(), "a peer answers until it does not");
        assert!(a.send().failed(&Status::unavailable("connection refused")));
        assert!(
            !b.send().failed(&Status::deadline_exceeded("no answer")),
            "still lost"
        );
        assert!(b.lost());
        assert!(a
            .send()
            .failed(&Status::failed_precondition("holding its vote")));
        assert!(!a.lost(), "a refusal is an answer of a kind");
        peers
            .reach(3, "h:3")
            .send()
            .failed(&Status::cancelled("reset"));
        assert_eq!(peers.troubled(), (vec![3], vec![2]));
        assert!(!b
            .send()
            .failed(&Status::permission_denied("no certificate")));
        assert!(b.send().answered());
        assert!(!a.send().answered());
        assert!(a.send().failed(&Status::unavailable("gone again")));
        peers.forget();
        assert_eq!(peers.troubled(), (vec![], vec![]));
        assert!(!a.lost());
        assert!(!a.send().answered(), "forgotten without a word");
        assert!(
            a.send().failed(&Status::unavailable("still gone")),
            "a new account"
        );
        let moved = peers.reach(2, "h:2");
        assert!(!Arc::ptr_eq(&moved, &a), "a new address starts afresh");
        assert!(!moved.lost());
    }

    #[test]
    fn a_request_sent_before_the_node_forgot_its_peers_says_nothing_after() {
        let peers = Peers::new(1);
        let a = peers.reach(2, "h:2");
        let (old_fails, old_answers) = (a.send(), a.send());
        peers.forget();
        assert!(
            !old_fails.failed(&Status::unavailable("late")),
            "no stale \"unreachable\" line"
        );
        assert_eq!(peers.troubled(), (vec![], vec![]));
        let new = a.send();
        assert!(new.failed(&Status::unavailable("down")));
        assert!(!old_answers.answered(), "a late answer does not clear it");
        assert!(a.lost());
        assert!(a.send().answered());
    }
}
