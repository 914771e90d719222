//! tashkent-tpcb: AllUpdates, TPC-B and TPC-C drivers and their reports.
//!
//! `tashkent bench` uses this crate to compare standalone PostgreSQL, Base
//! replication and Tashkent-MW side by side (ARCHITECTURE.md, "Measuring"):
//!
//! 1. [`load`] creates and fills a workload's tables with plain SQL through
//!    one connection (so it works through the middleware too);
//! 2. [`run`] drives the workload from concurrent clients spread over one
//!    or more servers and returns [`RunStats`] (throughput, latency
//!    percentiles, aborts);
//! 3. a [`Report`] collects the results and renders them as a text table,
//!    JSON and one SVG plot per workload; the recovery-time experiment's
//!    [`RecoveryReport`] renders through the same writers.
//!
//! [`tpcb_invariant`] checks TPC-B's consistency condition after a run.
//! TPC-C has a loader, driver and checks of its own in [`tpcc`], and
//! reports through the same [`Report`].

mod driver;
mod error;
mod report;
mod stats;
pub mod tpcc;
mod workload;

pub use driver::{
    bar_callback, progress_bar, progress_bar_for, run, Phase, Progress, ProgressFn, RunConfig,
};
pub use error::{Error, Result};
pub use report::{write_files, write_table, RecoveryReport, RecoveryRow, Report, ResultRow};
pub use stats::{percentile_sorted, LatencySummary, RunStats};
pub use workload::{
    load, load_rows, pgbench_script, tpcb_invariant, Workload, LOAD_BATCH, ROWS_PER_SCALE,
    TELLERS_PER_BRANCH,
};
