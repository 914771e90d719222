//! The PostgreSQL harness against real servers.

use crate::common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use common::{assert_gone, connect};
use tashkent::ops::pg::{
    server_processes, Durability, PgBinaries, PgConfig, PgServer, ServerIdentity,
};

fn start(durability: Durability) -> PgServer {
    PgServer::start(PgConfig {
        durability,
        ..PgConfig::default()
    })
    .expect("starting PostgreSQL")
}

async fn show(client: &tokio_postgres::Client, setting: &str) -> String {
    client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_at_once_each_run_sql() {
    let a = start(Durability::Off);
    let b = start(Durability::Off);
    assert_ne!(a.port(), b.port());
    let ca = connect(&a, "postgres").await;
    let cb = connect(&b, "postgres").await;
    ca.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    cb.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (40)")
        .await
        .unwrap();
    assert_eq!(sum_of_t(&ca).await, 3);
    assert_eq!(sum_of_t(&cb).await, 40);
    for setting in ["fsync", "synchronous_commit", "full_page_writes"] {
        assert_eq!(show(&ca, setting).await, "off", "{setting}");
    }
}

async fn sum_of_t(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT sum(x)::int FROM t", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn fsync_on_commit_survives_sigkill_and_restart() {
    let mut server = start(Durability::On);
    let port = server.port();
    {
        let client = connect(&server, "postgres").await;
        for setting in ["fsync", "synchronous_commit", "full_page_writes"] {
            assert_eq!(show(&client, setting).await, "on", "{setting}");
        }
        client
            .batch_execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
            .await
            .unwrap();
        client
            .execute("INSERT INTO kept VALUES (1, 'acknowledged')", &[])
            .await
            .unwrap();
    }
    let before = server.processes();
    assert!(before.len() > 1, "postmaster and its workers: {before:?}");
    assert!(before.contains(&server.pid().unwrap()));
    server.kill().unwrap();
    assert!(server.processes().is_empty());
    common::assert_exited(&before);

    server.start_postmaster().unwrap();
    assert_eq!(server.port(), port, "a restart keeps the port");
    let client = connect(&server, "postgres").await;
    let note: String = client
        .query_one("SELECT note FROM kept WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(note, "acknowledged");
}

#[tokio::test(flavor = "multi_thread")]
async fn clean_stop_and_restart_keep_data() {
    let mut server = start(Durability::Off);
    connect(&server, "postgres")
        .await
        .batch_execute("CREATE TABLE t AS SELECT 7 AS x")
        .await
        .unwrap();
    server.restart().unwrap();
    let x: i32 = connect(&server, "postgres")
        .await
        .query_one("SELECT x FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 7);
    server.stop().unwrap();
    assert!(!server.is_running());
    assert!(server.processes().is_empty());
    assert!(
        !server.data_dir().join("postmaster.pid").exists(),
        "a clean stop removes postmaster.pid"
    );
}

/// What a test needs to check, after a server is gone, that it left
/// nothing behind. The hard link keeps the log's inode from being reused by
/// another test's server while this one is checked.
struct Witness {
    identity: ServerIdentity,
    pids: Vec<i32>,
    base: PathBuf,
    _log_link: tempfile::TempDir,
}

impl Witness {
    fn of(server: &PgServer) -> Witness {
        let link_dir = tempfile::tempdir().unwrap();
        std::fs::hard_link(server.log_path(), link_dir.path().join("log")).unwrap();
        let pids = server.processes();
        assert!(pids.len() > 1, "postmaster and its workers: {pids:?}");
        Witness {
            identity: server.identity().unwrap(),
            pids,
            base: server.base_dir().to_path_buf(),
            _log_link: link_dir,
        }
    }

    fn assert_nothing_left(&self) {
        assert_eq!(server_processes(self.identity), Vec::<i32>::new());
        common::assert_exited(&self.pids);
        assert_gone(&self.base);
    }
}

#[test]
fn drop_leaves_no_process_and_no_directory() {
    let witness = {
        let server = start(Durability::Off);
        Witness::of(&server)
    };
    witness.assert_nothing_left();
}

#[tokio::test(flavor = "multi_thread")]
async fn drop_with_open_client_connections_leaves_nothing() {
    let server = start(Durability::Off);
    let client = connect(&server, "postgres").await;
    client
        .batch_execute("BEGIN; CREATE TABLE t (x int)")
        .await
        .unwrap();
    let witness = Witness::of(&server);
    drop(server);
    witness.assert_nothing_left();
}

#[test]
fn panic_leaves_no_process_and_no_directory() {
    let seen: Arc<Mutex<Option<Witness>>> = Arc::default();
    let inner = seen.clone();
    let outcome = std::panic::catch_unwind(move || {
        let server = start(Durability::Off);
        *inner.lock().unwrap() = Some(Witness::of(&server));
        panic!("a test failing while its server runs");
    });
    assert!(outcome.is_err());
    let witness = seen.lock().unwrap().take().expect("server had started");
    witness.assert_nothing_left();
}

#[test]
fn missing_binary_directory_is_a_clear_error() {
    let err = PgBinaries::from_dir(std::path::Path::new("/nonexistent/pg/bin")).unwrap_err();
    assert!(
        err.to_string()
            .contains("`postgres` not found in /nonexistent/pg/bin"),
        "{err}"
    );
}

#[test]
fn dropping_a_server_that_was_killed_is_quiet_and_clean() {
    let base;
    {
        let mut server = start(Durability::Off);
        base = server.base_dir().to_path_buf();
        server.kill().unwrap();
        assert!(!server.is_running());
    }
    assert_gone(&base);
}

/// A server that has served keeps its port across a restart (its proxy
/// and clients know it): while another process holds the port, the
/// restart fails rather than move; once the port is free, it comes back
/// there.
#[test]
fn a_restart_keeps_its_port_or_fails_while_another_process_holds_it() {
    let mut server = start(Durability::Off);
    let port = server.port();
    server.kill().unwrap();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).expect("the freed port");
    let err = server
        .start_postmaster()
        .expect_err("the port is another process's");
    assert!(format!("{err}").contains("Address already in use"), "{err}");
    assert_eq!(server.port(), port);
    drop(squatter);
    server.start_postmaster().unwrap();
    assert_eq!(server.port(), port);
}
