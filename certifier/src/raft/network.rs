//! openraft's network over gRPC (`proto/raft.proto`): the client half.
//!
//! One lazily connected tonic channel per target node, and on it one
//! AppendEntries stream, opened at the first AppendEntries and kept (the
//! proto file says why). Requests go on it in the order sent, and a
//! reader task hands each answer, in the same order, to whoever waits for
//! it, so the patched openraft can have several in flight
//! (`send_append_entries`, `vendor/README.md`). A request that cannot be
//! delivered (connection refused, reset, deadline) is `Unreachable`, which
//! makes openraft back off and retry. An answer not come by openraft's
//! deadline marks the stream broken: the link may be dead, so the next
//! request opens a new stream on a new channel. Answers still due on the
//! old one go nowhere, so none can reach a request it was not meant for.
//! A request sent ahead whose answer openraft drops unread (it did not
//! adopt it, so never awaited it) leaves the stream as it is.
//! An error the remote node answered is a `RemoteError`.
//! Payloads are openraft's own messages as JSON, except log entries, which
//! travel in the log's binary encoding (`entry.rs`; see the proto file),
//! and snapshot chunks, as bytes (but to a node of an earlier build). A
//! node with a certificate (`tls_cert`) speaks TLS to its peers, trusting
//! `peer_tls_ca`.
//! Each request's fate goes to the peer's `Reach`, which logs a peer
//! lost, refusing and answering again once each (`reach.rs`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::entry;
use super::proto::raft_client::RaftClient;
use super::proto::RaftMessage;
use super::reach::{Peers, Reach, Sent};
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
    peers: Arc<Peers>,
}

impl Network {
    /// Node `node`'s network: it reaches the nodes in `routes` at those
    /// addresses instead of their member addresses (a tunnel, a NAT, a
    /// test's relay that can cut one link), over TLS with `tls`.
    pub fn new(node: NodeId, routes: BTreeMap<NodeId, String>, tls: Option<ClientTls>) -> Network {
        Network {
            routes: Arc::new(routes),
            tls,
            peers: Arc::new(Peers::new(node)),
        }
    }

    /// How the peers answered this node (shared: see `reach.rs`).
    pub fn peers(&self) -> Arc<Peers> {
        self.peers.clone()
    }
}

/// A client of one target node.
pub struct Connection {
    target: NodeId,
    tls: Option<ClientTls>,
    addr: String,
    reach: Arc<Reach>,
    client: Option<RaftClient<Channel>>,
    appends: Option<AppendStream>,
    /// The target answered InstallSnapshotChunk UNIMPLEMENTED (an earlier
    /// build): the rest of this snapshot goes to it as JSON.
    json_snapshots: bool,
}

/// An open AppendEntries stream: requests in; their answers, in the same
/// order, handed by a reader task to whoever waits for each.
struct AppendStream {
    requests: mpsc::UnboundedSender<RaftMessage>,
    waiting: Arc<Mutex<VecDeque<Waiter>>>,
    /// Set when the stream broke or an answer was given up on: the next
    /// request opens a new stream (the link may be dead).
    broken: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
}

type Waiter = oneshot::Sender<Result<RaftMessage, Status>>;

impl Drop for AppendStream {
    fn drop(&mut self) {
        // Its waiters hear of it as their senders go.
        self.reader.abort();
    }
}

/// Tells the peer's `reach` when an awaited answer is given up on before
/// it came (openraft's deadline drops the call, unseen otherwise), and
/// marks an AppendEntries stream broken then: the link may be dead, so the
/// next request reconnects.
struct GivenUp {
    armed: bool,
    broken: Option<Arc<AtomicBool>>,
    sent: Sent,
}

impl GivenUp {
    fn new(sent: Sent, broken: Option<Arc<AtomicBool>>) -> GivenUp {
        GivenUp {
            armed: true,
            broken,
            sent,
        }
    }

    fn answered(mut self) {
        self.armed = false;
    }
}

impl Drop for GivenUp {
    fn drop(&mut self) {
        if self.armed {
            if let Some(b) = &self.broken {
                b.store(true, Ordering::Release);
            }
            self.sent.failed(&Status::deadline_exceeded(
                "no answer by openraft's deadline",
            ));
        }
    }
}

