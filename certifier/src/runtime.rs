//! The tokio runtime a serving process (a certifier, a proxy, `tashkent
//! up`) runs on: how many worker threads it gets.
//!
//! By default half the cores, at least one: each part shares its machine
//! with another busy part (a proxy with its PostgreSQL replica, a
//! certifier node with the proxies or other nodes of a local cluster),
//! and a worker more than the part keeps busy costs CPU without adding
//! any: idle workers are woken to steal tasks and hand them back across
//! threads. Measured on two cores (README, "Performance"): a certifier on
//! two workers spent ~50 % more CPU per certification than on one, and
//! through pgbench a single certifier on one worker committed ~15 %
//! more. `TOKIO_WORKER_THREADS`, when set, is the default instead.

use std::io;

use tokio::runtime::{Builder, Runtime};

/// The worker threads `configured` asks for (0: the default, above).
pub fn worker_threads(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    default_workers(cores, std::env::var("TOKIO_WORKER_THREADS").ok().as_deref())
}

fn default_workers(cores: usize, env: Option<&str>) -> usize {
    match env.and_then(|v| v.trim().parse::<usize>().ok()) {
        Some(n) if n > 0 => n,
        _ => (cores / 2).max(1),
    }
}

/// A multi-thread runtime with [`worker_threads`]`(configured)` workers,
/// timers and I/O enabled.
pub fn build(configured: usize) -> io::Result<Runtime> {
    Builder::new_multi_thread()
        .worker_threads(worker_threads(configured))
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_the_cores_by_default_unless_configured_or_set_in_the_environment() {
        assert_eq!(default_workers(1, None), 1);
        assert_eq!(default_workers(2, None), 1);
        assert_eq!(default_workers(16, None), 8);
        assert_eq!(default_workers(2, Some("3")), 3);
        assert_eq!(default_workers(8, Some("0")), 4, "tokio refuses 0");
        assert_eq!(default_workers(8, Some("many")), 4);
        assert_eq!(worker_threads(3), 3);
        assert!(worker_threads(0) >= 1);
        assert_eq!(build(1).unwrap().metrics().num_workers(), 1);
    }
}
