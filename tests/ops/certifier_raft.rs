//! A local cluster with a replicated certifier (`[cluster] certifiers =
//! 3`, as `tashkent up --certifiers 3`): three `tashkent certifier
//! --config` node processes, the proxies given every node; `tashkent
//! status` prints each node with its role, each node serves its metrics;
//! a follower SIGKILLed and restarted catches up while commits go on;
//! `tashkent certifier transfer-leader` hands the leadership to it; the
//! whole group stops without handing over.

use crate::common;

use std::time::Duration;

use common::cluster::{blocking, tashkent, Cluster};
use common::pid_alive;
use tashkent::ops::cluster::LocalCluster;
use tashkent::ops::config::ConfigFile;
use tashkent::ops::state_dir::StateDir;

/// Inserts rows `from..to` of `t` through proxy `i`.
async fn insert(cluster: &Cluster, i: usize, from: i32, to: i32) {
    let c = cluster.client(i).await;
    for k in from..to {
        c.execute("INSERT INTO t (k, v) VALUES ($1, $1)", &[&k])
            .await
            .unwrap_or_else(|e| panic!("insert {k} through proxy {}: {e}", i + 1));
    }
}

/// A start of `file` that must fail (`why`), with an error saying `says`.
async fn start_fails(file: &ConfigFile, why: &str, says: &str) {
    let e = LocalCluster::start_placed(file, Cluster::placement())
        .await
        .err()
        .expect(why);
    assert!(e.to_string().contains(says), "{e}");
}

