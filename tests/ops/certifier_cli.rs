//! `tashkent certifier` runs the certifier service of `tashkent-certifier`.

use tashkent::ops::process::{ChildProcess, Signal};
use tashkent_certifier::CertifierClient;

#[tokio::test(flavor = "multi_thread")]
async fn certifier_subcommand_serves_grpc_and_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = vec![
        "certifier".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--wal-dir".into(),
        dir.path().join("wal").display().to_string(),
    ];
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
