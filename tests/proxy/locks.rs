//! Row locks across proxies: rows locked `FOR UPDATE` / `FOR NO KEY
//! UPDATE` are conflict keys of their transaction (first committer wins,
//! the other gets 40001), so "lock a row as a mutex" holds across the
//! cluster; `FOR SHARE` does not conflict, `SKIP LOCKED` skips only rows
//! locked on the same replica, and `tashkent.lock_conflicts` (session) or
//! `[proxy] lock_conflicts` (the proxy's default) turns it off.
//!
//! Every race is interleaved deterministically: both transactions lock
//! (and write) before either commits, and A commits first.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::common::cluster::Cluster;

type Outcome = Result<(), tokio_postgres::Error>;

/// Runs `a_sql` in a transaction on `a` and `b_sql` in one on `b`, both
/// before either commits; commits A, then B.
async fn race(a: &Client, a_sql: &str, b: &Client, b_sql: &str) -> (Outcome, Outcome) {
    a.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    a.batch_execute(a_sql).await.unwrap();
    b.batch_execute(b_sql).await.unwrap();
    let ra = a.batch_execute("COMMIT").await;
    let rb = b.batch_execute("COMMIT").await;
    (ra, rb)
}

/// A committed and B got 40001.
fn first_wins((ra, rb): (Outcome, Outcome), what: &str) {
    assert!(ra.is_ok(), "{what}: the first committer failed: {ra:?}");
    let err = rb.expect_err(&format!("{what}: both committed"));
    assert_eq!(
        err.as_db_error().map(|d| d.code()),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE),
        "{what}: {err}"
    );
}

fn both_commit((ra, rb): (Outcome, Outcome), what: &str) {
    assert!(ra.is_ok() && rb.is_ok(), "{what}: {ra:?} {rb:?}");
}

/// The mutex: lock the job row, log who held it.
fn mutex(strength: &str, who: &str) -> String {
    format!(
        "SELECT id FROM jobs WHERE id = 1 FOR {strength}; \
         INSERT INTO log (who) VALUES ('{who}')"
    )
}

