//! Three certifier nodes served as `tashkent certifier --node-id N --peers
//! ...` would be (`tashkent_certifier::start` with `node_id`/`peers`), in
//! this process over loopback: the leader certifies through raft, a
//! follower answers UNAVAILABLE naming the leader, every node serves
//! Subscribe from its versions log and says its role in Status, and after
//! the leader stops the others elect a new one that carries on with dense
//! versions and answers a retried txn id with its original version.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tashkent_certifier::raft::seed::{seed, Earlier};
use tashkent_certifier::writeset::item;
use tashkent_certifier::{CertifierClient, Item, Op, Outcome, Writeset, WRITESET_FORMAT_VERSION};

mod raft_common;
use raft_common::served::{elect, ports, Nodes, WAIT};
use raft_common::slow_link::SlowLink;

pub fn ws(id: &str, key: &str) -> Writeset {
    Writeset {
        format_version: WRITESET_FORMAT_VERSION,
        txn_id: Bytes::copy_from_slice(id.as_bytes()),
        origin: 1,
        snapshot: 0,
        items: vec![Item {
            row: Bytes::from(format!("row of {key} by {id}")),
            ..item("t", Op::Update, key.as_bytes().to_vec())
        }],
        ddl: vec![],
        last_chunk: false,
        spool: None,
        session: 0,
        losses: 0,
    }
}

fn version(o: Outcome) -> u64 {
    match o {
        Outcome::Committed { version } => version,
        other => panic!("not committed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_cluster_certifies_on_the_leader_redirects_and_fails_over() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut nodes = Nodes::start(3).await;
    let leader = nodes.leader().await;
    let lc = nodes.client(leader).await;
    for i in 1..=10u64 {
        let v = version(
            lc.certify(ws(&format!("t{i}"), &format!("k{i}")))
                .await
                .unwrap(),
        );
        assert_eq!(v, i);
    }
    // Pipelined (one stream) and chunked (a Certify call of its own,
    // assembled by the node) take the same path through raft.
    let v = version(lc.certify_chunked(ws("t11", "k11"), 64).await.unwrap());
    assert_eq!(v, 11);
    let follower = *nodes.addrs.keys().find(|id| **id != leader).unwrap();
    // Every node serves the versions from its own versions log.
    for id in nodes.addrs.keys() {
        let c = nodes.client(*id).await;
        let got: Vec<_> = c
            .subscribe(1)
            .await
            .unwrap()
            .take(11)
            .map(|r| r.unwrap())
            .collect()
            .await;
        let ids: Vec<_> = got.iter().map(|w| w.writeset.txn_id.clone()).collect();
        assert_eq!(ids[0], Bytes::from_static(b"t1"), "node {id}");
        assert_eq!(got.last().unwrap().version, 11, "node {id}");
        // A replica's checkpoint of a version it applied is taken at once,
        // also where this node's versions log has not synced it yet (it
        // syncs it then, see `raft::versions`).
        c.report_checkpoint(11).await.unwrap();
        // A node serves (and applies) a committed version before its
        // versions log has it durable: that log is written behind the raft
        // log, which is what made it durable. Wait for it.
        let deadline = tokio::time::Instant::now() + WAIT;
        let s = loop {
            let s = c.status().await.unwrap();
            if s.durable_version >= 11 || tokio::time::Instant::now() > deadline {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(s.node_id, *id);
        assert_eq!(s.leader_id, leader);
        assert_eq!(s.role, if *id == leader { "leader" } else { "follower" });
        assert_eq!(s.committed_version, 11);
        assert_eq!(s.durable_version, 11);
        assert!(s.term >= 1);
    }
    // A follower answers NotLeader naming the leader; a client given only
    // the follower's address follows it there.
    let status = nodes.client(follower).await.status().await.unwrap();
    assert_eq!(status.leader_addr, nodes.addrs[&leader]);
    let fc = nodes.client(follower).await;
    assert_eq!(version(fc.certify(ws("t12", "k12")).await.unwrap()), 12);
    assert_eq!(fc.status().await.unwrap().node_id, leader);
    // The leader stops; the others elect one that carries on.
    let old = nodes.running.remove(&leader).unwrap();
    old.shutdown().await.unwrap();
    let next = nodes.leader().await;
    assert_ne!(next, leader);
    // Given the running nodes, new leader first, as a proxy is: an
    // answer lost in the election's wake ("outcome unknown, retry") is
    // retried under the same txn id, which is what the retry checks.
    let others: Vec<&str> = nodes
        .running
        .keys()
        .filter(|id| **id != next)
        .map(|id| nodes.addrs[id].as_str())
        .collect();
    let nc = CertifierClient::connect(&format!("{},{}", nodes.addrs[&next], others.join(",")))
        .await
        .unwrap();
    assert_eq!(
        version(nc.certify(ws("t5", "k5")).await.unwrap()),
        5,
        "a retry"
    );
    assert_eq!(version(nc.certify(ws("t12", "k12")).await.unwrap()), 12);
    // The old leader comes back from its disk as a follower and catches up.
    nodes.restart(leader).await;
    assert_eq!(nodes.leader().await, next);
    assert_eq!(version(nc.certify(ws("t13", "k13")).await.unwrap()), 13);
    let back = nodes.client(leader).await;
    let got: Vec<_> = back
        .subscribe(1)
        .await
        .unwrap()
        .take(13)
        .map(|r| r.unwrap().version)
        .collect()
        .await;
    assert_eq!(got, (1..=13).collect::<Vec<_>>());
    nodes.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_every_node_follows_the_leader_across_a_failover() {
    let mut nodes = Nodes::start(3).await;
    let leader = nodes.leader().await;
    let all = nodes.all_addrs();
    let client = CertifierClient::connect(&all).await.unwrap();
    // Through the client: a follower named first redirects it.
    let x = version(client.certify(ws("x", "kx")).await.unwrap());
    let (writers, each) = (4u64, 40u64);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopper = {
        let counted = client.clone();
        tokio::spawn(async move {
            // Stop the leader once some commits are through.
            while counted.acknowledged().await.unwrap_or(0) < 20 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let _ = stop_tx.send(());
        })
    };
    let mut tasks = Vec::new();
    for w in 0..writers {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..each {
                let id = format!("w{w}-{i}");
                got.push(version(c.certify(ws(&id, &id)).await.unwrap()));
            }
            got
        }));
    }
    stop_rx.await.unwrap();
    let stopped = std::time::Instant::now();
    nodes.stop(leader).await;
    stopper.await.unwrap();
    let mut versions = vec![x];
    for t in tasks {
        versions.extend(t.await.unwrap());
    }
    let next = nodes.leader().await;
    eprintln!(
        "leader {leader} stopped; node {next} leads; all writers done {:?} after the stop",
        stopped.elapsed()
    );
    versions.sort_unstable();
    let n = 1 + writers * each;
    assert_eq!(versions, (1..=n).collect::<Vec<_>>(), "dense, each once");
    // The first transaction again, through the same client: its version.
    assert_eq!(version(client.certify(ws("x", "kx")).await.unwrap()), x);
    // Subscribe through the list, one node down.
    let sub = CertifierClient::connect(&all).await.unwrap();
    let got: Vec<_> = sub
        .subscribe(1)
        .await
        .unwrap()
        .take(n as usize)
        .map(|r| r.unwrap().version)
        .collect()
        .await;
    assert_eq!(got, (1..=n).collect::<Vec<_>>());
    nodes.stop_all().await;
}

/// A node restarted as leader of its term (openraft restores a leader
/// whose vote is committed without a new blank entry, as a one-node group
/// always is) decides with a table built after a base of its own: the
/// versions go on densely, across snapshots taken before the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_in_its_term_goes_on_deciding() {
    let mut nodes = Nodes::start_snapshotting(1, 4).await;
    // A node just started is not yet leader, and a client given one
    // address takes "no leader known" as final.
    assert_eq!(nodes.leader().await, 1);
    commit_numbered(&nodes.client(1).await, 1..=10).await;
    for round in 1..=2u64 {
        nodes.stop(1).await;
        nodes.restart(1).await;
        // Its raft core restores it as leader once it has started, which
        // may come after a first call: a client given one address takes
        // "no leader known" as final.
        nodes
            .status_when(1, "the restarted node does not lead", |s| {
                s.role == "leader"
            })
            .await;
        let from = 10 * round + 1;
        commit_numbered(&nodes.client(1).await, from..=from + 9).await;
    }
    let client = nodes.client(1).await;
    assert_eq!(served(&client, 1, 30).await, (1..=30).collect::<Vec<_>>());
    nodes.stop_all().await;
}

/// A node whose start fails after it opened its logs and started its
/// raft core (its metrics port taken) leaves neither running nor locked:
/// started again on the same directory, it leads and goes on deciding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_start_failed_starts_again_on_its_logs() {
    let mut nodes = Nodes::start_snapshotting(1, 4).await;
    assert_eq!(nodes.leader().await, 1);
    commit_numbered(&nodes.client(1).await, 1..=5).await;
    nodes.stop(1).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap();
    let failed = nodes
        .try_start(1, |c| c.metrics_listen = Some(port))
        .await
        .err()
        .expect("the metrics port is taken");
    assert!(failed.to_string().contains("metrics"), "{failed}");
    drop(taken);
    nodes.restart(1).await;
    nodes
        .status_when(1, "the node started again does not lead", |s| {
            s.role == "leader"
        })
        .await;
    commit_numbered(&nodes.client(1).await, 6..=10).await;
    let client = nodes.client(1).await;
    assert_eq!(served(&client, 1, 10).await, (1..=10).collect::<Vec<_>>());
    nodes.stop_all().await;
}

