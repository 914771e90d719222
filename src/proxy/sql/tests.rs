//! Tests of the splitter and the classifier (table-driven, and proptests
//! that no input panics them).

use super::scan::*;
use super::*;
use proptest::prelude::*;

fn check(cases: &[(&str, Kind)]) {
    for (sql, want) in cases {
        assert_eq!(&classify(sql), want, "classify({sql:?})");
    }
}

/// Each statement must be refused with a message containing the needle.
fn check_refused(cases: &[(&str, &str)]) {
    for (sql, needle) in cases {
        match classify(sql) {
            Kind::Refused { message, hint } => {
                assert!(
                    message.to_lowercase().contains(&needle.to_lowercase()),
                    "classify({sql:?}): message {message:?} lacks {needle:?}"
                );
                assert!(!hint.is_empty(), "classify({sql:?}): no hint");
            }
            other => panic!("classify({sql:?}) = {other:?}, want refused ({needle})"),
        }
    }
}

fn check_not_refused(cases: &[&str]) {
    for sql in cases {
        let kind = classify(sql);
        assert!(
            !matches!(kind, Kind::Refused { .. }),
            "classify({sql:?}) = {kind:?}"
        );
    }
}

// ---- scanning ----

#[test]
fn scanner_tokens() {
    use TokKind::*;
    let sql =
        "SELECT E'a\\'b' \"q\"\"\" $t$x$t$ $1 1.5e3 .5 x.y a$b -- c\n/* d /* e */ */ U&'f' <>;";
    let toks: Vec<(TokKind, &str)> = Scanner::new(sql).map(|t| (t.kind, t.text)).collect();
    assert_eq!(
        toks,
        [
            (Word, "SELECT"),
            (Str, "E'a\\'b'"),
            (QuotedIdent, "\"q\"\"\""),
            (Str, "$t$x$t$"),
            (Param, "$1"),
            (Number, "1.5e3"),
            (Number, ".5"),
            (Word, "x"),
            (Punct, "."),
            (Word, "y"),
            (Word, "a$b"),
            (Str, "U&'f'"),
            (Punct, "<"),
            (Punct, ">"),
            (Punct, ";"),
        ]
    );
    let unterminated: Vec<TokKind> = Scanner::new("x /* y").map(|t| t.kind).collect();
    assert_eq!(unterminated, [Word, Unterminated]);
}

#[test]
fn literal_and_identifier_values() {
    let tok = |sql| Scanner::new(sql).next().unwrap();
    assert_eq!(tok("'it''s'").setting_value().unwrap(), "it's");
    assert_eq!(
        tok("$x$Serializable$x$").setting_value().unwrap(),
        "serializable"
    );
    assert_eq!(tok("E'OFF'").setting_value().unwrap(), "off");
    assert_eq!(tok("\"A\"\"b\"").ident().unwrap(), "A\"b");
    assert_eq!(tok("TashKent").ident().unwrap(), "tashkent");
    assert_eq!(
        tok("'unterminated").setting_value().unwrap(),
        "unterminated"
    );
}

// ---- classification ----

#[test]
fn begin_forms() {
    let rw = Kind::Begin { read_only: false };
    let ro = Kind::Begin { read_only: true };
    check(&[
        ("BEGIN", rw.clone()),
        ("begin;", rw.clone()),
        ("Begin Work", rw.clone()),
        ("BEGIN TRANSACTION", rw.clone()),
        ("START TRANSACTION", rw.clone()),
        ("start transaction read only", ro.clone()),
        ("BEGIN READ ONLY", ro.clone()),
        ("BEGIN /* x */ READ -- y\n ONLY", ro.clone()),
        (
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            ro.clone(),
        ),
        ("BEGIN ISOLATION LEVEL READ COMMITTED", rw.clone()),
        ("BEGIN READ ONLY, READ WRITE", rw.clone()),
        (
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY DEFERRABLE",
            ro.clone(),
        ),
        (
            "begin transaction isolation level read uncommitted",
            rw.clone(),
        ),
        ("  -- comment\n BEGIN  ", rw),
        ("/* c */ BEGIN WORK READ ONLY", ro),
    ]);
}

#[test]
fn commit_and_rollback_forms() {
    let commit = Kind::Commit { chain: false };
    let rollback = Kind::Rollback { chain: false };
    check(&[
        ("COMMIT", commit.clone()),
        ("commit work", commit.clone()),
        ("COMMIT TRANSACTION", commit.clone()),
        ("END", commit.clone()),
        ("end transaction;", commit.clone()),
        ("COMMIT AND CHAIN", Kind::Commit { chain: true }),
        ("COMMIT WORK AND NO CHAIN", commit.clone()),
        ("end and /* */ chain", Kind::Commit { chain: true }),
        ("ROLLBACK", rollback.clone()),
        ("rollback work", rollback.clone()),
        ("ABORT", rollback.clone()),
        ("abort transaction", rollback.clone()),
        ("ROLLBACK AND CHAIN", Kind::Rollback { chain: true }),
        ("ABORT AND NO CHAIN", rollback),
    ]);
}

