//! Writeset capture on one real replica, applied on another.

mod common;

use common::connect;
use tashkent::capture::{self, ChangeOp};
use tashkent::pg::{PgConfig, PgServer};
use tokio_postgres::Client;

struct Pair {
    _a: PgServer,
    _b: PgServer,
    a: Client,
    b: Client,
}

/// Two replicas with capture installed and the same `schema` on both.
async fn pair(schema: &str) -> Pair {
    let sa = PgServer::start(PgConfig::default()).unwrap();
    let sb = PgServer::start(PgConfig::default()).unwrap();
    let a = connect(&sa, "postgres").await;
    let b = connect(&sb, "postgres").await;
    for c in [&a, &b] {
        capture::install(c).await.unwrap();
        c.batch_execute(schema).await.unwrap();
    }
    capture::become_applier(&b).await.unwrap();
    Pair {
        _a: sa,
        _b: sb,
        a,
        b,
    }
}

/// Runs `sql` in one transaction on A and returns what it captured.
async fn on_origin(client: &Client, sql: &str) -> String {
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute(sql).await.unwrap();
    let captured = capture::read(client).await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    captured
}

async fn apply(client: &Client, captured: &str) {
    client.batch_execute("BEGIN").await.unwrap();
    capture::apply(client, captured).await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
}