/// `tashkent status --json` of the cluster.
pub(crate) fn status_json(cluster: &Cluster) -> serde_json::Value {
    let state = cluster.state_dir().display().to_string();
    let (ok, out) = blocking(|| tashkent(&["status", "--state-dir", &state, "--json"]));
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The leader's index (0-based) as `tashkent status` sees it, once there
/// is one.
pub(crate) async fn leader(cluster: &Cluster) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let json = status_json(cluster);
        let nodes = json["certifier_nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(n) = nodes.iter().find(|n| n["role"] == "leader") {
            return n["node_id"].as_u64().unwrap() as usize - 1;
        }
        assert!(std::time::Instant::now() < deadline, "no leader: {json}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_certifier_nodes_serve_the_proxies_and_status_names_the_leader() {
    let mut cluster = Cluster::start_file(2, |f| f.cluster.certifiers = 3).await;
    assert_eq!(cluster.certifier_nodes(), 3);
    let addrs = cluster.certifier_addrs().unwrap();
    assert_eq!(addrs.split(',').count(), 3, "{addrs}");
    cluster
        .client(0)
        .await
        .batch_execute("CREATE TABLE t (k int PRIMARY KEY, v int)")
        .await
        .unwrap();
    insert(&cluster, 0, 0, 20).await;
    insert(&cluster, 1, 20, 40).await;
    cluster.assert_identical().await;

    let mut leader = leader(&cluster).await;
    // A follower learns that version 41 committed with the leader's next
    // message (a heartbeat at most 150 ms later, longer on a loaded
    // machine), and applies it then. A loaded machine may also hold an
    // election meanwhile: the nodes must agree on one leader in the end.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let json = loop {
        let json = status_json(&cluster);
        let nodes = json["certifier_nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let all_committed = nodes
            .iter()
            .all(|n| n["committed_version"].as_u64() >= Some(41));
        let named = nodes.first().and_then(|n| n["leader_id"].as_u64());
        let agreed = named
            .filter(|id| *id != 0 && nodes.iter().all(|n| n["leader_id"].as_u64() == Some(*id)));
        if let Some(id) = agreed.filter(|_| all_committed) {
            leader = id as usize - 1;
            break json;
        }
        if std::time::Instant::now() > deadline {
            break json;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let nodes = json["certifier_nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{json}");
    assert_eq!(nodes[leader]["role"], "leader", "{json}");
    for n in nodes {
        assert_eq!(n["state"], "up", "{json}");
        assert!(n["committed_version"].as_u64().unwrap() >= 41, "{json}");
        assert_eq!(
            n["leader_id"].as_u64().unwrap(),
            leader as u64 + 1,
            "{json}"
        );
    }
    assert_eq!(json["certifier"]["role"], "leader", "{json}");
    let state = cluster.state_dir().display().to_string();
    let (ok, out) = blocking(|| tashkent(&["status", "--state-dir", &state]));
    assert!(ok, "{out}");
    let node_lines: Vec<&str> = out.lines().filter(|l| l.starts_with("node ")).collect();
    assert_eq!(node_lines.len(), 3, "{out}");
    assert_eq!(
        node_lines.iter().filter(|l| l.contains(" leader ")).count(),
        1,
        "{out}"
    );

    // Every node serves its own metrics: its raft role and term, and on
    // the leader what it certified.
    let metrics = cluster
        .certifier_node_metrics_addrs()
        .expect("metrics are on");
    assert_eq!(metrics.len(), 3);
    // Read until they agree: a late heartbeat on a loaded machine may
    // show a node out of contact, or an election, for a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match node_metrics_agree(&metrics, leader).await {
            Ok(()) => break,
            Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
        leader = self::leader(&cluster).await;
    }

    // A follower is SIGKILLed: commits go on; restarted, it catches up.
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let pid = cluster.certifier_node_pid(follower).unwrap();
    cluster.kill_certifier_node(follower).await.unwrap();
    assert!(!pid_alive(pid as i32));
    insert(&cluster, 0, 40, 60).await;
    cluster.start_certifier_node(follower).await.unwrap();
    insert(&cluster, 1, 60, 80).await;
    cluster.assert_identical().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let json = status_json(&cluster);
        let n = &json["certifier_nodes"][follower];
        if n["durable_version"].as_u64().unwrap_or(0) >= 81 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{json}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The leader hands over to the restarted follower, on the operator's
    // word; the proxies follow it, and commits go on there.
    let leader = self::leader(&cluster).await;
    let to = (0..3).find(|i| *i != leader).unwrap() + 1;
    let (ok, out) = blocking(|| {
        tashkent(&[
            "certifier",
            "transfer-leader",
            "--certifier",
            &addrs,
            "--to",
            &to.to_string(),
        ])
    });
    assert!(ok, "{out}");
    assert!(out.contains(&format!("node {to} leads")), "{out}");
    assert_eq!(self::leader(&cluster).await + 1, to);
    insert(&cluster, 0, 80, 100).await;
    insert(&cluster, 1, 100, 120).await;
    cluster.assert_identical().await;
}

/// A transaction of some megabytes (certified in chunks, replicated as
/// one raft entry) with several kinds of value reaches the other replica
/// byte for byte through three certifier nodes. (Much larger entries
/// strain openraft 0.9's 150 ms AppendEntries limit: README, "Large
/// transactions".)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_transaction_replicates_through_three_certifier_nodes() {
    let cluster = Cluster::start_file(2, |f| f.cluster.certifiers = 3).await;
    let origin = cluster.client(0).await;
    origin
        .batch_execute(
            "CREATE TABLE big (id int PRIMARY KEY, v text, b bytea, n numeric, j jsonb);
             INSERT INTO big SELECT g, repeat(md5(g::text), 4), decode(md5(g::text), 'hex'),
                 g / 7.0, jsonb_build_object('g', g, 's', 'é\u{1F600}')
               FROM generate_series(1, 50000) g;",
        )
        .await
        .unwrap();
    let far = cluster.replica(1).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let n: i64 = far
            .query_one("SELECT count(*) FROM big", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n == 50_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} of 50000 rows on the far replica"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.wait_converged().await;
    cluster.assert_identical().await;
}

/// Every node's metrics: its raft role (`leader` the one the others
/// follow), a term, in contact; and the 41 certifications committed, by
/// whichever nodes led meanwhile.
async fn node_metrics_agree(metrics: &[std::net::SocketAddr], leader: usize) -> Result<(), String> {
    let mut committed_total = 0.0;
    for (i, addr) in metrics.iter().enumerate() {
        let s = tashkent_metrics::fetch(&addr.to_string(), Duration::from_secs(10))
            .await
            .map_err(|e| format!("scraping node {}: {e}", i + 1))?;
        let role = |r| s.value("tashkent_certifier_raft_role", &[("role", r)]);
        let want = if i == leader { "leader" } else { "follower" };
        let out_of_contact = s.value("tashkent_certifier_raft_out_of_contact", &[]);
        let committed = s.value(
            "tashkent_certifier_certifications_total",
            &[("outcome", "committed")],
        );
        let ok = role(want) == Some(1.0)
            && role("candidate") == Some(0.0)
            && s.value("tashkent_certifier_raft_term", &[]) >= Some(1.0)
            && out_of_contact == Some(0.0);
        if !ok {
            return Err(format!(
                "node {} (leader: node {}): {s:?}",
                i + 1,
                leader + 1
            ));
        }
        committed_total += committed.unwrap_or(0.0);
    }
    if committed_total < 41.0 {
        return Err(format!(
            "{committed_total} certifications committed, not 41"
        ));
    }
    Ok(())
}

/// A whole group stopped (`tashkent up`'s Ctrl-C, the end of each system in
/// `tashkent bench`) stops without a hand-over: the followers stop first,
/// then the leader, which finds no peer to hand over to, so no node stands
/// for election and every node keeps the vote it had. Stopped one by one
/// in id order, the leader (node 1 here, the one that bootstraps) handed
/// over to the next node to stop, and that one to the last: new terms, a
/// few hundred milliseconds, and warnings.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_group_stops_without_handing_over() {
    let cluster = Cluster::start_file(1, |f| f.cluster.certifiers = 3).await;
    let leader = leader(&cluster).await;
    let term = status_json(&cluster)["certifier_nodes"][leader]["term"]
        .as_u64()
        .unwrap();
    let state = cluster.state_dir().to_path_buf();
    let dir = cluster.shutdown().await;
    for id in 1..=3 {
        let path = state.join(format!("certifier-{id}/raft/raft-meta"));
        let meta = tashkent_certifier::raft::meta::load(&path).unwrap();
        let vote = meta
            .vote
            .unwrap_or_else(|| panic!("node {id} holds no vote"));
        assert_eq!(
            (vote.leader_id().term, vote.leader_id().voted_for()),
            (term, Some(leader as u64 + 1)),
            "node {id}'s vote: an election after the stop began"
        );
    }
    drop(dir);
}

