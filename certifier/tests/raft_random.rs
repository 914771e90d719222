//! Seeded randomized test of the replicated certifier's exactness
//! (`TASHKENT_SEED=n` replays a run; the seed is printed).
//!
//! Three nodes served in this process (a snapshot every 40 entries, so
//! that restarts start from snapshots) take certifications from
//! concurrent clients: rows of random bytes of every size, from a few
//! bytes to writesets larger than a raft entry (replicated in parts),
//! snapshots that make some of them conflict, and retries under the same
//! txn id. Meanwhile, at seeded moments, the leader (handing its
//! leadership over first, or not) or a follower stops
//! and comes back from its disk, or a follower loses its disk and rejoins
//! from the others; while a node is down, a checkpoint at half the newest
//! version is reported, so the others purge their logs behind it and the
//! node may come back to a log it can only follow from a snapshot. No node
//! may drop a version above the checkpoint: then every node must serve
//! every version from the checkpoint on, byte-identical, dense, every
//! acknowledged answer must be what the log holds (a commit at its version
//! with exactly the rows sent, an abort nowhere), every retry must have
//! got the first answer, and no two commits may break the rule (first
//! committer wins on a shared key).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tashkent_certifier::writeset::item;
use tashkent_certifier::{
    AbortCode, CertifierClient, Item, Op, Outcome, Writeset, WRITESET_FORMAT_VERSION,
};

mod raft_common;
use raft_common::served::{Nodes, WAIT};

const WORKERS: u64 = 4;
/// Each client sends at least this many, and goes on while faults run.
const OPS_PER_WORKER: usize = 60;
/// ... but at most this many.
const MAX_OPS_PER_WORKER: usize = 400;
/// Rows are keyed from this many keys, so that transactions conflict.
const KEYS: u32 = 16;
/// Writesets larger than a raft entry (1 MiB) each worker sends at most.
const LARGE_PER_WORKER: usize = 2;
/// Stops and restarts during the run.
const FAULTS: usize = 4;

/// The seed of this run: `TASHKENT_SEED`, else the clock.
fn seed() -> u64 {
    let seed = std::env::var("TASHKENT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("raft_random seed {seed} (TASHKENT_SEED={seed} repeats it)");
    seed
}

/// What a client was told about one transaction.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Committed(u64),
    Aborted(AbortCode),
}

impl Answer {
    fn of(o: Outcome) -> Answer {
        match o {
            Outcome::Committed { version } => Answer::Committed(version),
            Outcome::Aborted { code, .. } => Answer::Aborted(code),
        }
    }
}

/// One transaction a worker sent, and what it was told (`None`: every
/// attempt so far failed, the outcome is unknown).
struct Sent {
    ws: Writeset,
    answer: Option<Answer>,
}

/// `len` random bytes (every byte value occurs).
fn random_bytes(rng: &mut StdRng, len: usize) -> Bytes {
    let mut b = vec![0u8; len];
    rng.fill_bytes(&mut b);
    b.into()
}

fn row_len(rng: &mut StdRng, large_left: &mut usize) -> usize {
    match rng.random_range(0..100) {
        0..=2 if *large_left > 0 => {
            *large_left -= 1;
            rng.random_range((1 << 20) + 1..(5 << 19))
        }
        3..=9 => rng.random_range(1..64 << 10),
        _ => rng.random_range(0..200),
    }
}

/// A transaction of worker `w` updating 1 to 3 distinct keys.
fn transaction(
    rng: &mut StdRng,
    w: u64,
    n: usize,
    snapshot: u64,
    large_left: &mut usize,
) -> Writeset {
    let keys: BTreeSet<u32> = (0..rng.random_range(1..=3))
        .map(|_| rng.random_range(0..KEYS))
        .collect();
    let items = keys
        .into_iter()
        .map(|k| {
            let len = row_len(rng, large_left);
            Item {
                row: random_bytes(rng, len),
                ..item("t", Op::Update, format!("k{k}").into_bytes())
            }
        })
        .collect();
    Writeset {
        format_version: WRITESET_FORMAT_VERSION,
        txn_id: Bytes::from(format!("w{w}-{n}")),
        origin: 1,
        snapshot,
        items,
        ..Writeset::default()
    }
}

