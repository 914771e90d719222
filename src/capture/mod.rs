//! Writeset capture and apply on a replica.
//!
//! The work happens inside PostgreSQL (see `capture.sql`, whose header
//! documents the captured format): statement-level triggers generated per
//! table append one JSON line per statement to the transaction-local
//! setting `tashkent.ws`, and `tashkent.apply` replays such lines on
//! another replica. This module installs that SQL, reads a transaction's
//! lines back, extracts the conflict keys the certifier needs, and applies
//! lines through an applier session.

use serde::Deserialize;
use tokio_postgres::Client;

use crate::error::{Error, Result};

/// The SQL that installs capture and apply into a database (idempotent).
pub const INSTALL_SQL: &str = include_str!("capture.sql");

/// Reads the current transaction's captured lines (NULL or '' when none).
pub const READ_SQL: &str = "SELECT current_setting('tashkent.ws', true)";

/// Installs (or refreshes) capture in the database `client` is connected to.
pub async fn install(client: &Client) -> Result<()> {
    client
        .batch_execute(INSTALL_SQL)
        .await
        .map_err(Error::sql("installing writeset capture"))
}

/// What one statement changed, with the keys the certifier checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedChange {
    /// Schema-qualified table name.
    pub table: String,
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
            Ok(CapturedChange {
                table: keys.t,
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
