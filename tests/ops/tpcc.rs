//! TPC-C through a real cluster: a small database (1 warehouse, 2,000
//! items, 100 customers per district) loaded through one proxy, the
//! standard mix run for a few seconds through both proxies, then the
//! consistency conditions on every replica and `verify` (replicas
//! identical). Also `tashkent bench --workloads tpcc` as a user runs it.

use std::process::{Command, Stdio};
use std::time::Duration;

use tashkent_tpcb::tpcc::{self, TpccRunConfig, TpccScale, TxnKind};
use tashkent_tpcb::{Report, Workload};

use crate::common::{self, cluster::Cluster};

const SCALE: TpccScale = TpccScale {
    warehouses: 1,
    items: 2_000,
    customers: 100,
};

/// Consistency conditions 1–4 on every replica.
async fn assert_conditions(cluster: &Cluster) {
    for (i, r) in cluster.replicas.iter().enumerate() {
        tpcc::check(&r.conninfo("postgres"))
            .await
            .unwrap_or_else(|e| panic!("replica {}: {e}", i + 1));
    }
}

async fn orders_on_replica_2(cluster: &Cluster) -> i64 {
    let c = cluster.replica(1).await;
    c.query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0)
}

/// The standard mix through every proxy of `cluster`.
fn mix(cluster: &Cluster, duration: Duration, seed: u64) -> TpccRunConfig {
    TpccRunConfig {
        targets: (0..cluster.replicas.len())
            .map(|i| cluster.proxy_conninfo(i))
            .collect(),
        scale: SCALE,
        clients: 4,
        duration,
        warmup: Duration::from_millis(300),
        seed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpcc_through_two_proxies_keeps_its_conditions_and_converges() {
    let cluster = Cluster::start(2).await;
    tpcc::load(&cluster.proxy_conninfo(0), &SCALE, 3, 1)
        .await
        .expect("loading through proxy 1");
    cluster.wait_converged().await;
    assert_conditions(&cluster).await;

    let cfg = mix(&cluster, Duration::from_secs(3), 3);
    let (stats, t) = tpcc::run(&cfg, None).await.expect("running TPC-C");
    eprintln!("{stats:?}\n{t:?}");
    let total: u64 = t.transactions.iter().map(|s| s.count).sum();
    assert_eq!(total, stats.committed);
    assert!(t.of(TxnKind::NewOrder).unwrap().count > 0, "{t:?}");
    assert!(t.of(TxnKind::Payment).unwrap().count > 0, "{t:?}");
    assert!(t.tpmc > 0.0);
    for s in &t.transactions {
        assert_eq!(s.unknown, 0, "{s:?}");
    }

    // Every replica holds the conditions, and both hold the same rows.
    let tables = cluster.assert_identical().await;
    assert_conditions(&cluster).await;
    for table in tpcc::TABLES {
        let (rows, _) = tables
            .iter()
            .find(|(name, _)| name.ends_with(&format!(".{table}")) || name.as_str() == table)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{table} not verified: {tables:?}"));
        assert!(rows > 0, "{table}");
    }
    // The run committed orders on both replicas' proxies: more orders
    // than loaded, the same on each replica (verified above).
    let orders = orders_on_replica_2(&cluster).await;
    assert!(orders > 1_000, "{orders}");
}

/// The other way to load: the schema through a proxy, the rows straight
/// into replica 1 (triggers off, as the applier writes), then a checkpoint
/// of replica 1 rebuilds replica 2. The replicas end identical, with the
/// conditions, and serve TPC-C through both proxies. Both load times are
/// printed (not asserted) beside a load through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpcc_loaded_into_replica_1_and_rebuilt_from_its_checkpoint() {
    use std::time::Instant;
    use tashkent::ops::checkpoint::CheckpointConfig;

    let mut cluster = Cluster::start(2).await;
    let proxy = cluster.proxy_conninfo(0);
    let started = Instant::now();
    tpcc::load(&proxy, &SCALE, 3, 1)
        .await
        .expect("loading through proxy 1");
    cluster.wait_converged().await;
    let through_proxy = started.elapsed();

    let started = Instant::now();
    let direct = format!(
        "{} options='-c session_replication_role=replica'",
        cluster.replicas[0].conninfo("postgres")
    );
    tpcc::load_split(&proxy, &direct, &SCALE, 3, 2)
        .await
        .expect("loading into replica 1");
    cluster.wait_converged().await;
    let loaded = started.elapsed();
    // Replica 2 has the schema but not the rows: not identical yet.
    let orders = orders_on_replica_2(&cluster).await;
    assert_eq!(orders, 0, "rows written past the proxy reached replica 2");
    let ck = CheckpointConfig::default();
    cluster
        .checkpoint(&ck)
        .await
        .expect("checkpoint of replica 1");
    cluster
        .recover_replica(1, &ck)
        .await
        .expect("rebuilding replica 2");
    cluster.wait_converged().await;
    let rebuilt = started.elapsed();
    eprintln!(
        "TPC-C load of {SCALE:?}: through the proxy {:.1} s; into replica 1 {:.1} s, \
         with the checkpoint and the rebuild of replica 2 {:.1} s",
        through_proxy.as_secs_f64(),
        loaded.as_secs_f64(),
        rebuilt.as_secs_f64()
    );
    cluster.assert_identical().await;
    assert_conditions(&cluster).await;

    let cfg = mix(&cluster, Duration::from_secs(2), 4);
    let (stats, _) = tpcc::run(&cfg, None).await.expect("running TPC-C");
    assert!(stats.committed > 0, "{stats:?}");
    cluster.assert_identical().await;
    assert_conditions(&cluster).await;
}

/// `tashkent bench --workloads tpcc`: the per-type table on stdout, the
/// figures in the JSON, tpmC in the plot.
#[test]
fn bench_runs_tpcc() {
    let dir = common::shared_tempdir();
    let results = dir.path().join("results");
    let stdout = crate::bench::run_bench(
        &[
            "--workloads",
            "tpcc",
            "--warehouses",
            "1",
            "--tpcc-items",
            "2000",
            "--tpcc-customers",
            "100",
            "--systems",
            "postgres-nofsync",
            "--clients",
            "3",
            "--duration",
            "1",
            "--warmup",
            "0.2",
        ],
        &results,
        &dir.path().join("work"),
    );
    for want in [
        "TPC-C\n",
        "tpmC",
        "transaction",
        "share %",
        "p90 ms",
        "rollbacks",
        "40001 retries",
        "New-Order",
        "Payment",
        "Order-Status",
        "Delivery",
        "Stock-Level",
    ] {
        assert!(stdout.contains(want), "{want} missing:\n{stdout}");
    }
    assert!(!stdout.contains("PROBLEMS"), "{stdout}");
    let json = std::fs::read_to_string(results.join("results.json")).expect("results.json");
    let report = Report::from_json(&json).expect("a report");
    let row = report.rows(Workload::Tpcc).next().expect("a TPC-C row");
    let t = row.tpcc.as_ref().expect("TPC-C figures");
    assert!(t.tpmc > 0.0 && t.load_s > 0.0, "{t:?}");
    assert_eq!(t.transactions.len(), 5);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["plan"]["tpcc"]["warehouses"], 1, "{json}");
    let svg = std::fs::read_to_string(results.join("tpcc-throughput.svg")).expect("the plot");
    assert!(svg.contains("tpmC"), "{}", &svg[..svg.len().min(300)]);
}

#[test]
fn bench_refuses_bad_tpcc_flags() {
    for (args, says) in [
        (
            &["--workloads", "tpcc", "--client", "pgbench"][..],
            "TPC-C needs the builtin client",
        ),
        (
            &["--workloads", "tpcc", "--warehouses", "0"][..],
            "at least 1 warehouse",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tashkent"))
            .arg("bench")
            .args(args)
            .args(["--results-dir", "/nonexistent/x"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
