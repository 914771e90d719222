//! The two workloads, their schemas and loading them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, NoTls};

use crate::error::{redact, Error, Result};

/// AllUpdates rows, and TPC-B accounts, per scale unit.
pub const ROWS_PER_SCALE: u64 = 100_000;
/// TPC-B tellers per branch (one branch per scale unit).
pub const TELLERS_PER_BRANCH: u64 = 10;
/// At most this many rows go into one `INSERT … SELECT generate_series`.
pub const LOAD_BATCH: u64 = 100_000;

/// A benchmark workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Each transaction is one autocommit `UPDATE` of one uniformly random
    /// row of `allupdates`.
    AllUpdates,
    /// pgbench's built-in "TPC-B (sort of)" transaction on pgbench's tables.
    Tpcb,
    /// TPC-C's five transactions in the standard mix; loaded, run and
    /// checked by [`crate::tpcc`], not by [`load`] and [`crate::run`].
    Tpcc,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 3] = [Workload::AllUpdates, Workload::Tpcb, Workload::Tpcc];

    /// The lowercase name used on the command line, in JSON and in file
    /// names (`allupdates`, `tpcb`, `tpcc`).
    pub fn name(self) -> &'static str {
        match self {
            Workload::AllUpdates => "allupdates",
            Workload::Tpcb => "tpcb",
            Workload::Tpcc => "tpcc",
        }
    }

    /// The name shown in tables and plot titles.
    pub fn title(self) -> &'static str {
        match self {
            Workload::AllUpdates => "AllUpdates",
            Workload::Tpcb => "TPC-B",
            Workload::Tpcc => "TPC-C",
        }
    }
}

/// The error for TPC-C where AllUpdates/TPC-B code is asked: its tables,
/// loader and driver are [`crate::tpcc`]'s.
pub(crate) fn tpcc_refused(what: &str) -> Error {
    Error::Config(format!(
        "{what} covers AllUpdates and TPC-B; TPC-C has its own in tashkent_tpcb::tpcc"
    ))
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.title())
    }
}

impl FromStr for Workload {
    type Err = Error;

    fn from_str(s: &str) -> Result<Workload> {
        match s.to_ascii_lowercase().as_str() {
            "allupdates" | "all-updates" | "all_updates" => Ok(Workload::AllUpdates),
            "tpcb" | "tpc-b" | "tpc_b" => Ok(Workload::Tpcb),
            "tpcc" | "tpc-c" | "tpc_c" => Ok(Workload::Tpcc),
            _ => Err(Error::Config(format!(
                "unknown workload {s:?} (expected allupdates, tpcb or tpcc)"
            ))),
        }
    }
}

/// How many rows a workload's tables hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size {
    /// AllUpdates rows or TPC-B accounts.
    pub rows: u64,
    /// TPC-B branches (= scale).
    pub branches: u64,
    /// TPC-B tellers.
    pub tellers: u64,
    /// TPC-B accounts per branch (to derive an account's branch).
    pub rows_per_scale: u64,
}

impl Size {
    pub(crate) fn new(scale: u32, rows_per_scale: u64) -> Result<Size> {
        if scale == 0 {
            return Err(Error::Config("scale must be at least 1".into()));
        }
        if rows_per_scale == 0 {
            return Err(Error::Config(
                "rows per scale unit must be at least 1".into(),
            ));
        }
        let rows = u64::from(scale)
            .checked_mul(rows_per_scale)
            .filter(|r| *r <= i32::MAX as u64)
            .ok_or_else(|| {
                Error::Config(format!(
                    "scale {scale} × {rows_per_scale} rows does not fit the int keys (at most {})",
                    i32::MAX
                ))
            })?;
        Ok(Size {
            rows,
            branches: u64::from(scale),
            tellers: u64::from(scale) * TELLERS_PER_BRANCH,
            rows_per_scale,
        })
    }
}

