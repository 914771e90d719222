//! openraft's network over gRPC (`proto/raft.proto`): the server half, a
//! tonic service handing each request to the local [`Raft`] node.
//!
//! AppendEntries brings its entries in the log's binary encoding
//! (`entry.rs`) beside the JSON request. On a node with TLS, AppendEntries,
//! Vote and InstallSnapshot come only from clients that showed a
//! certificate the peers' CA signed (the handshake checked the signature;
//! `PERMISSION_DENIED` without one): a proxy or a tool, trusted to talk
//! to the certifier, cannot speak raft for a node. ChangeMembership is an
//! operator's call (`tashkent certifier add-node`), without a client
//! certificate. A request that does not decode is
//! `INVALID_ARGUMENT`; whatever the raft
//! node answers, error or not, goes back in the message for the client to
//! turn into a `RemoteError`.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

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
}

impl RaftService {
    pub fn new(raft: Raft) -> RaftService {
        RaftService {
            raft,
            votes_held: None,
            peer_certs_required: false,
        }
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

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check_peer(&request)?;
        let msg = request.into_inner();
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
        encode(&self.raft.append_entries(req).await)
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
