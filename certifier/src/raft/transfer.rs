//! Handing leadership to another node (`tashkent certifier
//! transfer-leader`), for a planned stop of the leader's machine.
//!
//! openraft 0.9 has no hand-over of its own; this one is built from raft's
//! rules:
//!
//! 1. The leader closes its write gate (`writes.rs`): the entries in flight
//!    get their answers, and later certifications wait.
//! 2. It waits until the target's log matches its own, so that every voter
//!    can grant the target its vote.
//! 3. It asks the target to stand (`stand`, over the peers' raft
//!    transport), handing it its fair turns (`turns`): the target takes
//!    them in place of its own and starts an election in a newer term. The
//!    leader's next AppendEntries to it is refused with that newer vote,
//!    and the leader steps down. The other voters still hold the leader's
//!    lease and refuse, so the target stands again after `RESTAND` (then
//!    after longer waits) until it has the old leader's vote too, which
//!    makes a majority of three. With five voters it also needs one whose
//!    lease (1.2 s from the leader's last heartbeat) has run out, so the
//!    hand-over takes that long.
//! 4. Once it leads, the old leader reopens its gate: the certifications
//!    that waited are proposed nowhere. They are told to go elsewhere, as
//!    after any leader change: NotLeader, or, while the old leader knows
//!    no leader yet, out of contact with the outcome unknown. Either way
//!    the proxies retry under the same txn id and find the new leader.
//!
//! A leader told to stop does the same first (`before_stopping`, unless
//! `hand_over_on_stop` is off).
//!
//! Certifications pause for the length of it: a few hundred milliseconds
//! against the two seconds of a leader's SIGKILL (the lease, then an
//! election timeout). If the target does not win by `STAND_FOR`, the
//! hand-over fails and says so; another node may lead by then, elected as
//! after any failure.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{RaftNetworkFactory, ServerState};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::network::Network;
use super::types::{NodeId, Raft};
use super::writes::Writes;
use crate::turns::{Turns, TurnsImage};

/// How long the entries in flight may take to be answered.
const DRAIN: Duration = Duration::from_secs(5);
/// How long the target may take to catch up.
const CATCH_UP: Duration = Duration::from_secs(5);
/// How long the target stands for election at most.
pub const STAND_FOR: Duration = Duration::from_secs(3);
/// How long a leader told to stop spends handing over at most.
pub const BEFORE_STOPPING: Duration = Duration::from_secs(2);
/// How far behind the leader's log a peer it hands over to on stopping
/// may be: the entries in flight under load (`proposer::IN_FLIGHT`, each
/// sent ahead once), with room to spare.
const STOPPING_SLACK: u64 = 16;
/// How long the target waits before it stands again while it does not
/// lead, at first: longer than a vote's round trip (two vote saves and a
/// message each way), shorter than any node's election timeout (the old
/// leader, now a follower, would otherwise stand itself). Each try waits
/// twice as long as the one before, up to [`RESTAND_MAX`].
const RESTAND: Duration = Duration::from_millis(100);
/// The longest wait between two tries.
const RESTAND_MAX: Duration = Duration::from_millis(400);

/// What a node needs to hand its leadership over: the gate its entries
/// pass, its network to the target, and the fair turns it keeps while it
/// leads (shared with its certifier service).
#[derive(Clone)]
pub(crate) struct HandOver {
    pub(crate) writes: Writes,
    pub(crate) network: Network,
    pub(crate) turns: Arc<Mutex<Turns>>,
}

/// What the leader sends the target with `Elect`: who asks, and its fair
/// turns. A bare node id (the first builds with hand-over) carries none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum ElectRequest {
    Bare(NodeId),
    With { from: NodeId, turns: TurnsImage },
}

impl ElectRequest {
    pub(crate) fn from(&self) -> NodeId {
        match self {
            ElectRequest::Bare(from) | ElectRequest::With { from, .. } => *from,
        }
    }

    /// The turns, which the target takes in place of its own.
    pub(crate) fn turns(self) -> TurnsImage {
        match self {
            ElectRequest::Bare(_) => TurnsImage::default(),
            ElectRequest::With { turns, .. } => turns,
        }
    }
}

/// The largest `Elect` request a node reads: the most turns a leader keeps
/// ([`crate::turns::MAX_KEYS`] queues of [`crate::turns::MAX_QUEUE`]
/// sessions, about 21 bytes each in JSON: 5.5 MB), with room to spare. A
/// larger one is refused before it is decoded.
pub(crate) const ELECT_MAX_BYTES: usize = 8 << 20;

