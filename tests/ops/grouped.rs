//! Tashkent-API (`durability = "database-grouped"`, ARCHITECTURE.md
//! "Modes"): replicas fsync on, ordered commits with `synchronous_commit =
//! off`, a COMMIT acknowledged once the replica's WAL is flushed past it.
//! A crash of a replica's PostgreSQL — kill -9, and a host crash simulated
//! by losing every WAL byte after the flushed LSN — loses nothing that was
//! acknowledged: what a replica's own clients were told is in its own WAL,
//! and the cluster converges. Base (`durability = "database"`) is held to
//! the same two tests.

use crate::common;
use crate::recovery::{commits_on_then_check, crash_postgres, setup, targets_of, Load};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{blocking, Cluster};
use tashkent::ops::cluster::DurabilityMode;

async fn grouped_cluster(n: usize) -> Cluster {
    cluster_in(n, DurabilityMode::DatabaseGrouped).await
}

async fn cluster_in(n: usize, mode: DurabilityMode) -> Cluster {
    Cluster::start_file(n, |f| f.cluster.durability = mode).await
}

/// The replicas run fsync on, synchronous_commit off; each proxy has its
/// flusher session; commits through both proxies are acknowledged and
/// applied everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grouped_replicas_fsync_and_commit_asynchronously() {
    let cluster = grouped_cluster(2).await;
    for i in 0..2 {
        let r = cluster.replica(i).await;
        for (setting, want) in [
            ("fsync", "on"),
            ("full_page_writes", "on"),
            ("synchronous_commit", "off"),
        ] {
            let got: String = r
                .query_one(&format!("SHOW {setting}"), &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(got, want, "replica {}: {setting}", i + 1);
        }
        let flushers: i64 = r
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tashkent flusher'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(flushers, 1, "replica {}", i + 1);
    }
    let c = cluster.client(0).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        .await
        .unwrap();
    // Replica 2 takes the table's rows only once it has the table.
    cluster.wait_converged().await;
    for i in 0..20 {
        let c = cluster.client(i % 2).await;
        c.execute("INSERT INTO t VALUES ($1, $1)", &[&(i as i32)])
            .await
            .unwrap();
    }
    cluster.wait_converged().await;
    cluster.assert_identical().await;
    let n: i64 = cluster
        .replica(1)
        .await
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 20);
}

/// kill -9 of a replica's PostgreSQL under TPC-B load through every proxy
/// (the unflushed WAL in its shared buffers dies with it): every
/// acknowledged commit is present afterwards on every replica, no aborted
/// one is, and the replicas converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grouped_kill_9_of_a_replica_loses_nothing_acknowledged() {
    kill_9_of_replicas_loses_nothing_acknowledged(DurabilityMode::DatabaseGrouped).await;
}

/// The same kill -9 in Base (`durability = "database"`): each ordered
/// commit waited for its own fsync before it was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn base_kill_9_of_a_replica_loses_nothing_acknowledged() {
    kill_9_of_replicas_loses_nothing_acknowledged(DurabilityMode::Database).await;
}