#[test]
fn savepoint_forms() {
    check(&[
        ("SAVEPOINT a", Kind::Savepoint { rollback_to: false }),
        (
            "savepoint \"my point\"",
            Kind::Savepoint { rollback_to: false },
        ),
        (
            "RELEASE SAVEPOINT a",
            Kind::Savepoint { rollback_to: false },
        ),
        ("release a", Kind::Savepoint { rollback_to: false }),
        (
            "ROLLBACK TO SAVEPOINT a",
            Kind::Savepoint { rollback_to: true },
        ),
        ("rollback to a", Kind::Savepoint { rollback_to: true }),
        (
            "ROLLBACK WORK TO SAVEPOINT a",
            Kind::Savepoint { rollback_to: true },
        ),
        (
            "ROLLBACK TRANSACTION /* x */ TO a",
            Kind::Savepoint { rollback_to: true },
        ),
    ]);
}

#[test]
fn set_transaction_forms() {
    check(&[
        (
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            Kind::SetTransaction,
        ),
        ("set transaction read only", Kind::SetTransaction),
        (
            "SET TRANSACTION READ WRITE, NOT DEFERRABLE",
            Kind::SetTransaction,
        ),
        (
            "SET LOCAL TRANSACTION ISOLATION LEVEL READ COMMITTED",
            Kind::SetTransaction,
        ),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            Kind::SetTransaction,
        ),
        (
            "set session characteristics as transaction read only",
            Kind::SetTransaction,
        ),
        (
            "SET SESSION SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            Kind::SetTransaction,
        ),
    ]);
}

#[test]
fn local_maintenance_forms() {
    for sql in [
        "VACUUM",
        "vacuum analyze pgbench_branches",
        "VACUUM (FULL, ANALYZE) t",
        "ANALYZE t",
        "analyse",
        "CHECKPOINT",
        "CLUSTER t USING i",
        "REINDEX TABLE t",
        "reindex table concurrently t",
        "REINDEX (VERBOSE) INDEX CONCURRENTLY i",
        "REINDEX DATABASE d",
        "DISCARD ALL",
        "discard plans",
    ] {
        assert_eq!(classify(sql), Kind::LocalMaintenance, "{sql}");
    }
}

#[test]
fn ddl_forms() {
    for sql in [
        "CREATE TABLE t (id int PRIMARY KEY)",
        "create table pgbench_history(tid int,bid int,aid int,delta int,mtime timestamp,filler char(22))",
        "CREATE UNLOGGED TABLE u (a int)",
        "CREATE TABLE t2 AS SELECT * FROM pg_temp.src",
        "CREATE OR REPLACE VIEW v AS SELECT 1",
        "CREATE UNIQUE INDEX i ON t (a)",
        "CREATE INDEX IF NOT EXISTS i ON t (a)",
        "CREATE USER MAPPING FOR current_user SERVER s",
        "CREATE EXTENSION IF NOT EXISTS pg_trgm",
        "CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = public AS 'SELECT 1'",
        "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); END",
        "CREATE RULE r AS ON INSERT TO t DO ALSO INSERT INTO log VALUES (1)",
        "CREATE SCHEMA app",
        "CREATE SCHEMA AUTHORIZATION app",
        "CREATE MATERIALIZED VIEW mv AS SELECT 1",
        "alter table pgbench_branches add primary key (bid)",
        "ALTER TABLE t ENABLE TRIGGER tr",
        "ALTER TABLE t ALTER COLUMN a SET DEFAULT 0",
        "ALTER USER MAPPING FOR u SERVER s OPTIONS (SET password 'x')",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO r",
        "ALTER FUNCTION f() SET work_mem = '64MB'",
        "DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers",
        "DROP INDEX i",
        "DROP OWNED BY r",
        "DROP USER MAPPING FOR u SERVER s",
        "DROP SCHEMA app CASCADE",
        "COMMENT ON TABLE t IS 'LISTEN; NOTIFY'",
        "GRANT SELECT ON t TO r",
        "REVOKE ALL ON t FROM PUBLIC",
        "SECURITY LABEL ON TABLE t IS 'x'",
        "IMPORT FOREIGN SCHEMA s FROM SERVER f INTO app",
        "REFRESH MATERIALIZED VIEW CONCURRENTLY mv",
        "REASSIGN OWNED BY a TO b",
        "SELECT * INTO new_table FROM t",
        "select a, b into unlogged table copy_t from t",
        "WITH x AS (SELECT 1 AS a) SELECT a INTO t2 FROM x",
    ] {
        assert_eq!(classify(sql), Kind::Ddl, "{sql}");
    }
}

#[test]
fn truncate_forms() {
    for sql in [
        "TRUNCATE t",
        "truncate table pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers",
        "TRUNCATE ONLY t RESTART IDENTITY CASCADE",
    ] {
        assert_eq!(classify(sql), Kind::Truncate, "{sql}");
    }
}

