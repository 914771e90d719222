//! Applying committed writesets on a replica: the statements an applier
//! session runs, per table, prepared once.
//!
//! Parts of a writeset (items and statements, see
//! `tashkent_certifier::writeset::Part`) are fed in execution order to an
//! [`Apply`], inside a transaction the caller opened. Row changes are
//! gathered into *runs*: consecutive changes of one table that touch
//! distinct primary keys. A run is applied as one DELETE of the keys it
//! removes (deletes and the old keys of re-keyed rows) followed by one
//! upsert of the rows it writes, each a prepared statement whose only
//! parameter is an array of record texts, read by the table's own row
//! type (the rows are never parsed outside PostgreSQL: values are exactly
//! what the origin wrote, I7). Deleting first is safe because the run's
//! keys are distinct: no change of the run reads what another wrote, and
//! freeing keys earlier can only let later rows in. Runs are cut at
//! [`RUN_ROWS`] rows or [`RUN_BYTES`] bytes, so memory and statement size
//! stay bounded whatever the size of the writeset (I8).
//!
//! TRUNCATE entries of consecutive tables are replayed as one command (a
//! `TRUNCATE ... CASCADE` captured one entry per table, and foreign keys
//! between them refuse them one by one); DDL runs as the statement text
//! under the origin's search_path and date/time settings. Any DDL makes
//! the prepared statements stale: they are prepared again.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use tashkent_certifier::{Ddl, Item, Op};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

use super::change::{self, Kind};
use crate::error::{Error, Result};

/// A run is applied once it holds this many rows ...
pub const RUN_ROWS: usize = 1000;
/// ... or this many bytes of rows.
pub const RUN_BYTES: usize = 1 << 20;

/// Settings an applier session reads rows under: the ones capture renders
/// them with (see `tashkent_capture.c`).
pub const SESSION_SETTINGS: &str = "SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
     SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET bytea_output = 'hex'";

/// The statements of one table.
struct TableStatements {
    /// Upsert by primary key (plain insert without one).
    write: Statement,
    /// Delete by primary key (`None` without one).
    delete: Option<Statement>,
}

/// One statement of an apply with its rows, ready to run ([`Apply::plan`]).
///
/// Everything that can fail on this side is checked when it is planned:
/// in a pipeline, a statement that failed before it was sent would not
/// abort the transaction, and the COMMIT behind it would commit without it.
pub struct Planned {
    statement: Statement,
    rows: Vec<String>,
    table: String,
    deletes: bool,
}

impl Planned {
    fn new(statement: Statement, rows: &[Bytes], table: String, deletes: bool) -> Result<Planned> {
        let rows = texts(rows)?.into_iter().map(str::to_owned).collect();
        Ok(Planned {
            statement,
            rows,
            table,
            deletes,
        })
    }

    /// Runs the statement on `client` (in a pipeline when polled together
    /// with others).
    pub async fn execute(&self, client: &Client) -> Result<()> {
        let rows: Vec<&str> = self.rows.iter().map(String::as_str).collect();
        let what = if self.deletes { "deleting" } else { "writing" };
        client
            .execute(&self.statement, &[&rows])
            .await
            .map_err(Error::sql(format!("{what} rows of {}", self.table)))?;
        Ok(())
    }
}

/// Rows gathered for one table.
#[derive(Default)]
struct Run {
    table: String,
    deletes: Vec<Bytes>,
    writes: Vec<Bytes>,
    bytes: usize,
    pks: HashSet<Bytes>,
}

/// Applies parts of writesets on one applier session.
#[derive(Default)]
pub struct Apply {
    tables: HashMap<String, TableStatements>,
    run: Run,
    truncating: Vec<String>,
    /// The session's own search_path, restored after each DDL.
    search_path: Option<String>,
}

impl Apply {
    pub fn new() -> Apply {
        Apply::default()
    }

    /// Forgets the prepared statements (after a reconnect, or DDL).
    pub fn forget_tables(&mut self) {
        self.tables.clear();
    }

    /// Applies one item's row changes (after everything fed before it).
    pub async fn item(&mut self, client: &Client, item: &Item) -> Result<()> {
        self.flush_truncate(client).await?;
        let mut done = Vec::new();
        self.gather(item, &mut done)?;
        for run in done {
            self.run(client, run).await?;
        }
        Ok(())
    }