/// A first `tashkent up` that initialized its certifier nodes and then
/// failed (a proxy's port taken) resumes on the next start: the nodes'
/// ports were kept, so the group finds itself again under the membership
/// it wrote, and commits go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_start_that_failed_after_the_nodes_began_resumes_them() {
    // Not from the ephemeral range: freed, it must stay free for the
    // second start.
    let port = tashkent::ops::process::free_loopback_port().unwrap();
    let taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let dir = common::shared_tempdir();
    let watch = common::watchdog::Watch::new(dir.path());
    let file = Cluster::file_in(&dir, 1, |f| {
        f.cluster.certifiers = 3;
        f.cluster.proxy_port = port;
    });
    start_fails(&file, "the proxy's port is taken", "proxy").await;
    assert!(dir.path().join("state/certifier-1/raft").exists());
    drop(taken);

    let cluster = Cluster::start_in(dir, watch, &file).await;
    let c = cluster.client(0).await;
    tokio::time::timeout(
        Duration::from_secs(30),
        c.batch_execute("CREATE TABLE t (k int PRIMARY KEY, v int)"),
    )
    .await
    .expect("the resumed group certifies")
    .unwrap();
    insert(&cluster, 0, 0, 5).await;
    leader(&cluster).await;

    // A later start that fails at the proxy keeps the ports it had.
    let state = StateDir::new(cluster.state_dir());
    let saved = state.ports().unwrap();
    assert_eq!(saved.proxies, vec![port]);
    assert_eq!(saved.certifier_nodes.len(), 3);
    let dir = cluster.shutdown().await;
    let taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let watch = common::watchdog::Watch::new(dir.path());
    start_fails(&file, "the proxy's port is taken", "proxy").await;
    assert_eq!(state.ports().unwrap(), saved);
    drop(taken);
    let cluster = Cluster::start_in(dir, watch, &file).await;
    insert(&cluster, 0, 5, 10).await;
}

