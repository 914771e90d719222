//! Loads and runs both workloads against a real PostgreSQL 15 started by
//! the repository's harness (`tashkent::ops::pg`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tashkent::ops::pg::{PgConfig, PgServer};
use tashkent_tpcb::{
    load, load_rows, run, tpcb_invariant, Error, Phase, Progress, Report, ResultRow, RunConfig,
    RunStats, Workload,
};

async fn sql(conninfo: &str, statements: &str) {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .expect("connecting");
    tokio::spawn(connection);
    client.batch_execute(statements).await.expect(statements);
}

async fn count(conninfo: &str, query: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .expect("connecting");
    tokio::spawn(connection);
    client.query_one(query, &[]).await.expect(query).get(0)
}

fn config(conninfo: &str, workload: Workload) -> RunConfig {
    RunConfig {
        clients: 2,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(300),
        seed: 42,
        ..RunConfig::new(vec![conninfo.to_owned()], workload, 1)
    }
}

fn assert_sane(stats: &RunStats) {
    assert!(stats.committed > 0, "{stats:?}");
    let l = stats.latency_ms;
    assert!(l.p50 > 0.0, "{stats:?}");
    assert!(l.p50 <= l.p90 && l.p90 <= l.p99, "{stats:?}");
    assert!(l.mean > 0.0, "{stats:?}");
    assert!(stats.throughput_tps > 0.0, "{stats:?}");
    assert_eq!(stats.elapsed, Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_and_runs_both_workloads_against_postgres() {
    let server = PgServer::start(PgConfig::default()).expect("starting PostgreSQL");
    let db = server.conninfo("postgres");
    let mut report = Report::default();

    // A run before loading says so.
    let err = run(&config(&db, Workload::AllUpdates), None)
        .await
        .expect_err("running without tables");
    assert!(matches!(err, Error::NotLoaded(_)), "{err}");

    // AllUpdates: loading twice replaces the table.
    load(&db, Workload::AllUpdates, 1).await.unwrap();
    load(&db, Workload::AllUpdates, 1).await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM allupdates").await, 100_000);
    let reports = AtomicUsize::new(0);
    let last = std::sync::Mutex::new(None::<Progress>);
    let on_progress = |p: &Progress| {
        reports.fetch_add(1, Ordering::Relaxed);
        *last.lock().unwrap() = Some(*p);
    };
    let stats = run(&config(&db, Workload::AllUpdates), Some(&on_progress))
        .await
        .unwrap();
    assert_sane(&stats);
    assert!(reports.load(Ordering::Relaxed) >= 2);
    let last = last.lock().unwrap().unwrap();
    assert_eq!(last.phase, Phase::Done);
    assert!(last.committed >= stats.committed);
    // Warm-up and transactions past the window update rows too.
    assert!(count(&db, "SELECT sum(val)::bigint FROM allupdates").await >= stats.committed as i64);
    report.results.push(ResultRow {
        workload: Workload::AllUpdates,
        system: "postgres".into(),
        replicas: 1,
        stats,
        tpcc: None,
    });

    // A run with another size than loaded is refused.
    let wrong = RunConfig {
        scale: 2,
        ..config(&db, Workload::AllUpdates)
    };
    assert!(matches!(run(&wrong, None).await, Err(Error::NotLoaded(_))));

    // TPC-B, clients spread over two targets (the same server twice).
    load(&db, Workload::Tpcb, 1).await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM pgbench_branches").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM pgbench_tellers").await, 10);
    assert_eq!(
        count(&db, "SELECT count(*) FROM pgbench_accounts").await,
        100_000
    );
    assert_eq!(count(&db, "SELECT count(*) FROM pgbench_history").await, 0);
    tpcb_invariant(&db).await.unwrap();
    let cfg = RunConfig {
        targets: vec![db.clone(), db.clone()],
        ..config(&db, Workload::Tpcb)
    };
    let stats = run(&cfg, None).await.unwrap();
    assert_sane(&stats);
    tpcb_invariant(&db).await.unwrap();
    assert!(count(&db, "SELECT count(*) FROM pgbench_history").await >= stats.committed as i64);
    report.results.push(ResultRow {
        workload: Workload::Tpcb,
        system: "postgres".into(),
        replicas: 1,
        stats,
        tpcc: None,
    });

    // The invariant check notices a teller out of step.
    sql(
        &db,
        "UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = 1",
    )
    .await;
    let err = tpcb_invariant(&db).await.expect_err("broken invariant");
    let text = err.to_string();
    assert!(matches!(err, Error::Invariant { .. }), "{text}");
    assert!(text.contains("sum(tbalance)"), "{text}");
    assert!(!text.contains("sum(abalance) ≠ sum(bbalance)"), "{text}");

    // Aborts: four clients on one row under REPEATABLE READ, where an
    // update of a row changed since the snapshot fails with 40001.
    load_rows(&db, Workload::AllUpdates, 1, 1).await.unwrap();
    sql(
        &db,
        "ALTER DATABASE postgres SET default_transaction_isolation = 'repeatable read'",
    )
    .await;
    let cfg = RunConfig {
        clients: 4,
        rows_per_scale: 1,
        ..config(&db, Workload::AllUpdates)
    };
    let stats = run(&cfg, None).await.unwrap();
    assert!(stats.committed > 0, "{stats:?}");
    assert!(stats.aborts > 0, "no serialization failures: {stats:?}");
    assert!(
        stats.abort_rate > 0.0 && stats.abort_rate < 1.0,
        "{stats:?}"
    );
    assert_eq!(stats.unknown, 0);
    // Every commit (measured or not) added exactly one; aborts added nothing.
    assert!(count(&db, "SELECT val FROM allupdates WHERE id = 1").await >= stats.committed as i64);

    // The same under REPEATABLE READ for TPC-B: aborted attempts are
    // rolled back, so the invariant still holds afterwards.
    load(&db, Workload::Tpcb, 1).await.unwrap();
    let cfg = RunConfig {
        clients: 4,
        ..config(&db, Workload::Tpcb)
    };
    let stats = run(&cfg, None).await.unwrap();
    assert!(stats.committed > 0, "{stats:?}");
    assert!(stats.aborts > 0, "no serialization failures: {stats:?}");
    tpcb_invariant(&db).await.unwrap();
    report.results.push(ResultRow {
        workload: Workload::Tpcb,
        system: "postgres-rr".into(),
        replicas: 1,
        stats,
        tpcc: None,
    });

    // The measured figures make a report.
    let table = report.to_table();
    assert!(table.contains("postgres-rr"), "{table}");
    eprintln!("{table}");
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(report.write_plot(dir.path()).unwrap().len(), 2);
    assert_eq!(
        Report::from_json(&report.to_json().unwrap()).unwrap(),
        report
    );
}

