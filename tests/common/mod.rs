//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tashkent::ops::pg::PgServer;

/// Connects to `dbname` on `server`, driving the connection in the background.
pub async fn connect(server: &PgServer, dbname: &str) -> tokio_postgres::Client {
    connect_str(&server.conninfo(dbname)).await
}

/// Connects with a libpq connection string.
pub async fn connect_str(conninfo: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {conninfo}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A temporary directory the unprivileged server account can traverse.
pub fn shared_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("tashkent-test-")
        .tempdir()
        .expect("creating a temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("opening the temporary directory to the server account");
    dir
}

/// The fields of `/proc/<pid>/stat` after the command name (which may
/// hold spaces and parentheses): the state first, then the parent's pid;
/// None once the process is gone.
pub fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// True while a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match proc_stat(pid) {
        Some(fields) => !matches!(fields.first().map(String::as_str), Some("Z") | Some("X")),
        None => false,
    }
}

/// Waits (up to 5 s) until none of `pids` is alive, and fails otherwise.
///
/// A SIGKILLed process closes its files before it turns into a zombie, so
/// a harness that no longer sees it may still find it exiting for a moment.
pub fn assert_exited(pids: &[i32]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let alive: Vec<i32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
        if alive.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "processes {alive:?} still alive"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Asserts that `dir` no longer exists.
pub fn assert_gone(dir: &Path) {
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

pub mod cluster;
pub mod mount;
pub mod relay;
pub mod watchdog;
