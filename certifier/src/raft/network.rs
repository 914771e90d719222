//! openraft's network over gRPC (`proto/raft.proto`): the client half.
//!
//! One lazily connected tonic channel per target node, and on it one
//! AppendEntries stream, opened at the first AppendEntries and kept (the
//! proto file says why): a request is sent on it and its answer awaited
//! before openraft sends the next. A request that cannot be delivered
//! (connection refused, reset, deadline) is `Unreachable`, which makes
//! openraft back off and retry, and drops the stream and the channel, so
//! the next request starts afresh. The stream is out of the connection
//! while a request is on it, and put back only with its answer read:
//! openraft drops a call at its own deadline, and the stream goes with
//! it, so no request can be handed an answer meant for an earlier one.
//! An error the remote node answered is a `RemoteError`.
//! Payloads are openraft's own messages as JSON, except log entries, which
//! travel in the log's binary encoding (`entry.rs`; see the proto file). A
//! node with a certificate (`tls_cert`) speaks TLS to its peers, trusting
//! `peer_tls_ca`.

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
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

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
    appends: Option<AppendStream>,
}

/// An open AppendEntries stream: requests in, their answers in order.
struct AppendStream {
    requests: mpsc::Sender<RaftMessage>,
    answers: Streaming<RaftMessage>,
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
            appends: None,
        }
    }
}

fn protocol(e: impl std::fmt::Display) -> CertifierError {
    CertifierError::Protocol(e.to_string())
}

fn network_error<E: std::error::Error>(e: &(impl std::error::Error + 'static)) -> RpcError<E> {
    RPCError::Network(NetworkError::new(e))
}

impl Connection {
    /// The target's client, connected on first use (a node that is down
    /// is Unreachable then).
    fn client(&mut self, timeout: Duration) -> Result<&mut RaftClient<Channel>, CertifierError> {
        if self.client.is_none() {
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", self.addr))
                .map_err(protocol)?
                .connect_timeout(timeout);
            if let Some(tls) = &self.tls {
                endpoint = endpoint.tls_config(tls.tonic_config()).map_err(protocol)?;
            }
            self.client = Some(
                RaftClient::new(endpoint.connect_lazy())
                    .max_decoding_message_size(super::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(super::MAX_MESSAGE_BYTES),
            );
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// An undelivered request: the next one reconnects.
    fn unreachable<E: std::error::Error>(&mut self, status: Status) -> RpcError<E> {
        self.client = None;
        self.appends = None;
        RPCError::Unreachable(Unreachable::new(&CertifierError::Rpc(status)))
    }

    /// Decodes the remote `Result` in `answer`.
    // openraft's error type, large as it is: the trait's methods return it.
    #[allow(clippy::result_large_err)]
    fn result<Resp, E>(&self, answer: &RaftMessage) -> Result<Resp, RpcError<E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&answer.data).map_err(|e| network_error(&protocol(e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// Sends `req` to the unary `method` and decodes the remote `Result`.
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = serde_json::to_vec(req).map_err(|e| network_error(&protocol(e)))?;
        let client = self.client(timeout).map_err(|e| network_error(&e))?;
        let mut request = tonic::Request::new(RaftMessage {
            data: data.into(),
            entries: Vec::new(),
        });
        request.set_timeout(timeout);
        let answer = match method {
            Method::Vote => client.vote(request).await,
            Method::Snapshot => client.install_snapshot(request).await,
        };
        let answer = answer.map_err(|status| self.unreachable(status))?;
        self.result(&answer.into_inner())
    }

    /// Sends `msg` on the AppendEntries stream (opening it if none is
    /// open) and awaits its answer.
    async fn exchange(
        &mut self,
        msg: RaftMessage,
        timeout: Duration,
    ) -> Result<RaftMessage, Status> {
        // Taken out while a request is on it, put back only once its
        // answer is read: openraft drops this future at its own deadline,
        // and a stream dropped with it can never hand the next request
        // the answer meant for this one.
        let mut stream = match self.appends.take() {
            Some(stream) => stream,
            None => {
                let client = self
                    .client(timeout)
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                let (requests, rx) = mpsc::channel(1);
                let outbound = crate::batch::received(rx);
                let answers = client.append_entries(outbound).await?.into_inner();
                AppendStream { requests, answers }
            }
        };
        if stream.requests.send(msg).await.is_err() {
            return Err(Status::unavailable("the AppendEntries stream closed"));
        }
        match stream.answers.message().await? {
            Some(answer) => {
                self.appends = Some(stream);
                Ok(answer)
            }
            None => Err(Status::unavailable("the AppendEntries stream ended")),
        }
    }
}

/// Which RPC of the service.
#[derive(Clone, Copy)]
enum Method {
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
        let data = serde_json::to_vec(&header).map_err(|e| network_error(&protocol(e)))?;
        let msg = RaftMessage {
            data: data.into(),
            entries,
        };
        let timeout = option.hard_ttl();
        match tokio::time::timeout(timeout, self.exchange(msg, timeout)).await {
            Ok(Ok(answer)) => self.result(&answer),
            Ok(Err(status)) => Err(self.unreachable(status)),
            // The stream went with the future; the connection may be dead
            // (a cut link), so it goes too.
            Err(_) => Err(self.unreachable(Status::deadline_exceeded(format!(
                "no AppendEntries answer within {} ms",
                timeout.as_millis()
            )))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        self.call(Method::Snapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        self.call(Method::Vote, &rpc, option.hard_ttl()).await
    }
}
