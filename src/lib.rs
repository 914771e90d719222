//! tashkent: replica proxy, local-cluster orchestration and the CLI.
pub mod pg;