/// A leader whose followers are gone answers a replica's report and a
/// certification with an error within seconds (its contact with the
/// majority is lost), rather than holding them for an entry that cannot
/// commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_its_majority_answers_reports_and_certifications() {
    let mut nodes = Nodes::start(3).await;
    let leader = nodes.leader().await;
    let lc = nodes.client(leader).await;
    // A proposal table is built, reports pass through it.
    assert_eq!(version(lc.certify(ws("a", "ka")).await.unwrap()), 1);
    lc.report_applied(1, 1, 0).await.unwrap();
    let (f1, f2) = nodes.others(leader);
    nodes.stop(f1).await;
    nodes.stop(f2).await;
    // Another replica's: its first report is proposed, not answered from
    // the last one's horizon.
    let asked = tokio::time::timeout(Duration::from_secs(10), lc.report_applied(2, 1, 0)).await;
    assert!(matches!(asked, Ok(Err(_))), "the report: {asked:?}");
    let asked = tokio::time::timeout(Duration::from_secs(10), lc.certify(ws("b", "kb"))).await;
    assert!(matches!(asked, Ok(Err(_))), "the certification: {asked:?}");
    nodes.stop_all().await;
}

/// A client whose link to the leader goes silent (a partition: nothing
/// closed, nothing answered) with a certification in flight does not wait
/// for TCP to give up (a quarter of an hour): HTTP/2 keep-alive pings go
/// unanswered, the connection is dropped within seconds, and the
/// certification is asked again of the others, which lead it to the
/// leader's own address: it commits, once. A subscriber on that link is
/// told its stream broke, within seconds too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_link_to_the_leader_goes_silent_moves_on() {
    let mut nodes = Nodes::start(3).await;
    let leader = nodes.leader().await;
    let (f1, f2) = nodes.others(leader);
    let link = SlowLink::start(nodes.addrs[&leader].parse().unwrap(), 1 << 20).await;
    let addrs = format!("{},{},{}", link.addr(), nodes.addrs[&f1], nodes.addrs[&f2]);
    let client = CertifierClient::connect(&addrs).await.unwrap();
    assert_eq!(version(client.certify(ws("a", "ka")).await.unwrap()), 1);
    let subscriber = CertifierClient::connect(link.addr().to_string())
        .await
        .unwrap();
    let mut stream = subscriber.subscribe(1).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().version, 1);
    assert!(link.passed() > 0, "the client did not go through the link");
    link.stall();
    // A relay in the middle of a chunk when stalled still passes it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let passed = link.passed();
    let asked = std::time::Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(30), client.certify(ws("b", "kb"))).await;
    assert!(
        matches!(got, Ok(Ok(Outcome::Committed { version: 2 }))),
        "the certification sent into the silent link: {got:?} after {:?}",
        asked.elapsed()
    );
    eprintln!(
        "committed through another way {:?} after the link went silent",
        asked.elapsed()
    );
    let ended = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
    assert!(
        matches!(ended, Ok(Some(Err(_)))),
        "the subscription on the silent link: {ended:?}"
    );
    assert_eq!(link.passed(), passed, "the link passed bytes while silent");
    // Once only: a retry of `b` is answered from the dedupe table.
    assert_eq!(version(client.certify(ws("b", "kb")).await.unwrap()), 2);
    assert_eq!(version(client.certify(ws("c", "kc")).await.unwrap()), 3);
    drop(link);
    nodes.stop_all().await;
}

/// Certifies `a{i}` for each `i` of `is` through `client`: version `i`.
async fn commit_numbered(client: &CertifierClient, is: std::ops::RangeInclusive<u64>) {
    for i in is {
        let got = client.certify(ws(&format!("a{i}"), &format!("k{i}"))).await;
        assert_eq!(version(got.unwrap()), i);
    }
}

/// The versions from `from` through `to` that `client` serves.
async fn served(client: &CertifierClient, from: u64, to: u64) -> Vec<u64> {
    client
        .subscribe(from)
        .await
        .unwrap()
        .take((to + 1 - from) as usize)
        .map(|r| r.unwrap().version)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_nodes_rejoin_from_snapshots_and_keep_what_the_checkpoint_needs() {
    // Purging at once (no replica to wait for), in 4 KiB segments, so
    // that the checkpoint purges whole ones.
    wiped_nodes_rejoin(Nodes::start_purging(3, 20, 0, 4096).await).await;
}

/// The same over TLS: a node copies from its peers as a TLS client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_nodes_keep_what_the_checkpoint_needs_over_tls() {
    wiped_nodes_rejoin(Nodes::start_purging_over_tls(3, 20, 0, 4096).await).await;
}

