//! A raft cluster of certifier nodes in this process, talking gRPC over
//! loopback, each node in its own temporary directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config, SnapshotPolicy};
use tashkent_certifier::raft::{
    Command, LogStore, Network, NodeId, Raft, RaftService, Response, StateMachine,
};
use tashkent_certifier::Limits;
use tashkent_wal::WalOptions;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;

/// How long a leader may take to appear (elections run in ~0.3–0.6 s).
pub const ELECTION_WAIT: Duration = Duration::from_secs(20);

pub struct Node {
    pub raft: Raft,
    /// The node's WAL (a second handle), to look at after a failure.
    pub wal: tashkent_wal::Wal,
    stop_server: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

/// Elections in 0.3–0.6 s, and with `snapshot_every`, a snapshot after that
/// many entries and the log purged right behind it.
pub fn config(snapshot_every: Option<u64>) -> Arc<Config> {
    let mut c = Config {
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        ..Config::default()
    };
    if let Some(n) = snapshot_every {
        c.snapshot_policy = SnapshotPolicy::LogsSinceLast(n);
        c.max_in_snapshot_log_to_keep = 0;
        c.purge_batch_size = 1;
    }
    Arc::new(c.validate().unwrap())
}

impl Node {
    /// Starts node `id` on what `dir` holds (nothing, for a new node),
    /// serving on `listener`.
    pub async fn start(
        id: NodeId,
        dir: &Path,
        listener: tokio::net::TcpListener,
        config: Arc<Config>,
    ) -> Node {
        Node::start_with(id, dir, listener, config, Network::default()).await
    }

    /// [`Node::start`], reaching the others through `network`.
    pub async fn start_with(
        id: NodeId,
        dir: &Path,
        listener: tokio::net::TcpListener,
        config: Arc<Config>,
        network: Network,
    ) -> Node {
        let opts = WalOptions {
            segment_size: 1 << 20,
            ..WalOptions::default()
        };
        let log = LogStore::open(&dir.join("log"), opts).unwrap();
        let wal = log.wal().clone();
        let sm = StateMachine::open(&dir.join("sm"), Limits::default()).unwrap();
        let raft = Raft::new(id, config, network, log, sm).await.unwrap();
        let (stop_server, stopped) = oneshot::channel::<()>();
        let (stop_streams, streams_stop) = tokio::sync::watch::channel(false);
        let svc = RaftService::new(raft.clone())
            .stops_with(streams_stop)
            .into_server();
        let server = tokio::spawn(async move {
            let incoming = TcpIncoming::from(listener);
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.await;
                    stop_streams.send_replace(true);
                })
                .await
                .unwrap();
        });
        Node {
            raft,
            wal,
            stop_server: Some(stop_server),
            server,
        }
    }

    /// Stops the node: raft first, then its server (nothing answers any more).
    pub async fn kill(mut self) {
        if let Err(e) = self.raft.shutdown().await {
            let state = self.raft.metrics().borrow().running_state.clone();
            assert!(state.is_err(), "shutdown failed on a running node: {e}");
        }
        if let Some(s) = self.stop_server.take() {
            let _ = s.send(());
        }
        self.server.await.unwrap();
    }
}

/// Initialized nodes, each in its own directory.
pub struct Cluster {
    pub nodes: BTreeMap<NodeId, Node>,
    pub addrs: BTreeMap<NodeId, String>,
    pub dirs: BTreeMap<NodeId, TempDir>,
}

impl Cluster {
    pub async fn start(size: u64, snapshot_every: Option<u64>) -> Cluster {
        let mut members = BTreeMap::new();
        let mut listeners = Vec::new();
        for id in 1..=size {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap().to_string();
            members.insert(id, BasicNode { addr });
            listeners.push((id, l));
        }
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            addrs: members
                .iter()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
            dirs: BTreeMap::new(),
        };
        for (id, l) in listeners {
            let dir = tempfile::tempdir().unwrap();
            let node = Node::start(id, dir.path(), l, config(snapshot_every)).await;
            c.nodes.insert(id, node);
            c.dirs.insert(id, dir);
        }
        c.nodes[&1].raft.initialize(members).await.unwrap();
        c
    }

    /// Starts node `id` again on its address and directory.
    pub async fn restart(&mut self, id: NodeId, snapshot_every: Option<u64>) {
        let l = tokio::net::TcpListener::bind(&self.addrs[&id])
            .await
            .unwrap();
        let node = Node::start(id, self.dirs[&id].path(), l, config(snapshot_every)).await;
        self.nodes.insert(id, node);
    }
}

/// The leader as every node in `nodes` sees it, once they agree and it is
/// one of them.
pub async fn agreed_leader(nodes: &BTreeMap<NodeId, Node>) -> NodeId {
    let deadline = tokio::time::Instant::now() + ELECTION_WAIT;
    loop {
        let seen: BTreeSet<Option<NodeId>> = nodes
            .values()
            .map(|n| n.raft.metrics().borrow().current_leader)
            .collect();
        if let [Some(l)] = seen.iter().collect::<Vec<_>>()[..] {
            if nodes.contains_key(l) {
                return *l;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no agreed leader within {ELECTION_WAIT:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every node in `nodes` has applied the entry at `index`.
pub async fn all_applied(nodes: &BTreeMap<NodeId, Node>, index: u64) {
    for n in nodes.values() {
        n.raft
            .wait(Some(ELECTION_WAIT))
            .applied_index_at_least(Some(index), "replicated")
            .await
            .unwrap();
    }
}

/// Writes `cmd` through `leader` and returns (raft index, term, answer).
pub async fn write(leader: &Raft, cmd: Command) -> (u64, u64, Response) {
    let r = leader.client_write(cmd).await.expect("client_write");
    (r.log_id.index, r.log_id.leader_id.term, r.data)
}
