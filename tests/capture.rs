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
async fn on_origin(client: &Client, sql: &str) -> String {
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute(sql).await.unwrap();
    let captured = capture::read(client).await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    captured
}

/// Runs each statement as a query of its own in one transaction on A and
/// returns what it captured.
async fn on_origin_each(client: &Client, stmts: &[&str]) -> String {
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

async fn apply(client: &Client, captured: &str) {
    client.batch_execute("BEGIN").await.unwrap();
    capture::apply(client, captured).await.unwrap();
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
    assert_eq!(ws.lines().count(), 50, "lines of 1,000 rows for the COPY");
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

/// The SQLSTATE and message of a statement's error.
fn server_error(err: &tokio_postgres::Error) -> (String, String) {
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// The changes of captured text as (table, op) pairs.
fn ops(ws: &str) -> Vec<(String, ChangeOp)> {
    capture::parse(ws)
        .unwrap()
        .into_iter()
        .map(|c| (c.table, c.op))
        .collect()
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
            ("public.fresh".to_string(), ChangeOp::Ddl),
            ("public.fresh".to_string(), ChangeOp::Insert),
        ]
    );
    let changes = capture::parse(&ws).unwrap();
    assert_eq!(changes[0].tables, vec!["public.fresh"]);
    assert_eq!(changes[1].tables, vec!["public.fresh"]);
    apply(&p.b, &ws).await;
    assert_same(&p, &["fresh"]).await;

    // The replayed CREATE TABLE installed capture on B.
    let b_origin = connect(&p._b, "postgres").await;
    let ws = on_origin(&b_origin, "UPDATE fresh SET v = 'uno' WHERE id = 1").await;
    let changes = capture::parse(&ws).unwrap();
    assert_eq!(changes.len(), 1, "{ws}");
    assert_eq!(changes[0].op, ChangeOp::Update);
    assert!(changes[0]
        .keys
        .contains(&"public.fresh fresh_pkey [1]".to_string()));
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
    let changes = capture::parse(&ws).unwrap();
    let ddl: Vec<_> = changes
        .iter()
        .filter(|c| c.op == ChangeOp::Ddl)
        .map(|c| (c.table.as_str(), c.tables.clone()))
        .collect();
    assert_eq!(
        ddl,
        vec![
            ("tashkent.catalog", vec![]),
            ("s.x", vec!["s.x".to_string()]),
            ("s.x", vec!["s.x".to_string()]),
            ("s.y", vec!["s.y".to_string()]),
            ("s.x", vec!["s.x".to_string()]),
            ("s.x", vec!["s.x".to_string()]),
        ],
        "{ws}"
    );
    // The line carries the statement and the settings it ran under.
    let create: serde_json::Value = serde_json::from_str(&changes[1].line).unwrap();
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
    let changes = capture::parse(&ws).unwrap();
    assert_eq!(changes.len(), 1, "{ws}");
    assert_eq!(changes[0].op, ChangeOp::Ddl);
    let mut dropped = changes[0].tables.clone();
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
    assert_eq!(ws, "");
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
            ("public.piped".to_string(), ChangeOp::Ddl),
            ("public.piped".to_string(), ChangeOp::Insert),
        ]
    );
    // DDL that changes nothing gives no line.
    p.a.batch_execute("CREATE TABLE here (id int PRIMARY KEY)")
        .await
        .unwrap();
    let ws = on_origin(&p.a, "CREATE TABLE IF NOT EXISTS here (id int PRIMARY KEY)").await;
    assert_eq!(ws, "");
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_statements_are_cut_into_lines_of_at_most_1000_rows() {
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
    let lines: Vec<serde_json::Value> = ws
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 250, "{} lines", lines.len());
    let mut total = 0;
    for line in &lines {
        assert_eq!(line["op"], "I");
        let rows = line["rows"].as_array().unwrap().len();
        assert!((1..=1000).contains(&rows), "{rows} rows in a line");
        assert_eq!(
            line["keys"].as_array().unwrap().len(),
            2 * rows,
            "each line has the keys of its rows"
        );
        total += rows;
    }
    assert_eq!(total, 250_000);
    let started = std::time::Instant::now();
    apply(&p.b, &ws).await;
    let applied_in = started.elapsed();
    eprintln!("250,000 rows: captured in {captured_in:?}, applied in {applied_in:?}");
    assert!(
        captured_in < std::time::Duration::from_secs(90)
            && applied_in < std::time::Duration::from_secs(90),
        "captured in {captured_in:?}, applied in {applied_in:?}"
    );
    assert_same(&p, &["big"]).await;

    // An UPDATE of 5,000 rows that re-keys 1,500 of them (keeping their
    // unique codes): every deleted key comes before any upserted row.
    let ws = on_origin(
        &p.a,
        "UPDATE big SET id = CASE WHEN id <= 1500 THEN id + 1000000 ELSE id END, n = n + 1 WHERE id <= 5000",
    )
    .await;
    let changes = capture::parse(&ws).unwrap();
    let lines: Vec<serde_json::Value> = ws
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |v: &serde_json::Value| v.as_array().map_or(0, |a| a.len());
    let (mut rows, mut dels, mut rows_seen) = (0, 0, false);
    for line in &lines {
        assert_eq!(line["op"], "U");
        assert!(count(&line["rows"]) <= 1000 && count(&line["del"]) <= 1000);
        assert!(
            !(rows_seen && count(&line["del"]) > 0),
            "a del after rows: {ws:.300}"
        );
        rows_seen |= count(&line["rows"]) > 0;
        rows += count(&line["rows"]);
        dels += count(&line["del"]);
    }
    assert_eq!((rows, dels), (5000, 1500));
    let mut gone: Vec<String> = changes.iter().flat_map(|c| c.gone.clone()).collect();
    gone.sort();
    gone.dedup();
    let mut expected: Vec<String> = (1..=1500)
        .map(|i| format!("public.big big_pkey [{i}]"))
        .collect();
    expected.sort();
    assert_eq!(gone, expected);
    let keys: std::collections::HashSet<String> =
        changes.iter().flat_map(|c| c.keys.clone()).collect();
    for key in [
        "public.big big_pkey [1]",
        "public.big big_pkey [1000001]",
        "public.big big_pkey [5000]",
        "public.big big_code_key [\"c1\"]",
    ] {
        assert!(keys.contains(key), "{key} missing");
    }
    apply(&p.b, &ws).await;
    assert_same(&p, &["big"]).await;

    let ws = on_origin(&p.a, "DELETE FROM big WHERE id % 2 = 0").await;
    let changes = capture::parse(&ws).unwrap();
    assert!(changes.len() >= 125, "{} lines", changes.len());
    for c in &changes {
        let line: serde_json::Value = serde_json::from_str(&c.line).unwrap();
        assert!(count(&line["del"]) <= 1000);
        assert_eq!(c.keys.len(), 2 * count(&line["del"]));
    }
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
    assert_eq!(
        ops(&ws),
        vec![("tashkent.catalog".to_string(), ChangeOp::Ddl)]
    );
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
    capture::install(&c).await.unwrap();
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
    capture::install(&c).await.unwrap();
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
    capture::install(&c).await.unwrap();
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
    capture::install(&old).await.unwrap();
    assert_eq!(capture::applied_version(&old).await.unwrap(), 42);
    old.batch_execute(&capture::record_applied_sql(43))
        .await
        .unwrap();
    assert_eq!(capture::applied_version(&old).await.unwrap(), 43);
}