#[test]
fn other_forms() {
    for sql in [
        "",
        "   ",
        "-- only a comment",
        "/* only */ /* comments */",
        ";",
        "SELECT 1",
        "(SELECT 1)",
        "select abalance from pgbench_accounts where aid = 42",
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1",
        "INSERT INTO t SELECT * FROM s",
        "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
        "WITH x AS (SELECT 1) MERGE INTO t USING x ON true WHEN MATCHED THEN DO NOTHING",
        "DELETE FROM t WHERE a = 1",
        "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE",
        "copy pgbench_accounts from stdin with (freeze on)",
        "SET work_mem = '64MB'",
        "SET search_path TO app, public",
        "SET default_transaction_isolation = 'repeatable read'",
        "SET standard_conforming_strings = on",
        "SET session_replication_role_x = 1",
        "SET SESSION AUTHORIZATION app",
        "SET TIME ZONE 'UTC'",
        "SHOW transaction_isolation",
        "RESET ALL",
        "PREPARE p (int) AS SELECT $1",
        "PREPARE transaction AS SELECT 1",
        "EXECUTE p(1)",
        "DEALLOCATE ALL",
        "DECLARE c CURSOR FOR SELECT 1",
        "FETCH 10 FROM c",
        "MOVE c",
        "CLOSE c",
        "EXPLAIN ANALYZE SELECT 1",
        "DO $$ BEGIN PERFORM 1; END $$",
        "CALL p()",
        "LOCK TABLE t IN EXCLUSIVE MODE",
        "VALUES (1), (2)",
        "TABLE t",
        "CREATE TEMP TABLE tmp (a int)",
        "create local temporary table tmp as select 1",
        "CREATE TEMPORARY VIEW v AS SELECT 1",
        "CREATE TABLE pg_temp.t (a int)",
        "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "SELECT * INTO TEMP t2 FROM t",
        "SELECT * INTO pg_temp.t2 FROM t",
        "START",
    ] {
        assert_eq!(classify(sql), Kind::Other, "{sql:?}");
    }
}

#[test]
fn parse_message_text_with_comments_and_semicolon() {
    check(&[
        ("BEGIN;", Kind::Begin { read_only: false }),
        (
            "/* leading */ COMMIT ; -- trailing",
            Kind::Commit { chain: false },
        ),
        ("-- x\nTRUNCATE t;\n", Kind::Truncate),
    ]);
    // Several statements: refused if any is.
    check_refused(&[("SELECT 1; LISTEN x", "LISTEN")]);
    check(&[("BEGIN; SELECT 1", Kind::Begin { read_only: false })]);
}

// ---- refusals ----

#[test]
fn notification_refusals() {
    check_refused(&[
        ("LISTEN chan", "LISTEN"),
        ("listen \"Chan\"", "LISTEN"),
        ("UNLISTEN *", "UNLISTEN"),
        ("Notify chan, 'payload'", "NOTIFY"),
        ("SELECT pg_notify('chan', 'x')", "pg_notify"),
        ("select PG_NOTIFY ('chan', 'x')", "pg_notify"),
        ("SELECT pg_catalog.pg_notify('c', 'x')", "pg_notify"),
        ("SELECT \"pg_notify\"('c', 'x')", "pg_notify"),
        (
            "CREATE RULE r AS ON INSERT TO t DO ALSO NOTIFY chan",
            "NOTIFY",
        ),
        (
            "/* c */ LISTEN /* d */ x",
            "notifications are delivered by one replica only",
        ),
    ]);
}

#[test]
fn proxy_show_forms() {
    check(&[
        (
            "SHOW tashkent.replica",
            Kind::ProxyShow {
                name: "replica".into(),
            },
        ),
        (
            "show TASHKENT.Applied_Version",
            Kind::ProxyShow {
                name: "applied_version".into(),
            },
        ),
    ]);
    check_refused(&[("SHOW tashkent.replica, x", "schema tashkent")]);
}

#[test]
fn proxy_settings_and_wait_for() {
    let set = |name: &str, value: Option<&str>, local: bool| Kind::ProxySet {
        name: name.into(),
        value: value.map(Into::into),
        local,
    };
    check(&[
        (
            "SET tashkent.consistency = 'strong'",
            set("consistency", Some("strong"), false),
        ),
        (
            "set local TASHKENT.consistency to Causal;",
            set("consistency", Some("causal"), true),
        ),
        (
            "SET SESSION tashkent.consistency_timeout = 250",
            set("consistency_timeout", Some("250"), false),
        ),
        (
            "SET tashkent.consistency TO DEFAULT",
            set("consistency", None, false),
        ),
        (
            "RESET tashkent.consistency",
            set("consistency", None, false),
        ),
        (
            "SET LOCAL tashkent.lock_conflicts = off",
            set("lock_conflicts", Some("off"), true),
        ),
        (
            "SELECT tashkent.wait_for(42)",
            Kind::ProxyWaitFor { version: 42 },
        ),
        (
            "select tashkent.wait_for('7');",
            Kind::ProxyWaitFor { version: 7 },
        ),
        ("RESET work_mem", Kind::Other),
    ]);
    check_refused(&[
        ("SELECT tashkent.wait_for(1) FROM t", "schema tashkent"),
        (
            "SET tashkent.consistency = strong, eventual",
            "schema tashkent",
        ),
        // The capture's own settings stay refused.
        ("SET tashkent.max_writeset_bytes = 1", "schema tashkent"),
    ]);
}

#[test]
fn large_object_refusals() {
    check_refused(&[
        ("SELECT lo_create(0)", "large objects are not replicated"),
        ("select LO_CREAT(-1)", "lo_creat"),
        ("SELECT lo_import('/etc/hosts')", "lo_import"),
        (
            "SELECT pg_catalog.lo_from_bytea(0, '\\x00')",
            "lo_from_bytea",
        ),
        ("SELECT lo_put(16384, 0, 'x')", "lo_put"),
        ("SELECT lowrite(lo_open(16384, 131072), 'x')", "lo"),
        ("SELECT lo_unlink(16384)", "lo_unlink"),
        ("ALTER LARGE OBJECT 16384 OWNER TO bob", "LARGE OBJECT"),
        ("GRANT SELECT ON LARGE OBJECT 16384 TO bob", "LARGE OBJECT"),
        ("COMMENT ON LARGE OBJECT 16384 IS 'x'", "LARGE OBJECT"),
    ]);
    // Names that only look alike, and the words in literals, pass.
    check_not_refused(&[
        "SELECT lo_create_count FROM stats",
        "SELECT my_lo_create(1)",
        "SELECT 'lo_create(0)'",
        "SELECT large, object FROM t",
    ]);
}

