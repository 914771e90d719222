//! Writeset capture and apply on a replica.
//!
//! The work happens inside PostgreSQL (see `capture.sql`, whose header
//! documents the captured format): statement-level triggers generated per
//! table append one JSON line per statement to the transaction-local
//! setting `tashkent.ws`, and `tashkent.apply` replays such lines on
//! another replica. This module installs that SQL, reads a transaction's
//! lines back, extracts the conflict keys the certifier needs, and applies
//! lines through an applier session. It also owns the replica's applied
//! version (an insert-only log, `tashkent.applied`) and the striping of
//! sequences over the replicas (`tashkent.replica`).

use serde::Deserialize;
use tokio_postgres::Client;

use crate::error::{Error, Result};

/// The SQL that installs capture and apply into a database (idempotent).
pub const INSTALL_SQL: &str = include_str!("capture.sql");

/// Reads the current transaction's captured lines (NULL or '' when none).
pub const READ_SQL: &str = "SELECT current_setting('tashkent.ws', true)";

/// Reads the replica's applied version: one bigint, the newest row of the
/// insert-only log (an index-only backward scan). Sent as the first
/// statement of a REPEATABLE READ transaction, it is exactly the version
/// of that transaction's snapshot.
pub const SNAPSHOT_VERSION_SQL: &str = "SELECT max(version) FROM tashkent.applied";

/// The statement that records version `v` as applied, to run in the
/// transaction that commits `v`. It inserts a row of its own, so commits in
/// REPEATABLE READ never update a row changed after their snapshot.
pub fn record_applied_sql(v: u64) -> String {
    format!("INSERT INTO tashkent.applied (version) VALUES ({v})")
}

/// The statement that moves this replica's sequences past the values of
/// its own stripe in the serial/identity columns of `tables` (qualified
/// names as captured; every table when `None`): run after rows this
/// replica once inserted are restored or replayed from the log (see
/// `tashkent.advance_sequences`).
pub fn advance_sequences_sql(tables: Option<&[String]>) -> String {
    let arg = match tables {
        None => "NULL".to_owned(),
        Some(tables) => {
            let quoted: Vec<String> = tables
                .iter()
                .map(|t| format!("'{}'", t.replace('\'', "''")))
                .collect();
            format!("ARRAY[{}]::text[]", quoted.join(","))
        }
    };
    format!("SELECT tashkent.advance_sequences({arg})")
}

/// The statement that deletes applied-log rows older than `below`; the
/// newest row always survives, whatever `below` is.
pub fn prune_applied_sql(below: u64) -> String {
    format!(
        "DELETE FROM tashkent.applied WHERE version < {below} \
         AND version < (SELECT max(version) FROM tashkent.applied)"
    )
}

/// Reads the replica's applied version.
pub async fn applied_version(client: &Client) -> Result<u64> {
    let row = client
        .query_one(SNAPSHOT_VERSION_SQL, &[])
        .await
        .map_err(Error::sql("reading the applied version"))?;
    let v: Option<i64> = row.get(0);
    let v = v.ok_or_else(|| Error::Capture {
        reason: "tashkent.applied is empty: capture is not installed properly".to_string(),
    })?;
    u64::try_from(v).map_err(|_| Error::Capture {
        reason: format!("negative applied version {v}"),
    })
}

/// Records this replica's place among `replicas` replicas (`id` in
/// `1..=replicas`) and stripes its sequences: every user sequence (and
/// every one created later, also by replicated DDL) hands out only values
/// congruent to `id` modulo `replicas`, so replicas never draw the same
/// serial value.
pub async fn configure_replica(client: &Client, id: u32, replicas: u32) -> Result<()> {
    if replicas == 0 || id == 0 || id > replicas {
        return Err(Error::Config(format!(
            "replica id {id} is not in 1..={replicas}"
        )));
    }
    let (id, replicas) = match (i32::try_from(id), i32::try_from(replicas)) {
        (Ok(id), Ok(replicas)) => (id, replicas),
        _ => {
            return Err(Error::Config(format!(
                "{replicas} replicas are more than tashkent supports"
            )))
        }
    };
    client
        .execute(
            "SELECT tashkent.configure_replica($1, $2)",
            &[&id, &replicas],
        )
        .await
        .map(drop)
        .map_err(Error::sql("configuring the replica's sequences"))
}

/// Installs (or refreshes) capture in the database `client` is connected to.
pub async fn install(client: &Client) -> Result<()> {
    client
        .batch_execute(INSTALL_SQL)
        .await
        .map_err(Error::sql("installing writeset capture"))
}

/// What one captured line holds (a statement's effect on at most 1,000
/// rows of one table, or one DDL statement), with the keys the certifier
/// checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedChange {
    /// Schema-qualified table name (for DDL: its first affected table, or
    /// `tashkent.catalog` when it affects none).
    pub table: String,
    /// The tables the line conflicts with as a whole: for DDL the tables it
    /// creates, alters or drops (possibly none); otherwise `[table]`.
    pub tables: Vec<String>,
    /// The kind of statement.
    pub op: ChangeOp,
    /// Write conflict keys: primary and unique keys of every row written.
    pub keys: Vec<String>,
    /// Unique keys that no longer exist (deleted or re-keyed rows).
    pub gone: Vec<String>,
    /// Unique keys of parent rows the written rows reference.
    pub refs: Vec<String>,
    /// The line as captured, which is what is shipped and applied.
    pub line: String,
}

