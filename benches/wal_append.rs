//! Append throughput: group commit against one fdatasync per append, and
//! io_uring against the portable backend, in one run.
//!
//! Matrix: concurrency 1, 8, 64, 256 appenders × record size 64 B, 256 B,
//! 1 KiB, 16 KiB × backend × mode. The baseline mode (`fsync_each`) is the
//! same WAL with `max_group_records = 1`, i.e. one write + fdatasync per
//! append, so the only difference measured is the grouping.
//!
//! `WAL_BENCH_NOWAIT=1` adds a third mode: group commit with
//! `max_group_wait = 0`, to show what the adaptive group-fill wait buys.
//!
//! Criterion reports appends/s (throughput in elements); at the end a table
//! prints appends/s, MB/s and the group/fsync_each ratio per cell, measured
//! side by side in the same run.
//!
//! ```text
//! cargo bench --bench wal_append                 # everything (~3 min)
//! cargo bench --bench wal_append -- c64/256B     # the headline cell
//! ```

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use tashkent_wal::{Backend, Wal, WalOptions};

const CONCURRENCY: [usize; 4] = [1, 8, 64, 256];
const SIZES: [usize; 4] = [64, 256, 1024, 16 << 10];

/// (mode, backend, conc, size) -> (appends, elapsed) summed over all samples.
type Key = (&'static str, &'static str, usize, usize);
static TOTALS: Mutex<BTreeMap<Key, (u64, Duration)>> = Mutex::new(BTreeMap::new());
/// Mean appends per fdatasync (from `Wal::stats`).
static GROUPS: Mutex<BTreeMap<Key, f64>> = Mutex::new(BTreeMap::new());

fn backends() -> Vec<(&'static str, Backend)> {
    let mut v = vec![];
    if tashkent_wal::io_uring_available() {
        v.push(("io_uring", Backend::IoUring));
    } else {
        eprintln!("io_uring unavailable on this kernel: benchmarking the portable backend only");
    }
    v.push(("portable", Backend::Portable));
    v
}

/// (name, max_group_records, max_group_wait µs). `WAL_BENCH_NOWAIT=1` adds
/// group commit without the group-fill wait, to show what the wait buys.
fn modes() -> Vec<(&'static str, usize, u64)> {
    let mut v = vec![("group", usize::MAX, 200), ("fsync_each", 1, 0)];
    if std::env::var_os("WAL_BENCH_NOWAIT").is_some() {
        v.push(("nowait", usize::MAX, 0));
    }
    v
}

fn bench_append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("wal_append");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for &size in &SIZES {
        for &conc in &CONCURRENCY {
            for (bname, backend) in backends() {
                for (mode, max_group, wait) in modes() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let wal = Wal::open(
                        dir.path(),
                        WalOptions {
                            backend,
                            max_group_records: max_group,
                            max_group_wait: Duration::from_micros(wait),
                            ..WalOptions::default()
                        },
                    )
                    .expect("open wal");
                    let payload = bytes::Bytes::from(vec![0xA5u8; size]);
                    group.throughput(Throughput::Elements(1));
                    let id = BenchmarkId::from_parameter(format!("{mode}/{bname}/c{conc}/{size}B"));
                    group.bench_function(id, |b| {
                        b.to_async(&rt).iter_custom(|iters| {
                            let wal = wal.clone();
                            let payload = payload.clone();
                            async move {
                                let per_task = iters.div_ceil(conc as u64).max(1);
                                let start = Instant::now();
                                let tasks: Vec<_> = (0..conc)
                                    .map(|_| {
                                        let wal = wal.clone();
                                        let payload = payload.clone();
                                        tokio::spawn(async move {
                                            for _ in 0..per_task {
                                                wal.append(payload.clone()).await.expect("append");
                                            }
                                        })
                                    })
                                    .collect();
                                for t in tasks {
                                    t.await.expect("task");
                                }
                                let elapsed = start.elapsed();
                                let done = per_task * conc as u64;
                                let mut totals = TOTALS.lock().expect("totals");
                                let e = totals.entry((mode, bname, conc, size)).or_default();
                                e.0 += done;
                                e.1 += elapsed;
                                // Report the time for `iters` appends.
                                elapsed.mul_f64(iters as f64 / done as f64)
                            }
                        })
                    });
                    let st = wal.stats();
                    GROUPS.lock().expect("groups").insert(
                        (mode, bname, conc, size),
                        st.appends as f64 / st.groups.max(1) as f64,
                    );
                    rt.block_on(wal.close()).expect("close");
                }
            }
        }
    }
    group.finish();
}

fn print_summary() {
    let totals = TOTALS.lock().expect("totals");
    if totals.is_empty() {
        return;
    }
    println!("\nWAL append summary (all samples of this run, warm-up included)");
    println!(
        "{:<9} {:>5} {:>7} | {:>12} {:>9} {:>8} | {:>12} {:>9} | {:>7}",
        "backend", "conc", "size", "group ap/s", "MB/s", "ap/sync", "each ap/s", "MB/s", "ratio"
    );
    let groups = GROUPS.lock().expect("groups");
    let rate = |k: &Key| {
        totals
            .get(k)
            .map(|(n, d)| *n as f64 / d.as_secs_f64().max(1e-9))
    };
    for &size in &SIZES {
        for &conc in &CONCURRENCY {
            for bname in ["io_uring", "portable"] {
                if let Some(nw) = rate(&("nowait", bname, conc, size)) {
                    let per_sync = groups
                        .get(&("nowait", bname, conc, size))
                        .copied()
                        .unwrap_or(0.0);
                    println!("  (group commit without the group-fill wait: {nw:.0} ap/s, {per_sync:.1} ap/sync)");
                }
                let g = rate(&("group", bname, conc, size));
                let e = rate(&("fsync_each", bname, conc, size));
                let (Some(g), Some(e)) = (g, e) else { continue };
                let mb = |r: f64| r * size as f64 / 1e6;
                println!(
                    "{:<9} {:>5} {:>6}B | {:>12.0} {:>9.1} {:>8.1} | {:>12.0} {:>9.1} | {:>6.1}x",
                    bname,
                    conc,
                    size,
                    g,
                    mb(g),
                    groups
                        .get(&("group", bname, conc, size))
                        .copied()
                        .unwrap_or(0.0),
                    e,
                    mb(e),
                    g / e
                );
            }
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_append(&mut c);
    c.final_summary();
    print_summary();
}