/// Commits versions 1..=200 through `client` while a follower loses its
/// disk after version 100; the others snapshot meanwhile, and purge their
/// logs once checkpoint 150 allows it (never before: see
/// `raft::versions`). Returns the wiped follower, the other one, and the
/// earliest first version the two running nodes keep.
async fn wipe_a_follower_behind_a_checkpoint(
    nodes: &mut Nodes,
    client: &CertifierClient,
    leader: u64,
) -> (u64, u64, u64) {
    commit_numbered(client, 1..=100).await;
    let (follower, other) = nodes.others(leader);
    nodes.wipe(follower).await;
    commit_numbered(client, 101..=200).await;
    let first = checkpoint_purges(nodes, client, 150, [leader, other]).await;
    (follower, other, first)
}

/// Reports checkpoint `at`: `ids` purge whole segments below it (never a
/// version above it), and their raft logs behind a snapshot below it.
/// The earliest first version they keep.
async fn checkpoint_purges(nodes: &Nodes, client: &CertifierClient, at: u64, ids: [u64; 2]) -> u64 {
    client.report_checkpoint(at).await.unwrap();
    let mut first = u64::MAX;
    for id in ids {
        let s = nodes
            .status_when(id, "no purge after the checkpoint", |s| s.first_version > 1)
            .await;
        assert!(s.first_version <= at + 1, "{s:?}");
        first = first.min(s.first_version);
    }
    first
}

async fn wiped_nodes_rejoin(mut nodes: Nodes) {
    let leader = nodes.leader().await;
    let client = nodes.client_of_all().await;
    let (follower, other, first) =
        wipe_a_follower_behind_a_checkpoint(&mut nodes, &client, leader).await;
    nodes.restart(follower).await;
    let fc = nodes.client(follower).await;
    let s = nodes
        .status_when(follower, "the wiped follower did not catch up", |s| {
            s.durable_version >= 200
        })
        .await;
    assert_eq!(s.committed_version, 200);
    // It installed a snapshot (replaying the log from its start would
    // have given it version 1 on), and copied the versions the snapshot
    // skips from the peer whose log starts earliest: it starts where that
    // peer does, which holds what the checkpoint needs.
    assert_eq!(s.first_version, first, "{s:?}");
    assert_eq!(served(&fc, 151, 200).await, (151..=200).collect::<Vec<_>>());
    match fc.subscribe(1).await {
        Err(e) => assert!(e.is_purged(), "{e}"),
        Ok(_) => panic!("versions purged everywhere served"),
    }
    // Made the only way to a quorum with the leader, it carries on; the
    // third node loses its disk too.
    nodes.wipe(other).await;
    assert_eq!(
        version(client.certify(ws("a5", "k5")).await.unwrap()),
        5,
        "a retry"
    );
    assert_eq!(version(client.certify(ws("b", "kb")).await.unwrap()), 201);
    // The leader stops for good. The follower that rejoined leads, and the
    // third rejoins from its snapshot: the versions the checkpoint needs
    // are still on a node, and the third copies them from it (without
    // the copy, both would have skipped the versions from 151 up to their
    // snapshot's, which only the stopped leader held). As the stopped
    // leader does not answer, and might hold versions older than the
    // follower's first, the third waits `GAP_PATIENCE` before it skips
    // those.
    nodes.stop(leader).await;
    nodes.restart(other).await;
    let s = nodes
        .status_when(other, "the wiped third node did not catch up", |s| {
            s.durable_version >= 201
        })
        .await;
    assert_eq!(s.first_version, first, "{s:?}");
    let oc = nodes.client(other).await;
    assert_eq!(served(&oc, 151, 201).await, (151..=201).collect::<Vec<_>>());
    assert_eq!(version(client.certify(ws("c", "kc")).await.unwrap()), 202);
    nodes.stop_all().await;
}

/// A wiped node installs a snapshot while the peer that might hold older
/// versions than the leader's is down, so its copy waits (`raft::gap`).
/// Meanwhile the leader stops too. Alone, the node must not campaign
/// (`server::standing`): as leader it would answer nothing until the copy
/// ends. Once `GAP_PATIENCE` (10 s) has passed with no peer holding the
/// versions, it skips them, stands again, and tells subscribers that those
/// versions are gone here. The others then come back and the group goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_filling_a_gap_does_not_campaign_and_skips_what_no_peer_serves() {
    let mut nodes = Nodes::start_purging(3, 20, 0, 4096).await;
    let leader = nodes.leader().await;
    let client = nodes.client_of_all().await;
    let (wiped, other, _) = wipe_a_follower_behind_a_checkpoint(&mut nodes, &client, leader).await;
    nodes.stop(other).await;
    let started = tokio::time::Instant::now();
    nodes.restart(wiped).await;
    // The snapshot gives it the certifier's state; its versions log stays
    // empty, as the leader's starts after the checkpoint and `other`, which
    // might hold more, does not answer.
    let restarted = tokio::time::Instant::now();
    let s = nodes
        .status_when(wiped, "no snapshot installed", |s| s.copying_through > 0)
        .await;
    let latest = s.copying_through;
    assert_eq!(s.committed_version, latest, "{s:?}");
    assert_eq!(s.durable_version, 0, "{s:?}");
    nodes.stop(leader).await;
    // Its votes are held for two election timeouts (2.4 s) from its
    // start, which has returned; from then on only the pending copy keeps
    // it from campaigning.
    tokio::time::sleep_until(restarted + Duration::from_millis(2900)).await;
    let wc = nodes.client(wiped).await;
    let before = wc.status().await.unwrap();
    assert_eq!(before.role, "follower", "{before:?}");
    // Over two of its longest election timeouts (1.2 s), with no leader.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = wc.status().await.unwrap();
    assert_eq!(after.durable_version, 0, "the copy ended early: {after:?}");
    assert_eq!(after.copying_through, latest, "{after:?}");
    assert_eq!(
        (after.term, after.role.as_str()),
        (before.term, "follower"),
        "a node filling a gap campaigned: {before:?} then {after:?}"
    );
    // Patience runs out: the versions are skipped, and it stands again
    // (alone, in vain).
    let s = nodes
        .status_when(wiped, "the gap was not given up", |s| {
            s.first_version == latest + 1 && s.copying_through == 0
        })
        .await;
    assert!(started.elapsed() >= Duration::from_secs(10), "{s:?}");
    nodes
        .status_when(wiped, "no campaign after the gap", |s| s.term > before.term)
        .await;
    match wc.subscribe(151).await {
        Err(e) => assert!(e.is_purged(), "{e}"),
        Ok(_) => panic!("skipped versions served"),
    }
    nodes.restart(leader).await;
    nodes.restart(other).await;
    assert_eq!(version(client.certify(ws("b", "kb")).await.unwrap()), 201);
    assert_eq!(version(client.certify(ws("a7", "k7")).await.unwrap()), 7);
    nodes.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_added_and_another_removed_online() {
    use tashkent_certifier::raft::membership::{change, MembershipChange};
    let mut nodes = Nodes::start(3).await;
    let leader = nodes.leader().await;
    let three = nodes.all_addrs();
    let client = CertifierClient::connect(&three).await.unwrap();
    commit_numbered(&client, 1..=30).await;
    // Node 4 starts knowing every node, itself included, and is added.
    let addr4 = ports(1).remove(0);
    nodes.addrs.insert(4, addr4.clone());
    nodes.peers = format!("{},4={addr4}", nodes.peers);
    nodes.dirs.insert(4, tempfile::tempdir().unwrap());
    nodes.restart(4).await;
    let voters = change(
        &three,
        None,
        MembershipChange::Add {
            id: 4,
            addr: addr4.clone(),
        },
    )
    .await
    .unwrap();
    assert_eq!(voters, vec![1, 2, 3, 4]);
    // A follower leaves; the others go on, node 4 among the voters.
    let gone = *nodes
        .addrs
        .keys()
        .find(|id| **id != leader && **id != 4)
        .unwrap();
    let voters = change(&three, None, MembershipChange::Remove { id: gone })
        .await
        .unwrap();
    assert_eq!(voters.len(), 3);
    assert!(!voters.contains(&gone) && voters.contains(&4), "{voters:?}");
    nodes.stop(gone).await;
    commit_numbered(&client, 31..=40).await;
    let c4 = nodes.client(4).await;
    let got: Vec<_> = c4
        .subscribe(1)
        .await
        .unwrap()
        .take(40)
        .map(|r| r.unwrap().version)
        .collect()
        .await;
    assert_eq!(got, (1..=40).collect::<Vec<_>>());
    let s = c4.status().await.unwrap();
    assert_eq!((s.node_id, s.leader_id), (4, leader));
    nodes.stop_all().await;
}

