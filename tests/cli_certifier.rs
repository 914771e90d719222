//! `tashkent certifier` runs the certifier service of `tashkent-certifier`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tashkent_certifier::CertifierClient;

#[tokio::test(flavor = "multi_thread")]
async fn certifier_subcommand_serves_grpc_and_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tashkent"))
        .args(["certifier", "--listen", "127.0.0.1:0", "--wal-dir"])
        .arg(dir.path().join("wal"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    break addr.trim().to_string();
                }
            }
            other => {
                let _ = child.kill();
                panic!("certifier ended before listening: {other:?}");
            }
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let status = async {
        let client = CertifierClient::connect(&addr).await?;
        client.status().await
    }
    .await;
    kill(pid, Signal::SIGINT).unwrap();
    let exit = child.wait().unwrap();
    let status = status.expect("Status over gRPC");
    assert_eq!(status.latest_version, 0, "a fresh log has no versions");
    assert!(exit.success(), "{exit}");
}