impl AppendStream {
    /// Opens one on `client`, with its reader.
    async fn open(client: &mut RaftClient<Channel>) -> Result<AppendStream, Status> {
        let (requests, rx) = mpsc::unbounded_channel();
        let outbound =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) });
        let mut answers = client.append_entries(outbound).await?.into_inner();
        let waiting: Arc<Mutex<VecDeque<Waiter>>> = Arc::default();
        let broken = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn({
            let waiting = waiting.clone();
            let broken = broken.clone();
            async move {
                loop {
                    let end = match answers.message().await {
                        Ok(Some(answer)) => {
                            if let Some(w) = waiting.lock().pop_front() {
                                let _ = w.send(Ok(answer));
                            }
                            continue;
                        }
                        Ok(None) => Status::unavailable("the AppendEntries stream ended"),
                        Err(status) => status,
                    };
                    broken.store(true, Ordering::Release);
                    for w in waiting.lock().drain(..) {
                        let _ = w.send(Err(end.clone()));
                    }
                    return;
                }
            }
        });
        Ok(AppendStream {
            requests,
            waiting,
            broken,
            reader,
        })
    }

    fn usable(&self) -> bool {
        !self.broken.load(Ordering::Acquire)
    }

    /// Sends `msg` after everything sent before; its answer comes on the
    /// receiver.
    fn send(
        &self,
        msg: RaftMessage,
    ) -> Result<oneshot::Receiver<Result<RaftMessage, Status>>, Status> {
        let (tx, rx) = oneshot::channel();
        // Queued before it is sent: the answer may come at once.
        self.waiting.lock().push_back(tx);
        if self.requests.send(msg).is_err() {
            self.broken.store(true, Ordering::Release);
            return Err(Status::unavailable("the AppendEntries stream closed"));
        }
        Ok(rx)
    }

    /// The answer on `rx`. Given up on once awaited (openraft drops the
    /// call at its deadline), the stream is marked broken: the link may be
    /// dead. A request sent ahead whose answer openraft drops unread, never
    /// awaited, says nothing about the link and leaves the stream as it is;
    /// hence the mark is armed at the first poll.
    fn answer(
        &self,
        rx: oneshot::Receiver<Result<RaftMessage, Status>>,
        sent: Sent,
    ) -> impl std::future::Future<Output = Result<RaftMessage, Status>> + Send + 'static {
        let broken = self.broken.clone();
        async move {
            let given_up = GivenUp::new(sent, Some(broken));
            let r = rx
                .await
                .unwrap_or_else(|_| Err(Status::unavailable("the AppendEntries stream went away")));
            given_up.answered();
            r
        }
    }
}

