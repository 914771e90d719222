//! Certifier benchmarks (criterion; short default runs).
//!
//! - `rule/certify_5_keys`: the pure `Certifier` on one core, 5-row
//!   writesets with random keys out of 10M (steady state: the window is at
//!   its memory bound and prunes as it goes). Goal >= 1M/s.
//! - `service/wal_in_process`: `CertifierService::certify` with the real WAL
//!   (group fdatasync), many concurrent tasks, no gRPC.
//! - `grpc/end_to_end_{C}conn_x{T}`: C client connections (think: proxies),
//!   T concurrent certifications on each, over gRPC on 127.0.0.1 with the
//!   real WAL; clients and server share the machine's cores. Goal >= 50k/s
//!   on the 2-core machine. `grpc/status_rpc` is the floor a unary call
//!   per transaction would have (the pipeline stream batches instead).
//!
//! - `raft/end_to_end_{N}node_4conn_x32`: the same load against a
//!   replicated certifier of N raft nodes in this process (`--node-id`,
//!   `--peers`), the clients given every node (they find the leader);
//!   every node fsyncs its raft log and its versions log. Issue 14's goal:
//!   3 nodes >= 0.7x one node (compare with `grpc/end_to_end_4conn_x32`).
//! - `raft/end_to_end_{N}node_4conn_x256`: the same with 1024 concurrent
//!   certifications, near saturation (compare with
//!   `grpc/end_to_end_4conn_x256`): whether three nodes fall behind for
//!   want of CPU or of latency.
//! - `grpc/lone_1conn_x1`, `raft/lone_{N}node_1conn_x1`: one client
//!   certifying alone, one call after the other: the latency of a
//!   certification at rest (the time per element), with the single
//!   certifier and with N raft nodes.
//!
//! Each end-to-end benchmark also prints the process's CPU time per
//! certification over its run (every thread: clients, server or nodes,
//! WAL writers), which bounds throughput once the two cores are busy and
//! moves less with the VM's state than throughput does. When a run
//! measures both the single certifier and three nodes at one load, it
//! prints their ratio (certifications per second over every iteration of
//! each, warm-up included), issue 14's figure.
//!
//! The bench runs with mimalloc, as the certifier binary does.
//!
//! Run: `cargo bench --bench certify`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use tashkent_certifier::writeset::item;
use tashkent_certifier::{
    Certifier, CertifierClient, CertifierConfig, Decision, Limits, Op, Outcome, Writeset,
    WRITESET_FORMAT_VERSION,
};

// The allocator the certifier binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEYS: u64 = 10_000_000;

fn writeset(rng: &mut impl Rng, id: u64, snapshot: u64) -> Writeset {
    Writeset {
        format_version: WRITESET_FORMAT_VERSION,
        txn_id: Bytes::copy_from_slice(&id.to_le_bytes()),
        origin: 1,
        snapshot,
        items: (0..5)
            .map(|_| {
                let k = rng.random_range(0..KEYS);
                let mut it = item("accounts", Op::Update, k.to_be_bytes().to_vec());
                it.row = Bytes::from_static(b"0123456789abcdef0123456789abcdef");
                it
            })
            .collect(),
        ddl: vec![],
        last_chunk: false,
        spool: None,
        session: 0,
        losses: 0,
    }
}

fn rule(c: &mut Criterion) {
    let mut g = c.benchmark_group("rule");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(3));
    // `lag`: how far behind the head the replicas' oldest snapshot is (they
    // report every 1000 commits); None: nobody reports, the window sits at
    // its memory bound (4M entries) and prunes on every commit.
    for (name, lag) in [
        ("certify_5_keys_replicas_lag_10k", Some(10_000u64)),
        ("certify_5_keys_window_at_memory_bound", None),
    ] {
        g.bench_function(name, |b| {
            let mut cert = Certifier::new(Limits::default());
            let mut rng = rand::rngs::StdRng::seed_from_u64(1);
            let mut id = 0u64;
            let now = Instant::now();
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(1000);
                    left -= n;
                    let head = cert.latest();
                    if let Some(lag) = lag {
                        let oldest = head.saturating_sub(lag);
                        cert.report(1, head, oldest, now).expect("report");
                    }
                    // Snapshots lag the head a little, as on a busy replica.
                    let batch: Vec<_> = (0..n)
                        .map(|i| {
                            id += 1;
                            writeset(&mut rng, id, (head + i).saturating_sub(50))
                        })
                        .collect();
                    let t = Instant::now();
                    for ws in &batch {
                        match cert.certify(ws) {
                            Ok(Decision::Commit(_) | Decision::Abort(_)) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                    total += t.elapsed();
                }
                total
            });
        });
    }
    g.finish();
}

