//! The server settings the harness writes into `tashkent.conf`.
//!
//! The file is included from `postgresql.conf`, so a server started by hand
//! with `pg_ctl` gets the same settings as one started by the harness.

use std::fmt::Write as _;
use std::path::Path;

/// How a server makes its own commits durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A Tashkent-MW replica: durability lives in the certifier's log, so
    /// the database runs with `fsync`, `synchronous_commit` and
    /// `full_page_writes` off and is rebuilt from a checkpoint plus the log
    /// after a host crash.
    #[default]
    Off,
    /// PostgreSQL's own durability (Base replicas and standalone servers):
    /// every commit pays its own fsync.
    On,
    /// A Tashkent-API replica: `fsync` and `full_page_writes` on, so the
    /// data directory survives a host crash, but `synchronous_commit` off:
    /// the ordered commits enter the WAL in version order without waiting
    /// for the disk, and the proxy acknowledges a commit only once one
    /// flush covers it (`proxy::flush`), one flush for a whole group.
    Grouped,
}

impl Durability {
    fn onoff(self) -> &'static str {
        match self {
            Durability::Off => "off",
            Durability::On | Durability::Grouped => "on",
        }
    }

    /// `synchronous_commit`: whether a commit waits for its WAL flush.
    fn synchronous_commit(self) -> &'static str {
        match self {
            Durability::Off | Durability::Grouped => "off",
            Durability::On => "on",
        }
    }
}

/// Renders the settings file for a server on `port` with its Unix socket
/// in `socket_dir`.
///
/// Memory is sized for a small (2-core) machine that runs several servers
/// at once; parallel query is off because it only competes with the other
/// servers for the same cores.
pub(crate) fn render(
    port: u16,
    socket_dir: &Path,
    durability: Durability,
    extra: &[(String, String)],
) -> String {
    let flag = durability.onoff();
    let mut settings: Vec<(&str, String)> = vec![
        ("listen_addresses", quote("127.0.0.1")),
        ("port", port.to_string()),
        // The socket's file name carries the port: servers sharing a
        // directory do not collide.
        (
            "unix_socket_directories",
            quote(&socket_dir.display().to_string()),
        ),
        ("max_connections", "200".into()),
        ("fsync", flag.into()),
        ("synchronous_commit", durability.synchronous_commit().into()),
        ("full_page_writes", flag.into()),
        ("shared_buffers", quote("128MB")),
        ("effective_cache_size", quote("1GB")),
        ("work_mem", quote("4MB")),
        ("maintenance_work_mem", quote("64MB")),
        ("wal_buffers", quote("16MB")),
        ("max_wal_size", quote("1GB")),
        ("min_wal_size", quote("80MB")),
        ("max_worker_processes", "4".into()),
        ("max_parallel_workers", "2".into()),
        ("max_parallel_workers_per_gather", "0".into()),
        ("max_parallel_maintenance_workers", "0".into()),
        ("huge_pages", "off".into()),
        ("logging_collector", "off".into()),
        ("log_line_prefix", quote("%m [%p] ")),
        ("log_min_messages", "warning".into()),
    ];
    for (key, value) in extra {
        settings.retain(|(k, _)| k != key);
        settings.push((key, value.clone()));
    }
    let mut out = String::from("# Written by tashkent's harness at every start; edits are lost.\n");
    for (key, value) in settings {
        let _ = writeln!(out, "{key} = {value}");
    }
    out
}

/// Quotes a value as a postgresql.conf string literal.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(conf: &'a str, key: &str) -> Vec<&'a str> {
        conf.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key} = ")))
            .collect()
    }

    #[test]
    fn durability_off_turns_off_all_three() {
        let conf = render(5555, Path::new("/tmp/x"), Durability::Off, &[]);
        for key in ["fsync", "synchronous_commit", "full_page_writes"] {
            assert_eq!(value(&conf, key), vec!["off"], "{key}");
        }
        assert_eq!(value(&conf, "port"), vec!["5555"]);
    }

    #[test]
    fn durability_on_keeps_all_three() {
        let conf = render(5555, Path::new("/tmp/x"), Durability::On, &[]);
        for key in ["fsync", "synchronous_commit", "full_page_writes"] {
            assert_eq!(value(&conf, key), vec!["on"], "{key}");
        }
    }

    #[test]
    fn durability_grouped_keeps_fsync_but_commits_asynchronously() {
        let conf = render(5555, Path::new("/tmp/x"), Durability::Grouped, &[]);
        assert_eq!(value(&conf, "fsync"), vec!["on"]);
        assert_eq!(value(&conf, "full_page_writes"), vec!["on"]);
        assert_eq!(value(&conf, "synchronous_commit"), vec!["off"]);
    }

    #[test]
    fn extra_settings_replace_defaults() {
        let extra = vec![("shared_buffers".to_string(), "'256MB'".to_string())];
        let conf = render(5555, Path::new("/tmp/x"), Durability::Off, &extra);
        assert_eq!(value(&conf, "shared_buffers"), vec!["'256MB'"]);
    }

    #[test]
    fn quotes_are_escaped() {
        assert_eq!(quote("it's"), "'it''s'");
    }
}
