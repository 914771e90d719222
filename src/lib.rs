//! tashkent: replication middleware that turns N unmodified PostgreSQL
//! servers into one update-anywhere database, with durability owned by the
//! middleware (Tashkent-MW).
//!
//! This crate holds the product and its operating tools; the `tashkent`
//! binary (`src/main.rs`, `src/cli/`) is the command line over them:
//!
//! - [`proxy`]: what clients connect to (the wire protocol, the SQL
//!   classifier, writeset capture, sessions, the ordered committer and
//!   applier);
//! - [`ops`]: running it (the PostgreSQL harness, the state directory, the
//!   cluster file, checkpoints, the local cluster, recovery, verify).
//!
//! The log lives in `tashkent-wal`, certification in `tashkent-certifier`,
//! workload drivers and reports in `tashkent-tpcb`. Arrows point one way:
//! the binary uses `ops`, `ops` uses `proxy`, the proxy never uses `ops`.

pub mod error;
pub mod ops;
pub mod proxy;

pub use error::{Error, Result};
