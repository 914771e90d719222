//! `tashkent up` as a newcomer runs it: a real process, real signals.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_tashkent");

/// The `up` process; killed if a test fails while it runs.
struct Up {
    child: Child,
    conninfo: String,
}

impl Up {
    fn start(state: &Path) -> Up {
        let mut child = Command::new(BIN)
            .args(["up", "--state-dir"])
            .arg(state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("running tashkent up");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let conninfo = loop {
            let line = match lines.next() {
                Some(Ok(line)) => line,
                other => {
                    let _ = child.kill();
                    panic!("tashkent up ended before printing how to connect: {other:?}");
                }
            };
            if let Some(rest) = line.strip_prefix("connect: psql \"") {
                break rest.trim_end_matches('"').to_string();
            }
        };
        // Keep reading, so the process never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Up { child, conninfo }
    }

    /// Ctrl-C, then waits for a clean exit.
    fn interrupt(mut self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "tashkent up exited with {status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "tashkent up did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
    let text = std::fs::read_to_string(state.join("replica-1/data/postmaster.pid")).unwrap();
    text.lines().next().unwrap().trim().parse().unwrap()
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
    let pid = postmaster_pid(&state);
    up.interrupt();
    common::assert_exited(&[pid]);
    assert!(
        !state.join("replica-1/data/postmaster.pid").exists(),
        "the server was stopped cleanly"
    );

    let up = Up::start(&state);
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
