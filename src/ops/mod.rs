//! Operating tashkent: everything around the proxy that starts, stops,
//! checks and rebuilds a cluster.
//!
//! - [`pg`]: the PostgreSQL harness (binaries, initdb, start/stop/kill);
//! - [`cluster`]: a whole local cluster (`tashkent up`, the bench, tests);
//! - [`checkpoint`], [`recover`]: consistent dumps and rebuilding a replica;
//! - [`verify`]: are the replicas identical?

pub mod checkpoint;
pub mod cluster;
pub mod pg;
pub mod recover;
pub mod verify;