/// Sends `ws`, checking a repeated answer against the first. Two of
/// three large ones go in a Certify stream of several chunks (each
/// replicated as it arrives), the others in one.
async fn send(client: &CertifierClient, sent: &mut Sent, latest: &AtomicU64) {
    let ws = sent.ws.clone();
    let large = ws.items.iter().map(|i| i.row.len()).sum::<usize>() > 1 << 20;
    let sent_as = match sent.ws.txn_id.iter().map(|b| *b as usize).sum::<usize>() % 3 {
        _ if !large => client.certify(ws).await,
        0 => client.certify(ws).await,
        1 => client.certify_chunked(ws, 256 << 10).await,
        _ => client.certify_chunked(ws, 700 << 10).await,
    };
    let Ok(o) = sent_as else {
        return;
    };
    let got = Answer::of(o);
    if let Some(first) = &sent.answer {
        assert_eq!(
            &got, first,
            "a retry of {:?} was answered differently",
            sent.ws.txn_id
        );
    }
    if let Answer::Committed(v) = got {
        latest.fetch_max(v, Ordering::Relaxed);
    }
    sent.answer = Some(got);
}

/// One client's run: new transactions on snapshots at or a little behind
/// the newest version it knows of, and retries of its earlier ones, until
/// `faulting` is over.
async fn worker(
    client: CertifierClient,
    seed: u64,
    w: u64,
    latest: Arc<AtomicU64>,
    faulting: Arc<AtomicBool>,
) -> Vec<Sent> {
    let mut rng = StdRng::seed_from_u64(seed ^ (w << 48));
    let mut large_left = LARGE_PER_WORKER;
    let mut sent: Vec<Sent> = Vec::new();
    for n in 0..MAX_OPS_PER_WORKER {
        if n >= OPS_PER_WORKER && !faulting.load(Ordering::Relaxed) {
            break;
        }
        if !sent.is_empty() && rng.random_range(0..10) == 0 {
            let i = rng.random_range(0..sent.len());
            send(&client, &mut sent[i], &latest).await;
            continue;
        }
        let snapshot = latest
            .load(Ordering::Relaxed)
            .saturating_sub(rng.random_range(0..4));
        let mut s = Sent {
            ws: transaction(&mut rng, w, n, snapshot, &mut large_left),
            answer: None,
        };
        send(&client, &mut s, &latest).await;
        sent.push(s);
    }
    sent
}

/// Stops and restarts nodes at seeded moments; a follower's disk is lost
/// once; while a node is down, a checkpoint at half the newest version
/// `client` knows of is reported. Returns the nodes, all running, the
/// wiped node's id and the newest checkpoint reported.
async fn faults(
    mut nodes: Nodes,
    seed: u64,
    client: &CertifierClient,
    latest: &AtomicU64,
) -> (Nodes, Option<u64>, u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xfa17);
    let mut wiped = None;
    let mut checkpoint = 0;
    for f in 0..FAULTS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        let leader = nodes.leader().await;
        let followers: Vec<u64> = nodes
            .running
            .keys()
            .copied()
            .filter(|id| *id != leader)
            .collect();
        // The leader stops first; in the middle a follower's disk is lost;
        // else the leader (one time in three) or a follower stops.
        let wipe = f == FAULTS / 2;
        let victim = if f == 0 || (!wipe && rng.random_range(0..3) == 0) {
            leader
        } else {
            followers[rng.random_range(0..followers.len())]
        };
        eprintln!("fault {f}: node {victim} stops (leader {leader}, wiped: {wipe})");
        nodes
            .running
            .remove(&victim)
            .unwrap()
            .shutdown()
            .await
            .unwrap();
        if wipe {
            let dir = nodes.dirs[&victim].path().join("wal");
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                // Something of the stopped node still writes there.
                let left: Vec<_> = walk(&dir);
                panic!("node {victim}'s directory not removed ({e}): left {left:?}");
            }
            wiped = Some(victim);
        }
        // A leader back before the others elected one (an election
        // timeout of up to 1.2 s, and the lease they granted it) leads on
        // in its term; 3 s is long enough for another to be elected. (A
        // leader that handed over on stopping has a successor already.)
        let down = if victim == leader {
            3000..4000
        } else {
            100..800
        };
        tokio::time::sleep(Duration::from_millis(rng.random_range(down))).await;
        // The running nodes purge behind it; the stopped one does not hear
        // of it.
        checkpoint = checkpoint.max(latest.load(Ordering::Relaxed) / 2);
        if let Err(e) = client.report_checkpoint(checkpoint).await {
            eprintln!("checkpoint {checkpoint} not reported everywhere: {e}");
        }
        // Stopped as leader later, it hands over first, or leaves the
        // others to elect one (every node hands over until restarted).
        nodes.hand_over_on_stop = rng.random_bool(0.5);
        eprintln!(
            "node {victim} restarts, handing over on stop: {}",
            nodes.hand_over_on_stop
        );
        nodes.restart(victim).await;
        nodes.leader().await;
    }
    (nodes, wiped, checkpoint)
}