fn bench_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir")
}

/// Runs `iters` certifications spread over `tasks` concurrent workers; each
/// worker's closure certifies one writeset.
async fn drive<F, Fut>(iters: u64, tasks: u64, head: Arc<AtomicU64>, certify: F) -> Duration
where
    F: Fn(Writeset) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Outcome> + Send,
{
    static ID: AtomicU64 = AtomicU64::new(1 << 40);
    let t = Instant::now();
    let mut hs = Vec::new();
    for w in 0..tasks {
        let n = iters / tasks + u64::from(w < iters % tasks);
        let certify = certify.clone();
        let head = head.clone();
        hs.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w);
            for _ in 0..n {
                let id = ID.fetch_add(1, Ordering::Relaxed);
                let ws = writeset(&mut rng, id, head.load(Ordering::Relaxed));
                if let Outcome::Committed { version } = certify(ws).await {
                    head.fetch_max(version, Ordering::Relaxed);
                }
            }
        }));
    }
    for h in hs {
        h.await.expect("worker");
    }
    t.elapsed()
}

/// The CPU time this process spent per certification over one
/// benchmark's iterations (warm-up included), and their throughput,
/// printed at its end.
#[derive(Default)]
struct CpuPerCert {
    certs: AtomicU64,
    ticks: AtomicU64,
    /// The iterations' own time, as criterion is told it, in ns.
    nanos: AtomicU64,
}

/// Throughput of the single certifier's end-to-end benchmarks of this
/// run, by load (`4conn_x32`), for the ratio issue 14 sets a goal on.
static SINGLE: std::sync::Mutex<Vec<(String, f64)>> = std::sync::Mutex::new(Vec::new());

impl CpuPerCert {
    /// Runs `run`, which certifies `iters` times, counting its CPU time.
    async fn count(
        &self,
        iters: u64,
        run: impl std::future::Future<Output = Duration>,
    ) -> Duration {
        let before = cpu_ticks();
        let took = run.await;
        self.ticks
            .fetch_add(cpu_ticks().saturating_sub(before), Ordering::Relaxed);
        self.certs.fetch_add(iters, Ordering::Relaxed);
        self.nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        took
    }

    /// Prints the figure, unless the benchmark did not run (a filter);
    /// the certifications per second over all its iterations.
    fn report(&self, name: &str) -> Option<f64> {
        let certs = self.certs.load(Ordering::Relaxed);
        if certs == 0 {
            return None;
        }
        // A tick is 10 ms (USER_HZ, 100 on Linux): in µs, ticks * 10_000.
        let us = self.ticks.load(Ordering::Relaxed) as f64 * 10_000.0 / certs as f64;
        eprintln!("{name}: {us:.1} µs of CPU per certification ({certs} certifications)");
        let secs = self.nanos.load(Ordering::Relaxed) as f64 / 1e9;
        Some(certs as f64 / secs.max(1e-9))
    }
}

/// Remembers the single certifier's throughput at `load`.
fn single_at(load: &str, per_sec: Option<f64>) {
    if let Some(r) = per_sec {
        SINGLE.lock().expect("lock").push((load.to_string(), r));
    }
}

/// Prints three nodes ÷ one certifier at `load` when this run measured
/// both (the single certifier's benchmarks run first).
fn ratio_at(load: &str, three: Option<f64>) {
    let single = SINGLE.lock().expect("lock");
    if let (Some(three), Some((_, one))) = (three, single.iter().find(|(l, _)| l == load)) {
        eprintln!(
            "three nodes ÷ one certifier at {load}: {:.2} ({:.1}k ÷ {:.1}k certifications/s over \
             every iteration of both; issue 14's goal: >= 0.7)",
            three / one,
            three / 1e3,
            one / 1e3
        );
    }
}