/// The pgbench script of `workload` on tables loaded for `scale` and
/// `rows_per_scale` (the same transactions as the built-in driver; TPC-B
/// is pgbench's own `tpcb-like`, its key ranges written out so that
/// tables of any size fit).
pub fn pgbench_script(workload: Workload, scale: u32, rows_per_scale: u64) -> Result<String> {
    let size = Size::new(scale, rows_per_scale)?;
    Ok(match workload {
        Workload::AllUpdates => format!(
            "\\set id random(1, {})\n\
             UPDATE allupdates SET val = val + 1 WHERE id = :id;\n",
            size.rows
        ),
        Workload::Tpcb => format!(
            "\\set aid random(1, {})\n\
             \\set bid random(1, {})\n\
             \\set tid random(1, {})\n\
             \\set delta random(-5000, 5000)\n\
             BEGIN;\n\
             UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n\
             SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
             UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;\n\
             UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;\n\
             INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
             VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);\n\
             END;\n",
            size.rows, size.branches, size.tellers
        ),
        Workload::Tpcc => return Err(tpcc_refused("the pgbench script")),
    })
}

/// Connects to `conninfo` (libpq key/value string or URL) without TLS and
/// drives the connection in a background task.
pub(crate) async fn connect(conninfo: &str, context: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .map_err(|e| Error::db(format!("{context}: connecting to {}", redact(conninfo)), e))?;
    tokio::spawn(async move {
        // Errors surface on the client's next request.
        let _ = connection.await;
    });
    Ok(client)
}

/// Creates `workload`'s tables in the database at `conninfo` and fills them
/// for `scale` (100,000 AllUpdates rows, or 1 branch, 10 tellers and
/// 100,000 accounts, per scale unit), dropping any previous tables first.
///
/// Plain SQL through one connection, so it also works through the
/// middleware: every table but `pgbench_history` has a primary key from
/// the start, and rows come from `INSERT … SELECT generate_series` in
/// autocommit statements of at most [`LOAD_BATCH`] rows each.
pub async fn load(conninfo: &str, workload: Workload, scale: u32) -> Result<()> {
    load_rows(conninfo, workload, scale, ROWS_PER_SCALE).await
}

/// [`load`] with another number of AllUpdates rows / TPC-B accounts per
/// scale unit (for tests that want contention); a run on these tables
/// needs the same `rows_per_scale` in its [`crate::RunConfig`].
pub async fn load_rows(
    conninfo: &str,
    workload: Workload,
    scale: u32,
    rows_per_scale: u64,
) -> Result<()> {
    if workload == Workload::Tpcc {
        return Err(tpcc_refused("load"));
    }
    let size = Size::new(scale, rows_per_scale)?;
    let client = connect(conninfo, &format!("loading {workload}")).await?;
    let exec = |sql: String| {
        let client = &client;
        async move {
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| Error::db(format!("loading {workload}: {sql}"), e))
        }
    };
    for sql in schema(workload) {
        exec((*sql).to_owned()).await?;
    }
    match workload {
        Workload::AllUpdates => {
            for (lo, hi) in batches(size.rows) {
                exec(format!(
                    "INSERT INTO allupdates (id, val, filler) \
                     SELECT id, 0, '' FROM generate_series({lo}, {hi}) AS id"
                ))
                .await?;
            }
        }
        Workload::Tpcb => {
            for (lo, hi) in batches(size.branches) {
                exec(format!(
                    "INSERT INTO pgbench_branches (bid, bbalance, filler) \
                     SELECT bid, 0, NULL FROM generate_series({lo}, {hi}) AS bid"
                ))
                .await?;
            }
            for (lo, hi) in batches(size.tellers) {
                exec(format!(
                    "INSERT INTO pgbench_tellers (tid, bid, tbalance, filler) \
                     SELECT tid, (tid - 1) / {TELLERS_PER_BRANCH} + 1, 0, NULL \
                     FROM generate_series({lo}, {hi}) AS tid"
                ))
                .await?;
            }
            for (lo, hi) in batches(size.rows) {
                exec(format!(
                    "INSERT INTO pgbench_accounts (aid, bid, abalance, filler) \
                     SELECT aid, (aid - 1) / {rows_per_scale} + 1, 0, '' \
                     FROM generate_series({lo}, {hi}) AS aid"
                ))
                .await?;
            }
        }
        Workload::Tpcc => {}
    }
    Ok(())
}

/// The DDL of `workload`, in execution order (drops first).
fn schema(workload: Workload) -> &'static [&'static str] {
    match workload {
        Workload::AllUpdates => &[
            "DROP TABLE IF EXISTS allupdates",
            "CREATE TABLE allupdates (id int PRIMARY KEY, val bigint NOT NULL, filler char(84))",
        ],
        // pgbench's tables and column types (pgbench -i, scale < 20000).
        Workload::Tpcb => &[
            "DROP TABLE IF EXISTS pgbench_history",
            "DROP TABLE IF EXISTS pgbench_tellers",
            "DROP TABLE IF EXISTS pgbench_accounts",
            "DROP TABLE IF EXISTS pgbench_branches",
            "CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88))",
            "CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84))",
            "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))",
            "CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22))",
        ],
        // Refused by `load_rows` before it gets here.
        Workload::Tpcc => &[],
    }
}

