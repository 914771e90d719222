//! Three raft certifier nodes in one process, talking gRPC over loopback:
//! a leader is elected, certifications commit with dense versions, the
//! leader is killed (shut down, its server stopped), a new leader commits
//! more with no raft index reused and no version skipped or reused, and a
//! retried transaction id gets its original version from the new leader.
//! Then: a follower whose disk is wiped rejoins through a snapshot (the
//! others purged the log it lacks), a node restarts from its own disk, and
//! each, made leader, answers from the same certifier state. And the
//! transport: an AppendEntries answer that comes after the sender dropped
//! the call is never taken for the next request's.

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use tashkent_certifier::raft::proto::raft_server::{Raft as RaftRpc, RaftServer};
use tashkent_certifier::raft::proto::RaftMessage;
use tashkent_certifier::raft::{Network, NodeId, Proposer, Raft, Response, TypeConfig};
use tashkent_certifier::CertifierError;

mod raft_common;
use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;
use raft_common::cluster::{agreed_leader, all_applied, write, Cluster, Node, ELECTION_WAIT};
use raft_common::slow_link::SlowLink;
use raft_common::{certify, record};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_commit_lose_the_leader_and_carry_on() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let cluster = Cluster::start(3, None).await;
    let mut nodes = cluster.nodes;
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

