//! `tashkent certifier` runs the certifier service of `tashkent-certifier`.

use tashkent::ops::process::{ChildProcess, Signal};
use tashkent_certifier::CertifierClient;

#[tokio::test(flavor = "multi_thread")]
async fn certifier_subcommand_serves_grpc_and_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let args = certifier_args(dir.path());
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_tashkent"));
    let child = ChildProcess::spawn(exe, "certifier", &args).unwrap();
    let status = async {
        let client = CertifierClient::connect(child.addr().to_string()).await?;
        client.status().await
    }
    .await;
    let exit = tokio::task::block_in_place(|| child.stop_with(Signal::SIGINT));
    let status = status.expect("Status over gRPC");
    assert_eq!(status.latest_version, 0, "a fresh log has no versions");
    let exit = exit.expect("it exits on SIGINT");
    assert!(exit.success(), "{exit}");
}

/// Whoever reads the address line may signal at once: the handlers must be
/// in place by then, or the default action kills the certifier mid-start.
#[test]
fn certifier_stops_cleanly_on_a_signal_sent_as_soon_as_it_listens() {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_tashkent"));
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let args = certifier_args(dir.path());
        let child = ChildProcess::spawn(exe, "certifier", &args).unwrap();
        let exit = child
            .stop_with(Signal::SIGTERM)
            .expect("it exits on SIGTERM");
        assert!(exit.success(), "round {round}: {exit}");
    }
}

/// A single certifier on a free port, its log in `dir`.
fn certifier_args(dir: &std::path::Path) -> Vec<String> {
    vec![
        "certifier".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--wal-dir".into(),
        dir.join("wal").display().to_string(),
    ]
}