/// The files under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => walk(&e.path()),
            _ => vec![e.path()],
        })
        .collect()
}

/// Versions `first..=last` as node `id` serves them.
async fn versions_of(nodes: &Nodes, id: u64, first: u64, last: u64) -> Vec<(u64, Writeset)> {
    let c = nodes.client(id).await;
    let stream = c.subscribe(first).await.unwrap();
    let n = (last + 1 - first) as usize;
    let got = tokio::time::timeout(WAIT, stream.take(n).collect::<Vec<_>>())
        .await
        .unwrap_or_else(|_| panic!("node {id} did not serve versions {first}..={last}"));
    got.into_iter()
        .map(|r| {
            let w = r.unwrap();
            (w.version, w.writeset)
        })
        .collect()
}

fn keys(ws: &Writeset) -> BTreeSet<Bytes> {
    ws.items.iter().map(|i| i.key.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_holds_exactly_what_clients_were_told_through_faults() {
    let seed = seed();
    // Purging once a checkpoint allows it, as soon as the nodes start.
    let nodes = Nodes::start_purging(3, 40, 0, 1 << 20).await;
    nodes.leader().await;
    let client = nodes.client_of_all().await;
    let latest = Arc::new(AtomicU64::new(0));
    let faulting = Arc::new(AtomicBool::new(true));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (latest, faulting) = (latest.clone(), faulting.clone());
            tokio::spawn(worker(client.clone(), seed, w, latest, faulting))
        })
        .collect();
    let (nodes, wiped, checkpoint) = faults(nodes, seed, &client, &latest).await;
    faulting.store(false, Ordering::Relaxed);
    let mut sent: Vec<Sent> = Vec::new();
    for w in workers {
        sent.extend(w.await.unwrap());
    }
    // Outcomes no attempt learnt: a retry now gets the real one.
    for s in sent.iter_mut().filter(|s| s.answer.is_none()) {
        let o = client.certify(s.ws.clone()).await.unwrap();
        s.answer = Some(Answer::of(o));
    }

    let leader = nodes.leader().await;
    let last = nodes
        .client(leader)
        .await
        .status()
        .await
        .unwrap()
        .latest_version;
    // No node may have dropped a version above the checkpoint: a node
    // rejoining after a stop or a wipe replays the raft log, which is
    // purged only as the versions log is (`raft::versions`), or installs a
    // snapshot and copies the versions it skips from a peer (`raft::gap`).
    let mut by_version: BTreeMap<u64, Writeset> = BTreeMap::new();
    let mut served = BTreeMap::new();
    for id in nodes.running.keys() {
        // Once caught up (a node catching up may still be copying).
        let first = nodes
            .status_when(*id, &format!("did not catch up to {last}"), |s| {
                s.committed_version >= last
            })
            .await
            .first_version
            .max(1);
        assert!(
            first <= checkpoint + 1,
            "node {id} starts at {first}, after the checkpoint {checkpoint} (seed {seed})"
        );
        let log = versions_of(&nodes, *id, first, last).await;
        served.insert(*id, (first, log.len()));
        for (v, ws) in log {
            if let Some(other) = by_version.get(&v) {
                assert!(
                    *other == ws,
                    "node {id} holds another writeset at version {v} (seed {seed})"
                );
            } else {
                by_version.insert(v, ws);
            }
        }
    }
    assert!(
        served
            .values()
            .all(|(first, n)| *n as u64 == last + 1 - first),
        "a node lacks versions: (first version, versions) by node {served:?}, latest {last} \
         (seed {seed})"
    );
    // Versions purged on every node are not compared.
    let kept = served.values().map(|(first, _)| *first).min().unwrap();
    assert_eq!(
        by_version.keys().copied().collect::<Vec<_>>(),
        (kept..=last).collect::<Vec<_>>(),
        "versions dense (seed {seed})"
    );

    let told: HashMap<&Bytes, &Sent> = sent.iter().map(|s| (&s.ws.txn_id, s)).collect();
    let mut seen = BTreeSet::new();
    for (v, ws) in &by_version {
        assert!(seen.insert(ws.txn_id.clone()), "{:?} twice", ws.txn_id);
        let s = told
            .get(&ws.txn_id)
            .unwrap_or_else(|| panic!("version {v}: {:?} was never sent", ws.txn_id));
        assert_eq!(s.answer, Some(Answer::Committed(*v)), "{:?}", ws.txn_id);
        assert!(
            ws.items == s.ws.items && ws.snapshot == s.ws.snapshot,
            "version {v}: the rows of {:?} differ from what was sent (seed {seed})",
            ws.txn_id
        );
    }
    let mut committed = 0;
    for s in &sent {
        match s.answer.as_ref().unwrap() {
            Answer::Committed(v) => {
                committed += 1;
                if *v >= kept {
                    assert_eq!(by_version[v].txn_id, s.ws.txn_id);
                }
            }
            Answer::Aborted(code) => {
                assert!(!seen.contains(&s.ws.txn_id), "{:?}", s.ws.txn_id);
                // An abort for a conflict has a commit to blame (unless
                // it may be purged everywhere).
                if *code == AbortCode::Conflict && s.ws.snapshot >= kept {
                    let mine = keys(&s.ws);
                    assert!(
                        by_version
                            .range(s.ws.snapshot + 1..)
                            .any(|(_, w)| !keys(w).is_disjoint(&mine)),
                        "{:?} aborted with nothing to conflict with",
                        s.ws.txn_id
                    );
                }
            }
        }
    }
    // First committer wins: no commit shares a key with one committed
    // after its snapshot and before it.
    for (v, ws) in &by_version {
        let mine = keys(ws);
        for (u, other) in by_version.range(ws.snapshot + 1..*v) {
            assert!(
                keys(other).is_disjoint(&mine),
                "versions {u} and {v} share a key, yet {v}'s snapshot is {} (seed {seed})",
                ws.snapshot
            );
        }
    }
    let aborted = sent.len() - committed;
    let large = sent
        .iter()
        .filter(|s| s.ws.items.iter().map(|i| i.row.len()).sum::<usize>() > 1 << 20)
        .count();
    eprintln!(
        "{} transactions ({large} over 1 MiB): {committed} committed (versions 1..={last}), \
         {aborted} aborted; \
         (first version, versions compared) by node: {served:?}; node wiped: {wiped:?}; \
         checkpoint {checkpoint}",
        sent.len(),
    );
    assert_eq!(committed as u64, last);
    assert!(committed > 0 && aborted > 0, "the run made no conflicts");
    for (_, r) in nodes.running {
        r.shutdown().await.unwrap();
    }
}