/// The certifier is the state directory's: a start with another kind is
/// refused before anything starts, naming the number its state holds (a single certifier's log lacks what the nodes
/// committed, and nodes started over a single certifier's state would
/// lack what it committed: either would meet replicas ahead of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_with_another_number_of_certifiers_is_refused() {
    let dir = common::shared_tempdir();
    let watch = common::watchdog::Watch::new(dir.path());
    let three = Cluster::file_in(&dir, 1, |f| f.cluster.certifiers = 3);
    let one = Cluster::file_in(&dir, 1, |f| f.cluster.certifiers = 1);
    let cluster = Cluster::start_in(dir, watch, &three).await;
    let c = cluster.client(0).await;
    c.batch_execute("CREATE TABLE t (k int PRIMARY KEY, v int)")
        .await
        .unwrap();
    insert(&cluster, 0, 0, 5).await;
    drop(c);
    let dir = cluster.shutdown().await;

    let watch = common::watchdog::Watch::new(dir.path());
    start_fails(
        &one,
        "a single certifier over three nodes' state",
        "certifiers = 3",
    )
    .await;
    // Refused before anything started: no single certifier's log either.
    assert!(!dir.path().join("state/certifier-wal").exists());
    let cluster = Cluster::start_in(dir, watch, &three).await;
    insert(&cluster, 0, 5, 10).await;
    let n: i64 = cluster
        .client(0)
        .await
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 10);
}

/// A single certifier's log without a record (a cluster started and
/// stopped before its certifier logged a version) gives way to certifier
/// nodes, which start afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_certifier_that_committed_nothing_gives_way_to_nodes() {
    let dir = common::shared_tempdir();
    let watch = common::watchdog::Watch::new(dir.path());
    let one = Cluster::file_in(&dir, 1, |f| f.cluster.certifiers = 1);
    let three = Cluster::file_in(&dir, 1, |f| f.cluster.certifiers = 3);
    let log = dir.path().join("state/certifier-wal");
    let cluster = Cluster::start_in(dir, watch, &one).await;
    let dir = cluster.shutdown().await;
    assert!(tashkent_wal::holds_segments(&log), "{}", log.display());

    let watch = common::watchdog::Watch::new(dir.path());
    let cluster = Cluster::start_in(dir, watch, &three).await;
    assert!(
        log.exists(),
        "the directory stays (it may be a mount point)"
    );
    assert!(
        !tashkent_wal::holds_segments(&log),
        "the empty log is emptied"
    );
    let c = cluster.client(0).await;
    c.batch_execute("CREATE TABLE t (k int PRIMARY KEY, v int)")
        .await
        .unwrap();
    insert(&cluster, 0, 0, 5).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5);
    let nodes = status_json(&cluster);
    assert!(nodes.to_string().contains("leader"), "{nodes}");
}

