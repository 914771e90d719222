//! `tashkent verify`: an online check that every replica holds the same
//! contents, in the spirit of pt-table-checksum.
//!
//! Each replicated table is checked in chunks of its primary-key order;
//! each chunk at one version on every replica:
//!
//! 1. **Freeze** every replica at a common version `m` (the newest any of
//!    them has applied): a session of verify's own inserts `m + 1` into the
//!    replica's applied-version log (`tashkent.applied`, whose primary key
//!    makes the commit of version `m + 1` there wait for that session), and
//!    waits until the replica has applied `m`. A replica already past `m`
//!    makes it pick a newer `m`.
//! 2. **Snapshot** every replica (REPEATABLE READ; its applied version must
//!    read `m`), then **thaw** (the inserts are rolled back, never
//!    committed: a verify that dies thaws too). The replicas stop for the
//!    milliseconds this takes, not for the checksums.
//! 3. **Checksum** the chunk in each snapshot: row count and the md5 of the
//!    md5s of its rows' text (rendered under fixed settings), in key order.
//!    The chunk's key range comes from the first replica.
//!
//! A chunk whose checksums differ is reported with its key range; a table
//! missing somewhere, or with another primary key, is reported by name.
//! Verify talks to the replicas' PostgreSQL directly (as the superuser the
//! proxies use); proxies name their replica (`SHOW tashkent.replica`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::ops::pg::connect;
use crate::proxy::capture::apply::literal;

/// Rows per chunk by default.
pub const DEFAULT_CHUNK_ROWS: u64 = 50_000;

/// Settings rows are rendered under (the same as capture's).
const CANONICAL: &str = "SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
     SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET bytea_output = 'hex'; \
     SET application_name = 'tashkent-verify'";

pub use super::targets::Target;

#[derive(Debug, Clone)]
pub struct Options {
    pub chunk_rows: u64,
    /// How long a replica may take to reach a chunk's version.
    pub catch_up: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            chunk_rows: DEFAULT_CHUNK_ROWS,
            catch_up: Duration::from_secs(60),
        }
    }
}

/// What verify found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub replicas: Vec<String>,
    /// Per table (as the first replica names it): rows and the checksum of
    /// its chunk checksums, on the first replica.
    pub tables: BTreeMap<String, (i64, String)>,
    /// Everything that differs, one line each.
    pub differences: Vec<String>,
    /// Chunks checked, and the versions they were checked at.
    pub chunks: u64,
    pub versions: Option<(u64, u64)>,
    pub seconds: f64,
}

impl Report {
    pub fn identical(&self) -> bool {
        self.differences.is_empty()
    }

    /// The one-line verdict.
    pub fn verdict(&self) -> String {
        let rows: i64 = self.tables.values().map(|(n, _)| n).sum();
        let at = match self.versions {
            Some((a, b)) if a == b => format!("at version {a}"),
            Some((a, b)) => format!("at versions {a}..={b}"),
            None => "(no tables)".into(),
        };
        if self.identical() {
            format!(
                "verify: {} identical: {} tables, {rows} rows, {} chunks {at}, {:.1} s",
                self.replicas.join(", "),
                self.tables.len(),
                self.chunks,
                self.seconds
            )
        } else {
            format!(
                "verify: replicas DIFFER in {} place(s): {}",
                self.differences.len(),
                self.differences.join("; ")
            )
        }
    }
}

/// One replica's two sessions: one freezes, one reads.
struct Session {
    name: String,
    freezer: Client,
    reader: Client,
}

/// A replicated table as the first replica has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Table {
    name: String,
    /// Primary-key columns (quoted) with their types; empty without one.
    key: Vec<(String, String)>,
}