/// Subscribers are shown a version once applied, from the tail cache; a
/// node whose cache holds nothing serves every version from its versions
/// log, once written there (`raft::versions`). Both get every version, in
/// order, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_every_version_with_and_without_the_tail_cache() {
    let mut nodes = Nodes::start(3).await;
    let leader = nodes.leader().await;
    let uncached = *nodes.addrs.keys().find(|id| **id != leader).unwrap();
    nodes.stop(uncached).await;
    nodes.tail_bytes = 0;
    nodes.restart(uncached).await;
    assert_eq!(nodes.leader().await, leader);
    let n = 40u64;
    let mut streams = Vec::new();
    for id in [leader, uncached] {
        let c = nodes.client(id).await;
        streams.push((id, c.subscribe(1).await.unwrap()));
    }
    let lc = nodes.client(leader).await;
    for i in 1..=n {
        let id = format!("t{i}");
        assert_eq!(version(lc.certify(ws(&id, &id)).await.unwrap()), i);
    }
    for (id, stream) in streams {
        let got: Vec<_> = tokio::time::timeout(WAIT, stream.take(n as usize).collect::<Vec<_>>())
            .await
            .unwrap_or_else(|_| panic!("node {id} did not serve {n} versions"));
        for (i, w) in got.into_iter().enumerate() {
            let w = w.unwrap();
            let want = format!("t{}", i + 1);
            assert_eq!(w.version, i as u64 + 1, "node {id}");
            assert_eq!(w.writeset, ws(&want, &want), "node {id}");
        }
    }
    nodes.stop_all().await;
}

/// Asks node `addr` for its vote in `term` as candidate `candidate`.
async fn ask_vote(addr: &str, term: u64, candidate: u64) -> Result<(), tonic::Status> {
    use tashkent_certifier::raft::proto::{raft_client::RaftClient, RaftMessage};
    let mut c = RaftClient::connect(format!("http://{addr}")).await.unwrap();
    let req: openraft::raft::VoteRequest<u64> =
        openraft::raft::VoteRequest::new(openraft::Vote::new(term, candidate), None);
    let msg = RaftMessage {
        data: serde_json::to_vec(&req).unwrap().into(),
        entries: Vec::new(),
    };
    c.vote(msg).await.map(|_| ())
}

/// An `Elect` request over the size the most turns take is refused before
/// it is decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elect_request_over_the_turns_bound_is_refused_unread() {
    let mut nodes = Nodes::start(3).await;
    let leader = nodes.leader().await;
    let (other, _) = nodes.others(leader);
    let huge = format!("[{}1]", "1,".repeat(5 << 20));
    let refused = elect(&nodes.addrs[&other], huge.into_bytes())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("at most"), "{refused:?}");
    nodes.stop_all().await;
}

/// The first node of `peers` (the one that bootstraps a new group) loses
/// its disk: restarted empty, it rejoins the running group instead of
/// bootstrapping another, and casts no vote at first (it may have voted
/// in the current term before), then does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_first_node_rejoins_without_voting_at_first() {
    let mut nodes = Nodes::start(3).await;
    nodes.leader().await;
    let client = nodes.client_of_all().await;
    commit_numbered(&client, 1..=30).await;
    nodes.wipe(1).await;
    let leader = nodes.leader().await;
    assert_ne!(leader, 1);
    commit_numbered(&client, 31..=40).await;

    nodes.restart(1).await;
    let refused = ask_vote(&nodes.addrs[&1], 1000, 2).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("casts no vote"), "{refused:?}");

    // It follows the running group's leader and catches up.
    nodes
        .status_when(1, "the wiped node did not rejoin", |s| {
            s.committed_version >= 40 && s.leader_id == leader
        })
        .await;
    commit_numbered(&client, 41..=50).await;
    // After the hold (two election timeouts of at most 1.2 s) it votes.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ask_vote(&nodes.addrs[&1], 1, 2).await.unwrap();
    assert_eq!(nodes.leader().await, leader);
    nodes.stop_all().await;
}

/// A node wiped while its group elects a leader, before any version was
/// committed, may have voted in that election: a peer that knows no
/// leader and committed nothing still has the entry its first leader
/// appended, so the wiped node holds its vote as above. Before, it voted
/// at once, and a candidate could win with its second vote in the term of
/// its first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_wiped_during_an_election_before_any_commit_holds_its_vote() {
    let mut nodes = Nodes::start_without_hand_over(3).await;
    let leader = nodes.leader().await;
    let (survivor, wiped) = nodes.others(leader);
    nodes.wipe(wiped).await;
    nodes.stop(leader).await;
    let s = nodes
        .status_when(survivor, "the survivor did not lose its leader", |s| {
            s.leader_id == 0
        })
        .await;
    assert_eq!(s.committed_version, 0, "{s:?}");
    assert!(s.last_log_index > 0, "{s:?}");

    nodes.restart(wiped).await;
    let refused = ask_vote(&nodes.addrs[&wiped], s.term + 100, survivor)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("casts no vote"), "{refused:?}");
    // After the hold it votes, and the two elect a leader.
    assert_ne!(nodes.leader().await, leader);
    nodes.stop_all().await;
}

/// Writeset "big" of `rows` rows of `row_bytes` each, keys `{key}0`,
/// `{key}1`, ..., every byte value, different per row.
fn big_writeset(rows: u32, row_bytes: u32, key: &str) -> Writeset {
    let mut big = ws("big", "unused");
    big.items = (0..rows)
        .map(|i| Item {
            row: (0..row_bytes)
                .map(|j: u32| (j.wrapping_mul(31).wrapping_add(i)) as u8)
                .collect::<Vec<u8>>()
                .into(),
            ..item("t", Op::Update, format!("{key}{i}").into_bytes())
        })
        .collect();
    big
}