    /// The statements that apply `items` (row changes only, with nothing
    /// fed before them still pending), in order, without running them:
    /// the caller sends them in one pipeline.
    pub async fn plan<'a>(
        &mut self,
        client: &Client,
        items: impl IntoIterator<Item = &'a Item>,
    ) -> Result<Vec<Planned>> {
        let mut runs = Vec::new();
        for item in items {
            self.gather(item, &mut runs)?;
        }
        runs.push(std::mem::take(&mut self.run));
        let mut out = Vec::new();
        for run in runs {
            self.planned(client, run, &mut out).await?;
        }
        Ok(out)
    }

    /// Adds an item's row changes to the current run; runs that are
    /// complete go to `done`.
    fn gather(&mut self, item: &Item, done: &mut Vec<Run>) -> Result<()> {
        // Locked rows are conflict keys only: nothing to apply.
        if item.op == Op::Lock as i32 {
            return Ok(());
        }
        for c in change::decode(item.row.clone())? {
            let touches = |run: &Run| {
                (!c.pk.is_empty() && run.pks.contains(&c.pk))
                    || (!c.old_pk.is_empty() && run.pks.contains(&c.old_pk))
            };
            if self.run.table != item.table
                || touches(&self.run)
                || self.run.deletes.len() + self.run.writes.len() >= RUN_ROWS
                || self.run.bytes >= RUN_BYTES
            {
                done.push(std::mem::take(&mut self.run));
                self.run.table = item.table.clone();
            }
            let run = &mut self.run;
            run.bytes += c.row.len() + c.old_row.len();
            if !c.pk.is_empty() {
                run.pks.insert(c.pk.clone());
            }
            match c.kind {
                Kind::Write => run.writes.push(c.row),
                Kind::Delete => run.deletes.push(c.row),
                Kind::Rekey => {
                    run.pks.insert(c.old_pk.clone());
                    run.deletes.push(c.old_row);
                    run.writes.push(c.row);
                }
            }
        }
        Ok(())
    }

    /// Runs one statement (DDL or TRUNCATE) in its place.
    pub async fn ddl(&mut self, client: &Client, ddl: &Ddl) -> Result<()> {
        self.flush(client).await?;
        let line: DdlLine = serde_json::from_str(&ddl.sql).map_err(|e| Error::Capture {
            reason: format!("unreadable statement in a writeset ({e}): {:.200}", ddl.sql),
        })?;
        if line.op == "T" {
            self.truncating.push(line.t);
            return Ok(());
        }
        self.flush_truncate(client).await?;
        if self.search_path.is_none() {
            let row = client
                .query_one("SELECT current_setting('search_path')", &[])
                .await
                .map_err(Error::sql("reading the applier's search_path"))?;
            self.search_path = Some(row.get(0));
        }
        // `role` last: setting it may drop the right to set the others.
        let settings = |path: &str, tz: &str, ds: &str, is: &str, role: &str| {
            format!(
                "SELECT set_config('search_path', {}, true), set_config('TimeZone', {}, true), \
                 set_config('DateStyle', {}, true), set_config('IntervalStyle', {}, true), \
                 set_config('role', {}, true)",
                literal(path),
                literal(tz),
                literal(ds),
                literal(is),
                literal(role)
            )
        };
        let sql = line.sql.unwrap_or_default();
        client
            .batch_execute(&settings(
                line.path.as_deref().unwrap_or("public"),
                line.tz.as_deref().unwrap_or("UTC"),
                line.ds.as_deref().unwrap_or("ISO, YMD"),
                line.is.as_deref().unwrap_or("postgres"),
                line.role.as_deref().unwrap_or("none"),
            ))
            .await
            .map_err(Error::sql("setting the DDL statement's settings"))?;
        // The prepared statements may name what the DDL changes.
        self.forget_tables();
        client
            .batch_execute(&sql)
            .await
            .map_err(Error::sql(format!("replaying DDL {sql:.200}")))?;
        let path = self.search_path.clone().unwrap_or_default();
        // RESET ROLE first: the statement's role may not set the rest.
        client
            .batch_execute("RESET ROLE")
            .await
            .map_err(Error::sql("restoring the applier's role"))?;
        client
            .batch_execute(&settings(&path, "UTC", "ISO, YMD", "postgres", "none"))
            .await
            .map_err(Error::sql("restoring the applier's settings"))
    }

    /// Applies what is gathered; call at the end of a writeset (or batch).
    pub async fn finish(&mut self, client: &Client) -> Result<()> {
        self.flush(client).await?;
        self.flush_truncate(client).await
    }

    async fn flush_truncate(&mut self, client: &Client) -> Result<()> {
        if self.truncating.is_empty() {
            return Ok(());
        }
        let sql = format!("TRUNCATE {}", self.truncating.join(", "));
        self.truncating.clear();
        self.forget_tables();
        client
            .batch_execute(&sql)
            .await
            .map_err(Error::sql(format!("replaying {sql:.200}")))
    }

    async fn flush(&mut self, client: &Client) -> Result<()> {
        let run = std::mem::take(&mut self.run);
        self.run(client, run).await
    }

    async fn run(&mut self, client: &Client, run: Run) -> Result<()> {
        let mut planned = Vec::new();
        self.planned(client, run, &mut planned).await?;
        for p in &planned {
            p.execute(client).await?;
        }
        Ok(())
    }

    /// The DELETE and the upsert of `run` (those it needs).
    async fn planned(&mut self, client: &Client, run: Run, out: &mut Vec<Planned>) -> Result<()> {
        if run.deletes.is_empty() && run.writes.is_empty() {
            return Ok(());
        }
        let st = self.statements(client, &run.table).await?;
        if !run.deletes.is_empty() {
            let delete = st.delete.as_ref().ok_or_else(|| Error::Capture {
                reason: format!(
                    "a writeset deletes rows of {}, which has no primary key here",
                    run.table
                ),
            })?;
            out.push(Planned::new(
                delete.clone(),
                &run.deletes,
                run.table.clone(),
                true,
            )?);
        }
        if !run.writes.is_empty() {
            out.push(Planned::new(
                st.write.clone(),
                &run.writes,
                run.table,
                false,
            )?);
        }
        Ok(())
    }

    async fn statements(&mut self, client: &Client, table: &str) -> Result<&TableStatements> {
        if !self.tables.contains_key(table) {
            let st = prepare(client, table).await?;
            self.tables.insert(table.to_owned(), st);
        }
        Ok(&self.tables[table])
    }
}