/// Splits `1..=n` into inclusive ranges of at most [`LOAD_BATCH`] values.
fn batches(n: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..n.div_ceil(LOAD_BATCH)).map(move |i| {
        let lo = i * LOAD_BATCH + 1;
        (lo, (lo + LOAD_BATCH - 1).min(n))
    })
}

/// Checks TPC-B's consistency condition on the database at `conninfo`:
/// sum(abalance) = sum(tbalance) = sum(bbalance) = sum(delta) of the
/// history. The error names the sums that differ and carries all four.
pub async fn tpcb_invariant(conninfo: &str) -> Result<()> {
    let client = connect(conninfo, "checking the TPC-B invariant").await?;
    let sql = "SELECT \
        (SELECT coalesce(sum(abalance), 0)::bigint FROM pgbench_accounts), \
        (SELECT coalesce(sum(tbalance), 0)::bigint FROM pgbench_tellers), \
        (SELECT coalesce(sum(bbalance), 0)::bigint FROM pgbench_branches), \
        (SELECT coalesce(sum(delta), 0)::bigint FROM pgbench_history)";
    let row = client
        .query_one(sql, &[])
        .await
        .map_err(|e| Error::db("checking the TPC-B invariant", e))?;
    let sums = [
        ("sum(abalance)", row.get::<_, i64>(0)),
        ("sum(tbalance)", row.get::<_, i64>(1)),
        ("sum(bbalance)", row.get::<_, i64>(2)),
        ("sum(delta)", row.get::<_, i64>(3)),
    ];
    let mut differ = Vec::new();
    for (i, (a, x)) in sums.iter().enumerate() {
        for (b, y) in &sums[i + 1..] {
            if x != y {
                differ.push(format!("{a} ≠ {b}"));
            }
        }
    }
    if differ.is_empty() {
        Ok(())
    } else {
        Err(Error::Invariant {
            detail: differ.join(", "),
            accounts: sums[0].1,
            tellers: sums[1].1,
            branches: sums[2].1,
            history: sums[3].1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_the_range() {
        assert_eq!(batches(0).count(), 0);
        assert_eq!(batches(1).collect::<Vec<_>>(), vec![(1, 1)]);
        assert_eq!(batches(100_000).collect::<Vec<_>>(), vec![(1, 100_000)]);
        assert_eq!(
            batches(250_000).collect::<Vec<_>>(),
            vec![(1, 100_000), (100_001, 200_000), (200_001, 250_000)]
        );
    }

    #[test]
    fn workload_names_parse_back() {
        for w in Workload::ALL {
            assert_eq!(w.name().parse::<Workload>().unwrap(), w);
            assert_eq!(w.title().parse::<Workload>().unwrap(), w);
        }
        assert!("tpcd".parse::<Workload>().is_err());
        assert!(pgbench_script(Workload::Tpcc, 1, 500).is_err());
    }

    #[test]
    fn sizes() {
        let s = Size::new(3, ROWS_PER_SCALE).unwrap();
        assert_eq!((s.rows, s.branches, s.tellers), (300_000, 3, 30));
        assert!(Size::new(0, 1).is_err());
        assert!(Size::new(1, 0).is_err());
        assert!(Size::new(30_000, ROWS_PER_SCALE).is_err());
    }

    #[test]
    fn pgbench_scripts_draw_keys_from_the_loaded_ranges() {
        let a = pgbench_script(Workload::AllUpdates, 2, 500).unwrap();
        assert!(a.starts_with("\\set id random(1, 1000)\n"), "{a}");
        let t = pgbench_script(Workload::Tpcb, 2, 500).unwrap();
        for want in [
            "random(1, 1000)",
            "random(1, 2)",
            "random(1, 20)",
            "BEGIN;",
            "END;",
        ] {
            assert!(t.contains(want), "{want} in {t}");
        }
        assert!(pgbench_script(Workload::Tpcb, 0, 500).is_err());
    }
}