/// Checks `targets` (one alone is trivially identical, but still read
/// through); `Ok` also when they differ (see [`Report::identical`]).
pub async fn verify(targets: &[Target], opts: &Options) -> Result<Report> {
    let started = Instant::now();
    if targets.is_empty() {
        return Err(Error::Config("verify needs the replicas to check".into()));
    }
    let mut sessions = Vec::new();
    for t in targets {
        let freezer = connect(&t.conninfo).await?;
        let reader = connect(&t.conninfo).await?;
        reader
            .batch_execute(CANONICAL)
            .await
            .map_err(Error::sql(format!("preparing the session on {}", t.name)))?;
        sessions.push(Session {
            name: t.name.clone(),
            freezer,
            reader,
        });
    }
    let mut report = Report {
        replicas: targets.iter().map(|t| t.name.clone()).collect(),
        ..Report::default()
    };
    let mut per_replica = Vec::new();
    for s in &sessions {
        per_replica.push(tables(&s.reader, &s.name).await?);
    }
    for (i, tables) in per_replica.iter().enumerate().skip(1) {
        for t in &per_replica[0] {
            match tables.iter().find(|o| o.name == t.name) {
                None => report.differences.push(format!(
                    "table {} is missing on {}",
                    t.name, sessions[i].name
                )),
                Some(o) if o.key != t.key => report.differences.push(format!(
                    "table {} has another primary key on {}",
                    t.name, sessions[i].name
                )),
                Some(_) => {}
            }
        }
        for o in tables {
            if !per_replica[0].iter().any(|t| t.name == o.name) {
                report.differences.push(format!(
                    "table {} is missing on {}",
                    o.name, sessions[0].name
                ));
            }
        }
    }
    for table in &per_replica[0] {
        if !per_replica.iter().all(|ts| ts.contains(table)) {
            continue;
        }
        check_table(&sessions, table, opts, &mut report).await?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn tables(c: &Client, name: &str) -> Result<Vec<Table>> {
    let rows = c
        .query(
            "SELECT tashkent.table_name(c.oid), \
                    coalesce((SELECT array_agg(quote_ident(a.attname) ORDER BY k.ord) \
                              FROM pg_index i \
                              CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                              JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
                              WHERE i.indrelid = c.oid AND i.indisprimary), '{}'), \
                    coalesce((SELECT array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY k.ord) \
                              FROM pg_index i \
                              CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                              JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
                              WHERE i.indrelid = c.oid AND i.indisprimary), '{}') \
             FROM pg_class c WHERE tashkent.is_replicated(c.oid) ORDER BY 1",
            &[],
        )
        .await
        .map_err(Error::sql(format!("listing the replicated tables of {name}")))?;
    Ok(rows
        .iter()
        .map(|r| {
            let cols: Vec<String> = r.get(1);
            let types: Vec<String> = r.get(2);
            Table {
                name: r.get(0),
                key: cols.into_iter().zip(types).collect(),
            }
        })
        .collect())
}

/// The applied version of a replica.
async fn applied(c: &Client, name: &str) -> Result<u64> {
    crate::proxy::capture::applied_version(c)
        .await
        .map_err(|e| match e {
            Error::Sql { source, .. } => Error::Sql {
                context: format!("reading the applied version of {name}"),
                source,
            },
            e => e,
        })
}