/// Row count and a checksum of the rows' text, in canonical settings.
async fn digest(client: &Client, table: &str) -> (i64, String) {
    client
        .batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET extra_float_digits = 3")
        .await
        .unwrap();
    let row = client
        .query_one(
            &format!("SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {table} t"),
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn assert_same(p: &Pair, tables: &[&str]) {
    for table in tables {
        assert_eq!(
            digest(&p.a, table).await,
            digest(&p.b, table).await,
            "{table} differs"
        );
    }
}

const BANK: &str = "
    CREATE TABLE parent (id int PRIMARY KEY, code text UNIQUE, v int, at timestamptz, f float8);
    CREATE TABLE child (id int PRIMARY KEY, pid int REFERENCES parent(id) ON DELETE CASCADE, note text);
";

#[tokio::test(flavor = "multi_thread")]
async fn inserts_updates_rekeys_and_deletes_replay_identically() {
    let p = pair(BANK).await;
    p.a.batch_execute("SET TimeZone = 'Asia/Tashkent'")
        .await
        .unwrap();
    let ws = on_origin(
        &p.a,
        "INSERT INTO parent VALUES (1, 'a', 10, '2024-05-01 12:00+05', 0.1), (2, 'b', 20, now(), 1e-300),
                                   (3, 'c', 30, NULL, 'NaN');
         INSERT INTO child VALUES (100, 1, E'line\\nbreak and \"quotes\"'), (101, 3, NULL);
         UPDATE parent SET v = v + 1, f = f * 3 WHERE id <= 2;
         UPDATE parent SET id = 4 WHERE id = 2;
         DELETE FROM parent WHERE id = 3;",
    )
    .await;
    let changes = capture::parse(&ws).unwrap();
    let ops: Vec<_> = changes.iter().map(|c| (c.table.as_str(), c.op)).collect();
    assert_eq!(
        ops,
        vec![
            ("public.parent", ChangeOp::Insert),
            ("public.child", ChangeOp::Insert),
            ("public.parent", ChangeOp::Update),
            ("public.parent", ChangeOp::Update),
            ("public.parent", ChangeOp::Delete),
            ("public.child", ChangeOp::Delete), // the cascade
        ]
    );
    apply(&p.b, &ws).await;
    assert_same(&p, &["parent", "child"]).await;

    let rekey = &changes[3];
    assert!(rekey
        .gone
        .contains(&"public.parent parent_pkey [2]".to_string()));
    assert!(rekey
        .keys
        .contains(&"public.parent parent_pkey [4]".to_string()));
    assert!(rekey
        .keys
        .contains(&"public.parent parent_code_key [\"b\"]".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn references_and_parent_keys_are_the_same_text_in_any_session() {
    let p = pair(
        "CREATE TABLE ev (at timestamptz PRIMARY KEY, n int);
         CREATE TABLE att (id int PRIMARY KEY, ev_at timestamptz REFERENCES ev(at));",
    )
    .await;
    p.a.batch_execute("SET TimeZone = 'America/Lima'; SET DateStyle = 'SQL, DMY'")
        .await
        .unwrap();
    let child = on_origin(
        &p.a,
        "INSERT INTO ev VALUES ('2024-01-01 00:00:00+00', 1);
         INSERT INTO att VALUES (1, '2024-01-01 00:00:00+00');",
    )
    .await;
    apply(&p.b, &child).await;
    // The same instant, deleted from a session with other settings.
    let c2 = connect(&p._b, "postgres").await;
    c2.batch_execute("SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'German'")
        .await
        .unwrap();
    let parent = on_origin(
        &c2,
        "DELETE FROM att; DELETE FROM ev WHERE at = '2024-01-01 09:00:00+09';",
    )
    .await;
    let inserted = capture::parse(&child).unwrap();
    let deleted = capture::parse(&parent).unwrap();
    let reference = &inserted[1].refs;
    assert_eq!(reference.len(), 1, "{inserted:?}");
    assert!(
        deleted[1].gone.contains(&reference[0]),
        "parent delete {:?} must destroy the key the child references {:?}",
        deleted[1].gone,
        reference
    );
    assert!(inserted[0].keys.contains(&reference[0]));
}

#[tokio::test(flavor = "multi_thread")]
async fn table_without_primary_key_accepts_insert_only() {
    let p = pair("CREATE TABLE log (msg text)").await;
    let ws = on_origin(&p.a, "INSERT INTO log VALUES ('one'), ('two')").await;
    apply(&p.b, &ws).await;
    assert_same(&p, &["log"]).await;
    for sql in ["UPDATE log SET msg = 'x'", "DELETE FROM log"] {
        let err = p.a.batch_execute(sql).await.unwrap_err();
        let db = err.as_db_error().expect("a server error");
        assert_eq!(db.code().code(), "0A000", "{sql}");
        assert!(
            db.message().contains("has no primary key"),
            "{}",
            db.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_copy_then_primary_key_added_later_is_captured() {
    let p = pair("").await;
    // pgbench -i's order: create, COPY, then add the primary key.
    let ddl = "CREATE TABLE acc (aid int NOT NULL, bal int, filler char(40))";
    p.a.batch_execute(ddl).await.unwrap();
    p.b.batch_execute(ddl).await.unwrap();
    p.a.batch_execute("BEGIN").await.unwrap();
    let sink =
        p.a.copy_in("COPY acc (aid, bal, filler) FROM STDIN")
            .await
            .unwrap();
    let rows: String = (1..=50_000).map(|i| format!("{i}\t0\tx\n")).collect();
    futures::pin_mut!(sink);
    use futures::SinkExt;
    sink.send(bytes::Bytes::from(rows)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 50_000);
    let ws = capture::read(&p.a).await.unwrap();
    p.a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(ws.lines().count(), 1, "one line for the whole COPY");
    apply(&p.b, &ws).await;

    let alter = "ALTER TABLE acc ADD PRIMARY KEY (aid)";
    p.a.batch_execute(alter).await.unwrap();
    p.b.batch_execute(alter).await.unwrap();
    let ws = on_origin(&p.a, "UPDATE acc SET bal = bal + 5 WHERE aid = 7").await;
    let changes = capture::parse(&ws).unwrap();
    assert_eq!(changes[0].keys, vec!["public.acc acc_pkey [7]".to_string()]);
    apply(&p.b, &ws).await;
    assert_same(&p, &["acc"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncate_of_related_tables_replays_as_one_command() {
    let p = pair(BANK).await;
    let ws = on_origin(
        &p.a,
        "INSERT INTO parent VALUES (1, 'a', 1, NULL, 0); INSERT INTO child VALUES (1, 1, 'n');",
    )
    .await;
    apply(&p.b, &ws).await;
    let ws = on_origin(&p.a, "TRUNCATE parent CASCADE").await;
    let tables: Vec<_> = capture::parse(&ws)
        .unwrap()
        .into_iter()
        .map(|c| (c.table, c.op))
        .collect();
    assert_eq!(tables.len(), 2, "{tables:?}");
    assert!(tables.iter().all(|(_, op)| *op == ChangeOp::Truncate));
    apply(&p.b, &ws).await;
    assert_same(&p, &["parent", "child"]).await;
    assert_eq!(digest(&p.b, "child").await.0, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn rolled_back_and_read_only_transactions_capture_nothing() {
    let p = pair(BANK).await;
    p.a.batch_execute("BEGIN; INSERT INTO parent VALUES (9, 'z', 0, NULL, 0); ROLLBACK")
        .await
        .unwrap();
    assert_eq!(on_origin(&p.a, "SELECT count(*) FROM parent").await, "");
    assert_eq!(
        on_origin(&p.a, "UPDATE parent SET v = 1 WHERE false").await,
        "",
        "a statement that changes no row captures nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ddl_replayed_by_an_applier_installs_capture_there() {
    let p = pair("").await;
    // Replicated DDL runs in the applier session (replica mode) on B.
    p.b.batch_execute("CREATE TABLE later (id int PRIMARY KEY, x int)")
        .await
        .unwrap();
    let b_origin = connect(&p._b, "postgres").await;
    let ws = on_origin(&b_origin, "INSERT INTO later VALUES (1, 2)").await;
    assert_eq!(capture::parse(&ws).unwrap().len(), 1, "captured on B: {ws}");
    // And the applier's own writes are not captured.
    let applied = on_origin(&p.b, "INSERT INTO later VALUES (2, 3)").await;
    assert_eq!(applied, "");
    // Dropping the table removes its generated functions.
    b_origin.batch_execute("DROP TABLE later").await.unwrap();
    let left: i64 = b_origin
        .query_one(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'tashkent'::regnamespace AND proname LIKE 'capture\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}
