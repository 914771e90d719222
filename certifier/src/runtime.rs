//! The tokio runtime a serving process (a certifier, a proxy, `tashkent
//! up`) runs on: how many worker threads it gets.
//!
//! By default half the cores, at least one: each part shares its machine
//! with another busy part (a proxy with its PostgreSQL replica, a
//! certifier node with the proxies or other nodes of a local cluster),
//! and a worker more than the part keeps busy costs CPU without adding
//! any: idle workers are woken to steal tasks and hand them back across
//! threads. Measured on two cores (docs/performance-history.md): a certifier on
//! two workers spent ~50 % more CPU per certification than on one, and
//! through pgbench a single certifier on one worker committed ~15 %
//! more. `TOKIO_WORKER_THREADS`, when set, is the default instead.
//! `tashkent up`, which hosts the certifier and the proxies in one
//! process, runs on their two counts together.

use std::io;

use tokio::runtime::{Builder, Runtime};

use crate::config::MAX_WORKER_THREADS;

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
        Some(n) if (1..=MAX_WORKER_THREADS).contains(&n) => n,
        _ => (cores / 2).max(1),
    }
}

/// A multi-thread runtime with [`worker_threads`]`(configured)` workers,
/// timers and I/O enabled; more than [`MAX_WORKER_THREADS`] are refused.
pub fn build(configured: usize) -> io::Result<Runtime> {
    if configured > MAX_WORKER_THREADS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("worker_threads must be at most {MAX_WORKER_THREADS}, got {configured}"),
        ));
    }
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
        assert_eq!(default_workers(8, Some("100000")), 4);
        assert_eq!(worker_threads(3), 3);
        assert!(worker_threads(0) >= 1);
        assert_eq!(build(1).unwrap().metrics().num_workers(), 1);
        let many = build(MAX_WORKER_THREADS + 1).unwrap_err();
        assert!(many.to_string().contains("worker_threads"), "{many}");
    }
}
