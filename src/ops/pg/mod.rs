//! A harness for real PostgreSQL servers.
//!
//! `tashkent up`, `tashkent bench` and the tests all run real PostgreSQL
//! processes through this module: it finds the installed binaries, runs
//! `initdb` into a fresh directory, writes the durability and memory settings
//! of ARCHITECTURE.md ("Modes"), starts the postmaster as a child in its own process group,
//! waits until it accepts connections, stops it cleanly or crashes it with
//! SIGKILL, and restarts it on the same data directory. When the caller is
//! root the server runs as an unprivileged account, since PostgreSQL refuses
//! to run as root.

mod binaries;
mod client;
mod process;
mod server;
mod settings;

pub use binaries::{PgBinaries, SearchPath};
pub use client::connect;
pub use process::{server_processes, RunAs, ServerIdentity};
pub use server::{PgConfig, PgServer};
pub use settings::Durability;
