//! openraft's network over gRPC (`proto/raft.proto`): the server half, a
//! tonic service handing each request to the local [`Raft`] node.
//!
//! AppendEntries is a stream each way per sending node (the proto file
//! says why), answered in the requests' order. Requests queued on it that
//! continue each other go to the raft node as one (`AppendStream::next`),
//! so a leader's pipelined requests share a flush here. It brings its
//! entries in the log's binary encoding (`entry.rs`) beside the JSON
//! request. The stream ends when the node stops serving or its raft node
//! stops (else it would hold the server's graceful shutdown open), at the
//! first request that does not decode (`INVALID_ARGUMENT`), or when the
//! sender closes it. On a node with TLS, AppendEntries,
//! Vote, InstallSnapshot and Elect come only from clients that showed a
//! certificate the peers' CA signed (the handshake checked the signature;
//! `PERMISSION_DENIED` without one): a proxy or a tool, trusted to talk
//! to the certifier, cannot speak raft for a node. ChangeMembership and
//! TransferLeader are an operator's calls (`tashkent certifier add-node`,
//! `transfer-leader`), without a client certificate. A request that does not decode is
//! `INVALID_ARGUMENT`; whatever the raft
//! node answers, error or not, goes back in the message for the client to
//! turn into a `RemoteError`.

use std::collections::VecDeque;
use std::pin::Pin;

use bytes::Bytes;
use futures::{FutureExt, Stream};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest};

use super::entry;
use super::proto::raft_server::{Raft as RaftRpc, RaftServer};
use super::proto::RaftMessage;
use super::transfer::{ElectRequest, HandOver, Handed};
use super::types::{NodeId, Raft, TypeConfig};

/// The raft transport's service for one node.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft,
    /// Vote requests are refused until then (see
    /// [`RaftService::votes_held_until`]).
    votes_held: Option<tokio::time::Instant>,
    /// Raft messages need a client certificate (TLS on).
    peer_certs_required: bool,
    /// Becomes true when the node stops serving: AppendEntries streams end.
    stop: Option<watch::Receiver<bool>>,
    /// What a leadership hand-over needs (`transfer.rs`), both as the
    /// leader and as the target (its fair turns).
    hand_over: Option<HandOver>,
    /// Whether this node may stand for election now: not while it holds
    /// its votes or fills a gap (`server::standing`). Always, without.
    may_stand: Option<watch::Receiver<bool>>,
}

impl RaftService {
    pub fn new(raft: Raft) -> RaftService {
        RaftService {
            raft,
            votes_held: None,
            peer_certs_required: false,
            stop: None,
            hand_over: None,
            may_stand: None,
        }
    }

    /// Stands for election on a peer's request (Elect) only while
    /// `may_stand` says it may.
    pub fn stands_when(mut self, may_stand: watch::Receiver<bool>) -> RaftService {
        self.may_stand = Some(may_stand);
        self
    }

    /// Hands leadership over on request (TransferLeader) with `h`, and
    /// takes a leader's fair turns into `h`'s when asked to stand.
    pub(crate) fn hands_over(mut self, h: HandOver) -> RaftService {
        self.hand_over = Some(h);
        self
    }

    /// Ends the AppendEntries streams once `stop` is true (the serving
    /// node's stop signal).
    pub fn stops_with(mut self, stop: watch::Receiver<bool>) -> RaftService {
        self.stop = Some(stop);
        self
    }

    /// Accepts raft messages only from clients that showed a certificate
    /// (which the server's TLS checked against the peers' CA).
    pub fn peer_certificates_required(mut self) -> RaftService {
        self.peer_certs_required = true;
        self
    }

