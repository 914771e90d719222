//! TPC-C's part of the report: per measured setup, tpmC and Barista's
//! table of the five transaction types.

use std::fmt::Write as _;

use super::write_table;
use super::ResultRow;
use crate::tpcc::TpccStats;

/// The per-type table's columns.
pub(crate) const HEADER: [&str; 7] = [
    "transaction",
    "share %",
    "mean ms",
    "p90 ms",
    "count",
    "rollbacks",
    "40001 retries",
];

/// Appends, for `row`, a title line with tpmC and the per-type table.
pub(crate) fn write_setup(out: &mut String, row: &ResultRow, tpcc: &TpccStats) {
    let _ = write!(
        out,
        "\n{} ×{}: {:.1} tpmC",
        row.system, row.replicas, tpcc.tpmc
    );
    if tpcc.load_s > 0.0 {
        let _ = write!(out, " (loaded in {:.1} s)", tpcc.load_s);
    }
    out.push('\n');
    let cells: Vec<[String; 7]> = tpcc
        .transactions
        .iter()
        .map(|t| {
            [
                t.kind.title().to_owned(),
                format!("{:.2}", t.share * 100.0),
                format!("{:.3}", t.mean_ms),
                format!("{:.3}", t.p90_ms),
                t.count.to_string(),
                t.rollbacks.to_string(),
                t.retries.to_string(),
            ]
        })
        .collect();
    write_table(out, &HEADER, &cells, true);
}