async fn kill_9_of_replicas_loses_nothing_acknowledged(mode: DurabilityMode) {
    let mut cluster = cluster_in(3, mode).await;
    setup(&cluster).await;
    let targets = targets_of(&cluster);
    let load = Load::start(&targets, &[0, 0, 1, 1, 2, 2]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    crash_postgres(&mut cluster, 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The origin of most commits crashes too.
    crash_postgres(&mut cluster, 0);
    commits_on_then_check(&cluster, load).await;
}

/// Unique inserts through proxy `target`'s current address until stopped;
/// each acknowledged tag is recorded at once, in order.
fn insert_load(
    targets: Arc<Mutex<Vec<String>>>,
    target: usize,
    name: String,
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let conninfo = targets.lock().unwrap()[target].clone();
            let Ok(Ok((c, conn))) = tokio::time::timeout(
                Duration::from_secs(5),
                tokio_postgres::connect(&conninfo, tokio_postgres::NoTls),
            )
            .await
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(conn);
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let tag = format!("{name}-{n}");
                match c
                    .execute(
                        "INSERT INTO acks (tag, via) VALUES ($1, $2)",
                        &[&tag, &(target as i32)],
                    )
                    .await
                {
                    Ok(_) => acked.lock().unwrap().push(tag),
                    Err(e) if e.is_closed() || e.code().is_none() => break,
                    Err(_) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

async fn tags_on(cluster: &Cluster, i: usize) -> std::collections::HashSet<String> {
    cluster
        .replica(i)
        .await
        .query("SELECT tag FROM acks", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A host crash, simulated: the WAL after the replica's flushed LSN is
/// lost (zeroed: its segment from that offset on, every later segment),
/// and PostgreSQL is SIGKILLed, its proxy too. Restarted on its own,
/// before any replay from the certifier's log, the replica already holds
/// every commit its proxy acknowledged before the flushed LSN was read
/// (a commit is acknowledged only once flushed); then, with its proxy
/// back, the cluster converges with every acknowledged commit everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grouped_host_crash_keeps_every_acknowledged_commit_in_the_replicas_own_wal() {
    host_crash_keeps_every_acknowledged_commit(DurabilityMode::DatabaseGrouped).await;
}

/// The same host crash in Base (`durability = "database"`): each ordered
/// commit waited for its own fsync, so nothing acknowledged is lost
/// either. (Tashkent-MW's replicas run fsync off: after a host crash their
/// files are not trusted at all, and the replica is rebuilt from a
/// checkpoint and the log, see `recovery::replica_without_disk_...`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn base_host_crash_keeps_every_acknowledged_commit_in_the_replicas_own_wal() {
    host_crash_keeps_every_acknowledged_commit(DurabilityMode::Database).await;
}

async fn host_crash_keeps_every_acknowledged_commit(mode: DurabilityMode) {
    let mut cluster = cluster_in(2, mode).await;
    cluster
        .client(0)
        .await
        .batch_execute("CREATE TABLE acks (tag text PRIMARY KEY, via int)")
        .await
        .unwrap();
    cluster.wait_converged().await;
    let targets = targets_of(&cluster);
    let stop = Arc::new(AtomicBool::new(false));
    let acked0 = Arc::new(Mutex::new(Vec::new()));
    let acked1 = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for k in 0..4 {
        tasks.push(insert_load(
            targets.clone(),
            0,
            format!("a{k}"),
            acked0.clone(),
            stop.clone(),
        ));
    }
    for k in 0..2 {
        tasks.push(insert_load(
            targets.clone(),
            1,
            format!("b{k}"),
            acked1.clone(),
            stop.clone(),
        ));
    }
    // Each commit waits for its own fsync here: gate on a count, not on
    // a time (a loaded machine's fsyncs are slow).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked0.lock().unwrap().len() <= 50 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Everything acknowledged by now was flushed before the LSN is read.
    let before = acked0.lock().unwrap().len();
    let direct = cluster.replica(0).await;
    let row = direct
        .query_one(
            "SELECT pg_current_wal_flush_lsn()::text, pg_walfile_name(pg_current_wal_flush_lsn()), \
                    current_setting('wal_segment_size')",
            &[],
        )
        .await
        .unwrap();
    let (lsn, file, seg): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    blocking(|| cluster.replicas[0].kill().unwrap());
    cluster.kill_proxy(0).await;
    drop(direct);
    assert!(
        before > 50,
        "only {before} commits acknowledged through proxy 1"
    );

    // Lose what was not flushed.
    let lsn = tashkent::proxy::flush::parse_lsn(&lsn).unwrap();
    let seg_bytes: u64 = match seg.trim_end_matches("MB").parse::<u64>() {
        Ok(mb) => mb * 1024 * 1024,
        Err(_) => panic!("wal_segment_size {seg}"),
    };
    let offset = lsn % seg_bytes;
    let wal = cluster.replicas[0].data_dir().join("pg_wal");
    let mut zeroed = 0u64;
    for entry in std::fs::read_dir(&wal).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.len() != 24 || !name.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let from = match name.as_str().cmp(file.as_str()) {
            std::cmp::Ordering::Less => continue,
            // pg_walfile_name names the previous segment for an LSN on a
            // segment boundary: then nothing of it is lost.
            std::cmp::Ordering::Equal if offset == 0 => continue,
            std::cmp::Ordering::Equal => offset,
            std::cmp::Ordering::Greater => 0,
        };
        let len = entry.metadata().unwrap().len();
        if len > from {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(entry.path())
                .unwrap();
            f.seek(SeekFrom::Start(from)).unwrap();
            f.write_all(&vec![0u8; (len - from) as usize]).unwrap();
            f.sync_all().unwrap();
            zeroed += len - from;
        }
    }
    assert!(zeroed > 0, "no WAL after {lsn:#x} in {file}");

    // The replica alone, recovered from its own WAL.
    blocking(|| cluster.replicas[0].start_postmaster().unwrap());
    let present = tags_on(&cluster, 0).await;
    let acked_before: Vec<String> = acked0.lock().unwrap()[..before].to_vec();
    let lost: Vec<&String> = acked_before
        .iter()
        .filter(|t| !present.contains(*t))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {before} commits acknowledged through proxy 1 are not in its replica's WAL, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let after = acked0.lock().unwrap().len() - before;
    eprintln!(
        "host crash ({mode:?}): {before} acknowledged before the flush LSN all recovered from the replica's own WAL \
         ({zeroed} WAL bytes lost; {after} acknowledged in between, left to the log)"
    );

    // Its proxy back: the load goes on, and everything converges.
    cluster.restart_proxy(0).await;
    targets.lock().unwrap()[0] = cluster.proxy_conninfo(0);
    let resumed = acked0.lock().unwrap().len();
    // As generous as the first commits' wait above: every commit here
    // waits for an fsync, and the proxy catches up on the log first.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked0.lock().unwrap().len() < resumed + 20 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        acked0.lock().unwrap().len() >= resumed + 20,
        "proxy 1 does not commit after the crash"
    );
    cluster.wait_converged().await;
    cluster.assert_identical().await;
    for i in 0..2 {
        let present = tags_on(&cluster, i).await;
        for acked in [&acked0, &acked1] {
            let acked = acked.lock().unwrap();
            let lost = acked.iter().filter(|t| !present.contains(*t)).count();
            assert_eq!(
                lost,
                0,
                "replica {}: {lost} acknowledged commits lost",
                i + 1
            );
        }
    }
}