    fn check_peer<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.peer_certs_required && request.peer_certs().is_none_or(|c| c.is_empty()) {
            return Err(Status::permission_denied(
                "raft messages need a client certificate signed by the peers' CA \
                 (peer_tls_ca): this one showed none",
            ));
        }
        Ok(())
    }

    /// Refuses vote requests until `until`. For a node that lost its raft
    /// state (a wiped disk) and rejoins a running group: it may have voted
    /// in the current term before, and forgot. Raft's safety rests on one
    /// vote per node and term, so it casts none until every election that
    /// could have been running when it lost its state has timed out.
    pub fn votes_held_until(mut self, until: tokio::time::Instant) -> RaftService {
        self.votes_held = Some(until);
        self
    }

    /// The tonic server of this service, to add to a router.
    pub fn into_server(self) -> RaftServer<RaftService> {
        RaftServer::new(self)
            .max_decoding_message_size(super::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(super::MAX_MESSAGE_BYTES)
    }
}

fn decode<T: DeserializeOwned>(data: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(data)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft request: {e}")))
}

fn encode<T: Serialize>(result: &T) -> Result<Response<RaftMessage>, Status> {
    let data = serde_json::to_vec(result)
        .map_err(|e| Status::internal(format!("raft answer not encodable: {e}")))?;
    Ok(Response::new(RaftMessage {
        data: data.into(),
        entries: Vec::new(),
    }))
}

/// The answer of a call the node declines, `why`: an `Err` in the message
/// (of a call whose success would be a `T`), for the client to report.
fn declined<T: Serialize>(why: impl Into<String>) -> Result<Response<RaftMessage>, Status> {
    encode(&Err::<T, String>(why.into()))
}

/// The answers of one AppendEntries stream.
pub type AppendAnswers = Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send>>;

/// One sender's AppendEntries stream, answered request by request.
struct AppendStream {
    inbound: Streaming<RaftMessage>,
    raft: Raft,
    stop: Option<watch::Receiver<bool>>,
    /// An error, or the answer of a stopped raft node, went out: nothing
    /// more is handed to the raft node, and the stream ends once `answers`
    /// are out.
    ended: bool,
    /// The sender closed (or its side broke) after the requests read: the
    /// stream ends once they are answered.
    closed: bool,
    /// Answers decided and not yet sent, in the requests' order.
    answers: VecDeque<Result<RaftMessage, Status>>,
}

/// At most this many queued requests go to the raft node as one.
const MAX_GATHERED: usize = 16;

impl AppendStream {
    fn new(
        inbound: Streaming<RaftMessage>,
        raft: Raft,
        stop: Option<watch::Receiver<bool>>,
    ) -> Self {
        AppendStream {
            inbound,
            raft,
            stop,
            ended: false,
            closed: false,
            answers: VecDeque::new(),
        }
    }

    /// The next answer: one decided before, or those of the requests read
    /// next; `None` ends the stream.
    ///
    /// A leader that pipelines its AppendEntries has several queued here
    /// at once. Those that continue each other (one leader's vote, each
    /// one's `prev_log_id` the last entry of the one before) go to the
    /// raft node as one request, so they share one append and one
    /// fdatasync, and each gets that request's answer: it is about all
    /// their entries (a follower's answer is success, conflict at the
    /// first one's `prev_log_id`, which the later ones continue, or a
    /// higher vote).
    async fn next(mut self) -> Option<(Result<RaftMessage, Status>, AppendStream)> {
        if let Some(answer) = self.answers.pop_front() {
            return Some((answer, self));
        }
        if self.ended || self.closed {
            return None;
        }
        let msg = tokio::select! {
            msg = self.inbound.message() => msg,
            () = stopped(self.stop.as_mut()) => return None,
        };
        // The sender went away or closed: nothing to answer.
        let msg = msg.ok()??;
        let mut queued = vec![msg];
        while queued.len() < MAX_GATHERED {
            match self.inbound.message().now_or_never() {
                Some(Ok(Some(msg))) => queued.push(msg),
                None => break,
                // Closed or broken: these are the last.
                Some(_) => {
                    self.closed = true;
                    break;
                }
            }
        }
        let mut run: Vec<AppendEntriesRequest<TypeConfig>> = Vec::new();
        for msg in queued {
            let req = match request(msg) {
                Ok(req) => req,
                Err(status) => {
                    self.answer_run(std::mem::take(&mut run)).await;
                    self.answers.push_back(Err(status));
                    self.ended = true;
                    break;
                }
            };
            if !run.last().is_some_and(|last| continues(last, &req)) {
                self.answer_run(std::mem::take(&mut run)).await;
            }
            run.push(req);
        }
        self.answer_run(run).await;
        let answer = self.answers.pop_front()?;
        Some((answer, self))
    }