/// This process's CPU time so far, user and system, of all its threads,
/// in clock ticks (`/proc/self/stat`'s utime and stime).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the command name (in parentheses, maybe with spaces) come the
    // fields from the third on; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let field = |i: usize| -> u64 {
        rest.split_whitespace()
            .nth(i - 3)
            .and_then(|f| f.parse().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

/// `iters` certifications from `tasks` workers, each call on the next of
/// `clients` in turn.
async fn spread(
    iters: u64,
    tasks: u64,
    head: Arc<AtomicU64>,
    clients: Vec<CertifierClient>,
) -> Duration {
    let next = Arc::new(AtomicU64::new(0));
    drive(iters, tasks, head, move |ws| {
        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
        let client = clients[i % clients.len()].clone();
        async move { client.certify(ws).await.expect("certify") }
    })
    .await
}

/// `iters` certifications one after the other: a lone client's latency.
async fn lone(iters: u64, client: CertifierClient, head: Arc<AtomicU64>) -> Duration {
    drive(iters, 1, head, move |ws| {
        let client = client.clone();
        async move { client.certify(ws).await.expect("certify") }
    })
    .await
}

/// `BENCH_WAL_BACKEND` (`portable`, `io_uring`; default auto).
fn wal_backend() -> tashkent_certifier::WalBackend {
    match std::env::var("BENCH_WAL_BACKEND").as_deref() {
        Ok("portable") => tashkent_certifier::WalBackend::Portable,
        Ok("io_uring") => tashkent_certifier::WalBackend::IoUring,
        _ => tashkent_certifier::WalBackend::Auto,
    }
}

fn end_to_end(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = bench_dir();
    let cfg = CertifierConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        wal_dir: dir.path().join("wal"),
        wal_backend: wal_backend(),
        ..CertifierConfig::default()
    };
    let server = rt.block_on(tashkent_certifier::start(cfg)).expect("start");
    let addr = server.local_addr().to_string();
    let head = Arc::new(AtomicU64::new(0));
    // A replica that reports every 10 ms, 1000 versions behind the head
    // (keeps the conflict window at a realistic size).
    let reporter = {
        let svc = server.service().clone();
        let head = head.clone();
        rt.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let h = head.load(Ordering::Relaxed);
                let _ = svc.report_applied(1, h, h.saturating_sub(1000));
            }
        })
    };

    let mut g = c.benchmark_group("service");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(4));
    let svc = server.service().clone();
    g.bench_function("wal_in_process_256_tasks", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let svc = svc.clone();
            let head = head.clone();
            async move {
                drive(iters, 256, head, move |ws| {
                    let svc = svc.clone();
                    async move { svc.certify(ws).await.expect("certify") }
                })
                .await
            }
        });
    });
    g.finish();

    let mut g = c.benchmark_group("grpc");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    // The floor: a trivial unary RPC (Status) at the same concurrency.
    let status_clients: Vec<CertifierClient> = rt
        .block_on(async {
            let mut v = Vec::new();
            for _ in 0..4 {
                v.push(CertifierClient::connect(&addr).await?);
            }
            Ok::<_, tashkent_certifier::CertifierError>(v)
        })
        .expect("connect");
    g.bench_function("status_rpc_4conn_x32", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let clients = status_clients.clone();
            async move {
                let t = Instant::now();
                let mut hs = Vec::new();
                for w in 0..128u64 {
                    let client = clients[w as usize % clients.len()].clone();
                    let n = iters / 128 + u64::from(w < iters % 128);
                    hs.push(tokio::spawn(async move {
                        for _ in 0..n {
                            client.status().await.expect("status");
                        }
                    }));
                }
                for h in hs {
                    h.await.expect("worker");
                }
                t.elapsed()
            }
        });
    });
    let cpu = CpuPerCert::default();
    g.bench_function("lone_1conn_x1", |b| {
        let client = status_clients[0].clone();
        b.to_async(&rt)
            .iter_custom(|iters| cpu.count(iters, lone(iters, client.clone(), head.clone())));
    });
    cpu.report("grpc/lone_1conn_x1");
    for (conns, per_conn) in [(4u64, 32u64), (8, 32), (4, 256)] {
        let clients: Vec<CertifierClient> = rt
            .block_on(async {
                let mut v = Vec::new();
                for _ in 0..conns {
                    v.push(CertifierClient::connect(&addr).await?);
                }
                Ok::<_, tashkent_certifier::CertifierError>(v)
            })
            .expect("connect");
        let name = format!("end_to_end_{conns}conn_x{per_conn}");
        let cpu = CpuPerCert::default();
        g.bench_function(&name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let run = spread(iters, conns * per_conn, head.clone(), clients.clone());
                cpu.count(iters, run)
            });
        });
        single_at(
            &format!("{conns}conn_x{per_conn}"),
            cpu.report(&format!("grpc/{name}")),
        );
    }
    g.finish();
    // How well group commit amortised the fdatasync over everything above.
    let st = server.service().wal().stats();
    eprintln!(
        "WAL ({:?}): {} appends in {} groups, {:.1} appends per fdatasync",
        st.backend,
        st.appends,
        st.groups,
        st.appends as f64 / st.groups.max(1) as f64
    );
    reporter.abort();
    rt.block_on(server.shutdown()).expect("shutdown");
}