/// Every running node serves versions 1 to 3, version 2 with exactly the
/// rows `want`.
async fn every_node_serves_three(nodes: &Nodes, want: &[Item]) {
    for id in nodes.running.keys() {
        let got: Vec<_> = nodes
            .client(*id)
            .await
            .subscribe(1)
            .await
            .unwrap()
            .take(3)
            .map(|r| r.unwrap())
            .collect()
            .await;
        assert_eq!(
            got.iter().map(|w| w.version).collect::<Vec<_>>(),
            [1, 2, 3],
            "node {id}"
        );
        assert_eq!(got[1].writeset.txn_id, Bytes::from_static(b"big"));
        assert!(got[1].writeset.items == want, "node {id}: rows differ");
    }
}

/// A writeset whose record is larger than one raft entry may be
/// (`raft::parts`, 1 MiB) is proposed in pieces and certified at the
/// last: every node serves it byte for byte, a retry of its txn id gets
/// its version, and versions stay dense around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writeset_larger_than_an_entry_goes_through_raft_in_parts() {
    let mut nodes = Nodes::start(3).await;
    let leader = nodes.leader().await;
    let client = nodes.client_of_all().await;
    assert_eq!(
        version(client.certify(ws("before", "k0")).await.unwrap()),
        1
    );
    let big = big_writeset(40, 100 << 10, "big");
    let want = big.items.clone();
    assert_eq!(
        version(
            client
                .certify_chunked(big.clone(), 256 << 10)
                .await
                .unwrap()
        ),
        2
    );
    assert_eq!(
        version(client.certify_chunked(big, 256 << 10).await.unwrap()),
        2,
        "a retry"
    );
    assert_eq!(version(client.certify(ws("after", "k1")).await.unwrap()), 3);
    every_node_serves_three(&nodes, &want).await;
    assert_eq!(nodes.leader().await, leader, "no election on the way");
    nodes.stop_all().await;
}

/// A Certify stream from a client given every node (as a proxy's is)
/// whose leader goes away before the last chunk goes again, from the
/// chunks the client keeps on disk as they come, to the next leader,
/// which replicates it chunk by chunk: committed once, served byte for
/// byte by the nodes that run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_writeset_goes_again_to_the_next_leader() {
    let mut nodes = Nodes::start(3).await;
    let leader = nodes.leader().await;
    let client = nodes.client_of_all().await;
    assert_eq!(
        version(client.certify(ws("before", "k0")).await.unwrap()),
        1
    );
    let big = big_writeset(24, 128 << 10, "s");
    let want = big.items.clone();
    let mut chunks = tashkent_certifier::writeset::split(big, 400 << 10);
    assert!(chunks.len() > 4, "{} chunks", chunks.len());
    let last = chunks.pop().unwrap();
    let (tx, call) = client.certify_stream();
    let call = tokio::spawn(call);
    for c in chunks {
        tx.send(c).await.unwrap();
    }
    // The leader gets the chunks as they come; stopping, it ends the
    // stream unanswered (nothing of it certified).
    tokio::time::timeout(WAIT, nodes.stop(leader))
        .await
        .expect("the stop waited for the stream");
    tx.finish(last).await.unwrap();
    let got = tokio::time::timeout(WAIT, call)
        .await
        .expect("answered")
        .unwrap()
        .unwrap();
    assert_eq!(version(got), 2);
    let next = nodes.leader().await;
    assert_ne!(next, leader);
    assert_eq!(version(client.certify(ws("after", "k1")).await.unwrap()), 3);
    every_node_serves_three(&nodes, &want).await;
    nodes.stop_all().await;
}

/// Three nodes that stream one writeset at a time (each may be 1 GiB);
/// the leader, and a client of the leader alone (it streams chunks as
/// they come: given every node it would keep them until the last).
async fn nodes_of_one_stream_permit() -> (Nodes, u64, CertifierClient) {
    let mut nodes = Nodes::start(3).await;
    nodes.leader().await;
    nodes.max_writeset_bytes = Some(1 << 30);
    for id in 1..=3 {
        nodes.stop(id).await;
        nodes.restart(id).await;
    }
    let leader = nodes.leader().await;
    let client = nodes.client(leader).await;
    (nodes, leader, client)
}

/// Streams writeset "a" to `leader` through `client`, but for its last
/// chunk (returned, with the sender and the call), once its first chunk
/// is in the log: its stream holds the leader's permit.
async fn a_stream_holding_the_permit(
    nodes: &Nodes,
    leader: u64,
    client: &CertifierClient,
) -> (
    tashkent_certifier::ChunkSender,
    tokio::task::JoinHandle<Result<Outcome, tashkent_certifier::CertifierError>>,
    Writeset,
) {
    let before = client.status().await.unwrap().last_log_index;
    let mut a = tashkent_certifier::writeset::split(four_rows("a", "ka"), 200);
    assert!(a.len() > 2, "{} chunks", a.len());
    let a_last = a.pop().unwrap();
    let (a_tx, a_call) = client.certify_stream();
    let a_call = tokio::spawn(a_call);
    for c in a {
        a_tx.send(c).await.unwrap();
    }
    nodes
        .status_when(leader, "a's first chunk was not proposed", |s| {
            s.last_log_index > before
        })
        .await;
    (a_tx, a_call, a_last)
}
/// Writeset `id` of four rows of 100 bytes, keys `{key}0`..`{key}3`: in
/// chunks of 200 bytes, more than two.
fn four_rows(id: &str, key: &str) -> Writeset {
    let mut w = ws(id, "unused");
    w.items = (0..4)
        .map(|i| Item {
            row: vec![b'r'; 100].into(),
            ..item("t", Op::Insert, format!("{key}{i}").into_bytes())
        })
        .collect();
    w
}

