//! Whether a raft node is in touch with its group, as its raft metrics
//! tell: a leader is when a quorum acknowledged it within the leader lease
//! (after that the others may elect another leader), a follower or learner
//! when it knows a leader (it forgets it when its election timer fires);
//! a candidate or a stopped node is not.
//!
//! Why it matters: a leader cut off from the majority cannot commit, and
//! without this its clients would wait for their answers until the
//! partition heals, and the appliers subscribed to it would wait for
//! versions it never gets. So a node out of contact answers no
//! certification, fails those in flight as "outcome unknown, retry"
//! (clients retry under the same txn id on another node), and once out of
//! contact for [`STREAM_GRACE`] ends its Subscribe streams and refuses new
//! ones, so appliers move to a node that gets new versions. The grace is
//! longer than an election, so a leader's crash does not break the
//! followers' streams.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::Fatal;
use openraft::ServerState;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::raft::reach::Peers;
use crate::raft::{NodeId, Raft};

type RaftMetrics = openraft::RaftMetrics<NodeId, openraft::BasicNode>;

/// How often the leader lease is looked at.
const POLL: Duration = Duration::from_millis(50);

/// Why a node whose raft core ended is out of contact.
const STOPPED: &str = "its raft node has stopped";

/// How long a node may be out of contact before its Subscribe streams end
/// (an election here takes 0.6–2 s).
pub(crate) const STREAM_GRACE: Duration = Duration::from_secs(3);

/// Out of contact since when, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lost {
    pub(crate) since: Instant,
    pub(crate) why: &'static str,
}

/// A node's contact with its group, kept up to date by a task that ends
/// when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct Contact {
    rx: watch::Receiver<Option<Lost>>,
    peers: Arc<Peers>,
}

impl Contact {
    /// Watches `raft`, whose leader lease is `lease` (openraft's is the
    /// maximum election timeout).
    /// What it sees goes to the log, with `peers` forgotten whenever the
    /// node follows (`raft::reach`).
    pub(crate) fn watch(raft: Raft, lease: Duration, peers: Arc<Peers>) -> Contact {
        let (tx, rx) = watch::channel(None);
        let forgets = peers.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut leading_since = None;
            // Role and leader changes wake it at once (a new leader must
            // not refuse its first certifications); the lease is polled.
            let mut role = raft.server_metrics();
            let mut core_runs = true;
            let mut log = Log {
                peers: forgets,
                role: None,
                lost: None,
                had_contact: false,
            };
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    // Err: the raft core has ended; its last metrics say why.
                    r = role.changed(), if core_runs => core_runs = r.is_ok(),
                    () = tx.closed() => return,
                }
                // The full metrics go out right after the server metrics
                // that woke it: read them once they show the same role,
                // else a new leader would be out of contact until the
                // next poll (waited for one poll at most).
                let (state, leader) = {
                    let r = role.borrow();
                    (r.state, r.current_leader)
                };
                let mut full = raft.metrics();
                let caught_up = |m: &RaftMetrics| {
                    (m.state == state && m.current_leader == leader) || m.running_state.is_err()
                };
                let _ = tokio::time::timeout(POLL, full.wait_for(caught_up)).await;
                let m = full.borrow().clone();
                log.role(&m);
                let why = out_of_contact(&m, lease, &mut leading_since);
                log.contact(&m, why);
                tx.send_if_modified(|lost: &mut Option<Lost>| match (why, &lost) {
                    (None, None) => false,
                    (None, Some(_)) => {
                        *lost = None;
                        true
                    }
                    (Some(why), Some(l)) if l.why == why => false,
                    (Some(why), _) => {
                        let since = lost.map_or_else(Instant::now, |l| l.since);
                        *lost = Some(Lost { since, why });
                        true
                    }
                });
            }
        });
        Contact { rx, peers }
    }

    /// How this node's peers answered it (`raft::reach`).
    pub(crate) fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Out of contact now: since when and why.
    pub(crate) fn lost(&self) -> Option<Lost> {
        *self.rx.borrow()
    }

    /// Resolves once the node has been out of contact for `grace`
    /// without a break; with its cause.
    pub(crate) async fn lost_for(&self, grace: Duration) -> Lost {
        let mut rx = self.rx.clone();
        loop {
            let lost: Option<Lost> = match rx.wait_for(Option::is_some).await {
                Ok(l) => *l,
                // The watching task ended: the node is going away.
                Err(_) => None,
            };
            let Some(lost) = lost else {
                return std::future::pending().await;
            };
            tokio::time::sleep_until(lost.since + grace).await;
            let now: Option<Lost> = *rx.borrow_and_update();
            if let Some(now) = now.filter(|now| now.since == lost.since) {
                return now;
            }
        }
    }
}

