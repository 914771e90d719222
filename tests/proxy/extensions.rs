//! Extensions: CREATE/ALTER/DROP EXTENSION through a proxy replicate as
//! the client's statement (the extension's script runs on every replica),
//! and values of extension types replicate exactly.

use crate::common;

use common::cluster::Cluster;
use common::connect;
use tashkent::ops::pg::{PgConfig, PgServer};
use tashkent::proxy::capture::{self, entry::Entry};
use tashkent::proxy::writeset;
use tokio_postgres::Client;

async fn run(client: &Client, sql: &str) {
    client.batch_execute(sql).await.unwrap_or_else(|e| {
        panic!(
            "{sql}: {}",
            e.as_db_error().map_or(e.to_string(), |d| d.to_string())
        )
    });
}

/// Every row of `sql` as text columns (NULL as `None`).
async fn rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| (0..r.len()).map(|i| r.get(i)).collect())
        .collect()
}

/// `sql` on both replicas (straight, not through the proxies): the same
/// rows, which are returned.
async fn same_on_both(cluster: &Cluster, sql: &str) -> Vec<Vec<Option<String>>> {
    let one = rows(&cluster.replica(0).await, sql).await;
    let two = rows(&cluster.replica(1).await, sql).await;
    assert_eq!(one, two, "{sql}");
    one
}

const EXTENSIONS: &str = "SELECT extname::text, extversion, extnamespace::regnamespace::text \
                          FROM pg_extension ORDER BY extname";

const KV: &str = "SELECT id::text, h::text, note, u::text, encode(d, 'hex') FROM kv ORDER BY id";

/// hstore values whose text form needs quoting in a record: quotes,
/// backslashes, commas, parentheses, white space, NULL and "NULL",
/// empty keys and values, non-ASCII.
const HSTORES: [&str; 8] = [
    r#"''"#,
    r#"'a=>1, b=>NULL'"#,
    r#"'"key with space"=>"value, with (parens)"'"#,
    r#"'"q\"uote"=>"back\\slash", "x"=>"\\\""'"#,
    r#"'"ключ"=>"значение", "emoji"=>"🙂"'"#,
    r#"'"nul"=>"NULL", ""=>""'"#,
    "NULL",
    "hstore(ARRAY['x', 'y'], ARRAY['1', NULL])",
];

