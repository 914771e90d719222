//! tashkent: replication middleware that turns N unmodified PostgreSQL
//! servers into one update-anywhere database, with durability owned by the
//! middleware (Tashkent-MW). This crate holds the replica proxy, the
//! local-cluster orchestration and the CLI; the log lives in `tashkent-wal`,
//! certification in `tashkent-certifier`, workload drivers in `tashkent-tpcb`.

pub mod bench;
pub mod capture;
pub mod checkpoint;
pub mod cluster;
pub mod error;
pub mod pg;
pub mod proxy;
pub mod recover;
pub mod recovery_bench;
pub mod soak_bench;
pub mod verify;
pub mod wire;

pub use error::{Error, Result};
