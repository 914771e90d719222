//! Failover of a replicated certifier with real processes (issue 14):
//! three `tashkent certifier` nodes, three replicas and their proxies, a
//! TPC-B-like load through every proxy. The leader is SIGKILLed (twice,
//! at seeded moments; the seed is printed, `TASHKENT_SEED` repeats it),
//! the time until a new leader commits a certification is measured and
//! printed, and the killed node is restarted. The end: no acknowledged
//! commit lost, no aborted one present, versions dense on every node,
//! replicas identical, TPC-B's invariant everywhere. And at the client
//! level: a txn id certified on a leader that is then SIGKILLed is
//! answered its original version by the next leader.

use crate::common;
use crate::recovery::{setup, targets_of, Load};

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::Cluster;
use futures::StreamExt;
use tashkent::ops::process::ChildProcess;
use tashkent_certifier::writeset::item;
use tashkent_certifier::{CertifierClient, Item, Op, Outcome, Writeset, WRITESET_FORMAT_VERSION};

/// The seed of this run: `TASHKENT_SEED`, else the clock.
pub(crate) fn seed() -> u64 {
    let seed = std::env::var("TASHKENT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("seed {seed} (TASHKENT_SEED={seed} repeats it)");
    seed
}

/// Each node's status, by index (None: it does not answer).
pub(crate) async fn statuses(
    addrs: &[String],
) -> Vec<Option<tashkent_certifier::proto::StatusResponse>> {
    let mut out = Vec::new();
    for a in addrs {
        // Long enough for a node on a loaded machine; a node that is down
        // refuses the connection at once.
        let s = tokio::time::timeout(Duration::from_secs(2), async {
            CertifierClient::connect(a).await?.status().await
        })
        .await;
        out.push(s.ok().and_then(Result::ok));
    }
    out
}

/// [`statuses`], once `done` holds of them (or after `within`, for the
/// caller's assertion to say what it saw).
pub(crate) async fn statuses_until(
    addrs: &[String],
    within: Duration,
    done: impl Fn(&[Option<tashkent_certifier::proto::StatusResponse>]) -> bool,
) -> Vec<Option<tashkent_certifier::proto::StatusResponse>> {
    let deadline = Instant::now() + within;
    loop {
        let all = statuses(addrs).await;
        if done(&all) || Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader's index once a running node says it leads and has applied
/// more than `above`; and its status.
pub(crate) async fn leader_past(
    addrs: &[String],
    above: u64,
    limit: Duration,
) -> (usize, tashkent_certifier::proto::StatusResponse) {
    leader_among(addrs, &[], above, limit).await
}

/// Like [`leader_past`], among the nodes not in `except`.
pub(crate) async fn leader_among(
    addrs: &[String],
    except: &[usize],
    above: u64,
    limit: Duration,
) -> (usize, tashkent_certifier::proto::StatusResponse) {
    let deadline = Instant::now() + limit;
    loop {
        for (i, s) in statuses(addrs).await.into_iter().enumerate() {
            if let Some(s) = s.filter(|_| !except.contains(&i)) {
                if s.role == "leader" && s.committed_version > above {
                    return (i, s);
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader committing within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every node serves versions `1..=upto` (from the first its log holds),
/// dense and in order.
async fn assert_dense(addrs: &[String], upto: u64) {
    for a in addrs {
        let c = CertifierClient::connect(a).await.unwrap();
        let first = c.status().await.unwrap().first_version.max(1);
        let got: Vec<u64> = tokio::time::timeout(
            Duration::from_secs(30),
            c.subscribe(first)
                .await
                .unwrap()
                .take((upto + 1 - first) as usize)
                .map(|w| w.unwrap().version)
                .collect(),
        )
        .await
        .unwrap_or_else(|_| panic!("node {a} does not serve versions 1..={upto}"));
        assert_eq!(got, (first..=upto).collect::<Vec<_>>(), "node {a}");
    }
}

/// Three replicas with their proxies, three certifier nodes (`adjust`ed),
/// TPC-B's tables, and the load running through every proxy; the nodes'
/// addresses.
async fn loaded(
    adjust: impl FnOnce(&mut tashkent_certifier::CertifierConfig),
) -> (Cluster, Vec<String>, Load) {
    let cluster = Cluster::start_file(3, |f| {
        f.cluster.certifiers = 3;
        adjust(&mut f.certifier);
    })
    .await;
    let addrs: Vec<String> = cluster.node_addrs();
    setup(&cluster).await;
    let load = Load::start(&targets_of(&cluster), &[0, 0, 1, 1, 2, 2]);
    (cluster, addrs, load)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_sigkill_under_tpcb_load_loses_nothing() {
    let seed = seed();
    let mut rng = seed | 1;
    let mut next = move |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    let (mut cluster, addrs, load) = loaded(|_| {}).await;
    let mut failovers = Vec::new();
    for round in 1..=2 {
        tokio::time::sleep(Duration::from_millis(1000 + next(2000))).await;
        let (leader, before) = leader_past(&addrs, 0, Duration::from_secs(20)).await;
        let acked = load.acked();
        cluster.kill_certifier_node(leader).await.unwrap();
        let killed = Instant::now();
        let (next_leader, after) =
            leader_past(&addrs, before.committed_version, Duration::from_secs(30)).await;
        let took = killed.elapsed();
        eprintln!(
            "round {round}: node {} (leader, version {}) SIGKILLed after {acked} acknowledged \
             commits; node {} leads (term {}) and committed version {} {took:?} later",
            leader + 1,
            before.committed_version,
            next_leader + 1,
            after.term,
            after.committed_version
        );
        failovers.push(took);
        // Commits go on through every proxy, then the killed node is back.
        // (Generous: the suite runs its tests in parallel.)
        let resumed = load.acked();
        let deadline = Instant::now() + Duration::from_secs(60);
        while load.acked() < resumed + 50 {
            assert!(Instant::now() < deadline, "the load stopped committing");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cluster.start_certifier_node(leader).await.unwrap();
    }
    eprintln!("failover times (kill -> a new leader commits): {failovers:?}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    load.finish(&cluster).await;
    // Every node, the restarted ones too, holds the same dense versions.
    nodes_caught_up(&addrs).await;
}

/// Waits until every node has made `upto` durable, then checks density.
pub(crate) async fn nodes_caught_up(addrs: &[String]) {
    let (_, s) = leader_past(addrs, 0, Duration::from_secs(20)).await;
    let upto = s.committed_version;
    let caught_up = |all: &[Option<tashkent_certifier::proto::StatusResponse>]| {
        all.iter()
            .all(|s| s.as_ref().is_some_and(|s| s.durable_version >= upto))
    };
    let all = statuses_until(addrs, Duration::from_secs(30), caught_up).await;
    assert!(caught_up(&all), "nodes did not catch up: {all:?}");
    assert_dense(addrs, upto).await;
}

/// A follower SIGKILLed and restarted, then another SIGKILLed, its
/// directory deleted (a lost disk) and restarted empty: it rejoins from
/// the leader's snapshot (taken every 200 entries here) and log, while
/// the load commits through both faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_sigkill_and_lost_disk_under_tpcb_load_lose_nothing() {
    let (mut cluster, addrs, load) = loaded(|c| c.raft_snapshot_entries = 200).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (leader, _) = leader_past(&addrs, 0, Duration::from_secs(20)).await;
    let (f1, f2) = ((leader + 1) % 3, (leader + 2) % 3);
    cluster.kill_certifier_node(f1).await.unwrap();
    let before = load.acked();
    // Commits go on. A session's fair turn (`turns`) may hold its row up
    // to `turns::HOLD` meanwhile, if its proxy's stream was at the killed
    // node and has to move (and reconnect, backing off); hence the margin.
    let margin = tashkent_certifier::turns::HOLD + Duration::from_secs(10);
    let pause = Duration::from_millis(1500);
    tokio::time::sleep(pause).await;
    assert!(
        load.acked_past(before, margin - pause).await,
        "no commit with a follower down"
    );
    cluster.start_certifier_node(f1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;

    cluster.kill_certifier_node(f2).await.unwrap();
    let dir = tashkent::ops::state_dir::StateDir::new(cluster.state_dir())
        .certifier_node_dir(f2 as u32 + 1);
    std::fs::remove_dir_all(&dir).unwrap();
    let before = load.acked();
    // Enough entries for the others to snapshot and purge past its log.
    // On a busy machine (the suite runs its tests in parallel) that takes
    // a while: what fails is a load that stops, not a slow one.
    let (mut progress, mut progressed) = (before, Instant::now());
    while load.acked() < before + 400 {
        if load.acked() > progress {
            (progress, progressed) = (load.acked(), Instant::now());
        }
        if progressed.elapsed() > Duration::from_secs(20) {
            let nodes = statuses(&addrs).await;
            let acked = load.acked() - before;
            // Prints the clients' errors and aborts.
            load.stop().await;
            panic!(
                "the load stopped committing for 20 s: {acked} commits since node {} was \
                 wiped (leader {}, restarted {}); nodes: {nodes:#?}",
                f2 + 1,
                leader + 1,
                f1 + 1
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.start_certifier_node(f2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (o, _) = load.finish(&cluster).await;
    nodes_caught_up(&addrs).await;
    let wiped = CertifierClient::connect(&addrs[f2]).await.unwrap();
    let s = wiped.status().await.unwrap();
    eprintln!(
        "node {} (wiped) serves versions {}..={} after a snapshot; {} unknown outcomes",
        f2 + 1,
        s.first_version,
        s.durable_version,
        o.unknown.len()
    );
}

pub(crate) fn ws(id: &str) -> Writeset {
    Writeset {
        format_version: WRITESET_FORMAT_VERSION,
        txn_id: Bytes::copy_from_slice(id.as_bytes()),
        origin: 1,
        snapshot: 0,
        items: vec![Item {
            row: Bytes::from(format!("row by {id}")),
            ..item("t", Op::Update, id.as_bytes().to_vec())
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
async fn a_retry_after_the_leader_is_sigkilled_gets_its_version() {
    let dir = common::shared_tempdir();
    let ports: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<String> = ports
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    drop(ports);
    let peers = tashkent_certifier::config::format_peers(&addrs);
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_tashkent"));
    let start = |i: usize| {
        let wal = dir.path().join(format!("node-{}", i + 1));
        let args: Vec<String> = vec![
            "certifier".into(),
            "--node-id".into(),
            (i + 1).to_string(),
            "--peers".into(),
            peers.clone(),
            "--wal-dir".into(),
            wal.display().to_string(),
        ];
        ChildProcess::spawn(exe, &format!("certifier {}", i + 1), &args).unwrap()
    };
    let mut nodes: Vec<Option<ChildProcess>> = (0..3).map(|i| Some(start(i))).collect();
    let client = CertifierClient::connect(addrs.join(",")).await.unwrap();
    let mut versions = Vec::new();
    for i in 0..5 {
        versions.push(version(client.certify(ws(&format!("t{i}"))).await.unwrap()));
    }
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    let x = version(client.certify(ws("x")).await.unwrap());
    let (leader, _) = leader_past(&addrs, 0, Duration::from_secs(20)).await;
    nodes[leader].take().unwrap().kill();
    let killed = Instant::now();
    // The same txn id through the same client: the new leader answers it
    // from the replicated dedupe table.
    assert_eq!(version(client.certify(ws("x")).await.unwrap()), x);
    eprintln!(
        "a retry answered {:?} after the leader's SIGKILL",
        killed.elapsed()
    );
    assert_eq!(version(client.certify(ws("y")).await.unwrap()), x + 1);
    nodes[leader] = Some(start(leader));
    assert_eq!(version(client.certify(ws("t3")).await.unwrap()), 4);
    assert_dense(&addrs, x + 1).await;
}
