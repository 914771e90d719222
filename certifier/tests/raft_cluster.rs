//! Three raft certifier nodes in one process, talking gRPC over loopback:
//! a leader is elected, certifications commit with dense versions, the
//! leader is killed (shut down, its server stopped), a new leader commits
//! more with no raft index reused and no version skipped or reused, and a
//! retried transaction id gets its original version from the new leader.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config};
use tashkent_certifier::raft::{
    Command, LogStore, Network, NodeId, Raft, RaftService, Response, StateMachine,
};
use tashkent_certifier::Limits;
use tashkent_wal::WalOptions;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;

mod raft_common;
use raft_common::certify;

/// How long a leader may take to appear (elections run in ~0.3–0.6 s).
const ELECTION_WAIT: Duration = Duration::from_secs(20);

struct Node {
    raft: Raft,
    stop_server: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl Node {
    async fn start(id: NodeId, listener: tokio::net::TcpListener) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 600,
            ..Config::default()
        };
        let opts = WalOptions {
            segment_size: 1 << 20,
            ..WalOptions::default()
        };
        let log = LogStore::open(&dir.path().join("log"), opts).unwrap();
        let sm = StateMachine::open(&dir.path().join("sm"), Limits::default()).unwrap();
        let raft = Raft::new(id, Arc::new(config.validate().unwrap()), Network, log, sm)
            .await
            .unwrap();
        let (stop_server, stopped) = oneshot::channel::<()>();
        let svc = RaftService::new(raft.clone()).into_server();
        let server = tokio::spawn(async move {
            let incoming = TcpIncoming::from(listener);
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Node {
            raft,
            stop_server: Some(stop_server),
            server,
            _dir: dir,
        }
    }

    /// Stops the node: raft first, then its server (nothing answers any more).
    async fn kill(mut self) {
        self.raft.shutdown().await.unwrap();
        if let Some(s) = self.stop_server.take() {
            let _ = s.send(());
        }
        self.server.await.unwrap();
    }
}

/// The leader as every node in `nodes` sees it, once they agree and it is
/// one of them.
async fn agreed_leader(nodes: &BTreeMap<NodeId, Node>) -> NodeId {
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
async fn all_applied(nodes: &BTreeMap<NodeId, Node>, index: u64) {
    for n in nodes.values() {
        n.raft
            .wait(Some(ELECTION_WAIT))
            .applied_index_at_least(Some(index), "replicated")
            .await
            .unwrap();
    }
}

/// Writes `cmd` through `leader` and returns (raft index, term, answer).
async fn write(leader: &Raft, cmd: Command) -> (u64, u64, Response) {
    let r = leader.client_write(cmd).await.expect("client_write");
    (r.log_id.index, r.log_id.leader_id.term, r.data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_commit_lose_the_leader_and_carry_on() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut members = BTreeMap::new();
    let mut listeners = Vec::new();
    for id in 1..=3u64 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.insert(
            id,
            BasicNode {
                addr: l.local_addr().unwrap().to_string(),
            },
        );
        listeners.push((id, l));
    }
    let mut nodes = BTreeMap::new();
    for (id, l) in listeners {
        nodes.insert(id, Node::start(id, l).await);
    }
    nodes[&1].raft.initialize(members).await.unwrap();

    let leader = agreed_leader(&nodes).await;
    let mut indexes = Vec::new();
    let mut versions = Vec::new();
    let mut first_term = 0;
    for i in 1..=20u64 {
        let (index, term, r) = write(
            &nodes[&leader].raft,
            certify(&format!("t{i}"), 0, &format!("k{i}")),
        )
        .await;
        first_term = term;
        indexes.push(index);
        match r {
            Response::Committed { version } => versions.push(version),
            other => panic!("t{i}: {other:?}"),
        }
    }
    assert_eq!(versions, (1..=20).collect::<Vec<_>>(), "dense versions");
    // Every node has applied them before the leader goes.
    let last = *indexes.last().unwrap();
    all_applied(&nodes, last).await;

    let old = nodes.remove(&leader).unwrap();
    old.kill().await;
    let killed_at = tokio::time::Instant::now();
    let new_leader = agreed_leader(&nodes).await;
    // Informational (no timing assertions here): election timeouts are
    // 300-600 ms in this test's config.
    eprintln!(
        "new leader {new_leader} agreed {:?} after the kill",
        killed_at.elapsed()
    );
    assert_ne!(new_leader, leader);
    let raft = &nodes[&new_leader].raft;

    // A retry of a transaction that committed under the old leader: its
    // original version, and no new one.
    let (index, term, r) = write(raft, certify("t5", 0, "k5")).await;
    assert!(term > first_term, "new term {term} after {first_term}");
    assert!(
        index > last,
        "index {index} reused (old leader's last {last})"
    );
    assert_eq!(r, Response::Committed { version: 5 });
    indexes.push(index);

    for i in 21..=30u64 {
        let (index, _, r) = write(raft, certify(&format!("t{i}"), 20, &format!("k{i}"))).await;
        indexes.push(index);
        match r {
            Response::Committed { version } => versions.push(version),
            other => panic!("t{i}: {other:?}"),
        }
    }
    // A conflict with a version committed under the old leader still aborts.
    let (index, _, r) = write(raft, certify("late", 3, "k7")).await;
    indexes.push(index);
    assert!(
        matches!(
            r,
            Response::Aborted {
                conflict_version: 7,
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(
        versions,
        (1..=30).collect::<Vec<_>>(),
        "no version skipped or reused"
    );
    assert!(
        indexes.windows(2).all(|w| w[0] < w[1]),
        "raft indexes strictly increase: {indexes:?}"
    );
    // The survivor follows.
    all_applied(&nodes, *indexes.last().unwrap()).await;
    for (_, n) in nodes {
        n.kill().await;
    }
}
