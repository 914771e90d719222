//! Fairness on a hot row through two proxies (the certifier's fair turns):
//! a session that keeps losing on a row is queued for it, and a transaction
//! of another proxy that would win under plain first-committer-wins gets
//! 40001 while the loser has its turn; the loser's retry then commits.

use tashkent_certifier::turns::QUEUE_AFTER_LOSSES;
use tokio_postgres::Client;

use crate::common::cluster::Cluster;

fn code(e: &tokio_postgres::Error) -> &str {
    e.code().map(|c| c.code()).unwrap_or("")
}

/// One transaction of the hot-row workload: the gate row, then the hot row
/// (the applier of replica 2 is held at the gate, so it never touches the
/// hot row while the test wants that replica to trail).
async fn bump(c: &Client) -> Result<(), tokio_postgres::Error> {
    c.batch_execute(
        "BEGIN; UPDATE gate SET n = n + 1 WHERE id = 1; \
         UPDATE hot SET n = n + 1 WHERE id = 1; COMMIT",
    )
    .await
}

/// The session's own update of the hot row only.
async fn bump_hot(c: &Client) -> Result<(), tokio_postgres::Error> {
    c.batch_execute("UPDATE hot SET n = n + 1 WHERE id = 1")
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_that_keeps_losing_on_a_row_gets_its_turn_before_a_fresh_winner() {
    let cluster = Cluster::start(2).await;
    let a = cluster.client(0).await;
    a.batch_execute(
        "CREATE TABLE gate (id int PRIMARY KEY, n int NOT NULL); \
         CREATE TABLE hot (id int PRIMARY KEY, n int NOT NULL); \
         INSERT INTO gate VALUES (1, 0); INSERT INTO hot VALUES (1, 0)",
    )
    .await
    .unwrap();
    cluster.wait_converged().await;
    let b = cluster.client(1).await;

    // Replica 2 trails: its applier waits at the gate table.
    let holder = cluster.hold_applier(1, "gate").await;
    bump(&a).await.unwrap();
    // B's snapshot lacks A's commit: it loses, again and again (each
    // retry waits for A's version to be applied, which cannot happen, then
    // goes on), until it has lost often enough to be queued.
    for _ in 0..=QUEUE_AFTER_LOSSES {
        let e = bump_hot(&b).await.unwrap_err();
        assert_eq!(code(&e), "40001", "{e:?}");
    }
    // B has been losing on the row: it has its turn. A, whose snapshot is
    // fresh and would win under first-committer-wins, is refused, and
    // says why.
    let e = bump_hot(&a).await.unwrap_err();
    assert_eq!(code(&e), "40001", "{e:?}");
    let detail = e.as_db_error().unwrap().detail().unwrap_or("").to_string();
    assert!(detail.contains("has its turn"), "{detail}");
    // Replica 2 catches up; B's retry commits.
    holder.batch_execute("COMMIT").await.unwrap();
    bump_hot(&b).await.unwrap();
    // A was queued behind B: its retry waits for its turn and for B's
    // commit, and commits.
    bump_hot(&a).await.unwrap();
    cluster.wait_converged().await;
    for c in [&a, &b] {
        let row = c
            .query_one("SELECT n FROM hot WHERE id = 1", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 3, "A's first bump, B's, A's");
    }
}