/// A hand-over's result: who leads, in which term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handed {
    pub leader: NodeId,
    pub term: u64,
}

/// On the leader: hands leadership to node `to` (steps 1–4 above). An
/// error says why not, or names the leader when this node does not lead.
pub(crate) async fn hand_over(h: &HandOver, to: NodeId) -> Result<Handed, String> {
    let HandOver {
        writes,
        network,
        turns,
    } = h;
    let raft = writes.raft();
    let (id, node) = {
        let m = raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return Err(match m.current_leader {
                Some(l) => format!("node {} does not lead; node {l} does", m.id),
                None => format!("node {} does not lead, and knows no leader", m.id),
            });
        }
        if to == m.id {
            return Ok(Handed {
                leader: to,
                term: m.current_term,
            });
        }
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let node = membership.get_node(&to).filter(|_| voters.contains(&to));
        let Some(node) = node.cloned() else {
            return Err(format!("node {to} is not a voter (voters: {voters:?})"));
        };
        (m.id, node)
    };
    let Some(closed) = writes.close(DRAIN).await else {
        return Err(format!(
            "the entries in flight were not committed within {} s",
            DRAIN.as_secs()
        ));
    };
    let mut metrics = raft.metrics();
    let last = metrics.borrow().last_log_index;
    let level = tokio::time::timeout(
        CATCH_UP,
        metrics.wait_for(|m| {
            m.state != ServerState::Leader
                || m.replication
                    .as_ref()
                    .and_then(|r| r.get(&to))
                    .is_some_and(|matched| matched.map(|l| l.index) >= last)
        }),
    )
    .await
    .map(|waited| waited.map(|m| m.state));
    match level {
        Err(_) => {
            return Err(format!(
                "node {to} did not catch up with this node's log within {} s",
                CATCH_UP.as_secs()
            ))
        }
        Ok(Err(_)) => return Err("this node's raft core stopped".into()),
        Ok(Ok(state)) if state != ServerState::Leader => {
            return Err(format!("node {id} stopped leading meanwhile"))
        }
        Ok(Ok(_)) => {}
    }
    // Taken once no certification is decided here any more; the turns
    // this node keeps are forgotten when it steps down.
    let image = turns.lock().image(Instant::now());
    tracing::info!(
        node = id,
        to,
        turn_queues = image.queues.len(),
        "raft: handing leadership over"
    );
    // Without turns, as the first builds with hand-over read it.
    let asked = match image.queues.is_empty() {
        true => ElectRequest::Bare(id),
        false => ElectRequest::With {
            from: id,
            turns: image,
        },
    };
    let stood = network
        .clone()
        .new_client(to, &node)
        .await
        .elect(&asked)
        .await;
    // Stepped down at the target's newer vote; the certifications waiting
    // at the gate are then redirected, not proposed here. A target that
    // refused (stopping, say) starts no election: nothing to wait for.
    if stood.is_ok() {
        let stepped_down = metrics.wait_for(|m| m.state != ServerState::Leader);
        let _ = tokio::time::timeout(RESTAND, async { stepped_down.await.map(|_| ()) }).await;
    }
    drop(closed);
    stood.map(|term| Handed { leader: to, term })
}

/// On the target: stands for election until this node leads, for
/// [`STAND_FOR`] at most; the term it leads in.
pub(crate) async fn stand(raft: &Raft, from: NodeId) -> Result<u64, String> {
    let mut metrics = raft.metrics();
    let (id, since) = {
        let m = metrics.borrow();
        (m.id, m.current_term)
    };
    tracing::info!(
        node = id,
        from,
        "raft: standing for election, as node {from} asks"
    );
    let deadline = tokio::time::Instant::now() + STAND_FOR;
    let mut wait = RESTAND;
    loop {
        raft.trigger()
            .elect()
            .await
            .map_err(|e| format!("node {id}: {e}"))?;
        // This node leads, or another won an election since it was asked
        // (standing again would only depose it).
        let decided = tokio::time::timeout(wait, async {
            let m = metrics
                .wait_for(|m| {
                    m.state == ServerState::Leader
                        || (m.current_term > since && m.current_leader.is_some_and(|l| l != id))
                })
                .await;
            m.map(|m| (m.state, m.current_term, m.current_leader))
        })
        .await;
        match decided {
            Ok(Ok((ServerState::Leader, term, _))) => return Ok(term),
            Ok(Ok((_, term, leader))) => {
                return Err(format!(
                    "node {id} did not win: node {} was elected in term {term}",
                    leader.unwrap_or_default()
                ))
            }
            Ok(Err(_)) => return Err(format!("node {id}: its raft core stopped")),
            Err(_) if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "node {id} did not win an election within {} s",
                    STAND_FOR.as_secs()
                ));
            }
            // A vote round takes milliseconds; one not done by now may be
            // slow rather than lost, so the next try waits longer.
            Err(_) => wait = (wait * 2).min(RESTAND_MAX),
        }
    }
}

