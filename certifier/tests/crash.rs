//! Crash test: the certifier binary is SIGKILLed under load from concurrent
//! clients and restarted on the same WAL directory, several times. After each
//! restart: every acknowledged version is there with identical content
//! (Subscribe from 1), versions are dense (none reused or skipped, no
//! transaction twice), and retried certifications get their original answers.
//! Seeded (CRASH_SEED=n to replay); the seed is printed.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use tashkent_certifier::writeset::item;
use tashkent_certifier::{CertifierClient, Item, Op, Outcome, Writeset, WRITESET_FORMAT_VERSION};

/// The child process; killed (SIGKILL) and reaped on drop, also when a
/// test assertion fails.
struct Server {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    addr: String,
}

impl Server {
    fn start(wal_dir: &std::path::Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tashkent-certifier"))
            .args(["--listen", "127.0.0.1:0", "--wal-segment-bytes", "1048576"])
            .arg("--wal-dir")
            .arg(wal_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tashkent-certifier");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let mut server = Server {
            child,
            _stdout: stdout,
            addr: String::new(),
        };
        // On a bad line the guard kills the child while the panic unwinds.
        server.addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        server
    }

    fn kill(mut self) {
        // std's kill is SIGKILL; only our own child's PID.
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct History {
    /// Acknowledged commits: version → writeset.
    acked: BTreeMap<u64, Writeset>,
    /// Acknowledged aborts.
    aborted: Vec<Writeset>,
    /// Sent, answer lost in the crash.
    unknown: Vec<Writeset>,
}

fn writeset(rng: &mut impl Rng, id: String, snapshot: u64) -> Writeset {
    let n = rng.random_range(1..5);
    Writeset {
        format_version: WRITESET_FORMAT_VERSION,
        txn_id: Bytes::from(id.clone().into_bytes()),
        origin: rng.random_range(1..4),
        snapshot,
        items: (0..n)
            .map(|_| Item {
                row: Bytes::from(format!("{id}:{}", rng.random::<u64>())),
                ..item(
                    "acct",
                    Op::Update,
                    format!("{}", rng.random_range(0..300)).into_bytes(),
                )
            })
            .collect(),
        ddl: vec![],
        last_chunk: false,
        spool: None,
        session: 0,
        losses: 0,
    }
}

/// Load from `clients` concurrent clients until the server dies.
async fn load(addr: &str, round: u64, seed: u64, clients: u64, hist: &mut History) {
    let head = Arc::new(AtomicU64::new(
        hist.acked.keys().last().copied().unwrap_or(0),
    ));
    let mut tasks = Vec::new();
    for c in 0..clients {
        // The kill may come before every client is connected.
        let Ok(client) = CertifierClient::connect(addr).await else {
            break;
        };
        let head = head.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (round << 32) ^ c);
            let mut h = History::default();
            for i in 0.. {
                let w = writeset(
                    &mut rng,
                    format!("r{round}c{c}t{i}"),
                    head.load(Ordering::Relaxed),
                );
                match client.certify(w.clone()).await {
                    Ok(Outcome::Committed { version }) => {
                        head.fetch_max(version, Ordering::Relaxed);
                        h.acked.insert(version, w);
                    }
                    Ok(Outcome::Aborted { .. }) => h.aborted.push(w),
                    Err(_) => {
                        h.unknown.push(w);
                        break;
                    }
                }
            }
            h
        }));
    }
    for t in tasks {
        let h = t.await.expect("client task");
        for (v, w) in h.acked {
            assert!(
                hist.acked.insert(v, w).is_none(),
                "version {v} acknowledged twice"
            );
        }
        hist.aborted.extend(h.aborted);
        hist.unknown.extend(h.unknown);
    }
}

async fn verify(client: &CertifierClient, hist: &mut History) {
    // Retries first: unknown outcomes get resolved (and may add versions).
    for w in std::mem::take(&mut hist.unknown) {
        if let Outcome::Committed { version } = client.certify(w.clone()).await.expect("retry") {
            match hist.acked.get(&version) {
                Some(prev) => assert_eq!(prev, &w, "version {version} reused"),
                None => {
                    hist.acked.insert(version, w);
                }
            }
        }
    }
    for (v, w) in &hist.acked {
        let o = client.certify(w.clone()).await.expect("retry");
        assert_eq!(
            o,
            Outcome::Committed { version: *v },
            "retry of an acknowledged commit"
        );
    }
    for w in &hist.aborted {
        let o = client.certify(w.clone()).await.expect("retry");
        assert!(
            matches!(o, Outcome::Aborted { .. }),
            "acknowledged abort became {o:?}"
        );
    }
    let latest = client.status().await.expect("status").latest_version;
    assert!(latest >= hist.acked.keys().last().copied().unwrap_or(0));
    let all: Vec<_> = client
        .subscribe(1)
        .await
        .expect("subscribe")
        .take(latest as usize)
        .collect()
        .await;
    let mut ids = HashMap::new();
    for (i, cw) in all.into_iter().enumerate() {
        let cw = cw.expect("subscribe item");
        assert_eq!(cw.version, i as u64 + 1, "versions dense and in order");
        if let Some(w) = hist.acked.get(&cw.version) {
            assert_eq!(
                &cw.writeset, w,
                "content of acknowledged version {}",
                cw.version
            );
        }
        if let Some(prev) = ids.insert(cw.writeset.txn_id.clone(), cw.version) {
            panic!(
                "transaction {:?} at versions {prev} and {}",
                cw.writeset.txn_id, cw.version
            );
        }
    }
    assert_eq!(ids.len() as u64, latest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_acknowledged() {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("crash test seed: {seed} (CRASH_SEED={seed} to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = dir.path().join("wal");
    let mut hist = History::default();
    // At least five kills, and more until the load is large enough (a
    // loaded machine commits less before each kill).
    let mut round = 0u64;
    while round < 5 || (hist.acked.len() <= 500 && round < 50) {
        let server = Server::start(&wal);
        let addr = server.addr.clone();
        let kill_after = Duration::from_millis(rng.random_range(150..600));
        let killer = tokio::spawn(async move {
            tokio::time::sleep(kill_after).await;
            server.kill();
        });
        load(&addr, round, seed, 8, &mut hist).await;
        killer.await.expect("killer");
        let server = Server::start(&wal);
        let client = CertifierClient::connect(&server.addr)
            .await
            .expect("connect");
        verify(&client, &mut hist).await;
        println!(
            "round {round}: killed after {kill_after:?}; {} acknowledged commits, {} aborts so far",
            hist.acked.len(),
            hist.aborted.len()
        );
        server.kill();
        round += 1;
    }
    assert!(
        hist.acked.len() > 500,
        "too little load: {}",
        hist.acked.len()
    );
}
