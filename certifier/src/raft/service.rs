//! openraft's network over gRPC (`proto/raft.proto`): the server half, a
//! tonic service handing each request to the local [`Raft`] node.
//!
//! AppendEntries is a stream each way per sending node (the proto file
//! says why): each request is handed to the raft node and answered before
//! the next is read, so answers keep the requests' order. It brings its
//! entries in the log's binary encoding (`entry.rs`) beside the JSON
//! request. The stream ends when the node stops serving or its raft node
//! stops (else it would hold the server's graceful shutdown open), at the
//! first request that does not decode (`INVALID_ARGUMENT`), or when the
//! sender closes it. On a node with TLS, AppendEntries,
//! Vote and InstallSnapshot come only from clients that showed a
//! certificate the peers' CA signed (the handshake checked the signature;
//! `PERMISSION_DENIED` without one): a proxy or a tool, trusted to talk
//! to the certifier, cannot speak raft for a node. ChangeMembership is an
//! operator's call (`tashkent certifier add-node`), without a client
//! certificate. A request that does not decode is
//! `INVALID_ARGUMENT`; whatever the raft
//! node answers, error or not, goes back in the message for the client to
//! turn into a `RemoteError`.

use std::pin::Pin;

use futures::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use openraft::error::RaftError;
use openraft::raft::AppendEntriesRequest;

use super::entry;
use super::proto::raft_server::{Raft as RaftRpc, RaftServer};
use super::proto::RaftMessage;
use super::types::{Raft, TypeConfig};

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
}

impl RaftService {
    pub fn new(raft: Raft) -> RaftService {
        RaftService {
            raft,
            votes_held: None,
            peer_certs_required: false,
            stop: None,
        }
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

/// The answers of one AppendEntries stream.
pub type AppendAnswers = Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send>>;

/// One sender's AppendEntries stream, answered request by request.
struct AppendStream {
    inbound: Streaming<RaftMessage>,
    raft: Raft,
    stop: Option<watch::Receiver<bool>>,
    /// An error, or the answer of a stopped raft node, went out: the
    /// stream ends after it.
    ended: bool,
}

impl AppendStream {
    /// Reads the next request and answers it; `None` ends the stream.
    async fn next(mut self) -> Option<(Result<RaftMessage, Status>, AppendStream)> {
        if self.ended {
            return None;
        }
        let msg = tokio::select! {
            msg = self.inbound.message() => msg,
            () = stopped(self.stop.as_mut()) => return None,
        };
        // The sender went away or closed: nothing to answer.
        let msg = msg.ok()??;
        let (answer, stopped) = match append(&self.raft, msg).await {
            Ok((answer, stopped)) => (Ok(answer), stopped),
            Err(status) => (Err(status), true),
        };
        self.ended = stopped;
        Some((answer, self))
    }
}

/// Resolves once `stop` says so (never without one).
async fn stopped(stop: Option<&mut watch::Receiver<bool>>) {
    match stop {
        // An error: the node is gone, as good as stopped.
        Some(stop) => drop(stop.wait_for(|s| *s).await),
        None => std::future::pending().await,
    }
}

/// One AppendEntries: decodes it, hands it to `raft`, encodes the result,
/// and says whether the raft node has stopped for good (a fatal error: the
/// stream ends after this answer, as a stopped node serves no more).
async fn append(raft: &Raft, msg: RaftMessage) -> Result<(RaftMessage, bool), Status> {
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
    let result = raft.append_entries(req).await;
    let stopped = matches!(result, Err(RaftError::Fatal(_)));
    Ok((encode(&result)?.into_inner(), stopped))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    type AppendEntriesStream = AppendAnswers;

    async fn append_entries(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<AppendAnswers>, Status> {
        self.check_peer(&request)?;
        let state = AppendStream {
            inbound: request.into_inner(),
            raft: self.raft.clone(),
            stop: self.stop.clone(),
            ended: false,
        };
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

    async fn change_membership(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let change: super::membership::MembershipChange = decode(&request.into_inner().data)?;
        encode(&super::membership::apply(&self.raft, change).await)
    }
}