/// TPC-C on one server: a small load (1 warehouse, 2,000 items, 100
/// customers per district), a run of the standard mix under REPEATABLE
/// READ, the consistency conditions after it, and each condition noticed
/// when broken on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpcc_loads_runs_and_keeps_its_consistency_conditions() {
    use tashkent_tpcb::tpcc::{self, TpccRunConfig, TpccScale, TxnKind};

    let server = PgServer::start(PgConfig::default()).expect("starting PostgreSQL");
    let db = server.conninfo("postgres");
    let scale = TpccScale {
        warehouses: 1,
        items: 2_000,
        customers: 100,
    };
    let cfg = TpccRunConfig {
        targets: vec![db.clone()],
        scale,
        clients: 4,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(300),
        seed: 7,
    };
    let err = tpcc::run(&cfg, None)
        .await
        .expect_err("running without tables");
    assert!(matches!(err, Error::NotLoaded(_)), "{err}");

    tpcc::load(&db, &scale, 3, 1).await.unwrap();
    for (table, rows) in [
        ("warehouse", 1),
        ("district", 10),
        ("customer", 1_000),
        ("history", 1_000),
        ("orders", 1_000),
        ("new_order", 300),
        ("item", 2_000),
        ("stock", 2_000),
    ] {
        assert_eq!(
            count(&db, &format!("SELECT count(*) FROM {table}")).await,
            rows,
            "{table}"
        );
    }
    assert_eq!(
        count(
            &db,
            "SELECT sum(o_ol_cnt)::bigint - (SELECT count(*) FROM order_line) FROM orders"
        )
        .await,
        0
    );
    // 10 % "ORIGINAL", 10 % bad credit, names from syllables.
    let original = count(
        &db,
        "SELECT count(*) FROM item WHERE i_data LIKE '%ORIGINAL%'",
    )
    .await;
    assert!((100..=300).contains(&original), "{original}");
    let bad = count(&db, "SELECT count(*) FROM customer WHERE c_credit = 'BC'").await;
    assert!((40..=170).contains(&bad), "{bad}");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM customer WHERE c_id = 1 AND c_last = 'BARBARBAR'"
        )
        .await,
        10
    );
    // Foreign keys are in place.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
        )
        .await,
        10
    );
    tpcc::check(&db).await.unwrap();

    sql(
        &db,
        "ALTER DATABASE postgres SET default_transaction_isolation = 'repeatable read'",
    )
    .await;
    let (stats, t) = tpcc::run(&cfg, None).await.unwrap();
    eprintln!("{stats:?}\n{t:?}");
    assert!(
        stats.committed > 0 && stats.throughput_tps > 0.0,
        "{stats:?}"
    );
    for kind in TxnKind::ALL {
        let s = t.of(kind).unwrap();
        assert!(s.count > 0, "no {kind} in {t:?}");
        assert!(s.mean_ms > 0.0 && s.p90_ms > 0.0, "{s:?}");
        assert_eq!(s.unknown, 0);
        if kind != TxnKind::NewOrder {
            assert_eq!(s.rollbacks, 0, "{s:?}");
        }
    }
    let total: u64 = t.transactions.iter().map(|s| s.count).sum();
    assert_eq!(total, stats.committed);
    assert_eq!(t.retries(), stats.aborts);
    let new_orders = t.of(TxnKind::NewOrder).unwrap().count;
    assert_eq!(t.tpmc, new_orders as f64 * 30.0);
    // Four clients on one warehouse under REPEATABLE READ: Payments (all
    // of which update the warehouse row) collide and are retried.
    assert!(t.retries() > 0, "{t:?}");
    tpcc::check(&db).await.unwrap();
    // Every committed Payment (measured or not) left one history row.
    assert!(
        count(&db, "SELECT count(*) FROM history").await
            >= 1_000 + t.of(TxnKind::Payment).unwrap().count as i64
    );

    // A report holds the per-type table.
    let row = ResultRow {
        workload: Workload::Tpcc,
        system: "postgres-rr".into(),
        replicas: 1,
        stats,
        tpcc: Some(t),
    };
    let report = Report { results: vec![row] };
    let table = report.to_table();
    eprintln!("{table}");
    for want in [
        "TPC-C\n",
        "tpmC",
        "New-Order",
        "Stock-Level",
        "40001 retries",
        "share %",
    ] {
        assert!(table.contains(want), "{want} missing:\n{table}");
    }
    assert_eq!(
        Report::from_json(&report.to_json().unwrap()).unwrap(),
        report
    );

    // Each condition noticed: broken from the last to the first, so each
    // check reports the one just broken.
    let broken = |sql_text: &'static str, condition: u8| {
        let db = db.clone();
        async move {
            sql(&db, sql_text).await;
            match tpcc::check(&db).await {
                Err(Error::TpccCondition {
                    condition: c,
                    detail,
                }) => {
                    assert_eq!(c, condition, "{detail}");
                    assert!(
                        detail.contains("district 1/") || detail.contains("warehouse 1"),
                        "{detail}"
                    );
                }
                other => panic!("condition {condition} not noticed: {other:?}"),
            }
        }
    };
    broken(
        "DELETE FROM order_line WHERE (ol_w_id, ol_d_id, ol_o_id, ol_number) = (1, 1, 1, 1)",
        4,
    )
    .await;
    broken(
        "DELETE FROM new_order WHERE no_w_id = 1 AND no_d_id = 1 AND no_o_id = \
         (SELECT min(no_o_id) + 1 FROM new_order WHERE no_w_id = 1 AND no_d_id = 1)",
        3,
    )
    .await;
    broken(
        "UPDATE district SET d_next_o_id = d_next_o_id + 1 WHERE d_w_id = 1 AND d_id = 1",
        2,
    )
    .await;
    broken("UPDATE warehouse SET w_ytd = w_ytd + 1", 1).await;
}