type RpcError<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        let addr = self.routes.get(&target).unwrap_or(&node.addr).clone();
        let reach = self.peers.reach(target, &addr);
        Connection {
            target,
            tls: self.tls.clone(),
            addr,
            reach,
            client: None,
            appends: None,
            json_snapshots: false,
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
            let uri = crate::client::uri(&self.addr, self.tls.is_some())?;
            let mut endpoint = Endpoint::from_shared(uri)
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

    /// An undelivered request (`sent`): the next one reconnects.
    fn unreachable<E: std::error::Error>(&mut self, sent: &Sent, status: Status) -> RpcError<E> {
        self.client = None;
        self.appends = None;
        sent.failed(&status);
        undelivered(status)
    }

    /// Decodes the remote `Result` in `answer`.
    // openraft's error type, large as it is: the trait's methods return it.
    #[allow(clippy::result_large_err)]
    fn result<Resp, E>(&self, sent: &Sent, answer: &RaftMessage) -> Result<Resp, RpcError<E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        sent.answered();
        remote_result(self.target, answer)
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
        let sent = self.reach.send();
        let given_up = GivenUp::new(sent.clone(), None);
        let answer = self.send(method, req, Vec::new(), timeout).await;
        given_up.answered();
        match answer? {
            Ok(answer) => self.result(&sent, &answer),
            Err(status) => Err(self.unreachable(&sent, status)),
        }
    }

    /// Sends `req` (as JSON) and `entries` to the unary `method`: the
    /// answer, or the status the call failed with.
    async fn send<Req: Serialize, E: std::error::Error>(
        &mut self,
        method: Method,
        req: &Req,
        entries: Vec<Bytes>,
        timeout: Duration,
    ) -> Result<Result<RaftMessage, Status>, RpcError<E>> {
        let data = serde_json::to_vec(req).map_err(|e| network_error(&protocol(e)))?;
        let client = self.client(timeout).map_err(|e| network_error(&e))?;
        let mut request = tonic::Request::new(RaftMessage {
            data: data.into(),
            entries,
        });
        request.set_timeout(timeout);
        let answer = match method {
            Method::Vote => client.vote(request).await,
            Method::Elect => client.elect(request).await,
            Method::Snapshot => client.install_snapshot(request).await,
            Method::SnapshotChunk => client.install_snapshot_chunk(request).await,
        };
        Ok(answer.map(tonic::Response::into_inner))
    }

    /// Sends `msg` on the AppendEntries stream (opening it if none is
    /// open, or the last one broke) and awaits its answer.
    async fn exchange(
        &mut self,
        sent: Sent,
        msg: RaftMessage,
        timeout: Duration,
    ) -> Result<RaftMessage, Status> {
        if !self.appends.as_ref().is_some_and(AppendStream::usable) {
            if self.appends.take().is_some() {
                // It broke, or an answer was given up on: the link may be
                // dead, so the connection goes too.
                self.client = None;
            }
            let client = self
                .client(timeout)
                .map_err(|e| Status::unavailable(e.to_string()))?;
            self.appends = Some(AppendStream::open(client).await?);
        }
        let stream = self.appends.as_ref().expect("opened above");
        let rx = stream.send(msg)?;
        stream.answer(rx, sent).await
    }

    /// Asks the target to stand for election, for the leader handing over
    /// to it (`transfer.rs`): the term it leads in, or why not.
    pub(super) async fn elect(
        &mut self,
        asked: &super::transfer::ElectRequest,
    ) -> Result<u64, String> {
        use super::transfer::ElectRequest;
        let timeout = super::transfer::STAND_FOR + Duration::from_secs(2);
        let target = self.target;
        let mut sent = self
            .send::<_, openraft::error::Infallible>(Method::Elect, asked, Vec::new(), timeout)
            .await;
        if let (Ok(Err(status)), ElectRequest::With { from, .. }) = (&sent, asked) {
            if status.code() == tonic::Code::InvalidArgument {
                // A node of an earlier build reads a bare node id only:
                // asked again, without the turns.
                let bare = ElectRequest::Bare(*from);
                sent = self.send(Method::Elect, &bare, Vec::new(), timeout).await;
            }
        }
        match sent {
            Err(e) => Err(format!("node {target}: {e}")),
            Ok(Err(status)) => Err(format!("node {target}: {}", CertifierError::Rpc(status))),
            Ok(Ok(answer)) => serde_json::from_slice::<Result<u64, String>>(&answer.data)
                .map_err(|e| format!("node {target}: {}", protocol(e)))?,
        }
    }

    /// The request openraft's `AppendEntriesRequest` goes as.
    // openraft's error type, large as it is: the trait's methods return it.
    #[allow(clippy::result_large_err)]
    fn append_message(rpc: AppendEntriesRequest<TypeConfig>) -> Result<RaftMessage, RpcError> {
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
        Ok(RaftMessage {
            data: data.into(),
            entries,
        })
    }
}

/// A request that did not get its answer (`status` says why).
fn undelivered<E: std::error::Error>(status: Status) -> RpcError<E> {
    RPCError::Unreachable(Unreachable::new(&CertifierError::Rpc(status)))
}

/// Decodes the remote `Result` in `answer`, from `target`.
#[allow(clippy::result_large_err)]
fn remote_result<Resp, E>(target: NodeId, answer: &RaftMessage) -> Result<Resp, RpcError<E>>
where
    Resp: DeserializeOwned,
    E: std::error::Error + DeserializeOwned,
{
    let result: Result<Resp, RaftError<NodeId, E>> =
        serde_json::from_slice(&answer.data).map_err(|e| network_error(&protocol(e)))?;
    result.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
}

/// Which RPC of the service.
#[derive(Clone, Copy)]
enum Method {
    Vote,
    Elect,
    Snapshot,
    SnapshotChunk,
}

