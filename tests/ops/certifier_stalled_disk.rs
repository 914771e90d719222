//! A certifier whose log disk hangs. Each node's directory (its raft log,
//! versions log and spool) is a small ext4 image on a loop device, and the
//! test freezes the leader's, or a follower's, with `fsfreeze`: every write and fdatasync on
//! it then blocks in the kernel, uninterruptibly, as on a disk that stopped
//! answering. Once no write of its log has returned for
//! `log_stall_timeout_ms`, the node fails that log as an I/O error would:
//! it leaves the group (its raft core stops), so the others elect a leader
//! and commits go on, nothing acknowledged lost, and `status` shows it
//! poisoned with the stall as the cause. Without that bound it looked
//! alive to the others (its raft core answers them while only its disk
//! hangs), with nothing to say how long the outage would last.

use crate::certifier_failover::{leader_among, statuses_until};
use crate::common;
use crate::disk_full::assert_on_replica;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::mount::{Frozen, Mount};

/// How long a write may hang before its log fails, in this test.
const STALL_MS: u64 = 3_000;

/// Two replicas and three certifier nodes, each node's directory on an
/// ext4 image of its own; the nodes' addresses and directories.
async fn start() -> (Cluster, Vec<String>, Vec<std::path::PathBuf>) {
    let mut dirs = Vec::new();
    let cluster = Cluster::start_mounted(2, |f| {
        f.cluster.certifiers = 3;
        f.certifier.wal_segment_bytes = 1 << 20;
        f.certifier.log_stall_timeout_ms = STALL_MS;
        let mut mounted = Vec::new();
        for id in 1..=3 {
            let dir = f.cluster.state_dir.join(format!("certifier-{id}"));
            let image = f.cluster.state_dir.join(format!("certifier-{id}.img"));
            mounted.push(Mount::ext4(&image, 96 << 20, &dir));
            dirs.push(dir);
        }
        mounted
    })
    .await;
    let addrs = cluster.node_addrs();
    (cluster, addrs, dirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_disk_hangs_leaves_the_group_to_the_others() {
    one_node_frozen(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_whose_disk_hangs_leaves_the_group_to_the_others() {
    one_node_frozen(false).await;
}

/// Freezes the disk of the leader (`leader`), else of a follower, under a
/// stream of inserts through one proxy.
async fn one_node_frozen(leader: bool) {
    let (cluster, addrs, dirs) = start().await;
    let c = cluster.client(0).await;
    c.batch_execute("CREATE TABLE blobs (id int PRIMARY KEY, b text)")
        .await
        .unwrap();
    let row = "x".repeat(1024);
    let mut acknowledged = Vec::new();
    for id in 0..20 {
        c.execute("INSERT INTO blobs VALUES ($1, $2)", &[&id, &row])
            .await
            .unwrap();
        acknowledged.push(id);
    }
    let (led, _) = leader_among(&addrs, &[], 0, Duration::from_secs(20)).await;
    let node = if leader { led } else { (led + 1) % 3 };
    eprintln!("node {} leads; freezing node {}'s disk", led + 1, node + 1);

    // Declared after the cluster: thawed before its processes are stopped.
    let frozen = Frozen::freeze(&dirs[node]);
    let froze = Instant::now();
    // Inserts go on meanwhile, one at a time, each told apart by its id.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let inserter = {
        let c = cluster.client(0).await;
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for id in 100.. {
                if stopped.try_recv().is_ok() {
                    break;
                }
                let insert = async {
                    c.execute("INSERT INTO blobs VALUES ($1, $2)", &[&id, &row])
                        .await
                };
                let answer = tokio::time::timeout(Duration::from_secs(30), insert)
                    .await
                    .unwrap_or_else(|_| panic!("insert {id} hung for 30 s"));
                answers.push((id, froze.elapsed(), answer));
            }
            answers
        })
    };

    // The frozen node says why it stopped; another node leads and commits.
    let all = statuses_until(&addrs, Duration::from_secs(30), |all| {
        all[node].as_ref().is_some_and(|s| s.poisoned)
    })
    .await;
    let stalled = all[node].as_ref().expect("the frozen node answers status");
    assert!(stalled.poisoned, "{all:?}");
    assert_eq!(stalled.role, "stopped", "{all:?}");
    assert!(
        stalled.poison_cause.contains("has not returned")
            && stalled
                .poison_cause
                .contains(&format!("node {}'s", node + 1)),
        "{}",
        stalled.poison_cause
    );
    let seen_stalled = froze.elapsed();
    let past = stalled.committed_version;
    let (now, _) = leader_among(&addrs, &[node], past, Duration::from_secs(30)).await;
    let leading = froze.elapsed();
    if !leader {
        assert_eq!(now, led, "the leader stays");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.send(()).unwrap();
    let answers = inserter.await.unwrap();

    let mut errors = Vec::new();
    let mut last_commit = Duration::ZERO;
    let mut longest_pause = Duration::ZERO;
    for (id, at, answer) in &answers {
        match answer {
            Ok(_) => {
                acknowledged.push(*id);
                longest_pause = longest_pause.max(*at - last_commit);
                last_commit = *at;
            }
            Err(e) => {
                let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
                errors.push((*id, db.code().code().to_owned(), db.message().to_owned()));
            }
        }
    }
    eprintln!(
        "after the freeze: node {} seen stalled at {seen_stalled:?}, node {} committing at \
         {leading:?}; {} inserts, {} committed, longest pause between commits \
         {longest_pause:?}; errors {errors:?}",
        node + 1,
        now + 1,
        answers.len(),
        acknowledged.len() - 20,
    );
    for (_, code, message) in &errors {
        // A transaction in flight when the leader's log failed.
        assert!(
            code == "08007" && message.contains("outcome"),
            "{code}: {message} (all: {errors:?})"
        );
    }
    assert!(
        last_commit > leading,
        "commits go on: the last at {last_commit:?}"
    );

    drop(frozen);
    cluster.wait_converged().await;
    for i in 0..2 {
        assert_on_replica(&cluster, i, &acknowledged).await;
    }
    cluster.assert_identical().await;
}

/// A single certifier whose log disk hangs: once the stall timeout has
/// passed, `status` shows the certifier poisoned, a new COMMIT is answered
/// at once with `58030` naming the stall, and the COMMIT that was waiting
/// for the disk gets `08007` (its record may reach the disk, or not)
/// instead of waiting as long as the disk does. A restart once the disk is
/// back recovers, nothing acknowledged lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_certifier_whose_disk_hangs_answers_58030_naming_the_stall() {
    let mut wal = None;
    let mut cluster = Cluster::start_mounted(2, |f| {
        f.certifier.wal_segment_bytes = 1 << 20;
        f.certifier.log_stall_timeout_ms = STALL_MS;
        let dir = f.cluster.state_dir.join("certifier-wal");
        let image = f.cluster.state_dir.join("certifier-wal.img");
        wal = Some(dir.clone());
        vec![Mount::ext4(&image, 64 << 20, &dir)]
    })
    .await;
    let c = cluster.client(0).await;
    c.batch_execute("CREATE TABLE blobs (id int PRIMARY KEY, b text)")
        .await
        .unwrap();
    let mut acknowledged = Vec::new();
    for id in 0..10 {
        c.execute("INSERT INTO blobs VALUES ($1, 'x')", &[&id])
            .await
            .unwrap();
        acknowledged.push(id);
    }

    let frozen = Frozen::freeze(wal.as_deref().unwrap());
    let froze = Instant::now();
    let in_flight =
        tokio::spawn(async move { c.execute("INSERT INTO blobs VALUES (100, 'x')", &[]).await });
    let certifier = cluster.certifier();
    let status = loop {
        let s = tashkent_certifier::CertifierClient::connect(&certifier)
            .await
            .unwrap()
            .status()
            .await
            .unwrap();
        if s.poisoned {
            break s;
        }
        assert!(froze.elapsed() < Duration::from_secs(20), "{s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.poison_cause.contains("has not returned"),
        "{status:?}"
    );
    let seen = froze.elapsed();

    let other = cluster.client(1).await;
    let asked = Instant::now();
    let insert = other.execute("INSERT INTO blobs VALUES (101, 'x')", &[]);
    let e = tokio::time::timeout(Duration::from_secs(10), insert)
        .await
        .expect("a COMMIT after the stall is answered at once")
        .unwrap_err();
    answered_for_the_stall(&e, "58030");
    eprintln!(
        "stall seen {seen:?} after the freeze; a new COMMIT answered 58030 in {:?}",
        asked.elapsed()
    );
    // The COMMIT whose record the disk holds is answered while it hangs.
    let e = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the COMMIT in flight is answered while the disk hangs")
        .unwrap()
        .unwrap_err();
    answered_for_the_stall(&e, "08007");

    drop(frozen);

    cluster.restart_certifier().await;
    let c = cluster.client(0).await;
    c.execute("INSERT INTO blobs VALUES (102, 'x')", &[])
        .await
        .unwrap();
    acknowledged.push(102);
    cluster.wait_converged().await;
    for i in 0..2 {
        assert_on_replica(&cluster, i, &acknowledged).await;
    }
    cluster.assert_identical().await;
}

/// `e` is a COMMIT's error with SQLSTATE `code`, its detail naming the
/// stall.
fn answered_for_the_stall(e: &tokio_postgres::Error, code: &str) {
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
    assert_eq!(db.code().code(), code, "{db:?}");
    assert!(
        db.detail().unwrap_or_default().contains("has not returned"),
        "{db:?}"
    );
}