/// Inserts row `k` of `t` through proxy `i`, again while the certifier
/// fails over (a row already there was committed by an earlier try).
async fn insert_across_a_failover(cluster: &Cluster, i: usize, k: i32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = cluster.client(i).await;
        match c
            .execute("INSERT INTO t (k, v) VALUES ($1, $1)", &[&k])
            .await
        {
            Ok(_) => return,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                return
            }
            Err(e) if std::time::Instant::now() > deadline => panic!("insert {k}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A cluster that ran one certifier goes on with three nodes (`tashkent
/// up --certifiers 3` over its state): the single certifier's log becomes
/// node 1's directory, the versions go on after its last one, and the
/// other nodes take everything from it: once node 1 is SIGKILLed, the
/// others lead and commit, and the replicas hold every row, identical. A
/// seed that a crash interrupted is done again, and one whose nodes could
/// not start (a port taken) is undone and done on other ports.
/// There is no way back: one certifier over the nodes is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_certifier_that_committed_goes_on_as_three_nodes() {
    let dir = common::shared_tempdir();
    let watch = common::watchdog::Watch::new(dir.path());
    let one = Cluster::file_in(&dir, 2, |f| f.cluster.certifiers = 1);
    let three = Cluster::file_in(&dir, 2, |f| f.cluster.certifiers = 3);
    let log = dir.path().join("state/certifier-wal");
    let cluster = Cluster::start_in(dir, watch, &one).await;
    cluster
        .client(0)
        .await
        .batch_execute("CREATE TABLE t (k int PRIMARY KEY, v int)")
        .await
        .unwrap();
    insert(&cluster, 0, 0, 20).await;
    insert(&cluster, 1, 20, 30).await;
    let single_version = cluster.acknowledged_version().await;
    let dir = cluster.shutdown().await;
    assert!(tashkent_wal::holds_segments(&log));
    // What a start that crashed after seeding, before it moved the log,
    // left (a seed for other ports) is seeded again.
    let crashed = tashkent_certifier::CertifierConfig {
        wal_dir: log.clone(),
        node_id: Some(1),
        peers: Some("1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3".into()),
        ..one.certifier.clone()
    };
    let earlier = tashkent_certifier::raft::seed::Earlier::Refuse;
    tashkent_certifier::raft::seed::seed(&crashed, earlier).unwrap();
    // Node 1's port, kept, is taken: node 1 runs its raft state until it
    // cannot bind; the start undoes its seed and seeds on other ports.
    let state = StateDir::new(&dir.path().join("state"));
    let free = || tashkent::ops::process::free_loopback_port().unwrap();
    let taken_port = free();
    let taken = std::net::TcpListener::bind(("127.0.0.1", taken_port)).unwrap();
    let planted = tashkent::ops::state_dir::Ports {
        certifier_nodes: vec![taken_port, free(), free()],
        ..state.ports().unwrap()
    };
    state.write_ports(&planted).unwrap();

    let watch = common::watchdog::Watch::new(dir.path());
    let mut cluster = Cluster::start_in(dir, watch, &three).await;
    drop(taken);
    let nodes = state.ports().unwrap().certifier_nodes;
    assert_eq!(nodes.len(), 3);
    assert!(!nodes.contains(&taken_port), "{nodes:?}");
    assert!(!log.exists(), "the single certifier's log moved");
    assert!(tashkent_wal::holds_segments(
        &cluster.state_dir().join("certifier-1")
    ));
    // Until the others have copied the single certifier's versions, node
    // 1 holds the only copy: `up` waits for the copy (`wait_for_the_copy`)
    // before it says the cluster is up.
    let seeded = cluster.state_dir().join("seeded.json");
    assert!(seeded.exists(), "kept until the copy is known complete");
    cluster.wait_for_the_copy().await;
    assert!(
        !seeded.exists(),
        "forgotten once every node holds the versions"
    );
    let json = status_json(&cluster);
    for i in 1..3 {
        let n = &json["certifier_nodes"][i];
        assert_eq!(
            n["first_version"].as_u64(),
            Some(1),
            "node {}: {json}",
            i + 1
        );
        assert_eq!(
            n["copying_through"].as_u64(),
            Some(0),
            "node {}: {json}",
            i + 1
        );
        assert!(
            n["durable_version"].as_u64() >= Some(single_version),
            "node {} holds the versions once the wait returns: {json}",
            i + 1
        );
    }
    assert_eq!(leader(&cluster).await, 0, "the seeded node leads first");
    insert(&cluster, 1, 30, 40).await;
    let version = cluster.acknowledged_version().await;
    assert_eq!(version, single_version + 10, "versions go on, none reused");

    cluster.kill_certifier_node(0).await.unwrap();
    for k in 40..50i32 {
        insert_across_a_failover(&cluster, (k % 2) as usize, k).await;
    }
    assert_ne!(leader(&cluster).await, 0);
    cluster.wait_converged().await;
    let tables = cluster.assert_identical().await;
    assert_eq!(tables.len(), 1, "{tables:?}");
    for i in 0..2 {
        let n: i64 = cluster
            .replica(i)
            .await
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 50, "replica {}", i + 1);
    }
    let dir = cluster.shutdown().await;
    let _watch = common::watchdog::Watch::new(dir.path());
    start_fails(&one, "one certifier over three nodes", "certifiers = 3").await;
}
