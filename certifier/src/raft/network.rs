//! openraft's network over gRPC (`proto/raft.proto`): the client half.
//!
//! One lazily connected tonic channel per target node. A request that
//! cannot be delivered (connection refused, reset, deadline) is
//! `Unreachable`, which makes openraft back off and retry; an error the
//! remote node answered is a `RemoteError`. Payloads are openraft's own
//! messages as JSON, except log entries, which travel in the log's binary
//! encoding (`entry.rs`; see the proto file). A node with a certificate
//! (`tls_cert`) speaks TLS to its peers, trusting `peer_tls_ca`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::entry;
use super::proto::raft_client::RaftClient;
use super::proto::RaftMessage;
use super::types::{NodeId, TypeConfig};
use crate::error::CertifierError;
use crate::tls::ClientTls;

/// Makes a [`Connection`] per target: to the target's own route when this
/// node has one (`peer_routes`), else to its member address
/// (`BasicNode::addr`, `host:port`).
/// With `tls`, it speaks TLS only, trusting what `tls` says.
#[derive(Debug, Clone, Default)]
pub struct Network {
    routes: Arc<BTreeMap<NodeId, String>>,
    tls: Option<ClientTls>,
}

impl Network {
    /// A network that reaches the nodes in `routes` at those addresses
    /// instead of their member addresses (a tunnel, a NAT, a test's relay
    /// that can cut one link), over TLS with `tls`.
    pub fn new(routes: BTreeMap<NodeId, String>, tls: Option<ClientTls>) -> Network {
        Network {
            routes: Arc::new(routes),
            tls,
        }
    }
}

/// A client of one target node.
pub struct Connection {
    target: NodeId,
    tls: Option<ClientTls>,
    addr: String,
    client: Option<RaftClient<Channel>>,
}

type RpcError<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            target,
            tls: self.tls.clone(),
            addr: self.routes.get(&target).unwrap_or(&node.addr).clone(),
            client: None,
        }
    }
}

fn protocol(e: impl std::fmt::Display) -> CertifierError {
    CertifierError::Protocol(e.to_string())
}

impl Connection {
    /// Sends `req` (with `entries` in the log's encoding) to `method` and
    /// decodes the remote `Result`.
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        req: &Req,
        entries: Vec<bytes::Bytes>,
        timeout: Duration,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = serde_json::to_vec(req)
            .map_err(|e| RPCError::Network(NetworkError::new(&protocol(e))))?;
        if self.client.is_none() {
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", self.addr))
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?
                .connect_timeout(timeout);
            if let Some(tls) = &self.tls {
                endpoint = endpoint
                    .tls_config(tls.tonic_config())
                    .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            }
            // Connects on first use; a node that is down is Unreachable then.
            self.client = Some(
                RaftClient::new(endpoint.connect_lazy())
                    .max_decoding_message_size(super::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(super::MAX_MESSAGE_BYTES),
            );
        }
        let client = self.client.as_mut().expect("connected above");
        let mut request = tonic::Request::new(RaftMessage {
            data: data.into(),
            entries,
        });
        request.set_timeout(timeout);
        let answer = match method {
            Method::Append => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::Snapshot => client.install_snapshot(request).await,
        };
        let answer = answer.map_err(|status| {
            // Drop the channel: the next call reconnects.
            self.client = None;
            RPCError::Unreachable(Unreachable::new(&CertifierError::Rpc(status)))
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&answer.into_inner().data)
                .map_err(|e| RPCError::Network(NetworkError::new(&protocol(e))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// Which RPC of the service.
#[derive(Clone, Copy)]
enum Method {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        // The entries go in their binary log encoding, not in the JSON.
        let mut entries = Vec::with_capacity(rpc.entries.len());
        for e in &rpc.entries {
            entries.push(entry::encode(e).map_err(|e| RPCError::Network(NetworkError::new(&e)))?);
        }
        let header = AppendEntriesRequest {
            entries: Vec::new(),
            ..rpc
        };
        self.call(Method::Append, &header, entries, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        self.call(Method::Snapshot, &rpc, Vec::new(), option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        self.call(Method::Vote, &rpc, Vec::new(), option.hard_ttl())
            .await
    }
}