/// Makes `id` the leader (it must have an up-to-date log).
async fn make_leader(nodes: &BTreeMap<NodeId, Node>, id: NodeId) {
    let deadline = tokio::time::Instant::now() + ELECTION_WAIT;
    while agreed_leader(nodes).await != id {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {id} did not become the leader"
        );
        nodes[&id].raft.trigger().elect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

/// Certifies `t{i}` on row `k{i}` for each `i` and expects version `i`
/// (the test commits transaction `ti` as the i-th version); returns the
/// raft index of the last.
async fn commit_numbered(leader: &Raft, is: std::ops::RangeInclusive<u64>) -> u64 {
    let mut last = 0;
    for i in is {
        let (index, _, r) = write(leader, certify(&format!("t{i}"), i - 1, &format!("k{i}"))).await;
        assert_eq!(r, Response::Committed { version: i }, "t{i}");
        last = index;
    }
    last
}

/// What the node the test made leader answers: a retry of `t1` and of
/// `t{latest}` get their versions, a new transaction the next one, and a
/// stale write to row `k{latest}` conflicts with version `latest`.
async fn check_state(leader: &Raft, latest: u64) -> u64 {
    for i in [1, latest] {
        let (_, _, r) = write(leader, certify(&format!("t{i}"), i - 1, &format!("k{i}"))).await;
        assert_eq!(r, Response::Committed { version: i }, "retry of t{i}");
    }
    let stale = format!("stale{latest}");
    let (_, _, r) = write(leader, certify(&stale, latest - 1, &format!("k{latest}"))).await;
    assert!(
        matches!(r, Response::Aborted { conflict_version, .. } if conflict_version == latest),
        "{r:?}"
    );
    commit_numbered(leader, latest + 1..=latest + 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_rejoins_from_a_snapshot_and_a_restarted_node_from_its_disk() {
    const SNAPSHOT_EVERY: Option<u64> = Some(20);
    let mut c = Cluster::start(3, SNAPSHOT_EVERY).await;
    let leader = agreed_leader(&c.nodes).await;
    let followers: Vec<NodeId> = c.nodes.keys().copied().filter(|&n| n != leader).collect();
    let (wiped, restarted) = (followers[0], followers[1]);
    let last = commit_numbered(&c.nodes[&leader].raft, 1..=30).await;
    all_applied(&c.nodes, last).await;

    // A follower loses its disk while the others go on, snapshot and purge
    // the log it would need.
    c.nodes.remove(&wiped).unwrap().kill().await;
    let dir = c.dirs[&wiped].path().to_path_buf();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    let last = commit_numbered(&c.nodes[&leader].raft, 31..=60).await;
    c.nodes[&leader]
        .raft
        .wait(Some(ELECTION_WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index > 30),
            "leader purged the log behind a snapshot",
        )
        .await
        .unwrap();
    // It comes back empty: only a snapshot can bring it up to date.
    c.restart(wiped, SNAPSHOT_EVERY).await;
    all_applied(&c.nodes, last).await;
    let m = c.nodes[&wiped].raft.metrics().borrow().clone();
    assert!(m.snapshot.is_some(), "installed a snapshot: {m:?}");
    make_leader(&c.nodes, wiped).await;
    let last = check_state(&c.nodes[&wiped].raft, 60).await;
    all_applied(&c.nodes, last).await;

    // Another node restarts from its own disk: snapshot (if it took one),
    // log, vote.
    c.nodes.remove(&restarted).unwrap().kill().await;
    c.restart(restarted, SNAPSHOT_EVERY).await;
    all_applied(&c.nodes, last).await;
    make_leader(&c.nodes, restarted).await;
    check_state(&c.nodes[&restarted].raft, 61).await;

    for (_, n) in c.nodes {
        n.kill().await;
    }
}

/// A leader cut off with a write in flight comes back to a group that
/// moved on and purged its log past the leader's: the snapshot it is sent
/// reaches beyond its last entry, so nothing is truncated, and openraft
/// 0.9 left the write waiting forever (its proposer stuck with it). Now
/// the write is answered ForwardToLeader once the snapshot over its entry
/// is installed (`vendor/README.md`), and the node catches up. The
/// certification may be in that snapshot, so its proposer answers "not
/// the leader; outcome unknown" (a retry under its id finds out), and a
/// second write, asked when the node no longer leads, plainly "not the
/// leader".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_cut_off_leader_is_answered_once_a_snapshot_passes_it() {
    const SNAPSHOT_EVERY: Option<u64> = Some(20);
    let fast = 1 << 30;
    let mut listeners = BTreeMap::new();
    let mut addrs = BTreeMap::new();
    for id in 1..=3u64 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.insert(id, l.local_addr().unwrap());
        listeners.insert(id, l);
    }
    // Everything into node 1 and out of it goes through links the test
    // cuts.
    let into_1 = SlowLink::start(addrs[&1], fast).await;
    let mut from_1 = BTreeMap::new();
    for id in [2u64, 3] {
        from_1.insert(id, SlowLink::start(addrs[&id], fast).await);
    }
    let routes_1: BTreeMap<NodeId, String> = from_1
        .iter()
        .map(|(id, l)| (*id, l.addr().to_string()))
        .collect();
    let mut members = BTreeMap::new();
    members.insert(1, BasicNode::new(into_1.addr().to_string()));
    for id in [2u64, 3] {
        members.insert(id, BasicNode::new(addrs[&id].to_string()));
    }
    let dirs: BTreeMap<NodeId, tempfile::TempDir> = (1..=3)
        .map(|id| (id, tempfile::tempdir().unwrap()))
        .collect();
    let mut nodes = BTreeMap::new();
    for (id, l) in listeners {
        let network = if id == 1 {
            Network::new(1, routes_1.clone(), None)
        } else {
            Network::default()
        };
        let cfg = raft_common::cluster::config(SNAPSHOT_EVERY);
        nodes.insert(
            id,
            Node::start_with(id, dirs[&id].path(), l, cfg, network).await,
        );
    }
    nodes[&1].raft.initialize(members).await.unwrap();
    make_leader(&nodes, 1).await;
    let last = commit_numbered(&nodes[&1].raft, 1..=5).await;
    all_applied(&nodes, last).await;

    into_1.close();
    for l in from_1.values() {
        l.close();
    }
    let cut = nodes.remove(&1).unwrap();
    let pending = {
        let raft = cut.raft.clone();
        tokio::spawn(async move { raft.client_write(certify("cut", 5, "kc")).await })
    };
    let proposer = Proposer::new(cut.raft.clone(), 64);
    let certifying = {
        let proposer = proposer.clone();
        tokio::spawn(async move { proposer.certify(record("cut2", 5, "kc2")).await })
    };
    // The others elect one of them and go on, past a snapshot and a purge
    // of everything node 1 holds.
    let leader = agreed_leader(&nodes).await;
    let end = commit_numbered(&nodes[&leader].raft, 6..=45).await;
    nodes[&leader]
        .raft
        .wait(Some(ELECTION_WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index > last + 5),
            "the new leader purged past node 1's log",
        )
        .await
        .unwrap();
    assert!(
        !pending.is_finished(),
        "answered while cut off: {pending:?}"
    );

    // Only the way in heals: node 1 is sent a snapshot.
    into_1.open();
    let answered = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .expect("the write on the cut-off leader was never answered")
        .unwrap();
    assert!(
        matches!(
            answered,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))
        ),
        "{answered:?}"
    );
    let certified = tokio::time::timeout(Duration::from_secs(30), certifying)
        .await
        .expect("the certification on the cut-off leader was never answered")
        .unwrap();
    assert!(
        matches!(
            certified,
            Err(CertifierError::NotLeader {
                outcome_unknown: true,
                ..
            })
        ),
        "{certified:?}"
    );
    let after = proposer.certify(record("cut3", 5, "kc3")).await;
    assert!(
        matches!(
            after,
            Err(CertifierError::NotLeader {
                outcome_unknown: false,
                ..
            })
        ),
        "{after:?}"
    );
    nodes.insert(1, cut);
    all_applied(&nodes, end).await;
    for (_, n) in nodes {
        n.kill().await;
    }
}

