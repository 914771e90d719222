//! Writeset capture on one real replica, applied on another.

use crate::common;

use bytes::Bytes;
use common::connect;
use tashkent::ops::pg::{PgConfig, PgServer};
use tashkent::proxy::capture::{self, entry::Entry};
use tashkent::proxy::writeset;
use tokio_postgres::Client;

struct Pair {
    _a: PgServer,
    _b: PgServer,
    a: Client,
    b: Client,
}

const MAX: u64 = capture::DEFAULT_MAX_WRITESET_BYTES;

/// Two replicas with capture installed and the same `schema` on both.
async fn pair(schema: &str) -> Pair {
    let sa = PgServer::start(PgConfig::default()).unwrap();
    let sb = PgServer::start(PgConfig::default()).unwrap();
    let a = connect(&sa, "postgres").await;
    let b = connect(&sb, "postgres").await;
    for c in [&a, &b] {
        capture::install(c, MAX).await.unwrap();
        run_each(c, schema).await;
    }
    capture::become_applier(&b).await.unwrap();
    Pair {
        _a: sa,
        _b: sb,
        a,
        b,
    }
}

/// Sends the `;`-separated statements of `sql` one query each, as the
/// proxy sends DDL (capture refuses several DDL statements in one query).
async fn run_each(client: &Client, sql: &str) {
    for stmt in sql.split(';').filter(|s| !s.trim().is_empty()) {
        client
            .batch_execute(stmt)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
}

/// Runs `sql` in one transaction on A and returns what it captured.
async fn on_origin(client: &Client, sql: &str) -> Bytes {
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute(sql).await.unwrap();
    let captured = capture::read(client).await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    captured
}

/// Runs each statement as a query of its own in one transaction on A and
/// returns what it captured.
async fn on_origin_each(client: &Client, stmts: &[&str]) -> Bytes {
    client.batch_execute("BEGIN").await.unwrap();
    for stmt in stmts {
        client
            .batch_execute(stmt)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
    let captured = capture::read(client).await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    captured
}

fn entries(ws: &[u8]) -> Vec<Entry> {
    capture::entry::parse_all(ws).unwrap()
}

/// The captured bytes as the certifier's writeset, applied in one
/// transaction on an applier session.
async fn apply(client: &Client, captured: &[u8]) {
    let ws = writeset::build(Bytes::from_static(b"t"), 1, 0, captured, MAX)
        .unwrap()
        .expect("something captured");
    client.batch_execute("BEGIN").await.unwrap();
    capture::apply_writeset(client, &ws).await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
}

/// Row count and a checksum of the rows' text, in canonical settings.
async fn digest(client: &Client, table: &str) -> (i64, String) {
    client
        .batch_execute(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres'; \
             SET extra_float_digits = 3",
        )
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

/// (table, operation) of each entry; 'I', 'U', 'D', 'T', 'X' or 'L'.
fn ops(ws: &[u8]) -> Vec<(String, char)> {
    entries(ws)
        .into_iter()
        .map(|e| match e {
            Entry::Insert(r) => (r.table, 'I'),
            Entry::Update(r) => (r.table, 'U'),
            Entry::Delete(r) => (r.table, 'D'),
            Entry::Truncate { table } => (table, 'T'),
            Entry::Lock { table, .. } => (table, 'L'),
            Entry::Ddl { json } => {
                let v: serde_json::Value = serde_json::from_str(&json).unwrap();
                (v["t"].as_str().unwrap().to_string(), 'X')
            }
        })
        .collect()
}

fn row(e: &Entry) -> &capture::entry::RowChange {
    match e {
        Entry::Insert(r) | Entry::Update(r) | Entry::Delete(r) => r,
        other => panic!("not a row change: {other:?}"),
    }
}

fn ddl_json(e: &Entry) -> serde_json::Value {
    match e {
        Entry::Ddl { json } => serde_json::from_str(json).unwrap(),
        other => panic!("not DDL: {other:?}"),
    }
}

/// True when `key` is a conflict key of index `index`.
fn of_index(key: &[u8], index: &str) -> bool {
    key.starts_with(index.as_bytes()) && key.get(index.len()) == Some(&0)
}

const BANK: &str = "
    CREATE TABLE parent (id int PRIMARY KEY, code text UNIQUE, v int, at timestamptz, f float8,
        -- Names the generated capture SQL uses itself.
        k int, c int, x int, i int, p int, j int);
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
    let got: Vec<(String, char)> = ops(&ws);
    let want: Vec<(&str, char)> = vec![
        ("public.parent", 'I'),
        ("public.parent", 'I'),
        ("public.parent", 'I'),
        ("public.child", 'I'),
        ("public.child", 'I'),
        ("public.parent", 'U'),
        ("public.parent", 'U'),
        ("public.parent", 'U'),
        ("public.parent", 'D'),
        ("public.child", 'D'), // the cascade
    ];
    assert_eq!(
        got,
        want.iter()
            .map(|(t, o)| (t.to_string(), *o))
            .collect::<Vec<_>>()
    );
    apply(&p.b, &ws).await;
    assert_same(&p, &["parent", "child"]).await;

    let e = entries(&ws);
    let inserted_2 = row(&e[1]);
    let rekey = row(&e[7]);
    // The re-key carries the old key and row; the unique code stays.
    assert_eq!(rekey.old_pk, inserted_2.pk);
    assert!(of_index(&rekey.pk, "parent_pkey") && rekey.pk != inserted_2.pk);
    assert!(rekey.old_row.starts_with(b"(2,b,"), "{:?}", rekey.old_row);
    assert!(rekey.row.starts_with(b"(4,b,"), "{:?}", rekey.row);
    assert_eq!(rekey.uniques, inserted_2.uniques);
    assert!(of_index(&rekey.uniques[0], "parent_code_key"));
    assert!(rekey.gone.is_empty());
    // An update that changes no key carries no old row.
    assert!(row(&e[5]).old_pk.is_empty() && row(&e[5]).old_row.is_empty());
    // The child references its parent's primary key.
    assert_eq!(
        row(&e[3]).refs,
        vec![("public.parent".to_string(), row(&e[0]).pk.clone())]
    );
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
    let inserted = entries(&child);
    let deleted = entries(&parent);
    let reference = &row(&inserted[1]).refs;
    assert_eq!(reference.len(), 1, "{inserted:?}");
    assert_eq!(reference[0].0, "public.ev");
    assert_eq!(
        row(&deleted[1]).pk,
        reference[0].1,
        "the parent's delete removes the key the child references"
    );
    assert_eq!(row(&inserted[0]).pk, reference[0].1);
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
    assert_eq!(entries(&ws).len(), 50_000, "an entry per row");
    let certified = writeset::build(Bytes::from_static(b"t"), 1, 0, &ws, MAX)
        .unwrap()
        .unwrap();
    assert_eq!(
        certified.items.len(),
        50,
        "items of 1,000 rows for the COPY"
    );
    apply(&p.b, &ws).await;

    let alter = "ALTER TABLE acc ADD PRIMARY KEY (aid)";
    p.a.batch_execute(alter).await.unwrap();
    p.b.batch_execute(alter).await.unwrap();
    let ws = on_origin(&p.a, "UPDATE acc SET bal = bal + 5 WHERE aid = 7").await;
    let e = entries(&ws);
    assert!(of_index(&row(&e[0]).pk, "acc_pkey"), "{e:?}");
    assert!(row(&e[0]).uniques.is_empty());
    apply(&p.b, &ws).await;
    assert_same(&p, &["acc"]).await;
}

/// The primary keys of a transaction's lock and row entries, in order.
fn keys(ws: &[u8]) -> Vec<(char, Bytes)> {
    entries(ws)
        .into_iter()
        .filter_map(|e| match e {
            Entry::Lock { pk, .. } => Some(('L', pk)),
            Entry::Update(r) => Some(('U', r.pk)),
            Entry::Insert(r) => Some(('I', r.pk)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_locked_for_update_are_lock_entries_with_their_primary_keys() {
    let p = pair(
        "CREATE TABLE j (id int PRIMARY KEY, s text); \
         CREATE TABLE n (v int); \
         CREATE TABLE pt (id int PRIMARY KEY, v text) PARTITION BY RANGE (id); \
         CREATE TABLE pt_1 PARTITION OF pt FOR VALUES FROM (0) TO (100); \
         INSERT INTO j SELECT g, 'x' FROM generate_series(1, 5) g; \
         INSERT INTO n VALUES (1); \
         INSERT INTO pt VALUES (7, 'x')",
    )
    .await;
    let a = &p.a;
    let locked = |ws: &[u8]| ops(ws);
    let l = |t: &str| vec![(t.to_string(), 'L')];
    for strength in ["UPDATE", "NO KEY UPDATE"] {
        let ws = on_origin(a, &format!("SELECT s FROM j WHERE id = 1 FOR {strength}")).await;
        assert_eq!(locked(&ws), l("public.j"), "FOR {strength}");
    }
    for strength in ["SHARE", "KEY SHARE"] {
        let ws = on_origin(a, &format!("SELECT s FROM j WHERE id = 1 FOR {strength}")).await;
        assert!(ws.is_empty(), "FOR {strength} captured {:?}", locked(&ws));
    }
    // The key of a lock is the key an update of the row writes.
    let ws = on_origin(
        a,
        "SELECT s FROM j WHERE id = 2 FOR UPDATE; UPDATE j SET s = 'y' WHERE id = 2",
    )
    .await;
    let k = keys(&ws);
    assert_eq!(k.len(), 2, "{k:?}");
    assert_eq!((k[0].0, k[1].0), ('L', 'U'));
    assert_eq!(k[0].1, k[1].1);
    assert!(!k[0].1.is_empty());
    // ...so the writeset carries the update only.
    let built = writeset::build(Bytes::from_static(b"t"), 1, 0, &ws, MAX)
        .unwrap()
        .unwrap();
    assert_eq!(built.items.len(), 1);
    assert_eq!(built.items[0].op, tashkent_certifier::Op::Update as i32);
    // Rows this transaction wrote are not locked again.
    let ws = on_origin(
        a,
        "INSERT INTO j VALUES (10, 'new'); UPDATE j SET s = 'z' WHERE id = 3; \
         SELECT s FROM j WHERE id IN (3, 10) FOR UPDATE",
    )
    .await;
    assert_eq!(
        ops(&ws),
        vec![("public.j".to_string(), 'I'), ("public.j".to_string(), 'U')]
    );
    // A partition's row under its root's name and key; a table without
    // a primary key with an empty key; a join's FOR UPDATE OF one table.
    let ws = on_origin(a, "SELECT v FROM pt WHERE id = 7 FOR UPDATE").await;
    assert_eq!(locked(&ws), l("public.pt"));
    let ws = on_origin(a, "SELECT v FROM n FOR UPDATE").await;
    assert!(matches!(&entries(&ws)[..], [Entry::Lock { pk, .. }] if pk.is_empty()));
    let ws = on_origin(a, "SELECT j.id FROM j JOIN n ON n.v = j.id FOR UPDATE OF j").await;
    assert_eq!(locked(&ws), l("public.j"));
    // Locks taken in a rolled-back savepoint are gone with it.
    let ws = on_origin(
        a,
        "SAVEPOINT s; SELECT s FROM j WHERE id = 4 FOR UPDATE; ROLLBACK TO s",
    )
    .await;
    assert!(ws.is_empty());
    // A lock-only writeset applies as nothing.
    let ws = on_origin(a, "SELECT s FROM j WHERE id <= 5 FOR UPDATE").await;
    assert_eq!(ops(&ws).len(), 5);
    let before = digest(&p.b, "j").await;
    apply(&p.b, &ws).await;
    assert_eq!(digest(&p.b, "j").await, before);
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
    let tables = ops(&ws);
    assert_eq!(tables.len(), 2, "{tables:?}");
    assert!(tables.iter().all(|(_, op)| *op == 'T'));
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
    assert!(on_origin(&p.a, "SELECT count(*) FROM parent")
        .await
        .is_empty());
    assert!(
        on_origin(&p.a, "UPDATE parent SET v = 1 WHERE false")
            .await
            .is_empty(),
        "a statement that changes no row captures nothing"
    );
    // What a rolled-back savepoint or a failed PL/pgSQL block wrote is
    // gone from the writeset too.
    let ws = on_origin(
        &p.a,
        "INSERT INTO parent VALUES (1, 'a', 0, NULL, 0);
         SAVEPOINT s; INSERT INTO parent VALUES (2, 'b', 0, NULL, 0); ROLLBACK TO s;
         SAVEPOINT t; INSERT INTO parent VALUES (3, 'c', 0, NULL, 0); RELEASE t;
         DO $$ BEGIN INSERT INTO parent VALUES (4, 'd', 0, NULL, 0); PERFORM 1 / 0;
                EXCEPTION WHEN division_by_zero THEN NULL; END $$;",
    )
    .await;
    let rows: Vec<Bytes> = entries(&ws).iter().map(|e| row(e).row.clone()).collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[0].starts_with(b"(1,a,") && rows[1].starts_with(b"(3,c,"));
    apply(&p.b, &ws).await;
    assert_same(&p, &["parent"]).await;
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
    assert_eq!(entries(&ws).len(), 1, "captured on B: {ws:?}");
    // And the applier's own writes are not captured.
    let applied = on_origin(&p.b, "INSERT INTO later VALUES (2, 3)").await;
    assert!(applied.is_empty());
    let triggers = "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'tashkent\\_capture%' \
                    AND tgrelid = to_regclass('later')";
    assert_eq!(one_i64(&b_origin, triggers).await, 2);
    b_origin.batch_execute("DROP TABLE later").await.unwrap();
    assert_eq!(one_i64(&b_origin, triggers).await, 0);
}

/// The SQLSTATE and message of a statement's error.
fn server_error(err: &tokio_postgres::Error) -> (String, String) {
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err}"));
    (db.code().code().to_string(), db.message().to_string())
}

async fn one_i64(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn table_created_and_filled_in_one_transaction_replays_with_capture_installed() {
    let p = pair("").await;
    let ws = on_origin_each(
        &p.a,
        &[
            "CREATE TABLE fresh (id int PRIMARY KEY, v text UNIQUE)",
            "INSERT INTO fresh VALUES (1, 'one'), (2, 'two')",
        ],
    )
    .await;
    assert_eq!(
        ops(&ws),
        vec![
            ("public.fresh".to_string(), 'X'),
            ("public.fresh".to_string(), 'I'),
            ("public.fresh".to_string(), 'I'),
        ]
    );
    assert_eq!(
        ddl_json(&entries(&ws)[0])["tables"],
        serde_json::json!(["public.fresh"])
    );
    apply(&p.b, &ws).await;
    assert_same(&p, &["fresh"]).await;

    // The replayed CREATE TABLE installed capture on B.
    let b_origin = connect(&p._b, "postgres").await;
    let ws = on_origin(&b_origin, "UPDATE fresh SET v = 'uno' WHERE id = 1").await;
    assert_eq!(ops(&ws), vec![("public.fresh".to_string(), 'U')]);
    let e = entries(&ws);
    assert!(of_index(&row(&e[0]).pk, "fresh_pkey"));
    // The unique value changed: the old one is gone.
    assert!(of_index(&row(&e[0]).uniques[0], "fresh_v_key"));
    assert!(of_index(&row(&e[0]).gone[0], "fresh_v_key"));
    assert_ne!(row(&e[0]).uniques, row(&e[0]).gone);
    // And B's change applies back on A.
    capture::become_applier(&p.a).await.unwrap();
    apply(&p.a, &ws).await;
    assert_same(&p, &["fresh"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ddl_replays_under_its_search_path_and_date_settings_and_lists_its_tables() {
    let p = pair("").await;
    p.a.batch_execute(
        "SET TimeZone = 'Asia/Tashkent'; SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'sql_standard'",
    )
    .await
    .unwrap();
    let ws = on_origin_each(
        &p.a,
        &[
            "CREATE SCHEMA s",
            "SET search_path = s",
            "CREATE TABLE x (id int PRIMARY KEY, v text)",
            "INSERT INTO x VALUES (1, 'a'), (2, 'b')",
            // Defaults parsed in the origin's settings: 2 January, 10:00 in Tashkent.
            "ALTER TABLE x ADD COLUMN at timestamptz DEFAULT '02/01/2024 10:00', \
             ADD COLUMN d interval DEFAULT '1 2:00:00', ADD COLUMN n int DEFAULT 7",
            "CREATE TABLE y (id int PRIMARY KEY, x_id int REFERENCES x)",
            "INSERT INTO y VALUES (10, 1)",
            "CREATE INDEX ON x (v)",
            "COMMENT ON COLUMN x.v IS 'a letter'",
        ],
    )
    .await;
    p.a.batch_execute("RESET search_path").await.unwrap();
    let ddl: Vec<serde_json::Value> = entries(&ws)
        .iter()
        .filter(|e| matches!(e, Entry::Ddl { .. }))
        .map(ddl_json)
        .collect();
    let listed: Vec<(String, serde_json::Value)> = ddl
        .iter()
        .map(|d| (d["t"].as_str().unwrap().to_string(), d["tables"].clone()))
        .collect();
    let x = serde_json::json!(["s.x"]);
    assert_eq!(
        listed,
        vec![
            ("tashkent.catalog".to_string(), serde_json::json!([])),
            ("s.x".to_string(), x.clone()),
            ("s.x".to_string(), x.clone()),
            ("s.y".to_string(), serde_json::json!(["s.y"])),
            ("s.x".to_string(), x.clone()),
            ("s.x".to_string(), x),
        ]
    );
    // The entry carries the statement and the settings it ran under.
    let create = &ddl[1];
    assert_eq!(create["sql"], "CREATE TABLE x (id int PRIMARY KEY, v text)");
    assert_eq!(create["path"], "s");
    assert_eq!(create["tz"], "Asia/Tashkent");
    assert_eq!(create["ds"], "SQL, DMY");
    assert_eq!(create["is"], "sql_standard");

    apply(&p.b, &ws).await;
    assert_same(&p, &["s.x", "s.y"]).await;
    let at: String =
        p.b.query_one("SELECT at::text FROM s.x WHERE id = 1", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(at, "2024-01-02 05:00:00+00");
    // The applier's own settings are back.
    let path: String = p.b.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(path, "\"$user\", public");
    let comment: Option<String> =
        p.b.query_one("SELECT col_description('s.x'::regclass, 2)", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(comment.as_deref(), Some("a letter"));

    // Capture on B follows the added columns.
    let ws = on_origin(&p.a, "UPDATE s.x SET n = n + 1").await;
    apply(&p.b, &ws).await;
    assert_same(&p, &["s.x"]).await;

    // DROP lists what it dropped.
    let ws = on_origin(&p.a, "DROP TABLE s.y, s.x").await;
    let e = entries(&ws);
    assert_eq!(e.len(), 1, "{e:?}");
    let mut dropped: Vec<String> = ddl_json(&e[0])["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    dropped.sort();
    assert_eq!(dropped, vec!["s.x", "s.y"]);
    apply(&p.b, &ws).await;
    assert_eq!(
        one_i64(
            &p.b,
            "SELECT count(*) FROM pg_class WHERE relnamespace = 's'::regnamespace"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ddl_that_is_not_a_statement_of_its_own_is_refused() {
    let p = pair("").await;
    let refused = [
        (
            "DO $$ BEGIN EXECUTE 'CREATE TABLE indo (id int PRIMARY KEY)'; END $$",
            "inside a function or DO block",
        ),
        ("SELECT mk()", "inside a function or DO block"),
        (
            "CREATE TABLE m1 (id int PRIMARY KEY); CREATE TABLE m2 (id int PRIMARY KEY)",
            "several DDL statements",
        ),
        (
            "CREATE TABLE m3 (id int PRIMARY KEY); INSERT INTO m3 VALUES (1)",
            "DDL and other statements",
        ),
    ];
    p.a.batch_execute(
        "CREATE FUNCTION mk() RETURNS void LANGUAGE sql AS 'CREATE TABLE fromfn (id int)'",
    )
    .await
    .unwrap();
    for (sql, says) in refused {
        let err = p.a.batch_execute(sql).await.unwrap_err();
        let (code, message) = server_error(&err);
        assert_eq!(code, "0A000", "{sql}: {message}");
        assert!(message.contains(says), "{sql}: {message}");
    }
    assert_eq!(
        one_i64(
            &p.a,
            "SELECT count(*) FROM pg_class WHERE relname IN ('indo', 'fromfn', 'm1', 'm2', 'm3')"
        )
        .await,
        0
    );
    // Temporary tables in functions are not replicated and not refused.
    let ws = on_origin(
        &p.a,
        "DO $$ BEGIN EXECUTE 'CREATE TEMP TABLE scratch (x int)'; EXECUTE 'DROP TABLE scratch'; END $$",
    )
    .await;
    assert!(ws.is_empty());
    // DDL and data statements pipelined as queries of their own (as the
    // proxy sends them) are separate client messages: accepted.
    p.a.batch_execute("BEGIN").await.unwrap();
    let (create, insert) = futures::join!(
        p.a.batch_execute("CREATE TABLE piped (id int PRIMARY KEY)"),
        p.a.batch_execute("INSERT INTO piped VALUES (1)"),
    );
    create.unwrap();
    insert.unwrap();
    let ws = capture::read(&p.a).await.unwrap();
    p.a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        ops(&ws),
        vec![
            ("public.piped".to_string(), 'X'),
            ("public.piped".to_string(), 'I'),
        ]
    );
    // DDL that changes nothing gives no line.
    p.a.batch_execute("CREATE TABLE here (id int PRIMARY KEY)")
        .await
        .unwrap();
    let ws = on_origin(&p.a, "CREATE TABLE IF NOT EXISTS here (id int PRIMARY KEY)").await;
    assert!(ws.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_statements_replay_in_runs_of_at_most_1000_rows() {
    let p = pair(
        "CREATE TABLE big (id int PRIMARY KEY, code text UNIQUE, n int, at timestamptz, f float8, \
         k int DEFAULT 1, c int DEFAULT 2, x int DEFAULT 3, i int DEFAULT 4, p int DEFAULT 5, j int)",
    )
    .await;
    let started = std::time::Instant::now();
    let ws = on_origin(
        &p.a,
        "INSERT INTO big SELECT g, 'c' || g, g % 7, '2024-01-01'::timestamptz + g * interval '1 minute', g / 3.0
         FROM generate_series(1, 250000) g",
    )
    .await;
    let captured_in = started.elapsed();
    let certified = writeset::build(Bytes::from_static(b"t"), 1, 0, &ws, MAX)
        .unwrap()
        .unwrap();
    let mut total = 0;
    for item in &certified.items {
        let rows = capture::change::decode(item.row.clone()).unwrap().len();
        assert!((1..=1000).contains(&rows), "{rows} rows in an item");
        assert_eq!(
            1 + item.unique_keys.len(),
            2 * rows,
            "each item has the keys of its rows"
        );
        total += rows;
    }
    assert_eq!(total, 250_000);
    let started = std::time::Instant::now();
    apply(&p.b, &ws).await;
    let applied_in = started.elapsed();
    eprintln!("250,000 rows: captured in {captured_in:?}, applied in {applied_in:?}");
    assert_same(&p, &["big"]).await;

    // An UPDATE of 5,000 rows that re-keys 1,500 of them (keeping their
    // unique codes): the old keys are removed, the codes are not.
    let ws = on_origin(
        &p.a,
        "UPDATE big SET id = CASE WHEN id <= 1500 THEN id + 1000000 ELSE id END, n = n + 1 WHERE id <= 5000",
    )
    .await;
    let e = entries(&ws);
    assert_eq!(e.len(), 5000);
    let rekeyed = e.iter().filter(|e| !row(e).old_pk.is_empty()).count();
    assert_eq!(rekeyed, 1500);
    assert!(e.iter().all(|e| row(e).gone.is_empty()));
    let certified = writeset::build(Bytes::from_static(b"t"), 1, 0, &ws, MAX)
        .unwrap()
        .unwrap();
    let removed: usize = certified
        .items
        .iter()
        .map(|i| i.old_unique_keys.len())
        .sum();
    assert_eq!(removed, 1500, "the re-keyed rows' old primary keys");
    apply(&p.b, &ws).await;
    assert_same(&p, &["big"]).await;

    let ws = on_origin(&p.a, "DELETE FROM big WHERE id % 2 = 0").await;
    let e = entries(&ws);
    assert_eq!(e.len(), 125_000);
    assert!(e
        .iter()
        .all(|e| matches!(e, Entry::Delete(r) if r.uniques.len() == 1)));
    apply(&p.b, &ws).await;
    assert_same(&p, &["big"]).await;
}

/// The values of `sql`'s first column (bigint or int).
async fn values(client: &Client, sql: &str) -> Vec<i64> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| {
            r.try_get::<_, i64>(0)
                .unwrap_or_else(|_| i64::from(r.get::<_, i32>(0)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_draw_sequence_values_from_disjoint_residues() {
    let p = pair("CREATE SEQUENCE old_seq").await;
    for c in [&p.a, &p.b] {
        c.batch_execute("SELECT nextval('old_seq') FROM generate_series(1, 10)")
            .await
            .unwrap();
    }
    // Existing sequences (last value 10) restart at the first unused value
    // with the replica's residue.
    capture::configure_replica(&p.a, 1, 3).await.unwrap();
    capture::configure_replica(&p.b, 2, 3).await.unwrap();
    let two = "SELECT nextval('old_seq') FROM generate_series(1, 2)";
    assert_eq!(values(&p.a, two).await, vec![13, 16]);
    assert_eq!(values(&p.b, two).await, vec![11, 14]);

    // serial and identity columns created by DDL on A and replayed on B.
    let ws = on_origin(
        &p.a,
        "CREATE TABLE numbered (id serial PRIMARY KEY, b bigint GENERATED ALWAYS AS IDENTITY, v text)",
    )
    .await;
    apply(&p.b, &ws).await;
    let b_origin = connect(&p._b, "postgres").await;
    let insert = "INSERT INTO numbered (v) SELECT 'x' FROM generate_series(1, 3) RETURNING id";
    let identity = "SELECT b FROM numbered ORDER BY b";
    assert_eq!(values(&p.a, insert).await, vec![1, 4, 7]);
    assert_eq!(values(&b_origin, insert).await, vec![2, 5, 8]);
    assert_eq!(values(&p.a, identity).await, vec![1, 4, 7]);
    assert_eq!(values(&b_origin, identity).await, vec![2, 5, 8]);

    // Configuring again changes nothing; a bad place is refused.
    capture::configure_replica(&p.a, 1, 3).await.unwrap();
    assert_eq!(
        values(&p.a, "SELECT nextval('numbered_id_seq')").await,
        vec![10]
    );
    assert!(capture::configure_replica(&p.a, 4, 3).await.is_err());
    assert!(capture::configure_replica(&p.a, 0, 0).await.is_err());

    // A client's ALTER SEQUENCE is striped again, on both replicas.
    let ws = on_origin(
        &p.a,
        "ALTER SEQUENCE old_seq INCREMENT BY 1 RESTART WITH 100",
    )
    .await;
    assert_eq!(ops(&ws), vec![("tashkent.catalog".to_string(), 'X')]);
    apply(&p.b, &ws).await;
    assert_eq!(values(&p.a, two).await, vec![100, 103]);
    assert_eq!(values(&b_origin, two).await, vec![101, 104]);

    // Without a configuration, sequences are left alone.
    let c = pair("CREATE SEQUENCE plain").await;
    assert_eq!(
        values(&c.a, "SELECT nextval('plain') FROM generate_series(1, 3)").await,
        vec![1, 2, 3]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restored_sequences_move_past_their_own_stripe() {
    let server = PgServer::start(PgConfig::default()).unwrap();
    let c = connect(&server, "postgres").await;
    capture::install(&c, MAX).await.unwrap();
    run_each(
        &c,
        "CREATE TABLE t (id bigserial PRIMARY KEY, d int UNIQUE, e int);
         CREATE SEQUENCE down INCREMENT BY -1 START WITH -1 MAXVALUE -1;
         ALTER SEQUENCE down OWNED BY t.d;
         CREATE SEQUENCE unindexed OWNED BY t.e;
         CREATE TABLE other (id serial PRIMARY KEY);
         CREATE SEQUENCE capped MAXVALUE 100;
         CREATE TABLE capped_t (id int PRIMARY KEY DEFAULT nextval('capped'));
         ALTER SEQUENCE capped OWNED BY capped_t.id",
    )
    .await;
    capture::configure_replica(&c, 2, 3).await.unwrap();
    // Rows as a restore and a replay leave them: this replica's values
    // (residue 2 of 3) and another replica's larger ones.
    c.batch_execute(
        "INSERT INTO t (id, d, e) VALUES (2, -1, 500), (302, -301, 2), (1000, -999, 8), (5, NULL, NULL);
         INSERT INTO other (id) VALUES (8);
         INSERT INTO capped_t (id) VALUES (302)",
    )
    .await
    .unwrap();
    let only_other = capture::advance_sequences_sql(Some(&["public.other".to_string()]));
    c.batch_execute(&only_other).await.unwrap();
    assert_eq!(values(&c, "SELECT nextval('t_id_seq')").await, vec![2]);
    assert_eq!(values(&c, "SELECT nextval('other_id_seq')").await, vec![11]);
    c.batch_execute(&capture::advance_sequences_sql(None))
        .await
        .unwrap();
    assert_eq!(values(&c, "SELECT nextval('t_id_seq')").await, vec![305]);
    assert_eq!(values(&c, "SELECT nextval('down')").await, vec![-304]);
    // A column without a unique index cannot fail on a value drawn twice:
    // left alone; a value beyond the sequence's range is skipped, not an
    // error.
    assert_eq!(values(&c, "SELECT nextval('unindexed')").await, vec![2]);
    assert_eq!(values(&c, "SELECT nextval('capped')").await, vec![2]);
    // Never backwards.
    c.batch_execute(&capture::advance_sequences_sql(None))
        .await
        .unwrap();
    assert_eq!(values(&c, "SELECT nextval('t_id_seq')").await, vec![308]);
}

#[tokio::test(flavor = "multi_thread")]
async fn applied_version_is_an_insert_only_log() {
    let server = PgServer::start(PgConfig::default()).unwrap();
    let c = connect(&server, "postgres").await;
    capture::install(&c, MAX).await.unwrap();
    assert_eq!(capture::applied_version(&c).await.unwrap(), 0);
    assert_eq!(one_i64(&c, capture::SNAPSHOT_VERSION_SQL).await, 0);
    for v in 1..=5 {
        c.batch_execute(&capture::record_applied_sql(v))
            .await
            .unwrap();
    }
    assert_eq!(one_i64(&c, capture::SNAPSHOT_VERSION_SQL).await, 5);
    let log = "SELECT version FROM tashkent.applied ORDER BY version";
    c.batch_execute(&capture::prune_applied_sql(4))
        .await
        .unwrap();
    assert_eq!(values(&c, log).await, vec![4, 5]);
    c.batch_execute(&capture::prune_applied_sql(100))
        .await
        .unwrap();
    assert_eq!(values(&c, log).await, vec![5], "the newest row survives");

    // A REPEATABLE READ transaction commits its version although another
    // one committed since its snapshot (no row is updated by both).
    let other = connect(&server, "postgres").await;
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    assert_eq!(one_i64(&c, capture::SNAPSHOT_VERSION_SQL).await, 5);
    other
        .batch_execute(&capture::record_applied_sql(6))
        .await
        .unwrap();
    assert_eq!(one_i64(&c, capture::SNAPSHOT_VERSION_SQL).await, 5);
    c.batch_execute(&format!("{}; COMMIT", capture::record_applied_sql(7)))
        .await
        .unwrap();
    assert_eq!(capture::applied_version(&c).await.unwrap(), 7);

    // Installing again keeps the log.
    capture::install(&c, MAX).await.unwrap();
    assert_eq!(capture::applied_version(&c).await.unwrap(), 7);

    // A database with the old single-row table keeps its version.
    c.batch_execute("CREATE DATABASE old").await.unwrap();
    let old = connect(&server, "old").await;
    old.batch_execute(
        "CREATE SCHEMA tashkent;
         CREATE TABLE tashkent.applied (singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton), version bigint NOT NULL);
         INSERT INTO tashkent.applied (version) VALUES (42);",
    )
    .await
    .unwrap();
    capture::install(&old, MAX).await.unwrap();
    assert_eq!(capture::applied_version(&old).await.unwrap(), 42);
    old.batch_execute(&capture::record_applied_sql(43))
        .await
        .unwrap();
    assert_eq!(capture::applied_version(&old).await.unwrap(), 43);
}