/// Freezes every replica at one version, snapshots each, and thaws;
/// returns the version. The readers are left in their snapshots.
///
/// A replica catching up commits several versions in one transaction: if
/// that batch holds the frozen one it cannot reach the version verify
/// waits for; so an attempt gives up after [`ATTEMPT`], thaws and tries a
/// newer version, until `opts.catch_up` has passed.
async fn snapshot_all(sessions: &[Session], opts: &Options) -> Result<u64> {
    let deadline = Instant::now() + opts.catch_up;
    loop {
        match freeze_and_snapshot(sessions).await? {
            Some(m) => return Ok(m),
            None if Instant::now() > deadline => {
                return Err(Error::Config(format!(
                    "the replicas did not meet at one version within {:?}",
                    opts.catch_up
                )))
            }
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// How long one attempt waits for the replicas to reach its version.
const ATTEMPT: Duration = Duration::from_secs(2);

/// One attempt of [`snapshot_all`]: `None` to try again.
async fn freeze_and_snapshot(sessions: &[Session]) -> Result<Option<u64>> {
    let mut m = 0;
    for s in sessions {
        m = m.max(applied(&s.reader, &s.name).await?);
    }
    for (i, s) in sessions.iter().enumerate() {
        s.freezer
            .batch_execute("BEGIN")
            .await
            .map_err(Error::sql("opening the freezing transaction"))?;
        let blocked = s
            .freezer
            .execute(
                "INSERT INTO tashkent.applied (version) VALUES ($1)",
                &[&((m + 1) as i64)],
            )
            .await;
        if let Err(e) = blocked {
            thaw(&sessions[..=i]).await;
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                // Past `m` already.
                return Ok(None);
            }
            return Err(Error::sql(format!("freezing {}", s.name))(e));
        }
    }
    let until = Instant::now() + ATTEMPT;
    let mut met = true;
    'wait: for s in sessions {
        loop {
            let v = applied(&s.reader, &s.name).await?;
            if v == m {
                break;
            }
            if Instant::now() > until {
                met = false;
                break 'wait;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    if !met {
        thaw(sessions).await;
        return Ok(None);
    }
    let mut opened = 0;
    let snapshots = async {
        for s in sessions {
            s.reader
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(Error::sql("opening the snapshot"))?;
            opened += 1;
            let v = applied(&s.reader, &s.name).await?;
            if v != m {
                return Err(Error::Config(format!(
                    "{}'s snapshot is at version {v}, not {m}",
                    s.name
                )));
            }
        }
        Ok(())
    }
    .await;
    thaw(sessions).await;
    if let Err(e) = snapshots {
        for s in &sessions[..opened] {
            let _ = s.reader.batch_execute("ROLLBACK").await;
        }
        return Err(e);
    }
    Ok(Some(m))
}

async fn thaw(sessions: &[Session]) {
    for s in sessions {
        let _ = s.freezer.batch_execute("ROLLBACK").await;
    }
}

async fn check_table(
    sessions: &[Session],
    table: &Table,
    opts: &Options,
    report: &mut Report,
) -> Result<()> {
    let order = if table.key.is_empty() {
        "t::text".to_string()
    } else {
        table
            .key
            .iter()
            .map(|(c, _)| format!("t.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let key_row = format!("ROW({order})");
    let bound = |from: usize| {
        let params: Vec<String> = table
            .key
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| format!("${}::text::{ty}", from + i))
            .collect();
        format!("ROW({})", params.join(", "))
    };
    let n = table.key.len();
    // Chunk i covers keys in (lo, hi]; no lo for the first, no hi for the last.
    let mut lo: Option<Vec<String>> = None;
    let (mut rows, mut sums) = (0i64, String::new());
    loop {
        let m = snapshot_all(sessions, opts).await?;
        report.versions = Some(match report.versions {
            None => (m, m),
            Some((a, b)) => (a.min(m), b.max(m)),
        });
        let result =
            async {
                let mut lower = String::new();
                let mut params: Vec<String> = Vec::new();
                if let Some(lo) = &lo {
                    lower = format!("WHERE {key_row} > {}", bound(1));
                    params.extend(lo.iter().cloned());
                }
                // The chunk's last key, from the first replica (none: the
                // rest of the table is this chunk).
                let hi: Option<Vec<String>> = if table.key.is_empty() {
                    None
                } else {
                    let cols: Vec<String> = table
                        .key
                        .iter()
                        .map(|(c, _)| format!("t.{c}::text"))
                        .collect();
                    let sql = format!(
                        "SELECT {} FROM {} t {lower} ORDER BY {order} OFFSET {} LIMIT 1",
                        cols.join(", "),
                        table.name,
                        opts.chunk_rows.saturating_sub(1)
                    );
                    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                        params.iter().map(|p| p as _).collect();
                    let row = sessions[0]
                        .reader
                        .query_opt(&sql, &refs)
                        .await
                        .map_err(Error::sql(format!("finding a chunk of {}", table.name)))?;
                    row.map(|r| (0..n).map(|i| r.get::<_, String>(i)).collect())
                };
                let mut filter = lower.clone();
                let mut all = params.clone();
                if let Some(hi) = &hi {
                    let upper = format!("{key_row} <= {}", bound(params.len() + 1));
                    filter = if filter.is_empty() {
                        format!("WHERE {upper}")
                    } else {
                        format!("{filter} AND {upper}")
                    };
                    all.extend(hi.iter().cloned());
                }
                let sql = format!(
                "SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY {order})), '') \
                 FROM {} t {filter}",
                table.name
            );
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    all.iter().map(|p| p as _).collect();
                // Every replica's checksum at once.
                let sums =
                    futures::future::try_join_all(sessions.iter().map(|s| {
                        let (sql, refs) = (&sql, &refs);
                        async move {
                            let r = s.reader.query_one(sql, refs).await.map_err(Error::sql(
                                format!("checksumming {} on {}", table.name, s.name),
                            ))?;
                            Ok::<_, Error>((r.get::<_, i64>(0), r.get::<_, String>(1)))
                        }
                    }))
                    .await?;
                Ok::<_, Error>((hi, sums))
            }
            .await;
        for s in sessions {
            let _ = s.reader.batch_execute("COMMIT").await;
        }
        let (hi, chunk) = result?;
        report.chunks += 1;
        rows += chunk[0].0;
        sums.push_str(&chunk[0].1);
        if chunk.iter().any(|c| c != &chunk[0]) {
            let range = describe_range(table, lo.as_deref(), hi.as_deref());
            let detail: Vec<String> = sessions
                .iter()
                .zip(&chunk)
                .map(|(s, (n, sum))| format!("{} has {n} rows (md5 {:.8})", s.name, sum))
                .collect();
            report.differences.push(format!(
                "table {} differs in {range}: {}",
                table.name,
                detail.join(", ")
            ));
        }
        match hi {
            Some(hi) => lo = Some(hi),
            None => break,
        }
    }
    // The table's checksum: a CRC of its chunks' md5s, to compare runs.
    report.tables.insert(
        table.name.clone(),
        (rows, format!("{:08x}", crc32fast::hash(sums.as_bytes()))),
    );
    Ok(())
}

fn describe_range(table: &Table, lo: Option<&[String]>, hi: Option<&[String]>) -> String {
    if table.key.is_empty() {
        return "the whole table (it has no primary key)".into();
    }
    let cols: Vec<&str> = table.key.iter().map(|(c, _)| c.as_str()).collect();
    let show = |k: Option<&[String]>| {
        k.map_or("…".to_string(), |k| {
            k.iter().map(|v| literal(v)).collect::<Vec<_>>().join(", ")
        })
    };
    format!("keys ({}) in ({}, {}]", cols.join(", "), show(lo), show(hi))
}