    /// Hands `run` (requests each continuing the one before) to the raft
    /// node as one, and queues its answer once for each.
    async fn answer_run(&mut self, run: Vec<AppendEntriesRequest<TypeConfig>>) {
        if self.ended || run.is_empty() {
            return;
        }
        let n = run.len();
        let mut run = run.into_iter();
        let mut req = run.next().expect("not empty");
        for more in run {
            req.leader_commit = req.leader_commit.max(more.leader_commit);
            req.entries.extend(more.entries);
        }
        let result = self.raft.append_entries(req).await;
        let stopped = matches!(result, Err(RaftError::Fatal(_)));
        let answer = encode(&result).map(|r| r.into_inner());
        self.ended = stopped || answer.is_err();
        for _ in 0..n {
            self.answers.push_back(answer.clone());
        }
    }
}

/// Whether `next` continues `last`: the same leader's, starting right
/// after `last`'s entries.
fn continues(
    last: &AppendEntriesRequest<TypeConfig>,
    next: &AppendEntriesRequest<TypeConfig>,
) -> bool {
    let end = last.entries.last().map(|e| e.log_id).or(last.prev_log_id);
    last.vote == next.vote && next.prev_log_id == end && end.is_some()
}

/// Resolves once `stop` says so (never without one).
async fn stopped(stop: Option<&mut watch::Receiver<bool>>) {
    match stop {
        // An error: the node is gone, as good as stopped.
        Some(stop) => drop(stop.wait_for(|s| *s).await),
        None => std::future::pending().await,
    }
}

