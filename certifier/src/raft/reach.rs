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
//! word on that peer would stay "unreachable".

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
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
            match r.state.load(Ordering::Relaxed) {
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
            r.state.store(ANSWERS, Ordering::Relaxed);
        }
    }
}

const ANSWERS: u8 = 0;
const LOST: u8 = 1;
const REFUSES: u8 = 2;

/// How one peer answered this node's last request to it.
#[derive(Debug)]
pub(super) struct Reach {
    node: NodeId,
    target: NodeId,
    addr: String,
    state: AtomicU8,
}

impl Reach {
    fn new(node: NodeId, target: NodeId, addr: &str) -> Reach {
        Reach {
            node,
            target,
            addr: addr.to_owned(),
            state: AtomicU8::new(ANSWERS),
        }
    }

    /// A request got no answer, or an error status (`why`): lost when the
    /// status says the transport failed, else the peer refused (it holds
    /// its vote after losing its disk, wants a client certificate, runs
    /// another build). True when that is news.
    pub(super) fn failed(&self, why: &Status) -> bool {
        let lost = matches!(
            why.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        );
        let now = if lost { LOST } else { REFUSES };
        let news = self.state.swap(now, Ordering::Relaxed) != now;
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

    /// The peer answered (a raft error it sent counts). True when that is
    /// news.
    pub(super) fn answered(&self) -> bool {
        // A load first: the common case writes nothing.
        let news = self.state.load(Ordering::Relaxed) != ANSWERS
            && self.state.swap(ANSWERS, Ordering::Relaxed) != ANSWERS;
        if news {
            let (node, peer, addr) = (self.node, self.target, &self.addr);
            tracing::info!(node, peer, addr, "raft peer answers again");
        }
        news
    }

    /// Whether the last request got no answer.
    #[cfg(test)]
    pub(super) fn lost(&self) -> bool {
        self.state.load(Ordering::Relaxed) == LOST
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
        assert!(!a.answered(), "a peer answers until it does not");
        assert!(a.failed(&Status::unavailable("connection refused")));
        assert!(
            !b.failed(&Status::deadline_exceeded("no answer")),
            "still lost"
        );
        assert!(b.lost());
        assert!(a.failed(&Status::failed_precondition("holding its vote")));
        assert!(!a.lost(), "a refusal is an answer of a kind");
        peers.reach(3, "h:3").failed(&Status::cancelled("reset"));
        assert_eq!(peers.troubled(), (vec![3], vec![2]));
        assert!(!b.failed(&Status::permission_denied("no certificate")));
        assert!(b.answered());
        assert!(!a.answered());
        assert!(a.failed(&Status::unavailable("gone again")));
        peers.forget();
        assert_eq!(peers.troubled(), (vec![], vec![]));
        assert!(!a.lost());
        assert!(!a.answered(), "forgotten without a word");
        assert!(
            a.failed(&Status::unavailable("still gone")),
            "a new account"
        );
        let moved = peers.reach(2, "h:2");
        assert!(!Arc::ptr_eq(&moved, &a), "a new address starts afresh");
        assert!(!moved.lost());
    }
}