impl RaftNetwork<TypeConfig> for Connection {
    /// Pipelined AppendEntries (the patched openraft's replication sends
    /// entries ahead while it awaits an answer): on the open stream only;
    /// with none open, or a broken one, openraft sends through
    /// `append_entries`, which opens one.
    fn send_append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        futures::future::BoxFuture<'static, Result<AppendEntriesResponse<NodeId>, RpcError>>,
        AppendEntriesRequest<TypeConfig>,
    > {
        let Some(stream) = self.appends.as_ref().filter(|s| s.usable()) else {
            return Err(rpc);
        };
        let (target, sent) = (self.target, self.reach.send());
        let answer = match Self::append_message(rpc) {
            Ok(msg) => stream.send(msg).map(|rx| stream.answer(rx, sent.clone())),
            Err(e) => return Ok(Box::pin(async move { Err(e) })),
        };
        Ok(Box::pin(async move {
            let answer = match answer {
                Ok(answer) => answer.await,
                Err(status) => Err(status),
            };
            match answer {
                Ok(answer) => {
                    sent.answered();
                    remote_result(target, &answer)
                }
                Err(status) => {
                    sent.failed(&status);
                    Err(undelivered(status))
                }
            }
        }))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        let msg = Self::append_message(rpc)?;
        let timeout = option.hard_ttl();
        let sent = self.reach.send();
        let exchange = self.exchange(sent.clone(), msg, timeout);
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answer)) => self.result(&sent, &answer),
            Ok(Err(status)) => Err(self.unreachable(&sent, status)),
            // The stream went with the future; the connection may be dead
            // (a cut link), so it goes too.
            Err(_) => Err(self.unreachable(
                &sent,
                Status::deadline_exceeded(format!(
                    "no AppendEntries answer within {} ms",
                    timeout.as_millis()
                )),
            )),
        }
    }

    /// The chunk's bytes as bytes (InstallSnapshotChunk), or in the JSON
    /// to a node of an earlier build.
    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        let ttl = option.hard_ttl();
        if rpc.offset == 0 {
            // Each snapshot asks again: the target may have been upgraded.
            self.json_snapshots = false;
        }
        if !self.json_snapshots {
            let chunk = Bytes::from(std::mem::take(&mut rpc.data));
            let sent = self.reach.send();
            let answer = self.send(Method::SnapshotChunk, &rpc, vec![chunk.clone()], ttl);
            match answer.await? {
                Ok(answer) => return self.result(&sent, &answer),
                Err(s) if s.code() == Code::Unimplemented => {
                    tracing::info!(
                        target = self.target,
                        "a node of an earlier build: snapshots go to it as JSON"
                    );
                    self.json_snapshots = true;
                    rpc.data = chunk.to_vec();
                }
                Err(s) => return Err(self.unreachable(&sent, s)),
            }
        }
        self.call(Method::Snapshot, &rpc, ttl).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        self.call(Method::Vote, &rpc, option.hard_ttl()).await
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use openraft::{SnapshotMeta, Vote};
    use tonic::transport::server::TcpIncoming;
    use tonic::{Request, Response, Streaming};

    use super::*;
    use crate::raft::proto::raft_server::{Raft as RaftRpc, RaftServer};

    /// Snapshot bytes a target got, by the method that got them.
    type Got = Vec<(&'static str, Vec<u8>)>;

    /// A target that has InstallSnapshotChunk, or not (an earlier build).
    struct Target {
        chunks: bool,
        got: Arc<Mutex<Got>>,
    }

    fn installed() -> Result<Response<RaftMessage>, Status> {
        let r: Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> =
            Ok(InstallSnapshotResponse {
                vote: Vote::new(1, 1),
            });
        Ok(Response::new(RaftMessage {
            data: serde_json::to_vec(&r).unwrap().into(),
            entries: Vec::new(),
        }))
    }

    #[tonic::async_trait]
    impl RaftRpc for Target {
        type AppendEntriesStream =
            Pin<Box<dyn futures::Stream<Item = Result<RaftMessage, Status>> + Send>>;

        async fn append_entries(
            &self,
            _: Request<Streaming<RaftMessage>>,
        ) -> Result<Response<Self::AppendEntriesStream>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn vote(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn install_snapshot(
            &self,
            r: Request<RaftMessage>,
        ) -> Result<Response<RaftMessage>, Status> {
            let req: InstallSnapshotRequest<TypeConfig> =
                serde_json::from_slice(&r.into_inner().data).unwrap();
            self.got.lock().push(("json", req.data));
            installed()
        }

        async fn install_snapshot_chunk(
            &self,
            r: Request<RaftMessage>,
        ) -> Result<Response<RaftMessage>, Status> {
            self.got.lock().push(("asked", Vec::new()));
            if !self.chunks {
                return Err(Status::unimplemented("an earlier build"));
            }
            let msg = r.into_inner();
            let req: InstallSnapshotRequest<TypeConfig> =
                serde_json::from_slice(&msg.data).unwrap();
            assert!(req.data.is_empty(), "the bytes went in the JSON too");
            self.got.lock().push(("bytes", msg.entries[0].to_vec()));
            installed()
        }

        async fn change_membership(
            &self,
            _: Request<RaftMessage>,
        ) -> Result<Response<RaftMessage>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn transfer_leader(
            &self,
            _: Request<RaftMessage>,
        ) -> Result<Response<RaftMessage>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn elect(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    /// Sends two snapshots, in two chunks and in one, to a target with or
    /// without InstallSnapshotChunk: what it got.
    async fn send_two(chunks: bool) -> Got {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let target = Target {
            chunks,
            got: got.clone(),
        };
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServer::new(target))
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        let mut conn = Network::default()
            .new_client(2, &BasicNode::new(addr.to_string()))
            .await;
        // A snapshot in two chunks, then another.
        for (offset, data) in [(0, vec![0u8, 1, 255]), (3, vec![7u8; 1000]), (0, vec![9])] {
            let req = InstallSnapshotRequest::<TypeConfig> {
                vote: Vote::new(1, 1),
                meta: SnapshotMeta::default(),
                offset,
                data,
                done: offset > 0,
            };
            let answer = conn
                .install_snapshot(req, RPCOption::new(Duration::from_secs(5)))
                .await
                .unwrap();
            assert_eq!(answer.vote, Vote::new(1, 1));
        }
        server.abort();
        let got = got.lock().clone();
        got
    }

    fn snapshot_request() -> InstallSnapshotRequest<TypeConfig> {
        InstallSnapshotRequest {
            vote: Vote::new(1, 1),
            meta: SnapshotMeta::default(),
            offset: 0,
            data: vec![1],
            done: true,
        }
    }

    #[tokio::test]
    async fn every_connection_to_a_peer_tells_its_reach() {
        // A port nothing listens on, for now.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let mut network = Network::default();
        let node = BasicNode::new(addr.to_string());
        let mut a = network.new_client(2, &node).await;
        let b = network.new_client(2, &node).await;
        assert!(Arc::ptr_eq(&a.reach, &b.reach), "one state per peer");
        let option = RPCOption::new(Duration::from_secs(5));
        for _ in 0..2 {
            let sent = a.install_snapshot(snapshot_request(), option.clone()).await;
            assert!(matches!(sent, Err(RPCError::Unreachable(_))), "{sent:?}");
        }
        assert!(a.reach.lost());
        // Every later failure, through any connection, is old news.
        assert!(!b.reach.send().failed(&Status::unavailable("again")));

        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let target = Target {
            chunks: true,
            got: Arc::default(),
        };
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServer::new(target))
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        a.install_snapshot(snapshot_request(), option)
            .await
            .unwrap();
        assert!(!b.reach.lost());
        assert!(!b.reach.send().answered(), "found again once");
        server.abort();
    }

    #[tokio::test]
    async fn snapshot_chunks_go_as_bytes_and_as_json_to_an_earlier_build() {
        let (a, b) = (vec![0u8, 1, 255], vec![7u8; 1000]);
        assert_eq!(
            send_two(true).await,
            [
                ("asked", vec![]),
                ("bytes", a.clone()),
                ("asked", vec![]),
                ("bytes", b.clone()),
                ("asked", vec![]),
                ("bytes", vec![9]),
            ]
        );
        // Asked once per snapshot; then the JSON only.
        assert_eq!(
            send_two(false).await,
            [
                ("asked", vec![]),
                ("json", a),
                ("json", b),
                ("asked", vec![]),
                ("json", vec![9])
            ]
        );
    }
}
