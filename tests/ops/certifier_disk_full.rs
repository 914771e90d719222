//! A node of a replicated certifier whose log disk fills up (a real ENOSPC
//! from a small tmpfs mounted on the node's directory, which holds its raft
//! log and its versions log): it never acknowledges again, steps out of the
//! group (its raft core stops) and the others carry on, nothing
//! acknowledged lost; `tashkent status` shows it poisoned and stopped.
//! When every node's disk is full, clients get `53100` naming the
//! certifier's log, not "the certifier could not be reached".

use crate::certifier_failover::{leader_among, statuses_until};
use crate::common;
use crate::disk_full::{assert_on_replica, fill_the_log, gets_53100};

use std::time::{Duration, Instant};

use common::cluster::{blocking, tashkent, Cluster};
use common::mount::Mount;

/// Rows this large fill a few MiB of log in a few dozen inserts.
const ROW_BYTES: usize = 256 << 10;

/// Which of a node's logs sits on a small disk.
#[derive(Clone, Copy, PartialEq)]
enum Small {
    /// The node's whole directory: whichever log needs its next segment
    /// first fails (both grow by the same rows).
    Both,
    /// Only the raft log (the node's `raft` directory).
    RaftLog,
    /// Only the versions log: the raft log is on the roomy disk.
    VersionsLog,
}

/// A cluster of `replicas` and 3 certifier nodes, with a tmpfs of `size`
/// on the directory of each node in `full` (1-based ids); small log
/// segments so that the first ones fit and a later one does not. The
/// cluster holds the mounts (unmounted after its processes stop).
async fn start(replicas: usize, full: &[u32], size: &str, small: Small) -> (Cluster, Vec<String>) {
    let cluster = Cluster::start_mounted(replicas, |f| {
        f.cluster.certifiers = 3;
        f.certifier.wal_segment_bytes = 1 << 20;
        let mut mounted = Vec::new();
        for id in full {
            let dir = f.cluster.state_dir.join(format!("certifier-{id}"));
            if small == Small::RaftLog {
                mounted.push(Mount::tmpfs(&dir.join("raft"), size));
                continue;
            }
            mounted.push(Mount::tmpfs(&dir, size));
            if small == Small::VersionsLog {
                let roomy = f.cluster.state_dir.join(format!("roomy-{id}"));
                // Unmounted before the tmpfs it sits on (held first).
                mounted.insert(0, Mount::bind(&roomy, &dir.join("raft")));
            }
        }
        mounted
    })
    .await;
    let addrs = cluster.node_addrs();
    (cluster, addrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_log_disk_fills_stops_and_the_others_carry_on() {
    one_node_full(Small::RaftLog, "raft log").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_versions_log_fills_stops_and_the_others_carry_on() {
    one_node_full(Small::VersionsLog, "versions log").await;
}

/// Node 1's `small` log(s) fill up under inserts through one proxy; the
/// failure is the one of its `failed_log`.
async fn one_node_full(small: Small, failed_log: &str) {
    let (cluster, addrs) = start(2, &[1], "6m", small).await;
    let c = cluster.client(0).await;
    c.batch_execute("CREATE TABLE blobs (id int PRIMARY KEY, b text)")
        .await
        .unwrap();
    let (leader, _) = leader_among(&addrs, &[], 0, Duration::from_secs(20)).await;
    eprintln!("node {} leads before node 1's disk fills", leader + 1);

    // 15 MiB of rows through a 6 MiB disk: every insert commits, through
    // node 1 while it can and through the others after.
    let row = "x".repeat(ROW_BYTES);
    let started = Instant::now();
    for id in 0..60 {
        c.execute("INSERT INTO blobs VALUES ($1, $2)", &[&id, &row])
            .await
            .unwrap_or_else(|e| panic!("insert {id} after {:?}: {e:?}", started.elapsed()));
    }
    eprintln!("60 inserts of 256 KiB took {:?}", started.elapsed());

    let all = statuses_until(&addrs, Duration::from_secs(20), |all| {
        all[0].as_ref().is_some_and(|s| s.poisoned)
    })
    .await;
    let failed = all[0].as_ref().expect("node 1 answers status");
    assert!(failed.poisoned, "{all:?}");
    assert_eq!(failed.role, "stopped", "{all:?}");
    assert!(
        failed.poison_cause.contains("disk is full")
            && failed
                .poison_cause
                .contains(&format!("node 1's {failed_log}")),
        "{}",
        failed.poison_cause
    );
    // Another node leads and commits; the group did not wait for node 1.
    let (now, s) = leader_among(&addrs, &[0], 0, Duration::from_secs(20)).await;
    assert_ne!(now, 0);
    assert!(s.committed_version > failed.committed_version, "{all:?}");

    let state = cluster.state_dir().display().to_string();
    let (ok, out) = blocking(|| tashkent(&["status", "--state-dir", &state, "--json"]));
    assert!(ok, "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let node1 = &json["certifier_nodes"][0];
    assert_eq!(node1["state"], "poisoned", "{out}");
    assert_eq!(node1["role"], "stopped", "{out}");
    assert!(
        node1["error"]
            .as_str()
            .unwrap_or_default()
            .contains("node 1"),
        "{out}"
    );

    // Every row is on both replicas, which are identical.
    cluster.wait_converged().await;
    for i in 0..2 {
        let n: i64 = cluster
            .replica(i)
            .await
            .query_one("SELECT count(*) FROM blobs", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 60, "replica {i}");
    }
    cluster.assert_identical().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_full_gives_53100_naming_the_certifiers_log() {
    let (cluster, addrs) = start(2, &[1, 2, 3], "6m", Small::Both).await;
    let c = cluster.client(0).await;
    c.batch_execute("CREATE TABLE blobs (id int PRIMARY KEY, b text)")
        .await
        .unwrap();
    let (acknowledged, _) = fill_the_log(&c, 100).await;
    // Another proxy's clients are told the same, at once (well within
    // the proxy's 10 s failover wait): a majority of the nodes said their
    // log failed, so nothing can commit. Connected first: the clock
    // measures the answer, not a new connection on a loaded machine.
    let other = cluster.client(1).await;
    let asked = Instant::now();
    gets_53100(&other).await;
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    // A majority stopped (the last node, if its log never got the entry
    // that filled the others', stands for election alone).
    let stopped_of = |all: &[Option<tashkent_certifier::proto::StatusResponse>]| {
        all.iter()
            .flatten()
            .filter(|s| s.poisoned && s.role == "stopped")
            .count()
    };
    let all = statuses_until(&addrs, Duration::from_secs(20), |all| stopped_of(all) >= 2).await;
    assert!(stopped_of(&all) >= 2, "{all:?}");
    // Every acknowledged row is committed on its origin replica.
    assert_on_replica(&cluster, 0, &acknowledged).await;
}
