//! Recovery under running load, with real processes (ARCHITECTURE.md,
//! "Recovery", invariant I6): 3 PostgreSQL replicas, `tashkent proxy`
//! child processes, a TPC-B-like load whose every transaction leaves a
//! unique tag in `pgbench_history`. After each fault: every acknowledged
//! commit is present on every replica, no aborted one is, the replicas are
//! identical and TPC-B's invariant holds everywhere.

use crate::common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{blocking, tashkent, Cluster};
use common::connect_str;
use tashkent::ops::checkpoint::{self, CheckpointConfig, Source};
use tashkent::ops::pg::PgServer;
use tashkent_certifier::CertifierClient;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

const BRANCHES: u64 = 4;
const TELLERS: u64 = BRANCHES * 10;
const ACCOUNTS: u64 = BRANCHES * 1000;

/// pgbench's tables (every one but the history with a primary key).
async fn load_tpcb(c: &Client) {
    for sql in [
        "CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88))",
        "CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84))",
        "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))",
        "CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22))",
    ] {
        c.batch_execute(sql).await.unwrap();
    }
    c.batch_execute(&format!(
        "INSERT INTO pgbench_branches SELECT i, 0, '' FROM generate_series(1, {BRANCHES}) i"
    ))
    .await
    .unwrap();
    c.batch_execute(&format!(
        "INSERT INTO pgbench_tellers SELECT i, (i - 1) / 10 + 1, 0, '' FROM generate_series(1, {TELLERS}) i"
    ))
    .await
    .unwrap();
    c.batch_execute(&format!(
        "INSERT INTO pgbench_accounts SELECT i, (i - 1) / 1000 + 1, 0, '' FROM generate_series(1, {ACCOUNTS}) i"
    ))
    .await
    .unwrap();
}

/// What the load's clients saw, by transaction tag.
#[derive(Debug, Default)]
pub(crate) struct Outcomes {
    /// COMMIT answered OK.
    pub(crate) acked: Vec<String>,
    /// 40001/40P01: certainly not committed.
    pub(crate) aborted: Vec<String>,
    /// Any other error: may or may not have committed.
    pub(crate) unknown: Vec<String>,
    /// Distinct SQLSTATEs / messages of the unknown ones (for the log).
    pub(crate) errors: HashSet<String>,
    /// Transactions that got no answer within the timeout.
    pub(crate) timeouts: u64,
    /// A few abort messages (for the log).
    pub(crate) abort_reasons: HashSet<String>,
}

/// Where each client connects: the test updates an entry when it restarts
/// a proxy on another port.
pub(crate) type Targets = Arc<Mutex<Vec<String>>>;

/// TPC-B clients running until stopped; `clients[i]` uses target `i`.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Outcomes>>,
}