/// `n` raft nodes on free loopback ports, each in its own directory.
async fn raft_nodes(
    n: usize,
    dir: &std::path::Path,
) -> (Vec<tashkent_certifier::RunningCertifier>, String) {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("port"))
        .collect();
    let addrs: Vec<String> = held
        .iter()
        .map(|l| l.local_addr().expect("addr").to_string())
        .collect();
    drop(held);
    let peers = tashkent_certifier::config::format_peers(&addrs);
    let mut nodes = Vec::new();
    for i in 0..n {
        let cfg = CertifierConfig {
            wal_dir: dir.join(format!("node-{}", i + 1)),
            node_id: Some(i as u64 + 1),
            peers: Some(peers.clone()),
            wal_backend: wal_backend(),
            ..CertifierConfig::default()
        };
        nodes.push(tashkent_certifier::start(cfg).await.expect("start node"));
    }
    (nodes, addrs.join(","))
}

fn replicated(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut g = c.benchmark_group("raft");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    for n in [1usize, 3] {
        let dir = bench_dir();
        let (nodes, addrs) = rt.block_on(raft_nodes(n, dir.path()));
        let head = Arc::new(AtomicU64::new(0));
        let clients: Vec<CertifierClient> = rt
            .block_on(async {
                let first = CertifierClient::connect(&addrs).await?;
                // The election: one address means no retries.
                while first.status().await?.leader_id == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let mut rng = rand::rngs::StdRng::seed_from_u64(99);
                first.certify(writeset(&mut rng, u64::MAX, 0)).await?;
                let mut v = vec![first.clone()];
                for _ in 1..4 {
                    v.push(first.connect_again().await?);
                }
                Ok::<_, tashkent_certifier::CertifierError>(v)
            })
            .expect("connect");
        // A replica reporting as in `end_to_end` (the nodes propose at
        // most one report a second): without one the conflict window, and
        // every raft snapshot with it, would grow to its memory bound.
        let reporter = {
            let client = clients[0].clone();
            let head = head.clone();
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let h = head.load(Ordering::Relaxed);
                    let _ = client.report_applied(1, h, h.saturating_sub(1000)).await;
                }
            })
        };
        for per_conn in [32u64, 256] {
            let name = format!("end_to_end_{n}node_4conn_x{per_conn}");
            let cpu = CpuPerCert::default();
            g.bench_function(&name, |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let run = spread(iters, 4 * per_conn, head.clone(), clients.clone());
                    cpu.count(iters, run)
                });
            });
            let per_sec = cpu.report(&format!("raft/{name}"));
            if n == 3 {
                ratio_at(&format!("4conn_x{per_conn}"), per_sec);
            }
        }
        let name = format!("lone_{n}node_1conn_x1");
        let cpu = CpuPerCert::default();
        g.bench_function(&name, |b| {
            let client = clients[0].clone();
            b.to_async(&rt)
                .iter_custom(|iters| cpu.count(iters, lone(iters, client.clone(), head.clone())));
        });
        cpu.report(&format!("raft/{name}"));
        reporter.abort();
        // How well the proposer batched: versions committed per raft entry.
        let st = rt
            .block_on(clients[0].status())
            .expect("status of the leader");
        eprintln!(
            "raft, {n} node(s): {} versions in {} log entries, {:.1} per entry",
            st.latest_version,
            st.last_log_index,
            st.latest_version as f64 / st.last_log_index.max(1) as f64
        );
        for node in nodes {
            rt.block_on(node.shutdown()).expect("shutdown");
        }
    }
    g.finish();
}

criterion_group!(benches, rule, end_to_end, replicated);
criterion_main!(benches);