/// One AppendEntries, decoded: the JSON request and its entries.
fn request(msg: RaftMessage) -> Result<AppendEntriesRequest<TypeConfig>, Status> {
    let mut req: AppendEntriesRequest<TypeConfig> = decode(&msg.data)?;
    if !req.entries.is_empty() {
        return Err(Status::invalid_argument(
            "raft AppendEntries carries its entries in `entries`, not in the JSON",
        ));
    }
    for e in &msg.entries {
        let e = entry::decode_unplaced(e)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft entry: {e}")))?;
        req.entries.push(e);
    }
    Ok(req)
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    type AppendEntriesStream = AppendAnswers;

    async fn append_entries(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<AppendAnswers>, Status> {
        self.check_peer(&request)?;
        let state = AppendStream::new(request.into_inner(), self.raft.clone(), self.stop.clone());
        Ok(Response::new(Box::pin(futures::stream::unfold(
            state,
            AppendStream::next,
        ))))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_peer(&request)?;
        if let Some(until) = self.votes_held {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if !left.is_zero() {
                return Err(Status::unavailable(format!(
                    "this certifier node lost its raft state and rejoins: it casts no vote for \
                     another {} ms",
                    left.as_millis()
                )));
            }
        }
        encode(&self.raft.vote(decode(&request.into_inner().data)?).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check_peer(&request)?;
        let req = decode(&request.into_inner().data)?;
        encode(&self.raft.install_snapshot(req).await)
    }

    async fn install_snapshot_chunk(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check_peer(&request)?;
        let msg = request.into_inner();
        let mut req: InstallSnapshotRequest<TypeConfig> = decode(&msg.data)?;
        let [chunk] = <[Bytes; 1]>::try_from(msg.entries).map_err(|e| {
            Status::invalid_argument(format!("a snapshot chunk in {} pieces", e.len()))
        })?;
        if !req.data.is_empty() {
            return Err(Status::invalid_argument("a snapshot chunk's bytes twice"));
        }
        req.data = chunk.into();
        encode(&self.raft.install_snapshot(req).await)
    }

    async fn change_membership(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let change: super::membership::MembershipChange = decode(&request.into_inner().data)?;
        // Not while a hand-over waits for the target to catch up.
        let _pass = match &self.hand_over {
            Some(h) => Some(h.writes.pass().await),
            None => None,
        };
        encode(&super::membership::apply(&self.raft, change).await)
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let to: NodeId = decode(&request.into_inner().data)?;
        let Some(h) = &self.hand_over else {
            return declined::<Handed>("this node cannot hand its leadership over");
        };
        // Given up when the node stops: its drain would wait for it.
        let mut stop = self.stop.clone();
        let handed = tokio::select! {
            handed = super::transfer::hand_over(h, to) => handed,
            () = stopped(stop.as_mut()) => Err("the node is stopping".into()),
        };
        encode(&handed)
    }

    async fn elect(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_peer(&request)?;
        let data = request.into_inner().data;
        if data.len() > super::transfer::ELECT_MAX_BYTES {
            return Err(Status::invalid_argument(format!(
                "an Elect request of {} bytes: at most {} (the turns of {} rows)",
                data.len(),
                super::transfer::ELECT_MAX_BYTES,
                crate::turns::MAX_KEYS
            )));
        }
        let asked: ElectRequest = decode(&data)?;
        let from = asked.from();
        let (id, state, term) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (m.id, m.state, m.current_term)
        };
        if state == openraft::ServerState::Leader {
            // A request that comes late, from a leader deposed since: this
            // node's own turns stand (openraft ignores an election trigger
            // on a leader anyway).
            return encode(&Ok::<u64, String>(term));
        }
        if self.stop.as_ref().is_some_and(|stop| *stop.borrow()) {
            // Stopping with the rest of its group, say: standing would
            // only start an election nobody finishes.
            return declined::<u64>("the node is stopping");
        }
        if self.may_stand.as_ref().is_some_and(|may| !*may.borrow()) {
            return declined::<u64>(format!(
                "node {id} may not stand for election now: it rejoins after losing its raft \
                 state, or copies the versions a snapshot skipped"
            ));
        }
        // Taken now, not once this node leads: its first certifications
        // must find them. Should it not win, they lapse on the clock.
        if let Some(h) = &self.hand_over {
            h.turns
                .lock()
                .adopt(asked.turns(), std::time::Instant::now());
        }
        let mut stop = self.stop.clone();
        let stood = tokio::select! {
            stood = super::transfer::stand(&self.raft, from) => stood,
            () = stopped(stop.as_mut()) => Err("the node is stopping".into()),
        };
        encode(&stood)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, Vote};

    use super::*;
    use crate::raft::types::{Entry, LogId};

    fn id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn req(term: u64, prev: Option<u64>, entries: &[u64]) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(term, 1),
            prev_log_id: prev.map(|i| id(term, i)),
            leader_commit: None,
            entries: entries
                .iter()
                .map(|&i| Entry {
                    log_id: id(term, i),
                    payload: EntryPayload::Blank,
                })
                .collect(),
        }
    }

    #[test]
    fn only_requests_that_continue_each_other_go_as_one() {
        assert!(continues(&req(2, Some(4), &[5, 6]), &req(2, Some(6), &[7])));
        assert!(
            continues(&req(2, Some(6), &[]), &req(2, Some(6), &[7])),
            "after a heartbeat at its prev"
        );
        assert!(
            !continues(&req(2, Some(4), &[5, 6]), &req(2, Some(5), &[6])),
            "overlaps"
        );
        assert!(
            !continues(&req(2, Some(4), &[5, 6]), &req(2, Some(7), &[8])),
            "a gap"
        );
        let mut later_vote = req(2, Some(6), &[7]);
        later_vote.vote = Vote::new_committed(3, 2);
        assert!(
            !continues(&req(2, Some(4), &[5, 6]), &later_vote),
            "another vote"
        );
        assert!(
            !continues(&req(2, None, &[]), &req(2, None, &[0])),
            "nothing to continue from"
        );
    }
}