#[test]
fn two_phase_refusals() {
    check_refused(&[
        ("PREPARE TRANSACTION 'gid'", "PREPARE TRANSACTION"),
        ("prepare /* x */ transaction 'gid'", "two-phase"),
        ("COMMIT PREPARED 'gid'", "COMMIT PREPARED"),
        ("commit prepared 'gid'", "two-phase"),
        ("ROLLBACK PREPARED 'gid'", "ROLLBACK PREPARED"),
        ("Rollback -- c\n Prepared 'gid'", "two-phase"),
    ]);
}

#[test]
fn serializable_refusals() {
    check_refused(&[
        ("BEGIN ISOLATION LEVEL SERIALIZABLE", "SERIALIZABLE"),
        ("BEGIN /* x */ ISOLATION LEVEL serializable", "SERIALIZABLE"),
        (
            "begin transaction isolation level serializable, read only, deferrable",
            "SERIALIZABLE",
        ),
        (
            "START TRANSACTION ISOLATION -- c\n LEVEL SeRiAlIzAbLe",
            "SERIALIZABLE",
        ),
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SERIALIZABLE",
        ),
        (
            "SET TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE",
            "SERIALIZABLE",
        ),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SERIALIZABLE",
        ),
        (
            "SET default_transaction_isolation = 'serializable'",
            "SERIALIZABLE",
        ),
        (
            "set default_transaction_isolation to serializable",
            "SERIALIZABLE",
        ),
        (
            "SET SESSION default_transaction_isolation TO 'SERIALIZABLE'",
            "SERIALIZABLE",
        ),
        (
            "SET LOCAL default_transaction_isolation = \"serializable\"",
            "SERIALIZABLE",
        ),
        ("SET transaction_isolation = 'serializable'", "SERIALIZABLE"),
        (
            "SELECT set_config('default_transaction_isolation', 'serializable', false)",
            "SERIALIZABLE",
        ),
        (
            "SET default_transaction_isolation = 'serializable'",
            "generalized snapshot isolation",
        ),
    ]);
}

#[test]
fn advisory_lock_refusals() {
    check_refused(&[
        ("SELECT pg_advisory_lock(1)", "pg_advisory_lock"),
        ("select PG_ADVISORY_XACT_LOCK(1, 2)", "advisory"),
        ("SELECT pg_try_advisory_lock(42)", "pg_try_advisory_lock"),
        ("SELECT pg_advisory_unlock_all()", "advisory"),
        ("SELECT pg_catalog.pg_advisory_lock_shared(1)", "advisory"),
        ("SELECT \"pg_advisory_lock\"(1)", "advisory"),
        (
            "UPDATE t SET a = 1 WHERE pg_try_advisory_xact_lock(id)",
            "advisory",
        ),
        ("PREPARE p AS SELECT pg_advisory_lock($1)", "advisory"),
        (
            "SELECT 1 FROM t WHERE pg_advisory_lock /* x */ (1) IS NULL",
            "one replica only",
        ),
    ]);
}

#[test]
fn cluster_wide_refusals() {
    check_refused(&[
        ("CREATE DATABASE d", "CREATE DATABASE"),
        ("alter database d set work_mem = '1MB'", "ALTER DATABASE"),
        ("DROP DATABASE IF EXISTS d", "DROP DATABASE"),
        ("CREATE ROLE r LOGIN", "CREATE ROLE"),
        (
            "ALTER ROLE r SET default_transaction_isolation = 'read committed'",
            "ALTER ROLE",
        ),
        ("DROP ROLE r", "DROP ROLE"),
        ("CREATE USER u PASSWORD 'x'", "CREATE USER"),
        ("alter user u with password 'x'", "ALTER USER"),
        ("DROP USER IF EXISTS u", "DROP USER"),
        ("CREATE GROUP g", "CREATE GROUP"),
        ("ALTER GROUP g ADD USER u", "ALTER GROUP"),
        ("DROP GROUP g", "DROP GROUP"),
        ("CREATE TABLESPACE ts LOCATION '/x'", "CREATE TABLESPACE"),
        ("ALTER TABLESPACE ts RENAME TO ts2", "ALTER TABLESPACE"),
        ("DROP TABLESPACE ts", "DROP TABLESPACE"),
        ("ALTER SYSTEM SET work_mem = '1MB'", "ALTER SYSTEM"),
        ("alter /* c */ system reset all", "cluster-wide"),
    ]);
}

#[test]
fn concurrently_refusals() {
    check_refused(&[
        (
            "CREATE INDEX CONCURRENTLY i ON t (a)",
            "CREATE INDEX CONCURRENTLY",
        ),
        (
            "create unique index concurrently if not exists i on t (a)",
            "CONCURRENTLY",
        ),
        ("DROP INDEX CONCURRENTLY i", "DROP INDEX CONCURRENTLY"),
        (
            "drop index /* x */ concurrently if exists i",
            "global order",
        ),
    ]);
}

