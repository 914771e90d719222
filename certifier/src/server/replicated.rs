//! The service's calls that differ on a node of the replicated certifier
//! (`--node-id`): certification goes through raft (the leader's
//! [`Proposer`]; a follower answers who leads), reports are replicated,
//! and status says the node's role. Everything read from the versions log
//! (Subscribe, the tail, purge) is the single certifier's code.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::ServerState;
use parking_lot::Mutex;

use super::contact::{Contact, STREAM_GRACE};
use crate::error::CertifierError;
use crate::outcome::Outcome;
use crate::proto::{AbortCode, StatusResponse};
use crate::raft::decider::Proposal;
use crate::raft::{Command, NodeId, Proposer, Raft, RaftLogFailure, Response, VersionsLog, Writes};
use crate::Version;

/// A replica's progress is proposed at most this often; reports in between
/// are answered from the replicated state. Proxies report every 100 ms,
/// and each report proposed is a raft entry with an fdatasync on every
/// node; the horizon it moves only bounds memory and old snapshots.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// How long a leader that stepped down may wait to name the next one to a
/// stream it redirects: about an election's time (a hand-over takes a few
/// hundred milliseconds).
const LEADER_NAMED: Duration = Duration::from_millis(1500);

/// What a refused certification is told to do.
const RETRY_ELSEWHERE: &str = "retry another node";

/// This node's raft side, as the service uses it.
pub(crate) struct Node {
    pub(crate) id: NodeId,
    /// Every entry this node proposes goes through it (`raft::writes`);
    /// it holds the raft node ([`Node::raft`]).
    pub(crate) writes: Writes,
    pub(crate) proposer: Proposer,
    /// Every node's client address (also its raft address).
    pub(crate) peers: BTreeMap<NodeId, String>,
    /// When each replica's progress was last proposed.
    reported: Mutex<HashMap<u32, Instant>>,
    /// Whether this node is in touch with the group (`contact`).
    pub(crate) contact: Contact,
    /// Why the raft log failed, to tell why the raft core stopped
    /// (`log_watch`).
    pub(crate) raft_log: RaftLogFailure,
    /// This node's versions log, which says how far the raft log may be
    /// purged.
    versions: Arc<VersionsLog>,
    /// Certify streams whose chunks this node proposes at once
    /// ([`Node::streaming`]).
    streams: Arc<tokio::sync::Semaphore>,
}