/// Why `raft` is out of contact with its group, if it is. A new leader
/// has had no answer yet (openraft counts a quorum's acknowledgements from
/// its first heartbeat), but a majority just voted for it: it is in
/// contact for one lease from when `leading_since` saw it lead.
fn out_of_contact(
    m: &RaftMetrics,
    lease: Duration,
    leading_since: &mut Option<Instant>,
) -> Option<&'static str> {
    if m.running_state.is_err() {
        return Some(STOPPED);
    }
    if m.state != ServerState::Leader {
        *leading_since = None;
    }
    match m.state {
        ServerState::Leader => {
            let since = *leading_since.get_or_insert_with(Instant::now);
            match m.millis_since_quorum_ack {
                Some(ms) if u128::from(ms) <= lease.as_millis() => None,
                None if since.elapsed() <= lease => None,
                _ => Some("it leads but no majority has answered it within the leader lease"),
            }
        }
        ServerState::Follower | ServerState::Learner if m.current_leader.is_some() => None,
        ServerState::Follower | ServerState::Learner => Some("it knows no leader"),
        ServerState::Candidate => Some("an election is under way"),
        ServerState::Shutdown => Some(STOPPED),
    }
}

/// The word `tashkent status` and the logs use for a raft role.
pub(crate) fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// What the operator's log was last told: a line when the node's role or
/// leader changes, and when it loses contact after having had it, and
/// finds it again (openraft's own account of its core is at `debug`,
/// `crate::LOG_FILTER`).
struct Log {
    peers: Arc<Peers>,
    role: Option<(ServerState, Option<NodeId>)>,
    lost: Option<&'static str>,
    had_contact: bool,
}

impl Log {
    fn role(&mut self, m: &RaftMetrics) {
        let now = (m.state, m.current_leader);
        if self.role == Some(now) {
            return;
        }
        self.role = Some(now);
        if matches!(now.0, ServerState::Follower | ServerState::Learner) {
            self.peers.forget();
        }
        let (node, term) = (m.id, m.current_term);
        let role = role_name(now.0);
        match now {
            (ServerState::Leader, _) => tracing::info!(node, term, "raft: this node leads"),
            (ServerState::Shutdown, _) => tracing::info!(node, term, "raft: this node stopped"),
            (_, Some(leader)) => tracing::info!(node, term, "raft: {role}, node {leader} leads"),
            (_, None) => tracing::info!(node, term, "raft: {role}, no leader known"),
        }
    }

    fn contact(&mut self, m: &RaftMetrics, why: Option<&'static str>) {
        let node = m.id;
        // A node told to stop (Ctrl-C, the end of a bench) loses nothing.
        let stopping = matches!(m.running_state, Err(Fatal::Stopped));
        match (self.lost, why) {
            (None, Some(why)) if self.had_contact && !stopping => {
                tracing::warn!(
                    node,
                    "raft: this node is out of contact with its group: {why}"
                )
            }
            (Some(_), None) if self.had_contact => {
                tracing::info!(node, "raft: this node is in contact with its group again")
            }
            _ => {}
        }
        self.had_contact |= why.is_none();
        self.lost = why;
    }
}