#[test]
fn capture_refusals() {
    check_refused(&[
        ("ALTER TABLE t DISABLE TRIGGER ALL", "DISABLE TRIGGER"),
        ("alter table t disable trigger user", "writeset capture"),
        ("ALTER TABLE ONLY t DISABLE TRIGGER tr", "DISABLE TRIGGER"),
        ("ALTER TABLE t ADD COLUMN b int, ENABLE REPLICA TRIGGER tr", "ENABLE REPLICA TRIGGER"),
        ("ALTER TABLE t ENABLE /* x */ ALWAYS TRIGGER tr", "ENABLE ALWAYS TRIGGER"),
        ("ALTER FOREIGN TABLE f DISABLE TRIGGER ALL", "DISABLE TRIGGER"),
        ("CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()", "EVENT TRIGGER"),
        ("ALTER EVENT TRIGGER tashkent_ddl_end DISABLE", "EVENT TRIGGER"),
        ("drop event trigger if exists e", "EVENT TRIGGER"),
        ("SET session_replication_role = replica", "session_replication_role"),
        ("set session session_replication_role to 'replica'", "session_replication_role"),
        ("SET LOCAL session_replication_role = DEFAULT", "session_replication_role"),
        ("SET \"session_replication_role\" = replica", "session_replication_role"),
        ("SELECT set_config('session_replication_role', 'replica', false)", "session_replication_role"),
        (
            "CREATE FUNCTION f() RETURNS void LANGUAGE sql SET session_replication_role = replica AS 'DELETE FROM t'",
            "session_replication_role",
        ),
        ("ALTER FUNCTION f() SET session_replication_role TO replica", "session_replication_role"),
    ]);
}

#[test]
fn tashkent_schema_refusals() {
    check_refused(&[
        ("SELECT * FROM tashkent.applied", "schema tashkent"),
        ("select * from TASHKENT.applied", "schema tashkent"),
        ("SELECT * FROM \"tashkent\".applied", "schema tashkent"),
        (
            "SELECT * FROM tashkent /* x */ . applied",
            "schema tashkent",
        ),
        ("DELETE FROM tashkent.applied", "middleware's own schema"),
        ("CALL tashkent.apply('x')", "schema tashkent"),
        ("SET tashkent.ws = ''", "schema tashkent"),
        (
            "SELECT set_config('tashkent.ws', '', true)",
            "schema tashkent",
        ),
        ("DROP SCHEMA tashkent CASCADE", "schema tashkent"),
        ("drop schema if exists app, tashkent", "schema tashkent"),
        ("ALTER SCHEMA tashkent RENAME TO x", "schema tashkent"),
        ("ALTER TABLE t SET SCHEMA tashkent", "schema tashkent"),
        (
            "GRANT ALL ON ALL TABLES IN SCHEMA tashkent TO r",
            "schema tashkent",
        ),
        (
            "ALTER DEFAULT PRIVILEGES IN SCHEMA tashkent GRANT SELECT ON TABLES TO r",
            "schema tashkent",
        ),
        ("SET search_path TO tashkent, public", "schema tashkent"),
        ("SET search_path = 'public', 'tashkent'", "schema tashkent"),
    ]);
}

#[test]
fn other_refusals() {
    check_refused(&[
        (
            "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
            "SET TRANSACTION SNAPSHOT",
        ),
        ("set transaction snapshot '1'", "snapshot"),
        ("LOAD 'auto_explain'", "LOAD"),
        ("load '$libdir/plugins/x'", "LOAD"),
        ("SET standard_conforming_strings = off", "conforming"),
        ("SET standard_conforming_strings TO false", "conforming"),
        ("set standard_conforming_strings = 'OFF'", "conforming"),
        ("SET standard_conforming_strings = 0", "conforming"),
        (
            "SELECT set_config('standard_conforming_strings', 'off', false)",
            "conforming",
        ),
        (
            "ALTER FUNCTION f() SET standard_conforming_strings = off",
            "conforming",
        ),
    ]);
}

#[test]
fn not_refused() {
    check_not_refused(&[
        "SELECT 'pg_advisory_lock(1)'",
        "SELECT $$pg_advisory_lock(1)$$",
        "SELECT 1 -- pg_advisory_lock(1)",
        "SELECT 1 /* pg_notify( */",
        "SELECT \"tashkentx\".a",
        "SELECT tashkentx.a FROM tashkentx",
        "SELECT tashkent_col FROM t",
        "SELECT t.tashkent FROM t",
        "SELECT 'tashkent.applied'",
        "SELECT \"Tashkent\".a",
        "INSERT INTO t VALUES ('LISTEN')",
        "INSERT INTO t VALUES ('NOTIFY x'), (E'LISTEN \\' y')",
        "-- NOTIFY\nSELECT 1",
        "/* LISTEN x */ SELECT 1",
        "SELECT notify FROM t",
        "SELECT pg_notify FROM t",
        "SELECT 'SERIALIZABLE'",
        "SET application_name = 'serializable'",
        "SELECT my_pg_advisory_lock(1)",
        "COMMENT ON TABLE t IS 'DROP DATABASE x'",
        "SELECT 1 AS serializable",
        "CREATE SCHEMA AUTHORIZATION tashkent",
        "SET search_path = tashkent_app",
        "SELECT current_setting('tashkent.ws')",
        "CREATE INDEX i ON t (concurrently)",
        "REINDEX INDEX CONCURRENTLY i",
        "SELECT e'\\'; LISTEN x; --'",
    ]);
}