/// The statement kind of a captured line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ChangeOp {
    #[serde(rename = "I")]
    Insert,
    #[serde(rename = "U")]
    Update,
    #[serde(rename = "D")]
    Delete,
    #[serde(rename = "T")]
    Truncate,
    /// A DDL statement, replayed as SQL text.
    #[serde(rename = "X")]
    Ddl,
}

#[derive(Deserialize)]
struct LineKeys {
    t: String,
    op: ChangeOp,
    #[serde(default)]
    keys: Option<Vec<String>>,
    #[serde(default)]
    gone: Option<Vec<String>>,
    #[serde(default)]
    refs: Option<Vec<String>>,
    #[serde(default)]
    tables: Option<Vec<String>>,
}

/// Splits a transaction's captured text into its changes.
pub fn parse(captured: &str) -> Result<Vec<CapturedChange>> {
    captured
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let keys: LineKeys = serde_json::from_str(line).map_err(|e| Error::Capture {
                reason: format!("unreadable captured line ({e}): {line:.200}"),
            })?;
            let tables = match keys.op {
                ChangeOp::Ddl => keys.tables.unwrap_or_default(),
                _ => vec![keys.t.clone()],
            };
            Ok(CapturedChange {
                table: keys.t,
                tables,
                op: keys.op,
                keys: keys.keys.unwrap_or_default(),
                gone: keys.gone.unwrap_or_default(),
                refs: keys.refs.unwrap_or_default(),
                line: line.to_string(),
            })
        })
        .collect()
}

/// Reads what the open transaction on `client` has captured so far.
pub async fn read(client: &Client) -> Result<String> {
    let row = client
        .query_one(READ_SQL, &[])
        .await
        .map_err(Error::sql("reading the captured writeset"))?;
    Ok(row.get::<_, Option<String>>(0).unwrap_or_default())
}

/// Prepares a session to apply writesets: capture triggers and foreign-key
/// checks (already certified at the origin) must not fire there.
pub async fn become_applier(client: &Client) -> Result<()> {
    client
        .batch_execute("SET session_replication_role = replica")
        .await
        .map_err(Error::sql("entering applier mode"))
}

/// Applies captured lines in the transaction open on an applier session.
pub async fn apply(client: &Client, captured: &str) -> Result<()> {
    client
        .execute("SELECT tashkent.apply($1)", &[&captured])
        .await
        .map(drop)
        .map_err(Error::sql("applying a writeset"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_and_keeps_the_line() {
        let text = concat!(
            r#"{"t": "public.a", "op": "U", "del": null, "keys": ["public.a a_pkey [1]"], "gone": null, "refs": ["public.p p_pkey [7]"], "rows": [{"id": 1}]}"#,
            "\n",
            r#"{"t": "public.b", "op": "T"}"#,
            "\n"
        );
        let changes = parse(text).unwrap();
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].op, ChangeOp::Update);
        assert_eq!(changes[0].keys, vec!["public.a a_pkey [1]"]);
        assert!(changes[0].gone.is_empty());
        assert_eq!(changes[0].refs, vec!["public.p p_pkey [7]"]);
        assert_eq!(changes[0].line, text.lines().next().unwrap());
        assert_eq!(changes[1].op, ChangeOp::Truncate);
        assert_eq!(changes[1].table, "public.b");
        assert_eq!(changes[0].tables, vec!["public.a"]);
        assert_eq!(changes[1].tables, vec!["public.b"]);
    }

    #[test]
    fn parses_ddl_lines_with_their_tables() {
        let text = concat!(
            r#"{"t": "s.x", "ds": "ISO, MDY", "is": "postgres", "op": "X", "tz": "UTC", "sql": "DROP TABLE x, y", "path": "s", "tables": ["s.x", "s.y"]}"#,
            "\n",
            r#"{"t": "tashkent.catalog", "ds": "ISO, MDY", "is": "postgres", "op": "X", "tz": "UTC", "sql": "CREATE SCHEMA s", "path": "public", "tables": []}"#,
            "\n"
        );
        let changes = parse(text).unwrap();
        assert_eq!(changes[0].op, ChangeOp::Ddl);
        assert_eq!(changes[0].table, "s.x");
        assert_eq!(changes[0].tables, vec!["s.x", "s.y"]);
        assert!(changes[0].keys.is_empty());
        assert_eq!(changes[1].table, "tashkent.catalog");
        assert!(changes[1].tables.is_empty());
    }

    #[test]
    fn applied_log_statements() {
        assert_eq!(
            record_applied_sql(7),
            "INSERT INTO tashkent.applied (version) VALUES (7)"
        );
        let prune = prune_applied_sql(100);
        assert!(prune.starts_with("DELETE FROM tashkent.applied WHERE version < 100 AND"));
        assert!(prune.contains("(SELECT max(version) FROM tashkent.applied)"));
    }

    #[test]
    fn unreadable_line_is_an_error() {
        let err = parse("{\"t\": 1}\n").unwrap_err();
        assert!(
            err.to_string().contains("unreadable captured line"),
            "{err}"
        );
        assert!(parse("").unwrap().is_empty());
    }
}