async fn setup(cluster: &Cluster) {
    let c = cluster.client(0).await;
    c.batch_execute(
        "CREATE TABLE jobs (id int PRIMARY KEY, state text NOT NULL DEFAULT 'new'); \
         CREATE TABLE log (id bigserial PRIMARY KEY, who text); \
         CREATE TABLE owners (id int PRIMARY KEY, job int REFERENCES jobs); \
         CREATE TABLE nokey (v int); \
         CREATE TABLE parts (id int PRIMARY KEY, v text) PARTITION BY RANGE (id); \
         CREATE TABLE parts_low PARTITION OF parts FOR VALUES FROM (0) TO (100); \
         CREATE TABLE parts_high PARTITION OF parts FOR VALUES FROM (100) TO (200)",
    )
    .await
    .unwrap();
    c.batch_execute(
        "INSERT INTO jobs (id) SELECT generate_series(1, 10); \
         INSERT INTO owners VALUES (1, 1), (2, 2); \
         INSERT INTO nokey VALUES (1), (2); \
         INSERT INTO parts VALUES (5, 'low'), (150, 'high')",
    )
    .await
    .unwrap();
    cluster.wait_converged().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn locked_rows_conflict_across_proxies_first_committer_wins() {
    let cluster = Cluster::start(2).await;
    setup(&cluster).await;
    // Fresh sessions: the first transaction of a backend locks already.
    let a = cluster.client(0).await;
    let b = cluster.client(1).await;
    first_wins(
        race(&a, &mutex("UPDATE", "a"), &b, &mutex("UPDATE", "b")).await,
        "FOR UPDATE mutex",
    );
    first_wins(
        race(
            &a,
            &mutex("NO KEY UPDATE", "a"),
            &b,
            &mutex("NO KEY UPDATE", "b"),
        )
        .await,
        "FOR NO KEY UPDATE mutex",
    );
    // A transaction that only locked is certified too.
    let lock_only = "SELECT id FROM jobs WHERE id = 2 FOR UPDATE";
    first_wins(race(&a, lock_only, &b, lock_only).await, "lock only");
    // A lock excludes a concurrent writer of the row, and the other way
    // round, through either proxy.
    first_wins(
        race(
            &a,
            "SELECT id FROM jobs WHERE id = 3 FOR UPDATE",
            &b,
            "UPDATE jobs SET state = 'b' WHERE id = 3",
        )
        .await,
        "lock, then a write",
    );
    first_wins(
        race(
            &b,
            "UPDATE jobs SET state = 'b2' WHERE id = 3",
            &a,
            "SELECT id FROM jobs WHERE id = 3 FOR NO KEY UPDATE",
        )
        .await,
        "write, then a lock",
    );
    // Other rows are free.
    both_commit(
        race(
            &a,
            "SELECT id FROM jobs WHERE id = 4 FOR UPDATE",
            &b,
            "SELECT id FROM jobs WHERE id = 5 FOR UPDATE",
        )
        .await,
        "different rows",
    );
    // A row locked and then updated: certified as the write (and still
    // excluding a concurrent locker).
    first_wins(
        race(
            &a,
            "SELECT id FROM jobs WHERE id = 6 FOR UPDATE; \
             UPDATE jobs SET state = 'done' WHERE id = 6",
            &b,
            "SELECT id FROM jobs WHERE id = 6 FOR UPDATE",
        )
        .await,
        "locked, then updated",
    );
    // FOR UPDATE OF one table of a join locks only that table's rows.
    let of_jobs = "SELECT j.id FROM jobs j JOIN owners o ON o.job = j.id \
                   WHERE o.id = 1 FOR UPDATE OF j";
    first_wins(
        race(
            &a,
            of_jobs,
            &b,
            "SELECT id FROM jobs WHERE id = 1 FOR UPDATE",
        )
        .await,
        "FOR UPDATE OF j",
    );
    both_commit(
        race(
            &a,
            of_jobs,
            &b,
            "SELECT id FROM owners WHERE id = 1 FOR UPDATE",
        )
        .await,
        "FOR UPDATE OF j leaves owners alone",
    );
    // Locks in a CTE, in a partition, and through a cursor count too.
    first_wins(
        race(
            &a,
            "WITH l AS (SELECT id FROM jobs WHERE id = 7 FOR UPDATE) \
             INSERT INTO log (who) SELECT 'cte' FROM l",
            &b,
            "SELECT id FROM jobs WHERE id = 7 FOR UPDATE",
        )
        .await,
        "CTE",
    );
    first_wins(
        race(
            &a,
            "SELECT id FROM parts WHERE id = 150 FOR UPDATE",
            &b,
            "UPDATE parts SET v = 'b' WHERE id = 150",
        )
        .await,
        "partition",
    );
    first_wins(
        race(
            &a,
            "DECLARE c CURSOR FOR SELECT id FROM jobs WHERE id = 8 FOR UPDATE; FETCH ALL FROM c",
            &b,
            "SELECT id FROM jobs WHERE id = 8 FOR UPDATE",
        )
        .await,
        "cursor",
    );
    // A row locked in a savepoint rolled back is not locked any more.
    both_commit(
        race(
            &a,
            "SAVEPOINT s; SELECT id FROM jobs WHERE id = 9 FOR UPDATE; ROLLBACK TO s",
            &b,
            "SELECT id FROM jobs WHERE id = 9 FOR UPDATE",
        )
        .await,
        "savepoint rolled back",
    );
    // An autocommit lock is a transaction of its own, and answers rows.
    let rows = a
        .query(
            "SELECT id FROM jobs WHERE id <= 2 ORDER BY id FOR UPDATE",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    cluster.assert_identical().await;
    let c = cluster.replica(1).await;
    let logged: i64 = c
        .query_one("SELECT count(*) FROM log", &[])
        .await
        .unwrap()
        .get(0);
    // The FOR UPDATE, FOR NO KEY UPDATE and CTE winners.
    assert_eq!(logged, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn share_locks_skip_locked_tables_without_key_and_the_setting() {
    let mut cluster = Cluster::start(2).await;
    setup(&cluster).await;
    let a = cluster.client(0).await;
    let b = cluster.client(1).await;
    // FOR SHARE and FOR KEY SHARE are not conflict keys: on one server
    // they would not exclude each other either.
    both_commit(
        race(&a, &mutex("SHARE", "a"), &b, &mutex("SHARE", "b")).await,
        "FOR SHARE",
    );
    both_commit(
        race(&a, &mutex("KEY SHARE", "a"), &b, &mutex("KEY SHARE", "b")).await,
        "FOR KEY SHARE",
    );
    // SKIP LOCKED skips rows locked on the same replica only: through
    // another proxy both take row 1, and the second committer loses.
    let take = "SELECT id FROM jobs ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED";
    a.batch_execute("BEGIN").await.unwrap();
    let a_took: i32 = a.query_one(take, &[]).await.unwrap().get(0);
    let same = cluster.client(0).await;
    same.batch_execute("BEGIN").await.unwrap();
    let same_took: i32 = same.query_one(take, &[]).await.unwrap().get(0);
    b.batch_execute("BEGIN").await.unwrap();
    let b_took: i32 = b.query_one(take, &[]).await.unwrap().get(0);
    assert_eq!((a_took, same_took, b_took), (1, 2, 1));
    let ra = a.batch_execute("COMMIT").await;
    let rs = same.batch_execute("COMMIT").await;
    let rb = b.batch_execute("COMMIT").await;
    assert!(rs.is_ok(), "{rs:?}");
    first_wins((ra, rb), "SKIP LOCKED through two proxies");
    // A table without a primary key: a locked row cannot be keyed, so
    // the lock keys the whole table: lockers of any two rows conflict.
    first_wins(
        race(
            &a,
            "SELECT v FROM nokey WHERE v = 1 FOR UPDATE",
            &b,
            "SELECT v FROM nokey WHERE v = 2 FOR UPDATE",
        )
        .await,
        "table without a primary key",
    );
    // Off for a session (SET), for a transaction (SET LOCAL): both commit.
    a.batch_execute("SET tashkent.lock_conflicts = off")
        .await
        .unwrap();
    let shown = a
        .simple_query("SHOW tashkent.lock_conflicts")
        .await
        .unwrap()
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
    assert_eq!(shown.as_deref(), Some("off"));
    both_commit(
        race(
            &a,
            &mutex("UPDATE", "a"),
            &b,
            &format!(
                "SET LOCAL tashkent.lock_conflicts = false; {}",
                mutex("UPDATE", "b")
            ),
        )
        .await,
        "lock_conflicts off",
    );
    // On again: SET LOCAL ended with its transaction, RESET restores the
    // proxy's default.
    a.batch_execute("RESET tashkent.lock_conflicts")
        .await
        .unwrap();
    first_wins(
        race(&a, &mutex("UPDATE", "a"), &b, &mutex("UPDATE", "b")).await,
        "lock_conflicts on again",
    );
    let bad = a
        .batch_execute("SET tashkent.lock_conflicts = maybe")
        .await
        .unwrap_err();
    assert_eq!(
        bad.as_db_error().map(|d| d.code()),
        Some(&SqlState::INVALID_PARAMETER_VALUE)
    );
    // Off as every proxy's default.
    cluster
        .restart_proxies_with(|c| c.lock_conflicts = false)
        .await;
    let a = cluster.client(0).await;
    let b = cluster.client(1).await;
    both_commit(
        race(&a, &mutex("UPDATE", "a"), &b, &mutex("UPDATE", "b")).await,
        "[proxy] lock_conflicts = false",
    );
    cluster.assert_identical().await;
}
