//! `tashkent up` as a newcomer runs it: a real process, real signals.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::cluster::eventually;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tashkent::ops::process::stop_child;

/// How long replication to the other replicas may take here.
const UP_WAIT: Duration = Duration::from_secs(20);

const BIN: &str = env!("CARGO_BIN_EXE_tashkent");

/// The `up` process; killed if a test fails while it runs.
struct Up {
    child: Child,
    conninfo: String,
    /// Every printed proxy (`connect:`, then `proxy 2:`, …), in order.
    proxies: Vec<String>,
}

impl Up {
    fn start(state: &Path) -> Up {
        Up::start_with(state, &[])
    }

    fn start_with(state: &Path, args: &[&str]) -> Up {
        let mut child = Command::new(BIN)
            .args(["up", "--state-dir"])
            .arg(state)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("running tashkent up");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut proxies = Vec::new();
        loop {
            let line = match lines.next() {
                Some(Ok(line)) => line,
                other => {
                    let _ = child.kill();
                    panic!("tashkent up ended before printing how to connect: {other:?}");
                }
            };
            if let Some(rest) = line.strip_prefix("connect: psql \"") {
                proxies.push(rest.trim_end_matches('"').to_string());
            } else if let Some(rest) = line
                .strip_prefix("proxy ")
                .and_then(|r| r.split_once(": psql \""))
            {
                assert_eq!(rest.0, (proxies.len() + 1).to_string(), "{line}");
                proxies.push(rest.1.trim_end_matches('"').to_string());
            } else if line.starts_with("failover: ") {
                break;
            }
        }
        // Keep reading, so the process never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let conninfo = proxies.first().cloned().expect("a connect: line");
        Up {
            child,
            conninfo,
            proxies,
        }
    }

    /// Ctrl-C, then waits for a clean exit.
    fn interrupt(mut self) {
        let status = stop_child(&mut self.child, Signal::SIGINT, Duration::from_secs(60))
            .expect("tashkent up did not stop within 60 s of SIGINT");
        assert!(status.success(), "tashkent up exited with {status}");
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
            let _ = self.child.wait();
        }
    }
}

fn postmaster_pid(state: &Path) -> i32 {
    replica_pid(state, 1)
}

fn replica_pid(state: &Path, replica: usize) -> i32 {
    let path = state.join(format!("replica-{replica}/data/postmaster.pid"));
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().next().unwrap().trim().parse().unwrap()
}

/// psql's `\conninfo` through `conninfo` with sslmode=require.
fn psql_over_tls(conninfo: &str) -> String {
    let psql = tashkent::ops::pg::PgBinaries::locate()
        .unwrap()
        .tool("psql")
        .unwrap();
    let out = Command::new(psql)
        .args(["-X", "-c", "\\conninfo", "-d"])
        .arg(format!("{conninfo} sslmode=require"))
        .env("PGSSLROOTCERT", "/nonexistent")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn up_serves_sql_stops_cleanly_and_resumes() {
    let dir = common::shared_tempdir();
    let state = dir.path().join("state");

    let up = Up::start(&state);
    let client = common::connect_str(&up.conninfo).await;
    client
        .batch_execute("CREATE TABLE survives (x int); INSERT INTO survives VALUES (42)")
        .await
        .unwrap();
    drop(client);
    // TLS out of the box: psql with sslmode=require, on the certificate
    // up generated in the state directory.
    let cert = state.join("tls/server.crt");
    let first_cert = std::fs::read(&cert).expect("up generated a certificate");
    assert!(psql_over_tls(&up.conninfo).contains("SSL connection (protocol: TLS"));
    let pid = postmaster_pid(&state);
    up.interrupt();
    common::assert_exited(&[pid]);
    assert!(
        !state.join("replica-1/data/postmaster.pid").exists(),
        "the server was stopped cleanly"
    );

    let up = Up::start(&state);
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        first_cert,
        "the certificate is kept across restarts"
    );
    assert!(psql_over_tls(&up.conninfo).contains("SSL connection (protocol: TLS"));
    let client = common::connect_str(&up.conninfo).await;
    let x: i32 = client
        .query_one("SELECT x FROM survives", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 42, "a second `up` resumes the same state");
    drop(client);
    let pid = postmaster_pid(&state);
    up.interrupt();
    common::assert_exited(&[pid]);
}