impl Node {
    pub(crate) fn new(
        id: NodeId,
        writes: Writes,
        proposer: Proposer,
        peers: BTreeMap<NodeId, String>,
        contact: Contact,
        raft_log: RaftLogFailure,
        versions: Arc<VersionsLog>,
    ) -> Node {
        Node {
            id,
            writes,
            proposer,
            peers,
            reported: Mutex::new(HashMap::new()),
            contact,
            raft_log,
            versions,
            streams: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// Lets as many Certify streams propose chunks at once as fit, each at
    /// its largest (`max_writeset_bytes`), in the bytes of chunks a node
    /// keeps in progress (`parts::PENDING_MAX_BYTES`): more would make the
    /// nodes drop the oldest assembly before its last chunk, and its retry
    /// would drop another. Later streams wait (HTTP/2 holds their
    /// clients back).
    pub(crate) fn streaming(mut self, max_writeset_bytes: u64) -> Node {
        let fit = crate::raft::parts::PENDING_MAX_BYTES as u64 / max_writeset_bytes.max(1);
        self.streams = Arc::new(tokio::sync::Semaphore::new(fit.clamp(1, 64) as usize));
        self
    }

    /// This node's raft node.
    pub(crate) fn raft(&self) -> &Raft {
        self.writes.raft()
    }

    /// Whether this node leads now.
    pub(crate) fn leads(&self) -> bool {
        self.raft().server_metrics().borrow().state == ServerState::Leader
    }

    /// One of the permits of [`Node::streaming`], waited for while this
    /// node leads. A node that does not lead (or stops leading meanwhile)
    /// says so instead: only a leader proposes, so the stream would wait
    /// for nothing before being redirected. Stepped down, it names the
    /// next leader once it knows it, within [`LEADER_NAMED`].
    pub(crate) async fn stream_permit(
        &self,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, CertifierError> {
        let mut role = self.raft().server_metrics();
        let not_leader = |leader| {
            self.retryable(CertifierError::NotLeader {
                leader,
                addr: None,
                outcome_unknown: false,
            })
        };
        // A node that does not lead is told at once, permits free or not.
        let (state, leader) = {
            let m = role.borrow();
            (m.state, m.current_leader)
        };
        if state != ServerState::Leader {
            return Err(not_leader(leader));
        }
        tokio::select! {
            biased;
            deposed = async {
                role.wait_for(|m| m.state != ServerState::Leader).await.map(|_| ())
            } => {
                if deposed.is_err() {
                    // The raft core has ended: no leader known here.
                    return Err(not_leader(None));
                }
                // Stepped down while the stream waited: its redirect names
                // the next leader once known (a hand-over's target at once).
                let named = async {
                    let m = role.wait_for(|m| m.current_leader.is_some_and(|l| l != self.id));
                    m.await.ok().and_then(|m| m.current_leader)
                };
                let leader = tokio::time::timeout(LEADER_NAMED, named).await.ok().flatten();
                Err(not_leader(leader))
            }
            permit = self.streams.clone().acquire_owned() => permit.map_err(|_| {
                CertifierError::Protocol("the node's stream permits were closed".into())
            }),
        }
    }

    /// Nobody needs the versions below `point` any more (`purge`): the
    /// raft log goes as far as the snapshots allow (`raft::versions`).
    pub(crate) async fn purge_raft_log(&self, point: Version) {
        let Some((index, further)) = self.versions.raft_purge_through(point) else {
            return;
        };
        if further {
            tracing::info!(
                node = self.id,
                through = index,
                below_version = point,
                "purging the raft log"
            );
        }
        // Asked again on every purge: openraft ignores what it did already.
        if let Err(e) = self.raft().trigger().purge_log(index).await {
            // The raft core stopped: nothing is served here any more.
            tracing::warn!(node = self.id, "raft log not purged: {e}");
        }
    }

    /// This node is out of contact with its group (`why`) and refused
    /// `refused`; `unknown`: a certification was in flight.
    pub(crate) fn out_of_contact(
        &self,
        why: &'static str,
        refused: String,
        unknown: bool,
    ) -> CertifierError {
        CertifierError::OutOfContact {
            node: self.id,
            why,
            refused,
            outcome_unknown: unknown,
        }
    }

    /// Why Subscribe streams end here, and new ones are refused, once this
    /// node has been out of contact (`why`) for `STREAM_GRACE`.
    pub(crate) fn streams_refused(&self, why: &'static str) -> CertifierError {
        let refused = format!("for {}s: subscribe at another node", STREAM_GRACE.as_secs());
        self.out_of_contact(why, refused, false)
    }

    /// A NotLeader with the leader's client address filled in from
    /// `peers`; an outcome raft could not tell becomes UNAVAILABLE
    /// ("retry"), which clients retry under the same txn id.
    fn retryable(&self, e: CertifierError) -> CertifierError {
        match e {
            CertifierError::NotLeader {
                leader,
                addr,
                outcome_unknown,
            } => CertifierError::NotLeader {
                leader,
                outcome_unknown,
                addr: addr.or_else(|| leader.and_then(|l| self.peers.get(&l).cloned())),
            },
            CertifierError::OutcomeUnknown(m) => CertifierError::Rpc(tonic::Status::unavailable(
                format!("certifier node {}: outcome unknown, retry: {m}", self.id),
            )),
            e => e,
        }
    }

    /// `f` of this leader's proposal table's window, if it has one
    /// (`raft::decider`).
    pub(crate) fn with_decided_window<R>(
        &self,
        f: impl FnOnce(&crate::window::ConflictWindow) -> R,
    ) -> Option<R> {
        self.writes.decider()?.with_window(f)
    }

    /// Certifies `rec` (a record, version 0) through raft.
    /// A leader cut off from the majority answers at once, and fails the
    /// certifications in flight when it loses contact (see `contact`):
    /// they cannot commit until the partition heals, and the client gets
    /// their real answer by retrying on the new leader.
    /// A record too large for one entry goes in chunks, as a Certify
    /// stream does, and takes one of the stream permits as one does.
    pub(crate) async fn certify(&self, rec: Bytes) -> Result<Outcome, CertifierError> {
        let _stream_permit = if rec.len() > crate::raft::parts::PART_BYTES {
            Some(self.stream_permit().await?)
        } else {
            None
        };
        self.decide(|| self.proposer.certify(rec)).await
    }

    /// Refuses `rec` for fair turns on a row that version `last` wrote
    /// last (see `turns`): proposed on its own, and answered as applying
    /// it decides (a transaction decided before keeps that decision).
    pub(crate) async fn refuse(
        &self,
        last: Version,
        rec: Bytes,
    ) -> Result<Outcome, CertifierError> {
        let writes = self.writes.clone();
        self.decide(|| async move {
            let Some(d) = writes.decider().cloned() else {
                return writes
                    .write(Command::Refuse { last, record: rec })
                    .await
                    .map(|w| w.data)
                    .map_err(|e| crate::raft::proposer::write_error(&e));
            };
            let proposed = d
                .propose(&writes, vec![Proposal::Refuse { last, record: rec }])
                .await?;
            if let Some(Some(answer)) = proposed.direct.into_iter().next() {
                return Ok(answer);
            }
            let Some((term, submitted)) = proposed.entry else {
                return Err(CertifierError::Protocol("a refusal decided nothing".into()));
            };
            match d.answer(term, submitted).await {
                Ok(w) => match w.data {
                    Response::Batch(mut answers) if answers.len() == 1 => Ok(answers.remove(0)),
                    other => Ok(other),
                },
                Err(e) => Err(crate::raft::proposer::write_error(&e)),
            }
        })
        .await
    }

    /// Proposes writeset `tag`'s chunks `pieces` (`raft::chunks`); the
    /// certification's outcome once `ends` (they include its last chunk).
    pub(crate) async fn propose_chunks(
        &self,
        tag: u64,
        pieces: Vec<Bytes>,
        ends: bool,
    ) -> Result<Option<Outcome>, CertifierError> {
        let writes = &self.writes;
        let proposed = || crate::raft::proposer::propose_pieces(writes, tag, pieces, ends);
        if ends {
            return self.decide(proposed).await.map(Some);
        }
        // Nothing is certified before the last chunk: a failure here
        // leaves only chunks that expire, and the client retries.
        self.propose(proposed, false).await?;
        Ok(None)
    }

    /// The answer to the proposal `propose` makes, unless this node is out
    /// of contact (then nothing is proposed) or gets so meanwhile
    /// (`unknown`: the outcome is then not known).
    async fn propose<F>(
        &self,
        propose: impl FnOnce() -> F,
        unknown: bool,
    ) -> Result<Response, CertifierError>
    where
        F: std::future::Future<Output = Result<Response, CertifierError>>,
    {
        if let Some(lost) = self.contact.lost() {
            return Err(self.out_of_contact(lost.why, RETRY_ELSEWHERE.into(), false));
        }
        let proposed = propose();
        tokio::select! {
            r = proposed => r.map_err(|e| self.retryable(e)),
            lost = self.contact.lost_for(Duration::ZERO) => {
                Err(self.out_of_contact(lost.why, RETRY_ELSEWHERE.into(), unknown))
            }
        }
    }

    /// The outcome of the proposal `propose` makes, unless this node is
    /// out of contact (then nothing is proposed) or gets so meanwhile.
    async fn decide<F>(&self, propose: impl FnOnce() -> F) -> Result<Outcome, CertifierError>
    where
        F: std::future::Future<Output = Result<Response, CertifierError>>,
    {
        match self.propose(propose, true).await? {
            Response::Committed { version } => Ok(Outcome::Committed { version }),
            Response::Aborted {
                code,
                reason,
                conflict_version,
            } => Ok(Outcome::Aborted {
                code: AbortCode::try_from(code).unwrap_or(AbortCode::Unspecified),
                reason,
                conflict_version,
                // Set by the service, which keeps the turns.
                turn_key: 0,
            }),
            Response::Rejected { reason } => Err(CertifierError::InvalidArgument(reason)),
            // Nothing of this attempt was certified, but an earlier one may
            // have been: the client retries under the same txn id.
            Response::Lost { reason } => {
                Err(self.retryable(CertifierError::OutcomeUnknown(reason)))
            }
            other => Err(CertifierError::Protocol(format!(
                "a certification answered {other:?}"
            ))),
        }
    }

    /// A replica's progress: proposed (at most every `REPORT_EVERY` per
    /// replica), else answered with the replicated horizon `horizon`.
    pub(crate) async fn report(
        &self,
        replica: u32,
        applied: Version,
        oldest_snapshot: Version,
        horizon: Version,
    ) -> Result<Version, CertifierError> {
        {
            let mut seen = self.reported.lock();
            let now = Instant::now();
            if seen
                .get(&replica)
                .is_some_and(|t| now.duration_since(*t) < REPORT_EVERY)
            {
                return Ok(horizon);
            }
            seen.insert(replica, now);
        }
        let writes = self.writes.clone();
        // Like a certification, refused out of contact: a leader cut off
        // from its majority would never get it committed.
        let proposed = self
            .propose(
                || async move {
                    let written = writes.report(replica, applied, oldest_snapshot).await;
                    written
                        .map(|w| w.data)
                        .map_err(|e| crate::raft::proposer::write_error(&e))
                },
                false,
            )
            .await;
        // Not proposed, or not known: the next report tries again.
        let data = proposed.inspect_err(|_| {
            self.reported.lock().remove(&replica);
        })?;
        match data {
            Response::Horizon { horizon } => Ok(horizon),
            Response::Rejected { reason } => Err(CertifierError::InvalidArgument(reason)),
            other => Err(CertifierError::Protocol(format!(
                "a report answered {other:?}"
            ))),
        }
    }

    /// The raft fields of `status`.
    pub(crate) fn fill_status(&self, s: &mut StatusResponse) {
        let m = self.raft().metrics().borrow().clone();
        s.node_id = self.id;
        s.role = match m.state {
            // A node whose log failed (`log_watch`) is out of the group
            // whatever its core last said.
            _ if s.poisoned || m.running_state.is_err() => "stopped",
            state => super::contact::role_name(state),
        }
        .to_owned();
        s.term = m.current_term;
        s.leader_id = m.current_leader.unwrap_or(0);
        s.leader_addr = m
            .current_leader
            .and_then(|l| self.peers.get(&l).cloned())
            .unwrap_or_default();
        s.committed_version = s.latest_version;
        s.copying_through = self.versions.copying_through().unwrap_or(0);
        // Only a leader or candidate sends to its peers (a follower's
        // requests still in flight may fail after it forgot them), and
        // only to members (a removed one is not tried again).
        if matches!(m.state, ServerState::Leader | ServerState::Candidate) {
            let members = m.membership_config.membership();
            let member = |p: &NodeId| members.get_node(p).is_some();
            let (lost, refusing) = self.contact.peers().troubled();
            s.unreachable_peers = lost.into_iter().filter(member).collect();
            s.refusing_peers = refusing.into_iter().filter(member).collect();
        }
        s.last_log_index = m.last_log_index.unwrap_or(0);
        if m.running_state.is_err() && !s.poisoned {
            // The raft core stopped (its log failed): nothing is
            // acknowledged here any more.
            s.poisoned = true;
            s.poison_cause = format!("raft stopped: {:?}", m.running_state);
        }
    }
}