/// A leader proposes the chunks of as many Certify streams at once as
/// fit, each at `max_writeset_bytes`, in the 1 GiB of chunks a node keeps
/// in progress: with 1 GiB allowed, one. A second stream waits for the
/// first (more would have the nodes drop the oldest before its last
/// chunk), then commits; so does a whole writeset over one entry, which
/// the leader proposes in chunks too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_streams_only_as_many_writesets_as_the_nodes_keep() {
    let (mut nodes, leader, client) = nodes_of_one_stream_permit().await;
    let (a_tx, a_call, a_last) = a_stream_holding_the_permit(&nodes, leader, &client).await;
    let b = four_rows("b", "kb");
    let b_call = tokio::spawn({
        let client = client.clone();
        async move { client.certify_chunked(b, 200).await }
    });
    // Two rows of 1 MiB: one message, over one entry.
    let mut c = ws("c", "unused");
    c.items = (0..2)
        .map(|i| Item {
            row: vec![b'c'; 1 << 20].into(),
            ..item("t", Op::Insert, format!("kc{i}").into_bytes())
        })
        .collect();
    let c_call = tokio::spawn({
        let client = client.clone();
        async move { client.certify(c).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    if b_call.is_finished() {
        panic!("b went while a's stream was open: {:?}", b_call.await);
    }
    if c_call.is_finished() {
        panic!("c went while a's stream was open: {:?}", c_call.await);
    }
    a_tx.finish(a_last).await.unwrap();
    assert_eq!(version(a_call.await.unwrap().unwrap()), 1);
    let b = tokio::time::timeout(WAIT, b_call).await.unwrap().unwrap();
    let c = tokio::time::timeout(WAIT, c_call).await.unwrap().unwrap();
    let mut later = [version(b.unwrap()), version(c.unwrap())];
    later.sort();
    assert_eq!(later, [2, 3]);
    nodes.stop_all().await;
}

/// A client that goes silent (a partition) while its streamed writeset
/// holds the leader's one permit does not hold it for TCP's quarter of an
/// hour: the leader waits `CHUNK_PATIENCE` (30 s) for its next chunk,
/// then drops the stream, and another client's streamed writeset goes
/// through. The silent client hears of it through its own pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_lets_go_of_the_leaders_stream_permit() {
    let (mut nodes, leader, direct) = nodes_of_one_stream_permit().await;
    let link = SlowLink::start(nodes.addrs[&leader].parse().unwrap(), 1 << 20).await;
    let silent = CertifierClient::connect(link.addr().to_string())
        .await
        .unwrap();
    let (_a_tx, a_call, _a_last) = a_stream_holding_the_permit(&nodes, leader, &silent).await;
    link.stall();
    let stalled = std::time::Instant::now();
    let b = tokio::time::timeout(
        Duration::from_secs(60),
        direct.certify_chunked(four_rows("b", "kb"), 200),
    )
    .await;
    assert!(
        matches!(b, Ok(Ok(Outcome::Committed { version: 1 }))),
        "b, streamed while a silent client held the permit: {b:?} after {:?}",
        stalled.elapsed()
    );
    eprintln!(
        "b committed {:?} after a's link went silent",
        stalled.elapsed()
    );
    let waited = stalled.elapsed();
    assert!(waited >= Duration::from_secs(29), "b went after {waited:?}");
    // The silent client learns of it through its own pings.
    let a = tokio::time::timeout(Duration::from_secs(30), a_call).await;
    assert!(matches!(a, Ok(Ok(Err(_)))), "a: {a:?}");
    drop(link);
    nodes.stop_all().await;
}

/// A node copying the versions a snapshot skips goes on from another
/// peer when the one it copies from goes away mid-way, after the copy has
/// run longer than `GAP_PATIENCE` (10 s) and while the other peer cannot
/// be reached for a few seconds: patience counts from the copy's last
/// progress, so nothing is skipped. Slow links make the copy take ~16 s.
/// It ends with every version the checkpoint needs, byte for byte what the
/// other peer serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_copy_goes_on_from_another_peer_when_its_source_goes_away() {
    let mut nodes = Nodes::start_purging(3, 20, 0, 64 << 10).await;
    let leader = nodes.leader().await;
    let client = nodes.client_of_all().await;
    commit_numbered(&client, 1..=100).await;
    let (wiped, _) = nodes.others(leader);
    let peers = <[u64; 2]>::from(nodes.others(wiped));
    // What the peers send the wiped node comes at 250 kB/s. Started
    // before the wipe frees the node's port.
    let mut links = BTreeMap::new();
    for id in peers {
        let target = nodes.addrs[&id].parse().unwrap();
        links.insert(id, SlowLink::start(target, 250).await);
    }
    let routes: Vec<String> = links
        .iter()
        .map(|(id, l)| format!("{id}={}", l.addr()))
        .collect();
    nodes.routes.insert(wiped, routes.join(","));
    nodes.wipe(wiped).await;
    // 16 KiB each: about 4 MiB to copy above the checkpoint.
    for i in 101..=400u64 {
        let mut w = ws(&format!("a{i}"), &format!("k{i}"));
        w.items[0].row = Bytes::from(vec![i as u8; 16 << 10]);
        assert_eq!(version(client.certify(w).await.unwrap()), i);
    }
    checkpoint_purges(&nodes, &client, 150, peers).await;
    nodes.restart(wiped).await;
    let s = nodes
        .status_when(wiped, "the copy is not under way", |s| {
            s.copying_through > 0 && s.durable_version > s.first_version
        })
        .await;
    let (first, latest) = (s.first_version, s.copying_through);
    assert!(first <= 151, "{s:?}");
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let s = nodes.client(wiped).await.status().await.unwrap();
    assert!(
        s.copying_through == latest && s.durable_version + 40 < latest,
        "the copy is not far enough from its end to be cut: {s:?}"
    );
    // The peer it copies from is the one whose link carried the most. Its
    // link goes first, as when it dies (a node shut down here would finish
    // the stream), then the node; the other peer is out of reach for 3 s.
    let source = *links.iter().max_by_key(|(_, l)| l.passed()).unwrap().0;
    let rest = *peers.iter().find(|id| **id != source).unwrap();
    links[&rest].close();
    drop(links.remove(&source));
    nodes.stop(source).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = nodes.client(wiped).await.status().await.unwrap();
    assert_eq!(
        (s.copying_through, s.first_version),
        (latest, first),
        "the copy was given up: {s:?}"
    );
    let passed = links[&rest].passed();
    links[&rest].open();
    let s = nodes
        .status_when(wiped, "the copy did not go on from the other peer", |s| {
            s.copying_through == 0 && s.durable_version >= 400
        })
        .await;
    assert_eq!(s.first_version, first, "{s:?}");
    assert!(
        links[&rest].passed() > passed + (10 << 14),
        "the rest did not come from the other peer"
    );
    let (wc, rc) = (nodes.client(wiped).await, nodes.client(rest).await);
    let served = |c: CertifierClient| async move {
        c.subscribe(151)
            .await
            .unwrap()
            .take(250)
            .map(|r| {
                let r = r.unwrap();
                (r.version, r.writeset)
            })
            .collect::<Vec<_>>()
            .await
    };
    let (mine, theirs) = (served(wc).await, served(rc).await);
    assert_eq!(mine.len(), 250);
    assert!(mine == theirs, "the copied versions differ from the peer's");
    nodes.stop_all().await;
}

/// Bytes of the files under `dir`.
fn bytes_under(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// A node filling a snapshot's gap copies a large version into its spool
/// as the frames come (`raft::gap_copy`), not whole into memory: it
/// serves the version byte for byte as the peer does, its spool holds the
/// rows, and a restart keeps them (its versions log references them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_filling_a_gap_spools_the_large_versions_it_copies() {
    let mut nodes = Nodes::start_purging(3, 20, 0, 4096).await;
    let leader = nodes.leader().await;
    let client = nodes.client_of_all().await;
    // Two versions to a 4 KiB segment up to the big one, so that the
    // checkpoint purges the versions logs up to it.
    for i in 1..=30 {
        let mut w = ws(&format!("a{i}"), &format!("k{i}"));
        w.items[0].row = vec![b'p'; 1800].into();
        assert_eq!(version(client.certify(w).await.unwrap()), i);
    }
    let (wiped, other) = nodes.others(leader);
    nodes.wipe(wiped).await;
    let big = big_writeset(6, 1 << 20, "kbig");
    assert_eq!(version(client.certify(big.clone()).await.unwrap()), 31);
    for i in 32..=120 {
        let got = client.certify(ws(&format!("a{i}"), &format!("k{i}"))).await;
        assert_eq!(version(got.unwrap()), i);
    }
    // The raft logs go behind a snapshot, so the wiped node installs the
    // newest and copies the versions it skips, the big one among them
    // (the versions logs keep it: no segment wholly below 32 holds it).
    let first = checkpoint_purges(&nodes, &client, 32, [leader, other]).await;
    assert!(first <= 31, "the big version was purged: {first}");
    let spool = nodes.dirs[&wiped].path().join("wal").join("spool");
    nodes.restart(wiped).await;
    let s = nodes
        .status_when(wiped, "the wiped node did not catch up", |s| {
            s.copying_through == 0 && s.durable_version >= 120
        })
        .await;
    // Copied, not replayed: its log starts where the peer's does.
    assert_eq!(s.first_version, first, "{s:?}");
    assert!(
        bytes_under(&spool) >= 6 << 20,
        "the copy's rows are not spooled"
    );
    let serve = |c: CertifierClient| async move {
        let got = c
            .subscribe(31)
            .await
            .unwrap()
            .next()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.version, 31);
        got.writeset
    };
    let theirs = serve(nodes.client(other).await).await;
    assert!(theirs.items == big.items, "the peer's rows differ");
    assert!(
        serve(nodes.client(wiped).await).await == theirs,
        "the copy differs"
    );
    nodes.stop(wiped).await;
    nodes.restart(wiped).await;
    assert!(
        serve(nodes.client(wiped).await).await == theirs,
        "after a restart"
    );
    nodes.stop_all().await;
}