impl Load {
    pub(crate) fn start(targets: &Targets, clients: &[usize]) -> Load {
        // Tags are unique across the loads of a test.
        static LOADS: AtomicU64 = AtomicU64::new(0);
        let load = LOADS.fetch_add(1, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let tasks = clients
            .iter()
            .enumerate()
            .map(|(n, &target)| {
                tokio::spawn(client(
                    format!("l{load}c{n}"),
                    n,
                    target,
                    targets.clone(),
                    stop.clone(),
                    acked.clone(),
                ))
            })
            .collect();
        Load { stop, acked, tasks }
    }

    /// Acknowledged commits so far.
    pub(crate) fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until more than `n` commits were acknowledged, at most
    /// `within`; whether they were.
    pub(crate) async fn acked_past(&self, n: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.acked() <= n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.acked() > n
    }

    pub(crate) async fn stop(self) -> Outcomes {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Outcomes::default();
        for t in self.tasks {
            let o = t.await.unwrap();
            all.acked.extend(o.acked);
            all.aborted.extend(o.aborted);
            all.unknown.extend(o.unknown);
            all.errors.extend(o.errors);
            all.timeouts += o.timeouts;
            all.abort_reasons.extend(o.abort_reasons);
        }
        eprintln!(
            "load: {} acknowledged, {} aborted, {} unknown, {} timeouts; errors: {:?}; aborts: {:?}",
            all.acked.len(),
            all.aborted.len(),
            all.unknown.len(),
            all.timeouts,
            all.errors,
            all.abort_reasons
        );
        all
    }

    /// Stops the load and checks what it left: no transaction hung, and
    /// `check`'s conditions on every replica. Returns the outcomes and how
    /// many transactions of unknown outcome committed.
    pub(crate) async fn finish(self, cluster: &Cluster) -> (Outcomes, usize) {
        let o = self.stop().await;
        assert_eq!(o.timeouts, 0, "transactions hung");
        let in_doubt = check(cluster, &o).await;
        eprintln!(
            "{} unknown outcomes ({in_doubt} of them committed), errors {:?}",
            o.unknown.len(),
            o.errors
        );
        (o, in_doubt)
    }
}

async fn client(
    name: String,
    n: usize,
    target: usize,
    targets: Targets,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Outcomes {
    let mut out = Outcomes::default();
    let seed = name
        .bytes()
        .fold(n as u64 + 1, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut next = move |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    let mut conn: Option<Client> = None;
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let c = match &conn {
            Some(c) if !c.is_closed() => c,
            _ => {
                let conninfo = targets.lock().unwrap()[target].clone();
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio_postgres::connect(&conninfo, tokio_postgres::NoTls),
                )
                .await
                {
                    Ok(Ok((c, connection))) => {
                        tokio::spawn(async move {
                            let _ = connection.await;
                        });
                        conn = Some(c);
                        continue;
                    }
                    _ => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
        };
        k += 1;
        let tag = format!("{name}-{k}");
        let (aid, tid, bid) = (next(ACCOUNTS) + 1, next(TELLERS) + 1, next(BRANCHES) + 1);
        let delta = next(10_001) as i64 - 5000;
        let sql = format!(
            "BEGIN; \
             UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid}; \
             SELECT abalance FROM pgbench_accounts WHERE aid = {aid}; \
             UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid}; \
             UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid}; \
             INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, filler) \
             VALUES ({tid}, {bid}, {aid}, {delta}, CURRENT_TIMESTAMP, '{tag}'); \
             COMMIT"
        );
        match tokio::time::timeout(Duration::from_secs(30), c.batch_execute(&sql)).await {
            Ok(Ok(())) => {
                out.acked.push(tag);
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                let code = e.code().cloned();
                if code == Some(SqlState::T_R_SERIALIZATION_FAILURE)
                    || code == Some(SqlState::T_R_DEADLOCK_DETECTED)
                {
                    out.aborted.push(tag);
                    if out.abort_reasons.len() < 3 {
                        if let Some(db) = e.as_db_error() {
                            out.abort_reasons.insert(format!(
                                "{} ({})",
                                db.message(),
                                db.detail().unwrap_or_default()
                            ));
                        }
                    }
                } else {
                    out.unknown.push(tag);
                    out.errors.insert(match &code {
                        Some(c) => c.code().to_string(),
                        None => "connection".to_string(),
                    });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if !c.is_closed() {
                    let _ = c.batch_execute("ROLLBACK").await;
                }
            }
            Err(_) => {
                out.timeouts += 1;
                out.unknown.push(tag);
                conn = None;
            }
        }
    }
    out
}

/// The tags present in a replica's history.
async fn tags(c: &Client) -> HashSet<String> {
    c.query("SELECT rtrim(filler) FROM pgbench_history", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn assert_tpcb_invariant(c: &Client, replica: usize) {
    let row = c
        .query_one(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts)::bigint, \
                    (SELECT sum(tbalance) FROM pgbench_tellers)::bigint, \
                    (SELECT sum(bbalance) FROM pgbench_branches)::bigint, \
                    (SELECT coalesce(sum(delta), 0) FROM pgbench_history)::bigint",
            &[],
        )
        .await
        .unwrap();
    let (a, t, b, h): (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    if a == t && t == b && b == h {
        return;
    }
    // Which rows lost (or gained) a delta, and the transactions that wrote
    // them: what a diagnosis starts from.
    let mut rows = Vec::new();
    for (table, key, balance) in [
        ("pgbench_accounts", "aid", "abalance"),
        ("pgbench_tellers", "tid", "tbalance"),
        ("pgbench_branches", "bid", "bbalance"),
    ] {
        let sql = format!(
            "SELECT t.{key}, t.{balance}::bigint, coalesce(h.s, 0)::bigint, coalesce(h.tags, '') \
             FROM {table} t LEFT JOIN (SELECT {key}, sum(delta) s, \
               string_agg(rtrim(filler) || ':' || delta, ' ' ORDER BY mtime) tags \
               FROM pgbench_history GROUP BY {key}) h USING ({key}) \
             WHERE t.{balance} <> coalesce(h.s, 0)"
        );
        for r in c.query(&sql, &[]).await.unwrap() {
            let (k, got, want, tags): (i32, i64, i64, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            rows.push(format!(
                "{table} {k}: balance {got}, history {want} from [{tags}]"
            ));
        }
    }
    panic!(
        "replica {replica}: accounts {a}, tellers {t}, branches {b}, history {h}; rows off: {rows:#?}"
    );
}

/// After a proxy was killed: the load commits again. A session of that
/// proxy may have held a fair turn on a hot row (`turns`), which lapses
/// within `turns::HOLD`; the rest is margin for a loaded machine, kept
/// under the slower ways a turn could end (`turns::CLAIM` per session
/// queued), so that this still tells the lapse from them.
async fn still_commits(load: &Load) {
    let within = tashkent_certifier::turns::HOLD + Duration::from_secs(10);
    assert!(
        load.acked_past(load.acked(), within).await,
        "the load stopped committing"
    );
}

/// After a fault: the load still commits; then it stops, nothing hung,
/// and [`check`] holds.
pub(crate) async fn commits_on_then_check(cluster: &Cluster, load: Load) {
    // The appliers may be backing off after the fault (up to 5 s), on a
    // loaded machine longer.
    assert!(
        load.acked_past(load.acked() + 10, Duration::from_secs(30))
            .await,
        "the load stopped committing"
    );
    load.finish(cluster).await;
}

/// The checks after every fault: identical replicas, nothing acknowledged
/// lost, nothing aborted present, TPC-B's invariant. Returns how many
/// transactions of unknown outcome did commit.
pub(crate) async fn check(cluster: &Cluster, o: &Outcomes) -> usize {
    assert!(!o.acked.is_empty(), "the load committed nothing");
    cluster.assert_identical().await;
    let mut in_doubt_committed = 0;
    for i in 0..cluster.replicas.len() {
        let c = cluster.replica(i).await;
        let present = tags(&c).await;
        let lost: Vec<&String> = o.acked.iter().filter(|t| !present.contains(*t)).collect();
        assert!(
            lost.is_empty(),
            "replica {}: {} acknowledged commits lost, e.g. {:?}",
            i + 1,
            lost.len(),
            &lost[..lost.len().min(10)]
        );
        let ghosts: Vec<&String> = o.aborted.iter().filter(|t| present.contains(*t)).collect();
        assert!(
            ghosts.is_empty(),
            "replica {}: aborted transactions committed: {ghosts:?}",
            i + 1
        );
        assert_tpcb_invariant(&c, i + 1).await;
        in_doubt_committed = o.unknown.iter().filter(|t| present.contains(*t)).count();
    }
    in_doubt_committed
}

pub(crate) fn targets_of(cluster: &Cluster) -> Targets {
    Arc::new(Mutex::new(
        (0..cluster.replicas.len())
            .map(|i| cluster.proxy_conninfo(i))
            .collect(),
    ))
}

pub(crate) async fn setup(cluster: &Cluster) {
    load_tpcb(&cluster.client(0).await).await;
    cluster.wait_converged().await;
}

fn source(pg: &PgServer, replica_id: u32) -> Source {
    Source {
        host: pg.host().to_string(),
        port: pg.port(),
        user: pg.user().to_string(),
        database: "postgres".into(),
        replica_id,
        binaries: pg.binaries().clone(),
    }
}

/// kill -9 of replica `i`'s PostgreSQL (its proxy stays up), and a start
/// on the same data directory 300 ms later.
pub(crate) fn crash_postgres(cluster: &mut Cluster, i: usize) {
    blocking(|| {
        cluster.replicas[i].kill().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        cluster.replicas[i].start_postmaster().unwrap();
    });
}

/// (a) A replica's PostgreSQL and then its proxy are SIGKILLed under load
/// and restarted on the same data directory: the replica resumes from its
/// applied version (commits PostgreSQL lost with synchronous_commit off
/// are replayed from the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_with_disk_intact_resumes_from_the_applied_version() {
    let mut cluster = Cluster::start(3).await;
    setup(&cluster).await;
    let targets = targets_of(&cluster);
    let load = Load::start(&targets, &[0, 0, 1, 1, 2, 2]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // PostgreSQL of replica 2 crashes; its proxy stays up.
    crash_postgres(&mut cluster, 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Then proxy 3 crashes and comes back.
    cluster.kill_proxy(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.restart_proxy(2).await;
    targets.lock().unwrap()[2] = cluster.proxy_conninfo(2);
    commits_on_then_check(&cluster, load).await;
}

/// Backends die under load (`pg_terminate_backend` of random sessions on
/// every replica, the proxies' client sessions mid-commit and the
/// appliers' alike): nothing acknowledged is lost, nothing hangs, and the
/// replicas converge. A session that dies while its version waits for its
/// turn must not leave later versions waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminated_backends_under_load_lose_nothing_and_hang_nothing() {
    let cluster = Cluster::start(2).await;
    setup(&cluster).await;
    let targets = targets_of(&cluster);
    let load = Load::start(&targets, &[0, 0, 0, 1, 1, 1]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killers = [cluster.replica(0).await, cluster.replica(1).await];
    let mut terminated = 0;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        for k in &killers {
            terminated += k
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
                       AND datname = current_database() AND random() < 0.2",
                    &[],
                )
                .await
                .unwrap()
                .len();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(terminated > 10, "only {terminated} backends terminated");
    commits_on_then_check(&cluster, load).await;
}

/// (b) A replica loses its disk under load: it is rebuilt from a
/// checkpoint taken (by `tashkent checkpoint`) while the cluster served,
/// with `tashkent recover`, and rejoins by replaying the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_without_disk_is_rebuilt_from_a_checkpoint_under_load() {
    let mut cluster = Cluster::start(3).await;
    setup(&cluster).await;
    // Serial values replica 2 draws before and after the checkpoint (which
    // is taken on replica 1): the rebuilt replica must not draw them again.
    cluster
        .client(0)
        .await
        .batch_execute("CREATE TABLE serials (id bigserial PRIMARY KEY, via int)")
        .await
        .unwrap();
    cluster.wait_converged().await;
    insert_serials(&cluster, 1, 20).await;
    insert_serials(&cluster, 0, 5).await;
    let targets = targets_of(&cluster);
    let load = Load::start(&targets, &[0, 0, 1, 1, 2, 2]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let ckpt_dir = cluster.dir().join("checkpoints");
    let text = cluster.checkpoint_cli(0, &ckpt_dir);
    assert!(text.contains("checkpoint at version"), "{text}");
    let listed = checkpoint::list(&ckpt_dir).unwrap();
    assert_eq!(listed.len(), 1);
    let c = listed[0].checked.as_ref().unwrap();
    assert!(c.manifest.version > 0);
    // More commits after the checkpoint: they are replayed from the log.
    insert_serials(&cluster, 1, 20).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Replica 2's host dies: proxy and server gone, disk untrusted.
    cluster.kill_proxy(1).await;
    let text = cluster.rebuild_replica(1, &ckpt_dir, "rebuilt").await;
    assert!(
        text.contains(&format!("at version {}", c.manifest.version)),
        "{text}"
    );
    targets.lock().unwrap()[1] = cluster.proxy_conninfo(1);
    still_commits(&load).await;
    load.finish(&cluster).await;
    // The rebuilt replica draws its own sequence residue again.
    let r = cluster.replica(1).await;
    let row = r
        .query_one("SELECT id, replicas FROM tashkent.replica", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (2, 3));
    // ... and hands out values past every one it drew before (a stale
    // sequence would answer 23505 here).
    insert_serials(&cluster, 1, 20).await;
    cluster.wait_converged().await;
    let ids: Vec<i64> = r
        .query("SELECT id FROM serials WHERE via = 2 ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(ids.len(), 60);
    assert!(ids.iter().all(|id| id % 3 == 2), "{ids:?}");
}

/// Inserts `n` rows into `serials` through proxy `i`, one transaction
/// each, every one of which must commit.
async fn insert_serials(cluster: &Cluster, i: usize, n: usize) {
    let c = cluster.client(i).await;
    let via = i32::try_from(i + 1).unwrap();
    for _ in 0..n {
        c.execute("INSERT INTO serials (via) VALUES ($1)", &[&via])
            .await
            .unwrap_or_else(|e| panic!("insert through proxy {}: {e:?}", i + 1));
    }
}

/// (c) Crash in the middle of a commit: on replica 2, a session of the
/// test's own holds `tashkent.applied` in EXCLUSIVE mode, so nothing can
/// commit there (every commit inserts its version) while proxy 2's
/// transactions still execute and get certified; then proxy 2 is
/// SIGKILLed. Those transactions are in the log, not in replica 2: the
/// restarted proxy applies them from the log like any remote writeset.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_killed_between_certification_and_local_commit() {
    let mut cluster = Cluster::start(3).await;
    setup(&cluster).await;
    cluster
        .client(0)
        .await
        .batch_execute("CREATE TABLE side (id int PRIMARY KEY, note text)")
        .await
        .unwrap();
    cluster.wait_converged().await;
    let targets = targets_of(&cluster);
    let load = Load::start(&targets, &[0, 0, 1, 1, 1, 1, 2, 2]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let blocker = cluster.replica(1).await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE tashkent.applied IN EXCLUSIVE MODE")
        .await
        .unwrap();
    // Proxy 2's sessions certify and wait for a local commit that cannot
    // happen. One of them conflicts with nobody: it is certain to be
    // certified.
    let side = cluster.client(1).await;
    let side_insert = tokio::spawn(async move {
        side.batch_execute(
            "INSERT INTO side VALUES (1, 'certified, never committed at its origin')",
        )
        .await
    });
    // Certified once replica 1 (not blocked) has applied it.
    let r0 = cluster.replica(0).await;
    let side_on_1 = "SELECT count(*) FROM side WHERE id = 1";
    common::cluster::eventually(&r0, side_on_1, 1, Duration::from_secs(30)).await;
    assert!(
        !side_insert.is_finished(),
        "the insert committed at its origin"
    );
    cluster.kill_proxy(1).await;
    assert!(side_insert.await.unwrap().is_err());
    blocker.batch_execute("ROLLBACK").await.unwrap();
    cluster.restart_proxy(1).await;
    targets.lock().unwrap()[1] = cluster.proxy_conninfo(1);
    still_commits(&load).await;
    // The transactions whose clients never heard back but were certified
    // were applied at their origin from the log.
    load.finish(&cluster).await;
    for i in 0..3 {
        let c = cluster.replica(i).await;
        let n: i64 = c
            .query_one("SELECT count(*) FROM side WHERE id = 1", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "replica {}: the certified insert is missing", i + 1);
    }
}

/// (d) The certifier (a child process) is SIGKILLed under load and
/// restarted on the same port and log: clients see errors (or 08007) for
/// what was in flight and then carry on; nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certifier_sigkill_and_restart_under_load() {
    let mut cluster = Cluster::start(3).await;
    setup(&cluster).await;
    let targets = targets_of(&cluster);
    let load = Load::start(&targets, &[0, 0, 1, 1, 2, 2]);
    assert!(
        load.acked_past(9, Duration::from_secs(30)).await,
        "the load committed little before the kill"
    );
    cluster.restart_certifier().await;
    // The appliers resubscribe after backing off; then commits go on.
    commits_on_then_check(&cluster, load).await;
}

/// Waits until a write through proxy `i` is refused because its replica
/// needs a checkpoint; returns the error message.
async fn wait_for_refusal(cluster: &Cluster, i: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = cluster.client(i).await;
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            c.batch_execute("UPDATE pgbench_branches SET bbalance = bbalance WHERE bid = 1"),
        )
        .await
        .expect("a write through a replica that needs recovery hung");
        if let Err(e) = &r {
            if let Some(db) = e.as_db_error() {
                if db.code().code() == "55000" {
                    return format!("{} {}", db.message(), db.hint().unwrap_or_default());
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "writes were never refused: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (e) Log purge: a checkpoint lets the certifier purge the log a silent
/// replica still needed. When that replica comes back (disk intact) it is
/// told to recover from a checkpoint and refuses writes rather than
/// hanging; rebuilt from the checkpoint, it crosses the purged range and
/// rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_then_recover_across_the_purged_range() {
    let mut cluster = Cluster::start_with(3, |c| {
        c.wal_segment_bytes = 64 << 10;
        c.purge_replica_timeout_ms = 1500;
    })
    .await;
    setup(&cluster).await;
    let targets = targets_of(&cluster);
    let load = Load::start(&targets, &[0, 0, 1, 1]);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Replica 3 goes away (cleanly; its disk stays intact).
    cluster.kill_proxy(2).await;
    blocking(|| cluster.replicas[2].stop()).unwrap();
    let r3_applied = {
        // Read it back after a restart later; remember the certifier's
        // view now.
        let cert = CertifierClient::connect(cluster.certifier()).await.unwrap();
        cert.status().await.unwrap().durable_version
    };
    // Long enough for replica 3 to count as silent (purge_replica_timeout),
    // and for the load to write well over a segment past it (on a busy
    // machine, or with sessions waiting for fair turns, 3 s of load was
    // not always enough).
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let past = r3_applied + 600;
    let deadline = Instant::now() + Duration::from_secs(60);
    let cert = CertifierClient::connect(cluster.certifier()).await.unwrap();
    while cert.status().await.unwrap().durable_version < past {
        assert!(
            Instant::now() < deadline,
            "the load did not reach version {past} in a minute"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ckpt_dir = cluster.dir().join("checkpoints");
    let cfg = CheckpointConfig {
        dir: ckpt_dir.clone(),
        keep: 1,
        ..CheckpointConfig::default()
    };
    let cert = CertifierClient::connect(cluster.certifier()).await.unwrap();
    let (ckpt, first) = checkpoint::checkpoint_and_purge(
        &source(&cluster.replicas[0], 1),
        &cfg,
        &ckpt_dir,
        Some(&cert),
    )
    .await
    .unwrap();
    let first = first.unwrap();
    assert!(
        first > r3_applied + 1,
        "nothing replica 3 needs was purged (first version {first}, replica 3 at most at {r3_applied})"
    );
    assert!(first <= ckpt.manifest.version + 1);
    // Replica 3 comes back with its disk: the log it needs is gone.
    blocking(|| cluster.replicas[2].start_postmaster()).unwrap();
    cluster.restart_proxy(2).await;
    let refusal = wait_for_refusal(&cluster, 2).await;
    assert!(refusal.contains("purged"), "{refusal}");
    assert!(refusal.contains("tashkent recover"), "{refusal}");
    // Rebuilt from the checkpoint, it replays from there.
    cluster.kill_proxy(2).await;
    let text = cluster.rebuild_replica(2, &ckpt_dir, "rebuilt").await;
    assert!(
        text.contains(&format!("at version {}", ckpt.manifest.version)),
        "{text}"
    );
    targets.lock().unwrap()[2] = cluster.proxy_conninfo(2);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut o = load.stop().await;
    // The rebuilt replica serves writes again. (Alone: while it lags
    // behind the others' updates of the few hot TPC-B rows, its own
    // transactions' snapshots are too old to pass certification.)
    cluster.wait_converged().await;
    let more = Load::start(&targets, &[2, 2]);
    more.acked_past(0, Duration::from_secs(30)).await;
    let o2 = more.stop().await;
    assert!(!o2.acked.is_empty(), "the rebuilt replica commits nothing");
    o.acked.extend(o2.acked);
    o.aborted.extend(o2.aborted);
    o.unknown.extend(o2.unknown);
    check(&cluster, &o).await;
}

/// (f) Damaged checkpoints are detected and refused with a clear error:
/// a truncated dump file makes recovery use the next older checkpoint; a
/// wrong manifest on that one too leaves none, and the operator is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_checkpoints_are_refused() {
    let mut cluster = Cluster::start(3).await;
    setup(&cluster).await;
    let targets = targets_of(&cluster);
    let load = Load::start(&targets, &[0, 1, 2]);
    let ckpt_dir = cluster.dir().join("checkpoints");
    let src = source(&cluster.replicas[0], 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let older = checkpoint::take(&src, &ckpt_dir, 2).await.unwrap();
    // The newer checkpoint must be at a later version: wait for replica 1
    // to apply past the older one (a loaded CI machine may take a while).
    let r0 = cluster.replica(0).await;
    let until = Instant::now() + Duration::from_secs(60);
    while tashkent::proxy::capture::applied_version(&r0)
        .await
        .unwrap()
        <= older.manifest.version
    {
        assert!(Instant::now() < until, "replica 1 applies nothing new");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let newer = checkpoint::take(&src, &ckpt_dir, 2).await.unwrap();
    assert!(newer.manifest.version > older.manifest.version);
    // Truncate the newest checkpoint's largest data file.
    let victim = newer
        .manifest
        .files
        .iter()
        .filter(|f| f.path != "toc.dat")
        .max_by_key(|f| f.bytes)
        .unwrap();
    let path = newer.dump_dir().join(&victim.path);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(victim.bytes / 2).unwrap();
    drop(f);
    cluster.kill_proxy(1).await;
    let text = cluster.rebuild_replica(1, &ckpt_dir, "rebuilt").await;
    assert!(
        text.contains(&format!("at version {}", older.manifest.version)),
        "the older checkpoint was not used:\n{text}"
    );
    assert!(
        text.contains("refused") && text.contains(&victim.path),
        "the damaged checkpoint was not reported:\n{text}"
    );
    targets.lock().unwrap()[1] = cluster.proxy_conninfo(1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let o = load.stop().await;
    check(&cluster, &o).await;

    // Now the older one's manifest lies about a file's checksum as well.
    let manifest = older.dir.join(checkpoint::MANIFEST_FILE);
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let crc = m["files"][0]["crc32"].as_u64().unwrap();
    m["files"][0]["crc32"] = serde_json::json!(crc ^ 1);
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    let base = cluster.dir().join("replica-3-never");
    let (ok, text) = blocking(|| {
        tashkent(&[
            "recover",
            "--base-dir",
            base.to_str().unwrap(),
            "--dir",
            ckpt_dir.to_str().unwrap(),
            "--replica",
            "3",
            "--replicas",
            "3",
        ])
    });
    assert!(
        !ok,
        "recovery without a valid checkpoint succeeded:\n{text}"
    );
    assert!(text.contains("no usable checkpoint"), "{text}");
    assert!(text.contains("CRC-32"), "{text}");
    assert!(text.contains(&victim.path), "{text}");
    assert!(text.contains("tashkent checkpoint"), "{text}");
    // Nothing was destroyed or created for it.
    assert!(!base.exists());
}

/// Checkpoints of a local cluster: on demand through `LocalCluster`, kept
/// per `keep`, and a replica rebuilt online by `recover_replica`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_cluster_checkpoint_and_online_recovery() {
    let dir = common::shared_tempdir();
    // Automatic checkpoints, as `tashkent up` starts them from its file
    // (started below, once the manual ones are done).
    let file = dir.path().join("cluster.toml");
    std::fs::write(
        &file,
        format!(
            "[cluster]\nstate_dir = {:?}\nreplicas = 2\n\
             [checkpoint]\ndir = \"auto\"\nkeep = 1\ninterval_secs = 1\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let config = tashkent::ops::config::ConfigFile::load(&file).unwrap();
    let mut cluster = tashkent::ops::cluster::LocalCluster::start(&config)
        .await
        .unwrap();
    let c = connect_str(&cluster.proxy_conninfo(0)).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO t SELECT i, 0 FROM generate_series(1, 1000) i")
        .await
        .unwrap();
    let ck = CheckpointConfig {
        keep: 2,
        ..CheckpointConfig::default()
    };
    let mut versions = Vec::new();
    for round in 0..3 {
        c.batch_execute(&format!("UPDATE t SET v = {round} WHERE id <= 10"))
            .await
            .unwrap();
        let (taken, first) = cluster.checkpoint(&ck).await.unwrap();
        assert!(first.is_some());
        versions.push(taken.manifest.version);
    }
    let periodic = cluster.periodic_checkpoints().unwrap();
    assert!(periodic.is_some());
    let deadline = Instant::now() + Duration::from_secs(30);
    while checkpoint::list(&dir.path().join("state/auto"))
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no automatic checkpoint");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(periodic);
    let kept: Vec<u64> = checkpoint::list(&dir.path().join("state/checkpoints"))
        .unwrap()
        .into_iter()
        .map(|l| l.checked.unwrap().manifest.version)
        .collect();
    assert_eq!(kept, vec![versions[2], versions[1]]);
    c.batch_execute("UPDATE t SET v = 99 WHERE id > 990")
        .await
        .unwrap();
    let restored = cluster.recover_replica(1, &ck).await.unwrap();
    assert_eq!(restored.version, versions[2]);
    c.batch_execute("UPDATE t SET v = 7 WHERE id = 500")
        .await
        .unwrap();
    // The rebuilt replica catches up with everything.
    let r2 = connect_str(&cluster.proxy_conninfo(1)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = r2
            .query_one(
                "SELECT count(*) FILTER (WHERE v = 99), max(v) FILTER (WHERE id = 500) FROM t",
                &[],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) == 10 && row.get::<_, Option<i32>>(1) == Some(7) {
            break;
        }
        assert!(Instant::now() < deadline, "replica 2 did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.shutdown().await.unwrap();
}