#[derive(serde::Deserialize)]
struct DdlLine {
    op: String,
    t: String,
    sql: Option<String>,
    path: Option<String>,
    tz: Option<String>,
    ds: Option<String>,
    is: Option<String>,
    /// The role the statement ran as at the origin (`current_user`).
    role: Option<String>,
}

fn texts(rows: &[Bytes]) -> Result<Vec<&str>> {
    rows.iter()
        .map(|r| {
            std::str::from_utf8(r).map_err(|_| Error::Capture {
                reason: "a captured row is not UTF-8 (tashkent needs UTF8 databases)".into(),
            })
        })
        .collect()
}

/// A SQL string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A quoted SQL identifier.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

async fn prepare(client: &Client, table: &str) -> Result<TableStatements> {
    // A primary key column's equality is its index's, named with its
    // schema: the applier's search_path need not hold the operator (an
    // extension's type in a schema of its own), and an `=` found there
    // could be another one.
    let columns = client
        .query(
            "SELECT a.attname::text, a.attgenerated <> '', a.attidentity = 'a', \
                    coalesce(a.attnum = ANY (i.indkey::int2[]), false), \
                    (SELECT format('OPERATOR(%I.%s)', n.nspname, o.oprname) \
                     FROM unnest(i.indkey::int2[], i.indclass::oid[]) AS k(attnum, opclass) \
                     JOIN pg_opclass oc ON oc.oid = k.opclass \
                     JOIN pg_amop ao ON ao.amopfamily = oc.opcfamily \
                      AND ao.amoplefttype = oc.opcintype AND ao.amoprighttype = oc.opcintype \
                      AND ao.amopstrategy = 3 AND ao.amopmethod = oc.opcmethod \
                     JOIN pg_operator o ON o.oid = ao.amopopr \
                     JOIN pg_namespace n ON n.oid = o.oprnamespace \
                     WHERE k.attnum = a.attnum) \
             FROM pg_attribute a \
             LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&table],
        )
        .await
        .map_err(Error::sql(format!("reading the columns of {table}")))?;
    let mut cols = Vec::new();
    let mut pk = Vec::new();
    let mut set = Vec::new();
    for row in &columns {
        let name: String = row.get(0);
        let generated: bool = row.get(1);
        let identity_always: bool = row.get(2);
        let in_pk: bool = row.get(3);
        let equality: Option<String> = row.get(4);
        if generated {
            continue;
        }
        let q = ident(&name);
        if in_pk {
            pk.push((q.clone(), equality.unwrap_or_else(|| "=".to_owned())));
        } else if !identity_always {
            set.push(format!("{q} = EXCLUDED.{q}"));
        }
        cols.push(q);
    }
    let rows = format!("(SELECT x::{table} AS r FROM unnest($1::text[]) AS x OFFSET 0) s");
    let values: Vec<String> = cols.iter().map(|c| format!("(s.r).{c}")).collect();
    let mut write = format!(
        "INSERT INTO {table} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {rows}",
        cols.join(", "),
        values.join(", ")
    );
    if !pk.is_empty() {
        let names: Vec<&str> = pk.iter().map(|(c, _)| c.as_str()).collect();
        write.push_str(&format!(" ON CONFLICT ({}) DO ", names.join(", ")));
        if set.is_empty() {
            write.push_str("NOTHING");
        } else {
            write.push_str("UPDATE SET ");
            write.push_str(&set.join(", "));
        }
    }
    let prep = |sql: String| async move {
        client
            .prepare_typed(&sql, &[Type::TEXT_ARRAY])
            .await
            .map_err(Error::sql(format!("preparing {sql:.300}")))
    };
    let delete = if pk.is_empty() {
        None
    } else {
        let matches: Vec<String> = pk
            .iter()
            .map(|(c, eq)| format!("t.{c} {eq} (s.r).{c}"))
            .collect();
        Some(
            prep(format!(
                "DELETE FROM {table} AS t USING {rows} WHERE {}",
                matches.join(" AND ")
            ))
            .await?,
        )
    };
    Ok(TableStatements {
        write: prep(write).await?,
        delete,
    })
}