/// A hand-over under load (`tashkent certifier transfer-leader`): the
/// target leads afterwards, every certification of eight clients given
/// every node commits (none fails or is lost in the pause), versions stay
/// dense, and a second hand-over goes back. Asked of a follower, it names
/// the leader; to a node that is not a member, it says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_hands_over_under_load_and_no_certification_fails() {
    let mut nodes = Nodes::start(3).await;
    let first = nodes.leader().await;
    let (target, _) = nodes.others(first);
    let all = nodes.all_addrs();
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let load = load(&nodes, 8, &stop, &failed).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let follower_says =
        tashkent_certifier::raft::transfer::request(&nodes.addrs[&target], None, target)
            .await
            .unwrap_err()
            .to_string();
    assert!(
        follower_says.contains(&format!("node {first} does")),
        "{follower_says}"
    );
    let stranger = tashkent_certifier::raft::transfer::request(&all, None, 9)
        .await
        .unwrap_err()
        .to_string();
    assert!(stranger.contains("node 9 is not a voter"), "{stranger}");

    let t = std::time::Instant::now();
    let handed = tashkent_certifier::raft::transfer::request(&all, None, target)
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(handed.leader, target);
    eprintln!("handed over from node {first} to node {target} in {took:?}");
    assert_eq!(nodes.leader().await, target);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let back = tashkent_certifier::raft::transfer::request(&all, None, first)
        .await
        .unwrap();
    assert_eq!(back.leader, first);
    assert!(back.term > handed.term);
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Relaxed);
    assert_dense(load).await;
    assert_eq!(failed.load(Ordering::Relaxed), 0, "a certification failed");
    nodes.stop_all().await;
}

/// A follower whose vote cannot be written (its raft log's meta file
/// hangs, `HungMetaWrite`) fails its raft log once the write has not
/// returned for `log_stall_timeout_ms`, as a hung WAL write would: its
/// `status` says `stopped` and names the raft log, and the other two go on
/// committing under the leader they elected meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_vote_cannot_be_written_stops_and_the_others_carry_on() {
    let mut nodes = Nodes::prepared(3);
    for id in 1..=3 {
        let node = nodes
            .try_start(id, |c| c.log_stall_timeout_ms = 1000)
            .await
            .unwrap();
        nodes.running.insert(id, node);
    }
    let first = nodes.leader().await;
    let (stuck, target) = nodes.others(first);
    let client = nodes.client_of_all().await;
    commit_numbered(&client, 1..=5).await;

    let raft_dir = nodes.dirs[&stuck].path().join("wal").join("raft");
    let hung = raft_common::HungMetaWrite::under(&raft_dir);
    // A new term: every node writes its vote.
    let handed = tashkent_certifier::raft::transfer::request(&nodes.all_addrs(), None, target)
        .await
        .unwrap();
    assert_eq!(handed.leader, target);
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        let s = nodes.client(stuck).await.status().await.unwrap();
        if s.role == "stopped" {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {stuck} is still {} with its vote unwritten",
            s.role
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.poisoned, "{status:?}");
    assert!(
        status.poison_cause.contains("raft log") && status.poison_cause.contains("not returned"),
        "{}",
        status.poison_cause
    );
    commit_numbered(&client, 6..=10).await;
    drop(hung);
    nodes.stop_all().await;
}

/// A Certify stream waiting for the leader's stream permit is redirected
/// as soon as its node hands leadership over, while another stream holds
/// the permit (the leader then waits for nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_waiting_for_a_permit_is_redirected_when_its_leader_hands_over() {
    let (mut nodes, leader, client) = nodes_of_one_stream_permit().await;
    let (target, _) = nodes.others(leader);
    let (a_tx, a_call, a_last) = a_stream_holding_the_permit(&nodes, leader, &client).await;
    // b's own connection to the leader alone: it is refused, not followed.
    let b_client = nodes.client(leader).await;
    let b_call =
        tokio::spawn(async move { b_client.certify_chunked(four_rows("b", "kb"), 200).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b_call.is_finished(), "b went while a's stream was open");

    let all = nodes.all_addrs();
    let handed = tashkent_certifier::raft::transfer::request(&all, None, target)
        .await
        .unwrap();
    assert_eq!(handed.leader, target);
    let b = tokio::time::timeout(WAIT, b_call).await.unwrap().unwrap();
    let said = format!("{b:?}");
    assert!(
        b.is_err() && said.contains(&nodes.addrs[&target]),
        "b was not redirected to node {target}: {said}"
    );
    drop(a_tx.finish(a_last).await);
    drop(a_call.await);
    // A client given every node commits on the new leader.
    let c = nodes.client_of_all().await;
    version(c.certify(ws("c", "kc")).await.unwrap());
    assert_eq!(c.status().await.unwrap().node_id, target);
    nodes.stop_all().await;
}

/// A leader told to stop hands over first (`hand_over_on_stop`, on by
/// default): when its stop returns, another node leads already (an
/// election could not have begun: the others hold its lease, 1.2 s, then
/// wait an election timeout), and no certification of four clients given
/// every node fails. With it off, the others elect a leader after a
/// failover's pause, and the certifications that waited commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_told_to_stop_hands_over_first() {
    let mut nodes = Nodes::start(3).await;
    let first = nodes.leader().await;
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let load = load(&nodes, 4, &stop, &failed).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = std::time::Instant::now();
    nodes.stop(first).await;
    eprintln!("stopped, handing over first, in {:?}", t.elapsed());
    let leaders = leading(&nodes).await;
    assert_eq!(leaders.len(), 1, "no node led when node {first} stopped");
    let second = leaders[0];
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(failed.load(Ordering::Relaxed), 0, "a certification failed");

    // Off: the stop leaves the group leaderless until an election.
    nodes.hand_over_on_stop = false;
    nodes.restart(first).await;
    let all = nodes.all_addrs();
    tashkent_certifier::raft::transfer::request(&all, None, first)
        .await
        .unwrap();
    let t = std::time::Instant::now();
    nodes.stop(first).await;
    let leaders = leading(&nodes).await;
    eprintln!("stopped without a hand-over in {:?}", t.elapsed());
    if t.elapsed() < Duration::from_secs(1) {
        assert!(
            leaders.is_empty(),
            "{leaders:?} led at once without a hand-over"
        );
    }
    // The others elect one (`leader` counts running nodes only).
    let third = nodes.leader().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Relaxed);
    assert_dense(load).await;
    eprintln!(
        "node {first} handed over to node {second} on stopping; then node {third} was elected"
    );
    nodes.stop_all().await;
}