#[tokio::test(flavor = "multi_thread")]
async fn extensions_and_their_values_replicate_through_a_proxy() {
    let mut cluster = Cluster::start(2).await;
    let p1 = cluster.client(0).await;
    let p2 = cluster.client(1).await;
    for sql in [
        // An older version, updated below (its update scripts drop operators).
        "CREATE EXTENSION hstore VERSION '1.4'",
        // Exists already: changes nothing, replicates nothing.
        "CREATE EXTENSION IF NOT EXISTS hstore",
        "CREATE EXTENSION IF NOT EXISTS pgcrypto",
        "CREATE EXTENSION IF NOT EXISTS pgcrypto",
        "CREATE SCHEMA ext",
        "CREATE EXTENSION pg_trgm SCHEMA ext",
        // Created without being preloaded: its functions refuse to run, but it exists.
        "CREATE EXTENSION pg_stat_statements",
        "CREATE TABLE kv (id int PRIMARY KEY, h hstore, note text, \
         u uuid NOT NULL DEFAULT gen_random_uuid(), d bytea DEFAULT digest('tashkent', 'sha256'))",
        "CREATE INDEX kv_note_trgm ON kv USING gin (note ext.gin_trgm_ops)",
    ] {
        run(&p1, sql).await;
    }
    // Volatile functions run on the origin only: the replicas get its values.
    for (i, h) in HSTORES.iter().enumerate() {
        let id = i + 1;
        let sql = if id % 2 == 0 {
            format!("INSERT INTO kv (id, h, note) VALUES ({id}, {h}, 'note {id}')")
        } else {
            format!(
                "INSERT INTO kv VALUES ({id}, {h}, 'note {id}', gen_random_uuid(), \
                 digest(gen_random_bytes(16), 'sha1'))"
            )
        };
        run(&p1, &sql).await;
    }
    run(&p1, "INSERT INTO kv (id, h) VALUES (9, 'gone=>soon')").await;
    // Extended protocol, the value as a parameter.
    p1.execute(
        "INSERT INTO kv (id, h, note) VALUES ($1, $2::text::hstore, $3)",
        &[&100i32, &r#""p"=>"a\"b", "z"=>NULL"#, &"extended"],
    )
    .await
    .unwrap();
    cluster.wait_converged().await;
    // hstore's operators, written on replica 2.
    run(
        &p2,
        "UPDATE kv SET h = h || 'added=>\"yes, (2)\"'::hstore, d = digest(note, 'md5') WHERE id % 2 = 0",
    )
    .await;
    run(&p2, "UPDATE kv SET h = h - 'a'::text WHERE id = 2").await;
    run(&p2, "DELETE FROM kv WHERE id = 9").await;
    // The update scripts run on every replica.
    run(&p1, "ALTER EXTENSION hstore UPDATE").await;
    run(
        &p1,
        "INSERT INTO kv (id, h, note) VALUES (101, 'after=>update', 'similar note')",
    )
    .await;
    cluster.wait_converged().await;

    let kv = same_on_both(&cluster, KV).await;
    assert_eq!(
        kv.len(),
        HSTORES.len() + 2,
        "8, then 9, 100 and 101; 9 deleted"
    );
    let hs: Vec<Option<&str>> = kv.iter().map(|r| r[1].as_deref()).collect();
    for expected in [
        r#""x"=>"\\\"", "added"=>"yes, (2)", "q\"uote"=>"back\\slash""#,
        r#""b"=>NULL, "added"=>"yes, (2)""#,
        r#""p"=>"a\"b", "z"=>NULL, "added"=>"yes, (2)""#,
        r#"""=>"", "nul"=>"NULL", "added"=>"yes, (2)""#,
        r#""emoji"=>"🙂", "ключ"=>"значение""#,
        r#""key with space"=>"value, with (parens)""#,
    ] {
        assert!(hs.contains(&Some(expected)), "{expected} not in {hs:?}");
    }
    assert!(hs.contains(&None));
    let mut uuids: Vec<&str> = kv.iter().map(|r| r[3].as_deref().unwrap()).collect();
    uuids.sort();
    uuids.dedup();
    assert_eq!(uuids.len(), kv.len(), "every row drew its own uuid");
    assert!(kv.iter().all(|r| r[4].is_some()), "{kv:?}");

    let ext = same_on_both(&cluster, EXTENSIONS).await;
    let ext: Vec<Vec<&str>> = ext
        .iter()
        .map(|r| r.iter().map(|c| c.as_deref().unwrap()).collect())
        .collect();
    let names: Vec<(&str, &str)> = ext.iter().map(|r| (r[0], r[2])).collect();
    assert_eq!(
        names,
        [
            ("hstore", "public"),
            ("pg_stat_statements", "public"),
            ("pg_trgm", "ext"),
            ("pgcrypto", "public"),
            ("plpgsql", "pg_catalog"),
        ]
    );
    assert_eq!(
        ext[0][1], "1.8",
        "ALTER EXTENSION hstore UPDATE ran everywhere"
    );
    let index = "SELECT indexdef FROM pg_indexes WHERE indexname = 'kv_note_trgm'";
    let def = same_on_both(&cluster, index).await;
    assert!(
        def[0][0]
            .as_deref()
            .unwrap()
            .contains("gin (note ext.gin_trgm_ops)"),
        "{def:?}"
    );
    let similar = "SELECT id::text FROM kv WHERE note OPERATOR(ext.%) 'similar notes' ORDER BY id";
    assert_eq!(
        same_on_both(&cluster, similar).await,
        [[Some("101".to_string())]]
    );
    cluster.assert_identical().await;

    // A rebuilt replica gets the extensions from the checkpoint (pg_dump
    // and pg_restore) and replays what came after.
    let ckpt = cluster.dir().join("checkpoints");
    cluster.checkpoint_cli(0, &ckpt);
    run(
        &p1,
        "UPDATE kv SET h = h || hstore('after', 'checkpoint') WHERE id < 5",
    )
    .await;
    cluster.kill_proxy(1).await;
    cluster.rebuild_replica(1, &ckpt, "rebuilt").await;
    cluster.wait_converged().await;
    let p2 = cluster.client(1).await;
    run(&p2, "UPDATE kv SET h = h || 'from=>rebuilt' WHERE id = 3").await;
    cluster.wait_converged().await;
    same_on_both(&cluster, KV).await;
    same_on_both(&cluster, EXTENSIONS).await;

    // DROP EXTENSION: refused while the index uses it, then CASCADE.
    let err = p1
        .batch_execute("DROP EXTENSION pg_trgm")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("2BP01"), "{err}");
    run(&p1, "DROP EXTENSION pg_trgm CASCADE").await;
    // Both are DDL on no table (the dropped index names none): run on
    // replica 2 before it applied the first, the second would conflict.
    cluster.wait_converged().await;
    run(&p2, "DROP EXTENSION pg_stat_statements").await;
    cluster.wait_converged().await;
    let ext = same_on_both(&cluster, EXTENSIONS).await;
    let names: Vec<&str> = ext.iter().map(|r| r[0].as_deref().unwrap()).collect();
    assert_eq!(names, ["hstore", "pgcrypto", "plpgsql"]);
    assert!(same_on_both(&cluster, index).await.is_empty());
    same_on_both(&cluster, KV).await;
    cluster.assert_identical().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn primary_keys_of_extension_types_off_the_search_path_apply() {
    let cluster = Cluster::start(2).await;
    let p1 = cluster.client(0).await;
    let p2 = cluster.client(1).await;
    for sql in [
        "CREATE SCHEMA ext",
        "CREATE EXTENSION citext SCHEMA ext",
        "CREATE EXTENSION hstore SCHEMA ext",
        "CREATE TABLE tags (name ext.citext PRIMARY KEY, n int)",
        "CREATE TABLE maps (m ext.hstore PRIMARY KEY, n int)",
        "INSERT INTO tags VALUES ('Alpha', 1), ('beta', 2), ('Gamma', 3)",
        "INSERT INTO maps VALUES ('a=>1', 1), ('b=>2, c=>NULL', 2), ('', 3)",
    ] {
        run(&p1, sql).await;
    }
    cluster.wait_converged().await;
    // Deletes and updates on replica 2 find their rows on replica 1 by the
    // key's own equality, which the applier's search_path does not hold.
    for sql in [
        "UPDATE tags SET n = n + 10 WHERE name OPERATOR(ext.=) 'ALPHA'",
        "DELETE FROM tags WHERE name OPERATOR(ext.=) 'BETA'",
        "DELETE FROM maps WHERE m OPERATOR(ext.=) 'c=>NULL, b=>2'",
        "UPDATE maps SET m = m OPERATOR(ext.||) 'z=>26' WHERE n = 1",
    ] {
        run(&p2, sql).await;
    }
    cluster.wait_converged().await;
    // Equal for the key, though spelled differently: the row is gone.
    run(&p1, "INSERT INTO tags VALUES ('bEtA', 20)").await;
    run(&p1, "INSERT INTO maps VALUES ('c=>NULL, b=>2', 20)").await;
    cluster.wait_converged().await;
    let tags = "SELECT name::text, n::text FROM tags ORDER BY tags.n";
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        same_on_both(&cluster, tags).await,
        [
            [s("Gamma"), s("3")],
            [s("Alpha"), s("11")],
            [s("bEtA"), s("20")]
        ]
    );
    let maps = "SELECT m::text, n::text FROM maps ORDER BY maps.n";
    assert_eq!(
        same_on_both(&cluster, maps).await,
        [
            [s(r#""a"=>"1", "z"=>"26""#), s("1")],
            [s(""), s("3")],
            [s(r#""b"=>"2", "c"=>NULL"#), s("20")]
        ]
    );
    cluster.assert_identical().await;
}

// ---- capture on one replica, applied on another ----

const MAX: u64 = capture::DEFAULT_MAX_WRITESET_BYTES;

/// A replica written directly (origin: the event triggers and the DDL
/// guard apply as they do behind a proxy) and one in applier mode.
async fn pair() -> (PgServer, PgServer, Client, Client) {
    let sa = PgServer::start(PgConfig::default()).unwrap();
    let sb = PgServer::start(PgConfig::default()).unwrap();
    let a = connect(&sa, "postgres").await;
    let b = connect(&sb, "postgres").await;
    for c in [&a, &b] {
        capture::install(c, MAX).await.unwrap();
    }
    capture::become_applier(&b).await.unwrap();
    (sa, sb, a, b)
}

/// Runs `sql` as one transaction on the origin; its entries, applied on
/// the applier session in one transaction.
async fn replicate(a: &Client, b: &Client, sql: &str) -> Vec<serde_json::Value> {
    run(a, "BEGIN").await;
    run(a, sql).await;
    let captured = capture::read(a).await.unwrap();
    run(a, "COMMIT").await;
    let entries = capture::entry::parse_all(&captured).unwrap();
    if let Some(ws) =
        writeset::build(bytes::Bytes::from_static(b"t"), 1, 0, &captured, MAX).unwrap()
    {
        run(b, "BEGIN").await;
        capture::apply_writeset(b, &ws).await.unwrap();
        run(b, "COMMIT").await;
    }
    entries
        .into_iter()
        .map(|e| match e {
            Entry::Ddl { json } => serde_json::from_str(&json).unwrap(),
            Entry::Insert(r) | Entry::Update(r) | Entry::Delete(r) => {
                serde_json::json!({"op": "row", "t": r.table})
            }
            Entry::Truncate { table } => serde_json::json!({"op": "T", "t": table}),
            Entry::Lock { table, .. } => serde_json::json!({"op": "L", "t": table}),
        })
        .collect()
}

/// The one entry of an extension statement: the client's text, on no table.
fn one_statement(entries: &[serde_json::Value], sql: &str) -> Vec<String> {
    assert_eq!(entries.len(), 1, "{sql}: {entries:?}");
    assert_eq!(entries[0]["op"], "X");
    assert_eq!(entries[0]["sql"], sql);
    entries[0]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_extension_statement_is_one_entry_and_its_script_runs_on_apply() {
    let (_sa, _sb, a, b) = pair().await;
    let version = "SELECT extversion FROM pg_extension WHERE extname = 'hstore'";
    for (sql, v) in [
        ("CREATE EXTENSION hstore VERSION '1.4'", "1.4"),
        // Its scripts from 1.4 to 1.8 drop operators (sql_drop fires) and
        // alter them: all of it belongs to this one statement.
        ("ALTER EXTENSION hstore UPDATE TO '1.8'", "1.8"),
    ] {
        let tables = one_statement(&replicate(&a, &b, sql).await, sql);
        assert!(tables.is_empty(), "{sql}: {tables:?}");
        for c in [&a, &b] {
            assert_eq!(rows(c, version).await, [[Some(v.to_string())]], "{sql}");
        }
    }
    // Nothing changed: no entry.
    assert!(replicate(&a, &b, "ALTER EXTENSION hstore UPDATE")
        .await
        .is_empty());
    assert!(replicate(&a, &b, "CREATE EXTENSION IF NOT EXISTS hstore")
        .await
        .is_empty());

    // DROP ... CASCADE lists the tables that lost a column or a default,
    // so it conflicts with their concurrent writers.
    let sql = "CREATE EXTENSION pgcrypto";
    one_statement(&replicate(&a, &b, sql).await, sql);
    replicate(&a, &b, "CREATE SCHEMA ext").await;
    let sql = "ALTER EXTENSION pgcrypto SET SCHEMA ext";
    one_statement(&replicate(&a, &b, sql).await, sql);
    for c in [&a, &b] {
        let digest =
            "SELECT pg_get_function_identity_arguments('ext.digest(text, text)'::regprocedure)";
        assert_eq!(rows(c, digest).await, [[Some("text, text".to_string())]]);
    }
    for sql in [
        "CREATE TABLE kv (id int PRIMARY KEY, h hstore)",
        // (gen_random_uuid() is PostgreSQL's own since 13: digest is pgcrypto's.)
        "CREATE TABLE ids (id int PRIMARY KEY, d bytea DEFAULT ext.digest('x', 'sha1'), v int)",
        "CREATE TABLE plain (id int PRIMARY KEY)",
        "CREATE TABLE parts (id int PRIMARY KEY, h hstore) PARTITION BY RANGE (id)",
        "CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (0) TO (10)",
    ] {
        replicate(&a, &b, sql).await;
    }
    replicate(
        &a,
        &b,
        "INSERT INTO kv VALUES (1, 'a=>b'); INSERT INTO ids (id, v) VALUES (1, 1)",
    )
    .await;
    // Membership changes are statements like any other.
    replicate(
        &a,
        &b,
        "CREATE FUNCTION one() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    )
    .await;
    let members = "SELECT count(*)::text FROM pg_depend \
                   WHERE objid = 'one()'::regprocedure AND deptype = 'e'";
    for (sql, n) in [
        ("ALTER EXTENSION hstore ADD FUNCTION one()", "1"),
        ("ALTER EXTENSION hstore DROP FUNCTION one()", "0"),
    ] {
        one_statement(&replicate(&a, &b, sql).await, sql);
        for c in [&a, &b] {
            assert_eq!(rows(c, members).await, [[Some(n.to_string())]], "{sql}");
        }
    }
    let sql = "DROP EXTENSION hstore CASCADE";
    let mut tables = one_statement(&replicate(&a, &b, sql).await, sql);
    tables.sort();
    assert_eq!(tables, ["public.kv", "public.parts", "public.parts_1"]);
    let sql = "DROP EXTENSION pgcrypto CASCADE";
    assert_eq!(
        one_statement(&replicate(&a, &b, sql).await, sql),
        ["public.ids"]
    );
    let columns = "SELECT attrelid::regclass::text, attname::text, \
                   pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute \
                   LEFT JOIN pg_attrdef d ON d.adrelid = attrelid AND d.adnum = attnum \
                   WHERE attrelid IN ('kv'::regclass, 'ids'::regclass) \
                     AND attnum > 0 AND NOT attisdropped ORDER BY 1, attnum";
    let expected = [
        ["ids", "id", ""],
        ["ids", "d", ""],
        ["ids", "v", ""],
        ["kv", "id", ""],
    ];
    for c in [&a, &b] {
        let got: Vec<Vec<String>> = rows(c, columns)
            .await
            .into_iter()
            .map(|r| r.into_iter().map(Option::unwrap_or_default).collect())
            .collect();
        assert_eq!(got, expected);
        assert!(
            rows(c, "SELECT 1 FROM pg_extension WHERE extname <> 'plpgsql'")
                .await
                .is_empty()
        );
    }
    // The rows survive without the columns, and stay replicated.
    replicate(&a, &b, "INSERT INTO kv VALUES (2); UPDATE ids SET v = 2").await;
    for c in [&a, &b] {
        assert_eq!(
            rows(c, "SELECT count(*)::text FROM kv").await,
            [[Some("2".to_string())]]
        );
    }
}
