//! Operating tashkent, as its users run it: the PostgreSQL harness, the
//! `tashkent` commands (up, certifier, bench) as real processes, and
//! recovery from crashes under load.
//!
//! - `harness`: starting, stopping and killing real PostgreSQL servers;
//! - `up`: `tashkent up` as a newcomer runs it;
//! - `observe`: metrics, `tashkent status` and what `up` prints;
//! - `roles`: `tashkent admin` roles and SCRAM logins through a proxy;
//! - `certifier_cli`: `tashkent certifier`;
//! - `certifier_tls`: TLS between the proxies and the certifier;
//! - `certifier_failover`: the replicated certifier's leader SIGKILLed
//!   under TPC-B load loses nothing; a retry keeps its version;
//! - `certifier_partition`: the replicated certifier's leader cut off
//!   from the others stops committing; the others carry on; it rejoins;
//! - `certifier_stalled_disk`: the replicated certifier's leader on a
//!   disk that hangs (a frozen file system) leaves the group to the others;
//! - `certifier_raft`: a replicated certifier (3 node processes) serving
//!   the proxies, `tashkent status` per node;
//! - `disk_full`: the certifier's log disk fills up (53100, status);
//! - `recovery`: kill -9 of every part, checkpoints and rebuilds (I6);
//! - `grouped`: Tashkent-API (`database-grouped`): kill -9 and a simulated
//!   host crash of a replica lose nothing acknowledged;
//! - `bench`: `tashkent bench` writes every figure it promises;
//! - `tpcc`: TPC-C through two proxies keeps its consistency conditions
//!   and converges; `tashkent bench --workloads tpcc`.

#[path = "../common/mod.rs"]
mod common;

mod bench;
mod certifier_cli;
mod certifier_disk_full;
mod certifier_failover;
mod certifier_partition;
mod certifier_raft;
mod certifier_stalled_disk;
mod certifier_tls;
mod disk_full;
mod grouped;
mod harness;
mod observe;
mod recovery;
mod roles;
mod tpcc;
mod up;