/// `writers` tasks certify `each` transactions on distinct rows through
/// the leader of a `size`-node cluster, one entry each or `batched` by a
/// [`Proposer`]; returns the versions they got and the commits per second
/// (informational only: no timing is asserted).
async fn concurrent(size: u64, writers: u64, each: u64, batched: bool) -> (Vec<u64>, f64) {
    let c = Cluster::start(size, None).await;
    let leader = c.nodes[&agreed_leader(&c.nodes).await].raft.clone();
    let proposer = Proposer::new(leader.clone(), 256);
    let started = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (raft, proposer) = (leader.clone(), proposer.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..each {
                    let id = format!("w{w}-{i}");
                    let answer = if batched {
                        proposer.certify(record(&id, 0, &id)).await.unwrap()
                    } else {
                        write(&raft, certify(&id, 0, &id)).await.2
                    };
                    match answer {
                        Response::Committed { version } => got.push(version),
                        other => panic!("{id}: {other:?}"),
                    }
                }
                got
            })
        })
        .collect();
    let mut versions = Vec::new();
    for t in tasks {
        versions.extend(t.await.unwrap());
    }
    let rate = versions.len() as f64 / started.elapsed().as_secs_f64();
    for (_, n) in c.nodes {
        n.kill().await;
    }
    versions.sort_unstable();
    (versions, rate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_certifications_get_dense_unique_versions_on_one_and_three_nodes() {
    let (writers, each) = (16, 25);
    let mut rates = Vec::new();
    for (size, batched) in [(1, false), (3, false), (1, true), (3, true)] {
        let (versions, rate) = concurrent(size, writers, each, batched).await;
        assert_eq!(
            versions,
            (1..=writers * each).collect::<Vec<_>>(),
            "{size} node(s), batched {batched}: every commit a distinct version, none skipped"
        );
        rates.push(rate);
    }
    eprintln!(
        "certifications/s through raft, {writers} writers: one entry each: 1 node {:.0}, \
         3 nodes {:.0}; batched by a Proposer: 1 node {:.0}, 3 nodes {:.0}",
        rates[0], rates[1], rates[2], rates[3]
    );
}

/// Current-thread runtime: the proposer's task cannot run before the test
/// yields, so the ten certifications queued here deterministically arrive
/// "together".
#[tokio::test]
async fn a_proposer_batches_what_arrives_together_and_a_follower_says_who_leads() {
    // One node: no election can add an entry while this counts them.
    let single = Cluster::start(1, None).await;
    let raft = &single.nodes[&agreed_leader(&single.nodes).await].raft;
    let before = raft.metrics().borrow().last_log_index;
    let proposer = Proposer::new(raft.clone(), 64);
    let pending: Vec<_> = (1..=10u64)
        .map(|i| proposer.certify(record(&format!("t{i}"), 0, &format!("k{i}"))))
        .collect();
    // One of them conflicts with an earlier one of the same batch.
    let conflicting = proposer.certify(record("late", 0, "k3"));
    let mut answers = futures::future::join_all(pending).await;
    answers.push(conflicting.await);
    for (i, a) in answers.iter().take(10).enumerate() {
        let want = Response::Committed {
            version: i as u64 + 1,
        };
        assert_eq!(a.as_ref().unwrap(), &want, "t{}", i + 1);
    }
    assert!(
        matches!(
            answers[10],
            Ok(Response::Aborted {
                conflict_version: 3,
                ..
            })
        ),
        "{:?}",
        answers[10]
    );
    let after = raft.metrics().borrow().last_log_index;
    assert_eq!(
        after.unwrap() - before.unwrap(),
        1,
        "eleven certifications in one entry"
    );

    for (_, n) in single.nodes {
        n.kill().await;
    }

    let c = Cluster::start(3, None).await;
    let leader = agreed_leader(&c.nodes).await;
    let follower = *c.nodes.keys().find(|&&n| n != leader).unwrap();
    let p = Proposer::new(c.nodes[&follower].raft.clone(), 64);
    match p.certify(record("t99", 0, "k99")).await {
        // Another node (normally `leader`, unless an election intervened).
        Err(CertifierError::NotLeader {
            leader: Some(l),
            outcome_unknown: false,
            ..
        }) => {
            assert!(l != follower && c.nodes.contains_key(&l), "leader {l}")
        }
        other => panic!("a follower answered {other:?}"),
    }
    for (_, n) in c.nodes {
        n.kill().await;
    }
}

/// A stand-in node whose first AppendEntries answer comes late (a
/// `Conflict`, after the sender gave up on it) and every later one at
/// once (`Success`).
#[derive(Default)]
struct LateFirstAnswer {
    seen: std::sync::atomic::AtomicU64,
}

type Answers =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftMessage, tonic::Status>> + Send>>;

fn answer(response: AppendEntriesResponse<NodeId>) -> RaftMessage {
    let result: Result<_, openraft::error::RaftError<NodeId>> = Ok(response);
    RaftMessage {
        data: serde_json::to_vec(&result).unwrap().into(),
        entries: Vec::new(),
    }
}

#[tonic::async_trait]
impl RaftRpc for LateFirstAnswer {
    type AppendEntriesStream = Answers;

    async fn append_entries(
        &self,
        request: tonic::Request<tonic::Streaming<RaftMessage>>,
    ) -> Result<tonic::Response<Answers>, tonic::Status> {
        let mut inbound = request.into_inner();
        let first = self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        let answers = async_stream_of(move |tx| async move {
            while let Ok(Some(_)) = inbound.message().await {
                let a = if first {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    answer(AppendEntriesResponse::Conflict)
                } else {
                    answer(AppendEntriesResponse::Success)
                };
                if tx.send(Ok(a)).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(answers))
    }

    async fn vote(
        &self,
        _: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn install_snapshot(
        &self,
        _: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn install_snapshot_chunk(
        &self,
        _: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn change_membership(
        &self,
        _: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn transfer_leader(
        &self,
        _: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn elect(
        &self,
        _: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }
}

/// The stream of what `produce` sends.
fn async_stream_of<F, Fut>(produce: F) -> Answers
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<RaftMessage, tonic::Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(produce(tx));
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|m| (m, rx))
    }))
}

/// openraft drops an AppendEntries call at its own deadline, answer or
/// not. The answer that comes later must never be taken for the next
/// request's: a `Success` meant for one range counted for another would
/// count a follower as holding entries it does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_append_entries_answer_is_never_taken_for_the_next_request() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftServer::new(LateFirstAnswer::default()))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let mut network = Network::default();
    let mut to_node = network
        .new_client(2, &openraft::BasicNode::new(addr.to_string()))
        .await;
    let request = || AppendEntriesRequest::<TypeConfig> {
        vote: openraft::Vote::new_committed(1, 1),
        prev_log_id: None,
        leader_commit: None,
        entries: Vec::new(),
    };
    let option = || RPCOption::new(Duration::from_secs(2));
    // As openraft's replication does at its deadline: the call is dropped.
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        to_node.append_entries(request(), option()),
    )
    .await;
    assert!(dropped.is_err(), "the first answer came early: {dropped:?}");
    let next = to_node.append_entries(request(), option()).await.unwrap();
    assert_eq!(next, AppendEntriesResponse::Success);
    // And the one after, on the same stream.
    let after = to_node.append_entries(request(), option()).await.unwrap();
    assert_eq!(after, AppendEntriesResponse::Success);
    drop(to_node);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
