//! The replica proxy end to end: 3 PostgreSQL replicas, 1 certifier,
//! 3 `tashkent proxy` processes, real clients.

use crate::common;

use common::cluster::Cluster;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

fn sqlstate(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.as_db_error().map(|d| d.code())
}

async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_through_different_proxies_converges() {
    let cluster = Cluster::start(3).await;
    let p1 = cluster.client(0).await;
    let p2 = cluster.client(1).await;
    let p3 = cluster.client(2).await;
    p1.batch_execute(
        "CREATE TABLE account (id int PRIMARY KEY, owner text UNIQUE, balance numeric NOT NULL, \
         opened timestamptz DEFAULT now(), tags text[]); \
         CREATE TABLE audit (id bigserial PRIMARY KEY, note text)",
    )
    .await
    .unwrap();
    // GSI: another replica sees the DDL once it has applied it.
    cluster.wait_converged().await;
    // Autocommit, multi-statement, explicit transaction, extended protocol.
    p2.batch_execute(
        "INSERT INTO account (id, owner, balance) VALUES (1, 'ann', 10), (2, 'bob', 20)",
    )
    .await
    .unwrap();
    p3.batch_execute(
        "BEGIN; UPDATE account SET balance = balance + 5 WHERE id = 1; \
         INSERT INTO audit (note) VALUES ('deposit'); COMMIT",
    )
    .await
    .unwrap();
    cluster.wait_converged().await;
    let stmt = p1
        .prepare(
            "INSERT INTO account (id, owner, balance, tags) VALUES ($1, $2, $3::text::numeric, $4)",
        )
        .await
        .unwrap();
    for i in 3..20i32 {
        p1.execute(
            &stmt,
            &[
                &i,
                &format!("o{i}"),
                &format!("{i}.5"),
                &vec![format!("t{i}")],
            ],
        )
        .await
        .unwrap();
    }
    cluster.wait_converged().await;
    p2.execute("DELETE FROM account WHERE id = $1", &[&2i32])
        .await
        .unwrap();
    p3.batch_execute("INSERT INTO audit (note) VALUES ('a'), ('b')")
        .await
        .unwrap();
    // A rolled-back transaction leaves nothing anywhere.
    p2.batch_execute("BEGIN; INSERT INTO account VALUES (99, 'zed', 1); ROLLBACK")
        .await
        .unwrap();
    // Reads through a proxy see the proxy's replica.
    cluster.wait_converged().await;
    assert_eq!(count(&p3, "SELECT count(*) FROM account").await, 18);
    let digests = cluster.assert_identical().await;
    assert_eq!(digests["public.account"].0, 18);
    assert_eq!(digests["public.audit"].0, 3);
    // Sequences draw from disjoint residues: audit ids from replicas 3 and 3
    // again are ≡ 3 (mod 3).
    let ids: Vec<i64> = p1
        .query("SELECT id FROM audit ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(ids.iter().all(|id| id % 3 == 0), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_updates_first_committer_wins_and_write_skew_commits() {
    let cluster = Cluster::start(3).await;
    let setup = cluster.client(0).await;
    setup
        .batch_execute(
            "CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL); \
             INSERT INTO counter VALUES (1, 0), (2, 0), (3, 0)",
        )
        .await
        .unwrap();
    cluster.wait_converged().await;
    let a = cluster.client(0).await;
    let b = cluster.client(1).await;

    // Lost update: both read n, both write n + 1; exactly one commits.
    a.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    let na: i32 = a
        .query_one("SELECT n FROM counter WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    let nb: i32 = b
        .query_one("SELECT n FROM counter WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    a.execute("UPDATE counter SET n = $1 WHERE id = 1", &[&(na + 1)])
        .await
        .unwrap();
    b.execute("UPDATE counter SET n = $1 WHERE id = 1", &[&(nb + 1)])
        .await
        .unwrap();
    let ra = a.batch_execute("COMMIT").await;
    let rb = b.batch_execute("COMMIT").await;
    assert_one_commits(ra, rb);

    // Write skew: each reads both rows and writes a different one; GSI
    // commits both (it is not serializable and does not claim to be).
    a.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    let sa = count(&a, "SELECT sum(n)::bigint FROM counter WHERE id IN (2, 3)").await;
    let sb = count(&b, "SELECT sum(n)::bigint FROM counter WHERE id IN (2, 3)").await;
    a.execute(
        "UPDATE counter SET n = $1 WHERE id = 2",
        &[&(sa as i32 + 1)],
    )
    .await
    .unwrap();
    b.execute(
        "UPDATE counter SET n = $1 WHERE id = 3",
        &[&(sb as i32 + 1)],
    )
    .await
    .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();

    let d = cluster.assert_identical().await;
    assert_eq!(d["public.counter"].0, 3);
    let c = cluster.replica(2).await;
    assert_eq!(count(&c, "SELECT sum(n)::bigint FROM counter").await, 3);
}

type Params<'a> = &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)];

/// Runs one statement in a transaction on `a` and one on `b`, both
/// executed before either commits; asserts that exactly one commits and
/// the other gets 40001.
async fn race(a: &Client, sql_a: &str, pa: Params<'_>, b: &Client, sql_b: &str, pb: Params<'_>) {
    a.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    a.execute(sql_a, pa).await.unwrap();
    b.execute(sql_b, pb).await.unwrap();
    let ra = a.batch_execute("COMMIT").await;
    let rb = b.batch_execute("COMMIT").await;
    assert_one_commits(ra, rb);
}

/// Exactly one of two commits succeeded; the other got 40001.
fn assert_one_commits(
    ra: Result<(), tokio_postgres::Error>,
    rb: Result<(), tokio_postgres::Error>,
) {
    assert_eq!(
        [ra.is_ok(), rb.is_ok()].iter().filter(|x| **x).count(),
        1,
        "{ra:?} {rb:?}"
    );
    let err = ra.err().or(rb.err()).unwrap();
    assert_eq!(
        sqlstate(&err),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unique_and_foreign_key_races_never_break_apply() {
    let cluster = Cluster::start(3).await;
    let setup = cluster.client(0).await;
    setup
        .batch_execute(
            "CREATE TABLE parent (id int PRIMARY KEY); \
             CREATE TABLE child (id int PRIMARY KEY, parent int REFERENCES parent, code text UNIQUE); \
             INSERT INTO parent SELECT generate_series(1, 40)",
        )
        .await
        .unwrap();
    cluster.wait_converged().await;
    let a = cluster.client(0).await;
    let b = cluster.client(1).await;
    for round in 0..20i32 {
        // Same unique code, different primary keys, on two replicas.
        let code = format!("c{round}");
        race(
            &a,
            "INSERT INTO child VALUES ($1, NULL, $2)",
            &[&(1000 + round), &code],
            &b,
            "INSERT INTO child VALUES ($1, NULL, $2)",
            &[&(2000 + round), &code],
        )
        .await;
        // Delete a parent on one replica while a child references it on another.
        let p = round + 1;
        race(
            &a,
            "DELETE FROM parent WHERE id = $1",
            &[&p],
            &b,
            "INSERT INTO child VALUES ($1, $2, NULL)",
            &[&(3000 + round), &p],
        )
        .await;
    }
    cluster.assert_identical().await;
    // No orphan anywhere.
    for i in 0..3 {
        let c = cluster.replica(i).await;
        let orphans = count(
            &c,
            "SELECT count(*) FROM child WHERE parent IS NOT NULL AND parent NOT IN (SELECT id FROM parent)",
        )
        .await;
        assert_eq!(orphans, 0, "replica {}", i + 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ddl_through_one_proxy_reaches_all_and_new_tables_replicate() {
    let cluster = Cluster::start(3).await;
    let p1 = cluster.client(0).await;
    p1.batch_execute("CREATE SCHEMA shop; SET search_path = shop; CREATE TABLE item (id int PRIMARY KEY, name text)")
        .await
        .unwrap();
    p1.batch_execute("ALTER TABLE shop.item ADD COLUMN price int NOT NULL DEFAULT 7; CREATE INDEX ON shop.item (name)")
        .await
        .unwrap();
    let p3 = cluster.client(2).await;
    cluster.wait_converged().await;
    p3.batch_execute("INSERT INTO shop.item (id, name) VALUES (1, 'x'), (2, 'y')")
        .await
        .unwrap();
    let p2 = cluster.client(1).await;
    cluster.wait_converged().await;
    p2.batch_execute("UPDATE shop.item SET price = 9 WHERE id = 2; TRUNCATE shop.item; INSERT INTO shop.item VALUES (5, 'z', 1)")
        .await
        .unwrap();
    let d = cluster.assert_identical().await;
    assert_eq!(d["shop.item"].0, 1);
    p2.batch_execute("DROP TABLE shop.item").await.unwrap();
    cluster.wait_converged().await;
    for i in 0..3 {
        let c = cluster.replica(i).await;
        assert_eq!(
            count(
                &c,
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'shop'"
            )
            .await,
            0
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn diverging_features_are_refused_with_0a000() {
    let cluster = Cluster::start(1).await;
    let c = cluster.client(0).await;
    c.batch_execute("CREATE TABLE nokey (v int); INSERT INTO nokey VALUES (1)")
        .await
        .unwrap();
    for sql in [
        "BEGIN ISOLATION LEVEL SERIALIZABLE",
        "SET default_transaction_isolation = 'serializable'",
        "LISTEN chan",
        "NOTIFY chan",
        "SELECT pg_advisory_lock(1)",
        "PREPARE TRANSACTION 'x'",
        "UPDATE nokey SET v = 2",
        "DELETE FROM nokey",
        "SET session_replication_role = replica",
        "CREATE DATABASE other",
        "SELECT lo_create(0)",
        "SELECT lo_from_bytea(0, 'data')",
    ] {
        let err = c.batch_execute(sql).await.expect_err(sql);
        assert_eq!(
            sqlstate(&err),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{sql}: {err}"
        );
        // The session stays usable.
        c.batch_execute("SELECT 1").await.unwrap();
    }
    // Inside a transaction the refusal aborts it, like any error.
    c.batch_execute("BEGIN").await.unwrap();
    assert!(c.batch_execute("LISTEN x").await.is_err());
    let err = c.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    c.batch_execute("ROLLBACK").await.unwrap();
    // Extended protocol too.
    let err = c
        .prepare("SELECT pg_try_advisory_lock($1)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some(&SqlState::FEATURE_NOT_SUPPORTED));
    assert_eq!(count(&c, "SELECT count(*) FROM nokey").await, 1);
    // Another database than the replicated one is refused at startup.
    let other = cluster
        .proxy_conninfo(0)
        .replace("dbname=postgres", "dbname=template1");
    let err = tokio_postgres::connect(&other, tokio_postgres::NoTls)
        .await
        .err()
        .unwrap();
    assert_eq!(
        sqlstate(&err),
        Some(&SqlState::INVALID_CATALOG_NAME),
        "{err}"
    );
}

/// pgbench (the real, unmodified client) against proxy `i`.
fn pgbench(cluster: &Cluster, i: usize, args: &[&str]) -> std::process::Command {
    let tool = cluster.replicas[0].binaries().tool("pgbench").unwrap();
    let addr = cluster.proxy_addrs()[i];
    let mut cmd = std::process::Command::new(tool);
    cmd.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-U", "postgres"])
        .args(args)
        .arg("postgres");
    cmd
}

fn assert_ok(out: &std::process::Output, what: &str) -> String {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

async fn assert_tpcb_invariant(c: &Client, replica: usize) {
    let row = c
        .query_one(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts)::bigint, \
                    (SELECT sum(tbalance) FROM pgbench_tellers)::bigint, \
                    (SELECT sum(bbalance) FROM pgbench_branches)::bigint, \
                    (SELECT coalesce(sum(delta), 0) FROM pgbench_history)::bigint, \
                    (SELECT count(*) FROM pgbench_history)",
            &[],
        )
        .await
        .unwrap();
    let (a, t, b, h, n): (i64, i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert!(n > 0, "replica {replica}: no history rows");
    assert!(
        a == t && t == b && b == h,
        "replica {replica}: accounts {a}, tellers {t}, branches {b}, history {h}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pgbench_unmodified_through_two_proxies() {
    let cluster = Cluster::start(3).await;
    assert_ok(
        &pgbench(&cluster, 0, &["-i", "-s", "2", "-q"])
            .output()
            .unwrap(),
        "pgbench -i",
    );
    cluster.wait_converged().await;
    let run = |i: usize, mode: &'static str| {
        let mut cmd = pgbench(
            &cluster,
            i,
            &[
                "-n",
                "-M",
                mode,
                "-c",
                "2",
                "-j",
                "1",
                "-T",
                "4",
                "--max-tries=1000",
            ],
        );
        std::thread::spawn(move || cmd.output().unwrap())
    };
    let simple = run(0, "simple");
    let prepared = run(1, "prepared");
    for (name, h) in [("simple", simple), ("prepared", prepared)] {
        let text = assert_ok(&h.join().unwrap(), name);
        let processed: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no transaction count in:\n{text}"));
        assert!(processed > 0, "{name}: {text}");
    }
    let d = cluster.assert_identical().await;
    assert_eq!(d["public.pgbench_accounts"].0, 200_000);
    for i in 0..3 {
        assert_tpcb_invariant(&cluster.replica(i).await, i + 1).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_sigkill_under_load_loses_no_acknowledged_commit() {
    let mut cluster = Cluster::start(3).await;
    cluster
        .client(0)
        .await
        .batch_execute("CREATE TABLE ack (id bigint PRIMARY KEY, writer int)")
        .await
        .unwrap();
    cluster.wait_converged().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Commits acknowledged through proxy 2 so far.
    let through_2 = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..6i32 {
        // Writers 0..4 use proxy 2 (killed), 4..6 proxy 1.
        let client = cluster.client(if w < 4 { 1 } else { 0 }).await;
        let stop = stop.clone();
        let through_2 = through_2.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for k in 0i64.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let id = i64::from(w) * 1_000_000 + k;
                match client
                    .execute("INSERT INTO ack VALUES ($1, $2)", &[&id, &w])
                    .await
                {
                    Ok(_) => {
                        acked.push(id);
                        if w < 4 {
                            through_2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    // Under way for a while (1.5 s), and through proxy 2 too.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while through_2.load(std::sync::atomic::Ordering::Relaxed) < 10
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    cluster.kill_proxy(1).await; // SIGKILL
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.iter().any(|id| *id < 4_000_000),
        "no commit through the killed proxy"
    );
    cluster.restart_proxy(1).await;
    cluster.assert_identical().await;
    for i in 0..3 {
        let c = cluster.replica(i).await;
        let present: std::collections::HashSet<i64> = c
            .query("SELECT id FROM ack", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let lost: Vec<_> = acked.iter().filter(|id| !present.contains(id)).collect();
        assert!(
            lost.is_empty(),
            "replica {}: acknowledged commits lost: {lost:?}",
            i + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_local_transaction_blocking_the_applier_is_aborted_early() {
    let cluster = Cluster::start(2).await;
    let setup = cluster.client(0).await;
    setup
        .batch_execute(
            "CREATE TABLE hot (id int PRIMARY KEY, v int); INSERT INTO hot VALUES (1, 0)",
        )
        .await
        .unwrap();
    cluster.wait_converged().await;
    // A holds the row's lock on replica 1 and then waits for its client.
    let a = cluster.client(0).await;
    a.batch_execute("BEGIN; UPDATE hot SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    // B commits a change of the same row through replica 2; replica 1's
    // applier needs A's lock.
    let b = cluster.client(1).await;
    b.batch_execute("UPDATE hot SET v = 2 WHERE id = 1")
        .await
        .unwrap();
    // Replica 1 catches up although A never ends on its own...
    cluster.wait_converged().await;
    // ...because A was aborted: its next statement reports 40001.
    let err = a.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(
        sqlstate(&err),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE),
        "{err}"
    );
    a.batch_execute("ROLLBACK").await.unwrap();
    // The same, but the client's next word is COMMIT: it must fail too,
    // not answer "ROLLBACK" as if the client had seen an error.
    a.batch_execute("BEGIN; UPDATE hot SET v = 3 WHERE id = 1")
        .await
        .unwrap();
    b.batch_execute("UPDATE hot SET v = 4 WHERE id = 1")
        .await
        .unwrap();
    cluster.wait_converged().await;
    let err = a.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(
        sqlstate(&err),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE),
        "{err}"
    );
    let d = cluster.assert_identical().await;
    assert_eq!(d["public.hot"].0, 1);
    let r1 = cluster.replica(0).await;
    assert_eq!(count(&r1, "SELECT v::bigint FROM hot").await, 4);
}

/// ROLLBACK TO a savepoint leaves a failed transaction as in PostgreSQL:
/// what came before the savepoint commits (and replicates); SAVEPOINT in
/// a failed transaction is refused.
#[tokio::test(flavor = "multi_thread")]
async fn rollback_to_savepoint_recovers_a_failed_transaction() {
    let cluster = Cluster::start(2).await;
    let a = cluster.client(0).await;
    a.batch_execute("CREATE TABLE sp (id int PRIMARY KEY)")
        .await
        .unwrap();
    a.batch_execute("BEGIN; INSERT INTO sp VALUES (1); SAVEPOINT s")
        .await
        .unwrap();
    let dup = a
        .batch_execute("INSERT INTO sp VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&dup), Some(&SqlState::UNIQUE_VIOLATION), "{dup}");
    let refused = a.batch_execute("SAVEPOINT t").await.unwrap_err();
    assert_eq!(
        sqlstate(&refused),
        Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
        "{refused}"
    );
    // Over the extended protocol too.
    a.execute("ROLLBACK TO SAVEPOINT s", &[]).await.unwrap();
    a.execute("INSERT INTO sp VALUES ($1)", &[&2i32])
        .await
        .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    let d = cluster.assert_identical().await;
    assert_eq!(d["public.sp"].0, 2);
}

/// The proxy's own statements are prepared once per backend; a client
/// that drops every prepared statement (`DISCARD ALL`, as poolers do, or
/// `DEALLOCATE ALL`, over either protocol) keeps working: the proxy
/// prepares its own again, and nothing is lost on the way.
#[tokio::test(flavor = "multi_thread")]
async fn discard_all_and_deallocate_keep_transactions_working() {
    let cluster = Cluster::start(2).await;
    let a = cluster.client(0).await;
    a.batch_execute("CREATE TABLE d (id int PRIMARY KEY)")
        .await
        .unwrap();
    a.batch_execute("INSERT INTO d VALUES (1)").await.unwrap();
    a.batch_execute("DISCARD ALL").await.unwrap();
    a.batch_execute("INSERT INTO d VALUES (2)").await.unwrap();
    a.batch_execute("BEGIN; INSERT INTO d VALUES (3); COMMIT")
        .await
        .unwrap();
    a.execute("DEALLOCATE ALL", &[]).await.unwrap();
    a.execute("INSERT INTO d VALUES ($1)", &[&4i32])
        .await
        .unwrap();
    // A failed transaction still ends (ROLLBACK is parsed again in it).
    a.batch_execute("DISCARD ALL").await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("INSERT INTO d VALUES (1)")
        .await
        .unwrap_err();
    a.batch_execute("ROLLBACK").await.unwrap();
    a.batch_execute("INSERT INTO d VALUES (5)").await.unwrap();
    let d = cluster.assert_identical().await;
    assert_eq!(d["public.d"].0, 5);
}

/// A transaction that holds a lock its writeset does not show (SELECT
/// FOR UPDATE with `tashkent.lock_conflicts` off) and is already
/// committing while the applier needs that lock for a lower version: it
/// gives its locks up, the applier applies both versions, and its COMMIT
/// succeeds — no deadlock. (With lock conflicts on, the lock is a key of
/// its writeset and certification aborts it: `tests/proxy/locks.rs`.)
#[tokio::test(flavor = "multi_thread")]
async fn committing_transaction_gives_up_locks_the_applier_needs() {
    let cluster = Cluster::start(2).await;
    let setup = cluster.client(0).await;
    setup
        .batch_execute(
            "CREATE TABLE gate (id int PRIMARY KEY, v int); INSERT INTO gate VALUES (1, 0); \
             CREATE TABLE hot (id int PRIMARY KEY, v int); INSERT INTO hot VALUES (1, 0); \
             CREATE TABLE other (id int PRIMARY KEY, v int); INSERT INTO other VALUES (1, 0)",
        )
        .await
        .unwrap();
    cluster.wait_converged().await;
    // T on replica 1 locks hot's row without writing it.
    let t = cluster.client(0).await;
    t.batch_execute("SET tashkent.lock_conflicts = off")
        .await
        .unwrap();
    t.batch_execute("BEGIN; SELECT * FROM hot WHERE id = 1 FOR UPDATE; UPDATE other SET v = 1")
        .await
        .unwrap();
    // The test's own session on replica 1 (no proxy session, so never
    // aborted early) holds gate's row: replica 1's applier stops there.
    let x = cluster.replica(0).await;
    x.batch_execute("BEGIN; SELECT * FROM gate WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    // B writes gate, then hot, through replica 2 and commits: version v_b.
    let b = cluster.client(1).await;
    b.batch_execute("BEGIN; UPDATE gate SET v = 1; UPDATE hot SET v = 1; COMMIT")
        .await
        .unwrap();
    let v_b = cluster.acknowledged_version().await;
    // T commits (certified after v_b: it wrote nothing B wrote) and waits
    // for its turn, behind v_b.
    let committing = tokio::spawn(async move { t.batch_execute("COMMIT").await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while cluster.acknowledged_version().await <= v_b {
        assert!(
            std::time::Instant::now() < deadline,
            "T was never certified"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The applier gets past gate and needs hot's row, which T holds.
    x.batch_execute("COMMIT").await.unwrap();
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(20), committing)
        .await
        .expect("T's COMMIT and the applier deadlocked")
        .unwrap();
    outcome.unwrap();
    let d = cluster.assert_identical().await;
    assert_eq!(d["public.other"].0, 1);
    let r1 = cluster.replica(0).await;
    assert_eq!(count(&r1, "SELECT v::bigint FROM other").await, 1);
    assert_eq!(count(&r1, "SELECT v::bigint FROM hot").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_through_the_proxies_finds_a_difference_injected_behind_their_back() {
    let cluster = Cluster::start(2).await;
    let c = cluster.client(0).await;
    c.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, note text);
         CREATE TABLE log (line text)",
    )
    .await
    .unwrap();
    c.batch_execute(
        "INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 5000) g;
         INSERT INTO log VALUES ('a'), ('b')",
    )
    .await
    .unwrap();
    cluster.wait_converged().await;
    let verify = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tashkent"));
        cmd.arg("verify").args(["--chunk-rows", "1000"]);
        for a in cluster.proxy_addrs() {
            cmd.args(["--proxy", &a.to_string()]);
        }
        cmd.args(extra);
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = verify(&[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("identical") && text.contains("5002 rows"),
        "{text}"
    );
    // A proxy answers where its replica is.
    let rows = c.simple_query("SHOW tashkent.replica_id").await.unwrap();
    let id = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(id.as_deref(), Some("1"));

    // Replica 2 changed behind the proxies' back.
    let r2 = cluster.replica(1).await;
    r2.batch_execute("UPDATE items SET note = 'changed' WHERE id = 4321")
        .await
        .unwrap();
    let (code, text) = verify(&[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("public.items") && text.contains("('4000', '5000']"),
        "{text}"
    );
    assert!(!text.contains("public.log"), "{text}");
    r2.batch_execute("INSERT INTO log VALUES ('c')")
        .await
        .unwrap();
    let (code, text) = verify(&[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("public.log") && text.contains("no primary key"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_apply_that_cannot_proceed_is_loud_and_refuses_writes_until_it_can() {
    let cluster = Cluster::start(2).await;
    let c1 = cluster.client(0).await;
    c1.batch_execute("CREATE TABLE u (id int PRIMARY KEY, code text UNIQUE)")
        .await
        .unwrap();
    cluster.wait_converged().await;
    // Behind the proxies' back, replica 2 gets a row the certified
    // writeset below collides with: its apply fails there.
    let r2 = cluster.replica(1).await;
    r2.batch_execute("INSERT INTO u VALUES (99, 'taken')")
        .await
        .unwrap();
    c1.batch_execute("INSERT INTO u VALUES (1, 'taken')")
        .await
        .unwrap();
    let c2 = cluster.client(1).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let refusal = loop {
        match c2.batch_execute("INSERT INTO u VALUES (2, 'other')").await {
            Err(e) => break e,
            Ok(()) => {
                // Committed before the applier gave up: not this one's turn.
                assert!(std::time::Instant::now() < deadline, "writes never refused");
                c2.batch_execute("DELETE FROM u WHERE id = 2").await.ok();
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    };
    let db = refusal.as_db_error().expect("a server error");
    assert!(
        matches!(db.code().code(), "55000" | "08007"),
        "{}: {}",
        db.code().code(),
        db.message()
    );
    assert!(
        db.message().contains("cannot apply version") && db.message().contains("duplicate key"),
        "{}",
        db.message()
    );
    // Reads go on.
    assert!(count(&c2, "SELECT count(*) FROM u").await >= 1);
    // The cause removed, the replica applies again and takes writes.
    r2.batch_execute("DELETE FROM u WHERE id = 99")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match c2.batch_execute("INSERT INTO u VALUES (3, 'later')").await {
            Ok(()) => break,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "still refused: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
    cluster.assert_identical().await;
    assert_eq!(
        count(&c1, "SELECT count(*) FROM u WHERE id IN (1, 3)").await,
        2
    );
}

/// Commits overlap on a replica but become visible in version order: a
/// snapshot taken directly on any replica, at any moment of a concurrent
/// load through several proxies, sees a dense run of applied versions
/// (each version's `tashkent.applied` row commits with its writes).
#[tokio::test(flavor = "multi_thread")]
async fn overlapping_commits_become_visible_in_version_order() {
    let cluster = Cluster::start(2).await;
    cluster
        .client(0)
        .await
        .batch_execute("CREATE TABLE hit (id int PRIMARY KEY, n int NOT NULL)")
        .await
        .unwrap();
    cluster.wait_converged().await;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    // Counted as they go: the load runs until both are enough (a loaded
    // machine may need longer than the first seconds), not for a fixed time.
    let committed = Arc::new(AtomicU32::new(0));
    let looks: Vec<Arc<AtomicU32>> = (0..2).map(|_| Arc::new(AtomicU32::new(0))).collect();
    let mut writers = Vec::new();
    for w in 0..8i32 {
        let c = cluster.client((w % 2) as usize).await;
        let stop = stop.clone();
        let committed = committed.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = w * 1_000_000 + i;
                c.execute("INSERT INTO hit VALUES ($1, 1)", &[&id])
                    .await
                    .unwrap();
                c.execute("UPDATE hit SET n = n + 1 WHERE id = $1", &[&id])
                    .await
                    .unwrap();
                committed.fetch_add(2, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let mut watchers = Vec::new();
    for r in 0..2 {
        let c = cluster.replica(r).await;
        let stop = stop.clone();
        let looks = looks[r].clone();
        watchers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let row = c
                    .query_one(
                        "SELECT count(*), min(version), max(version) FROM tashkent.applied",
                        &[],
                    )
                    .await
                    .unwrap();
                let (n, lo, hi): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
                assert_eq!(
                    hi - lo + 1,
                    n,
                    "replica {} shows versions {lo}..={hi} with a gap ({n} rows)",
                    r + 1
                );
                looks.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let enough = || {
        committed.load(Ordering::Relaxed) > 100
            && looks.iter().all(|l| l.load(Ordering::Relaxed) > 10)
    };
    let began = std::time::Instant::now();
    while began.elapsed() < std::time::Duration::from_secs(4)
        || (!enough() && began.elapsed() < std::time::Duration::from_secs(60))
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers.into_iter().chain(watchers) {
        w.await.unwrap();
    }
    for l in &looks {
        assert!(l.load(Ordering::Relaxed) > 10, "a watcher barely looked");
    }
    let committed = committed.load(Ordering::Relaxed);
    assert!(committed > 100, "only {committed} commits");
    cluster.assert_identical().await;
}