/// `workers` clients given every node, each certifying writesets of its
/// own keys one after the other until `stop`; a failed call is counted in
/// `failed` and retried under the same txn id, as a proxy does. Each
/// returns the versions it got.
async fn load(
    nodes: &Nodes,
    workers: u64,
    stop: &Arc<AtomicBool>,
    failed: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Vec<u64>>> {
    let mut load = Vec::new();
    for w in 0..workers {
        let client = nodes.client_of_all().await;
        let (stop, failed) = (stop.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("w{w}-{i}");
                loop {
                    match client.certify(ws(&id, &id)).await {
                        Ok(Outcome::Committed { version }) => break versions.push(version),
                        Ok(other) => panic!("{id}: {other:?}"),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                i += 1;
            }
            versions
        }));
    }
    load
}

/// The versions `load` got: some, dense from 1, none twice.
async fn assert_dense(load: Vec<tokio::task::JoinHandle<Vec<u64>>>) {
    let mut versions = Vec::new();
    for l in load {
        versions.extend(l.await.unwrap());
    }
    versions.sort_unstable();
    let n = versions.len() as u64;
    assert!(n > 50, "only {n} certifications");
    assert_eq!(versions, (1..=n).collect::<Vec<_>>(), "dense, none twice");
}

/// The running nodes that say they lead.
async fn leading(nodes: &Nodes) -> Vec<u64> {
    let mut leading = Vec::new();
    for id in nodes.running.keys() {
        let s = nodes.client(*id).await.status().await.unwrap();
        if s.role == "leader" {
            leading.push(s.node_id);
        }
    }
    leading
}

/// A cluster that began with one certifier goes on with three nodes: the
/// single certifier's log, a streamed (spooled) writeset among its
/// versions, seeds node 1 in place (`raft::seed`; only the node that
/// would form a group may be seeded, and a single certifier no longer
/// runs over the seeded directory, and a seed is made again over an
/// earlier one only when asked); the group it leads goes
/// on at the next version, answers a retried transaction id with its
/// first version and a writeset older than a conflicting version (a
/// small, a streamed and a large one) with an abort (its dedupe table and
/// window came along), and every node serves every version exactly as
/// the single certifier did. A node over a single certifier's log that
/// was not seeded refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_certifiers_log_seeds_a_group_that_goes_on_from_it() {
    let mut nodes = Nodes::prepared(3);
    let single = tashkent_certifier::CertifierConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        wal_dir: nodes.dirs[&1].path().join("wal"),
        wal_segment_bytes: nodes.segment_bytes,
        ..tashkent_certifier::CertifierConfig::default()
    };
    let running = tashkent_certifier::start(single.clone()).await.unwrap();
    let client = CertifierClient::connect(&running.local_addr().to_string())
        .await
        .unwrap();
    commit_numbered(&client, 1..=40).await;
    let mut chunks =
        tashkent_certifier::writeset::split(big_writeset(12, 64 << 10, "s"), 200 << 10);
    assert!(chunks.len() > 2, "{} chunks", chunks.len());
    let last = chunks.pop().unwrap();
    let (tx, call) = client.certify_stream();
    let call = tokio::spawn(call);
    for c in chunks {
        tx.send(c).await.unwrap();
    }
    tx.finish(last).await.unwrap();
    assert_eq!(version(call.await.unwrap().unwrap()), 41);
    commit_numbered(&client, 42..=42).await;
    // Over 1 MiB but not streamed: a record the window keeps by its keys.
    let mut large = big_writeset(3, 400 << 10, "l");
    large.txn_id = Bytes::from_static(b"large");
    assert_eq!(version(client.certify(large).await.unwrap()), 43);
    commit_numbered(&client, 44..=44).await;
    let before: Vec<_> = client
        .subscribe(1)
        .await
        .unwrap()
        .take(44)
        .map(|r| r.unwrap())
        .collect()
        .await;
    drop(client);
    running.shutdown().await.unwrap();

    let Err(unseeded) = nodes.try_start(1, |_| {}).await else {
        panic!("a node started over a single certifier's log");
    };
    assert!(unseeded.to_string().contains("no raft state"), "{unseeded}");
    // The settings node `id` of the group runs with, over the single
    // certifier's log.
    let as_node = |id: u64| tashkent_certifier::CertifierConfig {
        node_id: Some(id),
        peers: Some(nodes.peers.clone()),
        ..single.clone()
    };
    let not_first = seed(&as_node(2), Earlier::Refuse).unwrap_err();
    assert!(not_first.to_string().contains("smallest id"), "{not_first}");
    // A seed for other ports, as a start that did not go on with it left.
    let elsewhere = tashkent_certifier::CertifierConfig {
        peers: Some("1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3".into()),
        ..as_node(1)
    };
    seed(&elsewhere, Earlier::Refuse).unwrap();
    let again = seed(&as_node(1), Earlier::Refuse).unwrap_err();
    assert!(
        again.to_string().contains("holds raft state already"),
        "{again}"
    );
    // Seeded again over it (`tashkent up`): the group below forms under
    // these peers, which it could not under the earlier seed's.
    let seeded = seed(&as_node(1), Earlier::SeedAgain).unwrap();
    assert_eq!((seeded.first, seeded.latest), (1, 44));
    assert_eq!(seeded.window, 44, "a restarted certifier's window");
    let Err(alone) = tashkent_certifier::start(single.clone()).await else {
        panic!("a single certifier started over a node's directory");
    };
    assert!(alone.to_string().contains("node's directory"), "{alone}");

    for id in [3, 2, 1] {
        nodes.restart(id).await;
    }
    assert_eq!(nodes.leader().await, 1, "only the seeded node may lead");
    let client = nodes.client_of_all().await;
    let retried = client.certify(ws("a7", "k7")).await.unwrap();
    assert_eq!(version(retried), 7, "a retry gets its first answer");
    // The window came along, the streamed and the large version by
    // their keys.
    for (key, conflicting) in [("k42", 42), ("s3", 41), ("l2", 43)] {
        let mut late = ws(&format!("late-{key}"), key);
        late.snapshot = conflicting - 1;
        match client.certify(late).await.unwrap() {
            Outcome::Aborted {
                conflict_version, ..
            } => assert_eq!(conflict_version, conflicting, "{key}"),
            other => panic!("{key}: not aborted: {other:?}"),
        }
    }
    assert_eq!(version(client.certify(ws("b1", "n1")).await.unwrap()), 45);
    for id in 1..=3 {
        let got: Vec<_> = tokio::time::timeout(
            WAIT,
            nodes
                .client(id)
                .await
                .subscribe(1)
                .await
                .unwrap()
                .take(45)
                .map(|r| r.unwrap())
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap_or_else(|_| panic!("node {id} does not serve versions 1 to 45"));
        assert!(got[..44] == before[..], "node {id} serves other versions");
        assert_eq!(got[44].version, 45, "node {id}");
        assert_eq!(got[44].writeset.txn_id, Bytes::from_static(b"b1"));
    }
    nodes.stop_all().await;
}