#[tokio::test(flavor = "multi_thread")]
async fn up_with_two_replicas_serves_sql_through_every_proxy_and_resumes() {
    let dir = common::shared_tempdir();
    let state = dir.path().join("state");
    let count = "SELECT count(*) FROM kv";

    let up = Up::start_with(&state, &["--replicas", "2"]);
    assert_eq!(up.proxies.len(), 2, "{:?}", up.proxies);
    let first = common::connect_str(&up.proxies[0]).await;
    let second = common::connect_str(&up.proxies[1]).await;
    first
        .batch_execute(
            "CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv VALUES (1, 'one')",
        )
        .await
        .unwrap();
    // The table and its row reach the second replica; writes there reach the first.
    eventually(&second, count, 1, UP_WAIT).await;
    second
        .batch_execute("INSERT INTO kv VALUES (2, 'two')")
        .await
        .unwrap();
    eventually(&first, count, 2, UP_WAIT).await;
    drop((first, second));
    let pids = [replica_pid(&state, 1), replica_pid(&state, 2)];
    let proxies = up.proxies.clone();
    up.interrupt();
    common::assert_exited(&pids);
    for i in 1..=2 {
        assert!(
            !state
                .join(format!("replica-{i}/data/postmaster.pid"))
                .exists(),
            "replica {i} was stopped cleanly"
        );
    }

    let up = Up::start_with(&state, &["--replicas", "2"]);
    assert_eq!(
        up.proxies, proxies,
        "a second `up` serves on the same ports"
    );
    for conninfo in &up.proxies {
        let client = common::connect_str(conninfo).await;
        eventually(&client, count, 2, UP_WAIT).await;
    }
    // `tashkent verify` finds the running cluster from its state directory.
    let out = std::process::Command::new(BIN)
        .args(["verify", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("replica 1, replica 2 identical") && text.contains("2 rows"),
        "{text}"
    );
    let pids = [replica_pid(&state, 1), replica_pid(&state, 2)];
    up.interrupt();
    common::assert_exited(&pids);
}

#[test]
fn missing_postgres_names_the_install_command() {
    let dir = common::shared_tempdir();
    let out = Command::new(BIN)
        .args(["up", "--state-dir"])
        .arg(dir.path().join("state"))
        .env("PG_BIN", "/nonexistent/postgresql/bin")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sudo apt-get install -y postgresql"),
        "{stderr}"
    );
    assert!(
        stderr.contains("PG_BIN=/nonexistent/postgresql/bin"),
        "{stderr}"
    );
}

#[test]
fn example_cluster_file_parses() {
    use tashkent::ops::cluster::{ClusterConfig, DurabilityMode};
    use tashkent::ops::config::ConfigFile;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster.example.toml");
    let file = ConfigFile::load(&path).expect("cluster.example.toml parses");
    let cfg = file.cluster;
    let default = ClusterConfig::default();
    assert_eq!(cfg.state_dir, default.state_dir);
    assert_eq!(cfg.replicas, default.replicas);
    assert_eq!(cfg.durability, DurabilityMode::Middleware);
    assert_eq!(cfg.proxy_port, default.proxy_port);
    assert_eq!(cfg.database, default.database);
    assert_eq!(
        cfg.pg_settings,
        vec![
            ("shared_buffers".to_string(), "'256MB'".to_string()),
            ("work_mem".to_string(), "'8MB'".to_string()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn up_honours_the_proxy_and_certifier_sections_of_the_cluster_file() {
    let dir = common::shared_tempdir();
    let state = dir.path().join("state");
    let file = dir.path().join("cluster.toml");
    std::fs::write(
        &file,
        "[cluster]\nreplicas = 1\n[proxy]\nmax_writeset_bytes = 100000\n\
         [certifier]\ntail_cache_bytes = 1048576\n",
    )
    .unwrap();
    let up = Up::start_with(&state, &["--config", file.to_str().unwrap()]);
    assert_eq!(up.proxies.len(), 1);
    let c = common::connect_str(&up.conninfo).await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    // The [proxy] section's cap: a transaction over it is refused.
    let err = c
        .batch_execute("INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g")
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "54000", "{}", db.message());
    assert!(db.message().contains("100000 bytes"), "{}", db.message());
    c.batch_execute("INSERT INTO t VALUES (1, 'small')")
        .await
        .unwrap();
    drop(c);
    let pid = postmaster_pid(&state);
    up.interrupt();
    common::assert_exited(&[pid]);
    // An unknown section is an error, not ignored.
    std::fs::write(&file, "[proxies]\nmax_writeset_bytes = 1\n").unwrap();
    let out = Command::new(BIN)
        .args(["up", "--config", file.to_str().unwrap(), "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("proxies"));
}

/// `up --durability database-grouped` (Tashkent-API): the replicas keep
/// fsync on and commit asynchronously, and writes through both proxies
/// replicate.
#[tokio::test(flavor = "multi_thread")]
async fn up_runs_the_database_grouped_mode() {
    let dir = common::shared_tempdir();
    let state = dir.path().join("state");
    let up = Up::start_with(
        &state,
        &["--replicas", "2", "--durability", "database-grouped"],
    );
    let first = common::connect_str(&up.proxies[0]).await;
    let second = common::connect_str(&up.proxies[1]).await;
    first
        .batch_execute("CREATE TABLE g (k int PRIMARY KEY); INSERT INTO g VALUES (1)")
        .await
        .unwrap();
    eventually(&second, "SELECT count(*) FROM g", 1, UP_WAIT).await;
    second
        .batch_execute("INSERT INTO g VALUES (2)")
        .await
        .unwrap();
    eventually(&first, "SELECT count(*) FROM g", 2, UP_WAIT).await;
    for (name, want) in [("fsync", "on"), ("synchronous_commit", "off")] {
        let v: String = first
            .query_one(&format!("SELECT current_setting('{name}')"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, want, "{name}");
    }
    drop((first, second));
    let pids = [replica_pid(&state, 1), replica_pid(&state, 2)];
    up.interrupt();
    common::assert_exited(&pids);
}