/// On a node told to stop: if it leads, hands leadership to the voter
/// whose log is furthest along (the lowest id among equals; the next one
/// if it may not stand), within
/// [`BEFORE_STOPPING`], so that commits go on at once rather than after the
/// lease and an election. Only a peer that answers and has all but the
/// last [`STOPPING_SLACK`] entries is asked: one that is down, or already
/// stopping, would only make the stop wait. Without one, the others
/// elect a leader as after a failure.
pub(crate) async fn before_stopping(h: &HandOver) {
    let (id, targets) = {
        let m = h.writes.raft().metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return;
        }
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let (lost, _) = h.network.peers().troubled();
        let last = m.last_log_index.unwrap_or(0);
        let mut targets: Vec<(u64, NodeId)> = m
            .replication
            .iter()
            .flatten()
            .filter(|(peer, _)| **peer != m.id && voters.contains(peer) && !lost.contains(peer))
            .filter_map(|(peer, matched)| Some((matched.as_ref()?.index, *peer)))
            .filter(|(matched, _)| matched + STOPPING_SLACK >= last)
            .collect();
        // Furthest along first, then by id.
        targets.sort_by_key(|(matched, peer)| (std::cmp::Reverse(*matched), *peer));
        (m.id, targets)
    };
    let each = async {
        let mut why = Vec::new();
        for (_, to) in targets {
            match hand_over(h, to).await {
                Ok(h) => return Ok(h),
                Err(e) => why.push(e),
            }
        }
        Err(why.join("; "))
    };
    match tokio::time::timeout(BEFORE_STOPPING, each).await {
        Ok(Ok(h)) => tracing::info!(
            node = id,
            term = h.term,
            "raft: node {} leads; this node stops",
            h.leader
        ),
        Ok(Err(e)) if e.is_empty() => {}
        Ok(Err(e)) => tracing::info!(
            node = id,
            "raft: leadership not handed over before stopping: {e}"
        ),
        Err(_) => tracing::info!(
            node = id,
            "raft: leadership not handed over within {} s before stopping",
            BEFORE_STOPPING.as_secs()
        ),
    }
}

/// Asks the nodes at `addrs` (`a,b,c`) in turn to hand leadership to node
/// `to`: the leader does. Over TLS with `tls`.
pub async fn request(
    addrs: &str,
    tls: Option<&crate::tls::ClientTls>,
    to: NodeId,
) -> Result<Handed, crate::error::CertifierError> {
    super::membership::ask(addrs, tls, &to, |mut client, msg| async move {
        Ok(client.transfer_leader(msg).await?.into_inner())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turns::QueueImage;

    #[test]
    fn an_elect_request_carries_the_turns_and_a_bare_id_none() {
        let turns = TurnsImage {
            queues: vec![QueueImage {
                key: 7,
                sessions: vec![2, 3],
                held_ms: 120,
                claimed: true,
            }],
        };
        let asked = ElectRequest::With {
            from: 1,
            turns: turns.clone(),
        };
        let sent: ElectRequest =
            serde_json::from_slice(&serde_json::to_vec(&asked).unwrap()).unwrap();
        assert_eq!((sent.from(), sent.turns()), (1, turns));
        // What a build before turns were handed over sends.
        let bare: ElectRequest = serde_json::from_slice(b"3").unwrap();
        assert_eq!((bare.from(), bare.turns()), (3, TurnsImage::default()));
    }

    #[test]
    fn the_most_turns_a_leader_keeps_fit_in_an_elect_request() {
        use crate::turns::{MAX_KEYS, MAX_QUEUE};
        let queues = (0..MAX_KEYS as u64)
            .map(|k| QueueImage {
                key: u64::MAX - k,
                sessions: (0..MAX_QUEUE as u64).map(|s| u64::MAX - s).collect(),
                held_ms: u64::from(u32::MAX),
                claimed: true,
            })
            .collect();
        let asked = ElectRequest::With {
            from: u64::MAX,
            turns: TurnsImage { queues },
        };
        let len = serde_json::to_vec(&asked).unwrap().len();
        assert!(len < ELECT_MAX_BYTES, "{len} bytes");
    }
}
