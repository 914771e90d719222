//! A leader cut off from the majority (issue 14), with real processes:
//! three `tashkent certifier` nodes whose raft links each run through a
//! relay the test controls (`[certifier] peer_routes`), three replicas and
//! their proxies under a TPC-B-like load. The leader's links to both
//! others are cut, both ways, while proxies still reach it. It must stop
//! committing (no split brain): a certification sent to it alone is
//! refused, its committed version stays put, while the other two elect a
//! leader and the load commits on through them. After the links heal it
//! follows the new leader and catches up. The end: no acknowledged commit
//! lost, no aborted one present, replicas identical, TPC-B's invariant,
//! versions dense on every node.

use crate::certifier_failover::{
    leader_among, leader_past, nodes_caught_up, statuses, statuses_until, ws,
};
use crate::common;
use crate::recovery::{setup, targets_of, Load};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::relay::Relay;
use tashkent_certifier::proto::StatusResponse;
use tashkent_certifier::{CertifierClient, Outcome};

/// One relay per directed link between the nodes: `links[(i, j)]` carries
/// node i's raft messages to node j.
struct Links(BTreeMap<(usize, usize), Relay>);

impl Links {
    /// Relays between every pair of `nodes`, and each node restarted
    /// (one at a time) to send through them.
    async fn route(cluster: &mut Cluster) -> Links {
        let nodes = cluster.certifier_node_addrs();
        let mut links = BTreeMap::new();
        for i in 0..nodes.len() {
            for (j, to) in nodes.iter().enumerate().filter(|(j, _)| *j != i) {
                links.insert((i, j), Relay::start(*to).await);
            }
        }
        for i in 0..nodes.len() {
            let routes: Vec<String> = (0..nodes.len())
                .filter(|j| *j != i)
                .map(|j| format!("{}={}", j + 1, links[&(i, j)].addr()))
                .collect();
            cluster.route_certifier_node(i, Some(routes.join(",")));
            cluster.start_certifier_node(i).await.unwrap();
        }
        Links(links)
    }

    /// Cuts (or heals) every link to and from node `n`.
    fn isolate(&self, n: usize, cut: bool) {
        for ((i, j), relay) in &self.0 {
            if *i == n || *j == n {
                if cut {
                    relay.cut();
                } else {
                    relay.heal();
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_the_majority_stops_committing_and_rejoins() {
    let mut cluster = Cluster::start_file(3, |f| f.cluster.certifiers = 3).await;
    let addrs: Vec<String> = cluster.node_addrs();
    let links = Links::route(&mut cluster).await;
    setup(&cluster).await;
    let load = Load::start(&targets_of(&cluster), &[0, 0, 1, 1, 2, 2]);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (old, before) = leader_past(&addrs, 0, Duration::from_secs(20)).await;
    links.isolate(old, true);
    let cut = Instant::now();
    let (new, after) = leader_among(
        &addrs,
        &[old],
        before.committed_version,
        Duration::from_secs(30),
    )
    .await;
    eprintln!(
        "node {} (leader, version {}) cut off; node {} leads (term {}) and committed version {} \
         {:?} later",
        old + 1,
        before.committed_version,
        new + 1,
        after.term,
        after.committed_version,
        cut.elapsed()
    );

    // The new leader's status names the cut-off node as unreachable.
    let cut_off = old as u64 + 1;
    let names_it = |all: &[Option<StatusResponse>]| {
        all[new]
            .as_ref()
            .is_some_and(|s| s.unreachable_peers == [cut_off])
    };
    let all = statuses_until(&addrs, Duration::from_secs(10), names_it).await;
    assert!(
        names_it(&all),
        "the new leader does not name node {cut_off} unreachable: {all:?}"
    );

    // The old leader, asked alone, commits nothing.
    let alone = CertifierClient::connect(&addrs[old]).await.unwrap();
    let asked = Instant::now();
    match tokio::time::timeout(Duration::from_secs(10), alone.certify(ws("cut-off"))).await {
        Ok(Err(e)) => eprintln!("the cut-off node answered in {:?}: {e}", asked.elapsed()),
        Ok(Ok(o @ Outcome::Committed { .. })) => panic!("split brain: the cut-off node {o:?}"),
        Ok(Ok(o)) => panic!("the cut-off node answered {o:?}"),
        Err(_) => panic!("the cut-off node did not answer a certification within 10 s"),
    }
    let frozen = alone.status().await.unwrap();
    // The load goes on through the other two.
    // (Generous: the suite runs its tests in parallel.)
    let resumed = load.acked();
    let deadline = Instant::now() + Duration::from_secs(60);
    while load.acked() < resumed + 100 {
        assert!(
            Instant::now() < deadline,
            "the load stopped committing while the old leader was cut off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let still = alone.status().await.unwrap();
    eprintln!(
        "while cut off, node {} says role {:?} term {} committed {}; {} more commits through node {}",
        old + 1,
        still.role,
        still.term,
        still.committed_version,
        load.acked() - resumed,
        new + 1
    );
    assert_eq!(
        still.committed_version, frozen.committed_version,
        "the cut-off node committed"
    );
    if still.role == "leader" {
        // It still tries both others, and names them.
        let others: Vec<u64> = (1..=3).filter(|n| *n != cut_off).collect();
        assert_eq!(still.unreachable_peers, others, "{still:?}");
    }

    links.isolate(old, false);
    let healed = Instant::now();
    let deadline = healed + Duration::from_secs(30);
    loop {
        let all = statuses(&addrs).await;
        let leaders = all.iter().flatten().filter(|s| s.role == "leader").count();
        let back = all[old]
            .as_ref()
            .is_some_and(|s| s.role == "follower" && s.term >= after.term);
        if back && leaders == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {} did not rejoin: {all:?}",
            old + 1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "node {} follows again {:?} after the heal",
        old + 1,
        healed.elapsed()
    );
    // The leader's status forgets the cut once the node answers it.
    let answered = |all: &[Option<StatusResponse>]| {
        let leaders: Vec<_> = all
            .iter()
            .flatten()
            .filter(|s| s.role == "leader")
            .collect();
        leaders.len() == 1
            && leaders[0].unreachable_peers.is_empty()
            && leaders[0].refusing_peers.is_empty()
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let all = statuses_until(&addrs, left, answered).await;
    assert!(answered(&all), "still unreachable: {all:?}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    load.finish(&cluster).await;
    nodes_caught_up(&addrs).await;
    drop(links);
}
