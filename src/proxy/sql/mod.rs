//! Just enough SQL for the proxy: split a simple-Query string into statements and tell which
//! kind each statement is.
//!
//! The proxy must know where a transaction begins and ends, which statements change the schema
//! (they are replicated in the global order, see ARCHITECTURE.md "DDL"), which ones only concern this
//! replica, and which ones cannot work under replication at all (they are refused with SQLSTATE
//! 0A000 before they reach PostgreSQL). It does not parse SQL: a scanner that knows PostgreSQL's
//! lexical rules (string literals, quoted identifiers, dollar quotes, nested comments) yields the
//! tokens outside literals and comments, and the classifier looks at keywords. Whatever it does
//! not recognise is `Kind::Other` and goes to PostgreSQL unchanged, which reports syntax errors.
//!
//! The scanner assumes `standard_conforming_strings = on` (a backslash is literal in `'...'`);
//! turning it off through the proxy is refused, because the statement boundaries found here
//! would then differ from PostgreSQL's.

// ---------------------------------------------------------------------------------------------
// API
// ---------------------------------------------------------------------------------------------

/// Splits the text of a simple-Query message into its statements: each is the statement's text
/// without the terminating `;`, trimmed of surrounding whitespace; statements that are empty or
/// consist only of comments are dropped.
///
/// Like psql, a `;` inside parentheses (`CREATE RULE ... DO (a; b)`) or inside the
/// `BEGIN ATOMIC ... END` body of `CREATE [OR REPLACE] FUNCTION|PROCEDURE` does not end the
/// statement. An unterminated literal or comment makes the rest of the text part of the last
/// statement, so PostgreSQL reports the error.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let mut statements = Vec::new();
    let mut current = Statement::starting_at(0);
    for tok in Scanner::new(sql) {
        if tok.is_punct(b';') && current.at_top_level() {
            current.finish(sql, tok.start, &mut statements);
            current = Statement::starting_at(tok.end);
        } else {
            current.observe(&tok);
        }
    }
    current.finish(sql, sql.len(), &mut statements);
    statements
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `BEGIN` / `START TRANSACTION [modes]`; `BEGIN WORK/TRANSACTION`. `read_only` when READ ONLY was
    /// asked. (Statements asking SERIALIZABLE are `Refused`, not `Begin`.)
    Begin { read_only: bool },
    /// `COMMIT` / `END [WORK|TRANSACTION] [AND [NO] CHAIN]`. `chain` for AND CHAIN.
    Commit { chain: bool },
    /// `ROLLBACK` / `ABORT [WORK|TRANSACTION] [AND [NO] CHAIN]` — but not `ROLLBACK TO [SAVEPOINT] x`,
    /// not ROLLBACK PREPARED.
    Rollback { chain: bool },
    /// `SAVEPOINT x`, `RELEASE [SAVEPOINT] x`, `ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] x`
    /// (`rollback_to`: the one that leaves a failed transaction).
    Savepoint { rollback_to: bool },
    /// SET TRANSACTION ... / SET SESSION CHARACTERISTICS AS TRANSACTION ... with an isolation
    /// level other than SERIALIZABLE (or only READ WRITE/READ ONLY/DEFERRABLE modes). The proxy
    /// answers these itself.
    SetTransaction,
    /// Must run outside a transaction block and only concerns this replica (the proxy runs it
    /// locally, unreplicated): VACUUM, ANALYZE/ANALYSE, CHECKPOINT, CLUSTER, REINDEX (any form,
    /// also CONCURRENTLY), DISCARD ...
    LocalMaintenance,
    /// Replicated schema change (the proxy sends these as their own Query message): CREATE,
    /// ALTER, DROP, COMMENT ON, GRANT, REVOKE, SECURITY LABEL, IMPORT FOREIGN SCHEMA, REFRESH
    /// MATERIALIZED VIEW, ALTER DEFAULT PRIVILEGES, REASSIGN OWNED, DROP OWNED, and
    /// `SELECT ... INTO new_table` — except the refused forms and temporary objects (`CREATE TEMP
    /// ...`, `SELECT ... INTO TEMP`, names qualified by `pg_temp`), which are `Other`: they live
    /// in this session only and are not captured.
    Ddl,
    /// `TRUNCATE [TABLE] ...`
    Truncate,
    /// Refused: the proxy answers SQLSTATE 0A000 with `message` and `hint`.
    Refused { message: String, hint: String },
    /// `SHOW tashkent.<name>`: the proxy answers (simple query protocol):
    /// `replica` (how to reach this proxy's PostgreSQL), `replica_id`,
    /// `applied_version`.
    ProxyShow { name: String },
    /// `SET [SESSION | LOCAL] tashkent.<name> {TO | =} value` (`value`
    /// None: `... TO DEFAULT` or `RESET tashkent.<name>`): the proxy's own
    /// settings (`consistency`, `consistency_timeout`), kept by the proxy.
    ProxySet {
        name: String,
        value: Option<String>,
        local: bool,
    },
    /// `SELECT tashkent.wait_for(<version>)`: the proxy waits until its
    /// replica has applied `version` (simple query protocol).
    ProxyWaitFor { version: u64 },
    /// Everything else (SELECT, INSERT/UPDATE/DELETE/MERGE, WITH ..., COPY, SET, SHOW, RESET,
    /// PREPARE, EXECUTE, DEALLOCATE, DECLARE/FETCH/MOVE/CLOSE, EXPLAIN, DO, CALL, LOCK, VALUES,
    /// TABLE, ...).
    Other,
}

/// Classifies one statement (as returned by `split_statements`, or the text of a Parse message,
/// which may still carry comments or a trailing `;`).
///
/// Text that holds several statements (PostgreSQL rejects that in a Parse message) is refused
/// if any of them is, and otherwise classified by its first statement.
pub fn classify(stmt: &str) -> Kind {
    let statements = split_statements(stmt);
    let Some(first) = statements.first() else {
        return Kind::Other;
    };
    let first = classify_one(first);
    if matches!(first, Kind::Refused { .. }) {
        return first;
    }
    statements[1..]
        .iter()
        .map(|s| classify_one(s))
        .find(|k| matches!(k, Kind::Refused { .. }))
        .unwrap_or(first)
}

mod classify;
mod scan;
#[cfg(test)]
mod tests;

use classify::classify_one;
pub use classify::{drops_prepared, is_copy};
use scan::*;