// ---- splitting ----

fn split(sql: &str) -> Vec<&str> {
    split_statements(sql)
}

#[test]
fn split_basic() {
    assert_eq!(split("SELECT 1"), ["SELECT 1"]);
    assert_eq!(split("SELECT 1;"), ["SELECT 1"]);
    assert_eq!(split("  SELECT 1 ;  SELECT 2  "), ["SELECT 1", "SELECT 2"]);
    assert_eq!(split(";;; ;\n;"), Vec::<&str>::new());
    assert_eq!(split(""), Vec::<&str>::new());
    assert_eq!(split("SELECT 1; -- done"), ["SELECT 1"]);
    assert_eq!(
        split("SELECT 1; /* a */ /* b */ ; SELECT 2"),
        ["SELECT 1", "SELECT 2"]
    );
    assert_eq!(split("-- lead\nSELECT 1"), ["-- lead\nSELECT 1"]);
    assert_eq!(
        split("SELECT 1 -- trailing; comment\n;"),
        ["SELECT 1 -- trailing; comment"]
    );
    // A non-ASCII space is an identifier character to PostgreSQL: not trimmed.
    assert_eq!(split("\u{a0}SELECT 1"), ["\u{a0}SELECT 1"]);
}

#[test]
fn split_quotes() {
    assert_eq!(
        split("SELECT 'a;b'; SELECT 2"),
        ["SELECT 'a;b'", "SELECT 2"]
    );
    assert_eq!(
        split("SELECT 'it''s;'; SELECT 2"),
        ["SELECT 'it''s;'", "SELECT 2"]
    );
    // standard_conforming_strings: a backslash is literal in '...'.
    assert_eq!(
        split(r"SELECT 'a\'; SELECT 2"),
        [r"SELECT 'a\'", "SELECT 2"]
    );
    // E'...': \' does not end the string, \\ is a backslash.
    assert_eq!(
        split(r"SELECT E'a\'; b'; SELECT 2"),
        [r"SELECT E'a\'; b'", "SELECT 2"]
    );
    assert_eq!(
        split(r"SELECT e'\\'; SELECT 2"),
        [r"SELECT e'\\'", "SELECT 2"]
    );
    assert_eq!(
        split(r"SELECT E'x''; y'; SELECT 2"),
        [r"SELECT E'x''; y'", "SELECT 2"]
    );
    // An identifier ending in e is not an E-string prefix.
    assert_eq!(
        split(r"SELECT type'a\'; SELECT 2"),
        [r"SELECT type'a\'", "SELECT 2"]
    );
    assert_eq!(
        split(r"SELECT U&'\0061;'; SELECT 2"),
        [r"SELECT U&'\0061;'", "SELECT 2"]
    );
    assert_eq!(
        split(r"SELECT B'1;', X'f;', N'n\'; SELECT 2"),
        [r"SELECT B'1;', X'f;', N'n\'", "SELECT 2"]
    );
    assert_eq!(
        split(r#"SELECT "a;""b"; SELECT 2"#),
        [r#"SELECT "a;""b""#, "SELECT 2"]
    );
    assert_eq!(
        split(r#"SELECT U&"a;"; SELECT 2"#),
        [r#"SELECT U&"a;""#, "SELECT 2"]
    );
    assert_eq!(
        split("SELECT 'x'\n'y;'; SELECT 2"),
        ["SELECT 'x'\n'y;'", "SELECT 2"]
    );
}

#[test]
fn split_dollar_quotes() {
    assert_eq!(
        split("SELECT $$a;b$$; SELECT 2"),
        ["SELECT $$a;b$$", "SELECT 2"]
    );
    assert_eq!(
        split("SELECT $t$ $$; $x$ $t$; SELECT 2"),
        ["SELECT $t$ $$; $x$ $t$", "SELECT 2"]
    );
    assert_eq!(
        split("SELECT $_1$;$_1$; SELECT 2"),
        ["SELECT $_1$;$_1$", "SELECT 2"]
    );
    assert_eq!(
        split("SELECT $é$;$é$; SELECT 2"),
        ["SELECT $é$;$é$", "SELECT 2"]
    );
    // $1 is a parameter, not a quote.
    assert_eq!(split("SELECT $1; SELECT $2"), ["SELECT $1", "SELECT $2"]);
    assert_eq!(split("SELECT $1$a; SELECT 2"), ["SELECT $1$a", "SELECT 2"]);
    // A $ inside an identifier does not start a quote.
    assert_eq!(
        split("SELECT a$b$; SELECT $b$"),
        ["SELECT a$b$", "SELECT $b$"]
    );
    assert_eq!(
        split("SELECT a$$; SELECT 2 $$"),
        ["SELECT a$$", "SELECT 2 $$"]
    );
    // A tag cannot start with a digit or hold other characters: lone `$`.
    assert_eq!(
        split("SELECT $a-b$; SELECT 2"),
        ["SELECT $a-b$", "SELECT 2"]
    );
    // A longer delimiter does not close a shorter one.
    assert_eq!(
        split("SELECT $a$ $ab$ ; $a$; SELECT 2"),
        ["SELECT $a$ $ab$ ; $a$", "SELECT 2"]
    );
    assert_eq!(
        split("DO $body$ BEGIN PERFORM 1; END $body$; SELECT 2"),
        ["DO $body$ BEGIN PERFORM 1; END $body$", "SELECT 2"]
    );
}

#[test]
fn split_comments() {
    assert_eq!(
        split("SELECT 1 /* ; */; SELECT 2"),
        ["SELECT 1 /* ; */", "SELECT 2"]
    );
    assert_eq!(
        split("SELECT 1 /* a /* b ; */ c ; */; SELECT 2"),
        ["SELECT 1 /* a /* b ; */ c ; */", "SELECT 2"]
    );
    assert_eq!(
        split("SELECT 1 -- ;\n; SELECT 2"),
        ["SELECT 1 -- ;", "SELECT 2"]
    );
    assert_eq!(
        split("SELECT 1 -- ;\r; SELECT 2"),
        ["SELECT 1 -- ;", "SELECT 2"]
    );
    assert_eq!(split("SELECT 1 --;"), ["SELECT 1 --;"]);
    assert_eq!(
        split("SELECT 1-/*;*/2; SELECT 2"),
        ["SELECT 1-/*;*/2", "SELECT 2"]
    );
    assert_eq!(
        split("SELECT 2 */ 3; SELECT 4"),
        ["SELECT 2 */ 3", "SELECT 4"]
    );
    // Comments in quotes are not comments, quotes in comments are not quotes.
    assert_eq!(split("SELECT '--'; SELECT 2"), ["SELECT '--'", "SELECT 2"]);
    assert_eq!(split("SELECT '/*'; SELECT 2"), ["SELECT '/*'", "SELECT 2"]);
    assert_eq!(
        split("SELECT 1 /* ' */; SELECT 2 -- '\n"),
        ["SELECT 1 /* ' */", "SELECT 2 -- '"]
    );
}

#[test]
fn split_unterminated() {
    assert_eq!(split("SELECT 'abc; SELECT 2"), ["SELECT 'abc; SELECT 2"]);
    assert_eq!(
        split("SELECT E'abc\\'; SELECT 2"),
        ["SELECT E'abc\\'; SELECT 2"]
    );
    assert_eq!(split("SELECT \"abc; SELECT 2"), ["SELECT \"abc; SELECT 2"]);
    assert_eq!(split("SELECT $$abc; SELECT 2"), ["SELECT $$abc; SELECT 2"]);
    assert_eq!(
        split("SELECT 1 /* abc; SELECT 2"),
        ["SELECT 1 /* abc; SELECT 2"]
    );
    assert_eq!(
        split("SELECT 1 /* a /* b */; SELECT 2"),
        ["SELECT 1 /* a /* b */; SELECT 2"]
    );
    // An unterminated comment alone is kept, so PostgreSQL reports it.
    assert_eq!(split("SELECT 1; /* abc"), ["SELECT 1", "/* abc"]);
    assert_eq!(split("SELECT E'\\"), ["SELECT E'\\"]);
    assert_eq!(split("SELECT 'é"), ["SELECT 'é"]);
}

#[test]
fn split_parentheses_and_atomic_bodies() {
    let rule = "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2))";
    assert_eq!(split(&format!("{rule}; SELECT 2")), [rule, "SELECT 2"]);
    let function = "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT 1;\n  \
                    SELECT CASE WHEN a > 0 THEN 1 ELSE 2 END;\n  SELECT (CASE WHEN true THEN 3 END);\nEND";
    assert_eq!(
        split(&format!("{function};\nSELECT f(1);")),
        [function, "SELECT f(1)"]
    );
    let procedure =
        "create or replace procedure p() language sql begin atomic insert into t values (1); end";
    assert_eq!(
        split(&format!("{procedure}; CALL p()")),
        [procedure, "CALL p()"]
    );
    // BEGIN/END elsewhere are transaction control.
    assert_eq!(
        split("BEGIN; SELECT 1; END; COMMIT"),
        ["BEGIN", "SELECT 1", "END", "COMMIT"]
    );
    assert_eq!(
        split("CREATE TABLE t (a int); BEGIN; SELECT CASE WHEN true THEN 1 END; END"),
        [
            "CREATE TABLE t (a int)",
            "BEGIN",
            "SELECT CASE WHEN true THEN 1 END",
            "END"
        ]
    );
    // A function named begin does not open a body (psql's heuristic would merge these).
    assert_eq!(
        split("CREATE FUNCTION begin() RETURNS int LANGUAGE sql AS 'SELECT 1'; LISTEN x"),
        [
            "CREATE FUNCTION begin() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "LISTEN x"
        ]
    );
    // A stray ')' does not make the depth negative.
    assert_eq!(split("SELECT 1); SELECT 2"), ["SELECT 1)", "SELECT 2"]);
    // An unclosed '(' keeps the rest in one statement (a syntax error for PostgreSQL).
    assert_eq!(split("SELECT (1; SELECT 2"), ["SELECT (1; SELECT 2"]);
}

#[test]
fn split_client_strings() {
    // pgbench's tpcb-like transaction, sent as one simple Query.
    let pgbench = "BEGIN;\nUPDATE pgbench_accounts SET abalance = abalance + -4242 WHERE aid = 17;\n\
                   SELECT abalance FROM pgbench_accounts WHERE aid = 17;\n\
                   UPDATE pgbench_tellers SET tbalance = tbalance + -4242 WHERE tid = 3;\n\
                   UPDATE pgbench_branches SET bbalance = bbalance + -4242 WHERE bid = 1;\n\
                   INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 17, -4242, CURRENT_TIMESTAMP);\n\
                   END;";
    let statements = split(pgbench);
    assert_eq!(statements.len(), 7);
    assert_eq!(classify(statements[0]), Kind::Begin { read_only: false });
    assert!(statements[1..6].iter().all(|s| classify(s) == Kind::Other));
    assert_eq!(classify(statements[6]), Kind::Commit { chain: false });
    // pgbench -i.
    let init = "drop table if exists pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers;\
                create table pgbench_tellers(tid int not null,bid int,tbalance int,filler char(84)) with (fillfactor=100);\
                truncate table pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers";
    let kinds: Vec<Kind> = split(init).into_iter().map(classify).collect();
    assert_eq!(kinds, [Kind::Ddl, Kind::Ddl, Kind::Truncate]);
    // psql's \d t.
    let describe = "SELECT c.oid,\n  n.nspname,\n  c.relname\nFROM pg_catalog.pg_class c\n     \
                    LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace\n\
                    WHERE c.relname OPERATOR(pg_catalog.~) '^(t)$' COLLATE pg_catalog.default\n  \
                    AND pg_catalog.pg_table_is_visible(c.oid)\nORDER BY 2, 3;";
    assert_eq!(split(describe), [describe.trim_end_matches(';')]);
    assert_eq!(classify(describe), Kind::Other);
    // psql -c with several statements and comments.
    assert_eq!(
        split("BEGIN; -- start\nINSERT INTO t VALUES ('a;b', $$c;d$$); /* done */ COMMIT;"),
        [
            "BEGIN",
            "-- start\nINSERT INTO t VALUES ('a;b', $$c;d$$)",
            "/* done */ COMMIT"
        ]
    );
}

// ---- properties ----

/// Statements with tricky quoting; none ends in a `--` comment (it would swallow the `;`).
const POOL: &[&str] = &[
    "SELECT 1",
    "SELECT 'a;b'",
    "SELECT 'it''s; fine'",
    r"SELECT E'it\'s; fine'",
    r"SELECT e'\\'",
    r"SELECT 'back\'",
    r"SELECT U&'d\0061t;a'",
    r"SELECT B'1010', X'1F', N'n;'",
    r#"SELECT "semi;colon""quoted" FROM t"#,
    "SELECT $$a;b$$",
    "SELECT $fn$ $$ ; $fn $fn$",
    "SELECT $1::int, a$b, $2",
    "SELECT 1 /* ; /* nested ; */ still ; */ + 2",
    "SELECT 1 -- ; comment\n + 2",
    "SELECT 'x'\n'y;'",
    "INSERT INTO t VALUES ('LISTEN; NOTIFY')",
    "SELECT 1e5, .5, 1.e3, 1e'\\';'",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END",
    "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); END",
    "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2))",
    "CREATE FUNCTION g() RETURNS int AS 'SELECT 1; SELECT 2' LANGUAGE sql",
    "DO $body$ BEGIN PERFORM 1; END $body$",
    "BEGIN",
    "END",
    "CREATE FUNCTION begin() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "SELECT 'ünïcødé;' AS \"ß;\"",
];

/// Pieces that hold no statement.
const FILLER: &[&str] = &[
    "",
    " ",
    "\n\t",
    "/* only ; comment */",
    "-- line ; comment\n",
];

proptest! {
    #[test]
    fn never_panics_on_arbitrary_text(sql in any::<String>()) {
        check_split_invariants(&sql);
        let _ = classify(&sql);
    }

    #[test]
    fn never_panics_on_sql_like_text(sql in r#"([a-zA-Z_$'"\\;/*\-\n ()&.,0-9é]|begin|atomic|end|case|create|function|E'|U&|\$\$|\$a\$|--|/\*|\*/){0,40}"#) {
        check_split_invariants(&sql);
        let _ = classify(&sql);
    }

    #[test]
    fn joined_statements_split_back(picks in prop::collection::vec(0..POOL.len(), 0..8)) {
        let stmts: Vec<&str> = picks.iter().map(|&i| POOL[i]).collect();
        let sql = stmts.join(";");
        prop_assert_eq!(split_statements(&sql), stmts);
    }

    #[test]
    fn filler_and_padding_are_dropped(
        picks in prop::collection::vec((0..POOL.len() + FILLER.len(), "[ \t\n]{0,2}", "[ \t\n]{0,2}"), 0..10),
        trailing_semicolon in any::<bool>(),
    ) {
        let mut want = Vec::new();
        let mut pieces = Vec::new();
        for (i, before, after) in &picks {
            match POOL.get(*i) {
                Some(stmt) => {
                    want.push(*stmt);
                    pieces.push(format!("{before}{stmt}{after}"));
                }
                None => pieces.push(FILLER[i - POOL.len()].to_string()),
            }
        }
        let mut sql = pieces.join(";");
        if trailing_semicolon {
            sql.push(';');
        }
        prop_assert_eq!(split_statements(&sql), want);
    }
}

/// Every statement is a non-empty, trimmed slice of the input, in order, not overlapping.
fn check_split_invariants(sql: &str) {
    let mut from = 0;
    for stmt in split_statements(sql) {
        assert!(!stmt.is_empty());
        assert_eq!(stmt, trim_space(stmt));
        let at = stmt.as_ptr() as usize - sql.as_ptr() as usize;
        assert!(at >= from && at + stmt.len() <= sql.len());
        from = at + stmt.len();
    }
}
