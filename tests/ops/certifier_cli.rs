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

/// A writeset of transaction `id` updating row `key` of table `t`.
fn writeset(id: &str, key: &str) -> tashkent_certifier::Writeset {
    use tashkent_certifier::{writeset::item, Item, Op, WRITESET_FORMAT_VERSION};
    tashkent_certifier::Writeset {
        format_version: WRITESET_FORMAT_VERSION,
        txn_id: bytes::Bytes::copy_from_slice(id.as_bytes()),
        origin: 1,
        items: vec![Item {
            row: bytes::Bytes::from(format!("row {key}")),
            ..item("t", Op::Update, key.as_bytes().to_vec())
        }],
        ..tashkent_certifier::Writeset::default()
    }
}

fn committed(o: tashkent_certifier::Outcome) -> u64 {
    match o {
        tashkent_certifier::Outcome::Committed { version } => version,
        other => panic!("not committed: {other:?}"),
    }
}

/// `tashkent certifier seed` turns a stopped single certifier's log into
/// node 1's directory; started with `--node-id 1 --peers ...` beside two
/// empty nodes, the group goes on at the next version. A second seed, or
/// one without the group, is refused with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn certifier_seed_turns_a_single_log_into_a_node() {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_tashkent"));
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let single = ChildProcess::spawn(exe, "certifier", &certifier_args(dirs[0].path())).unwrap();
    let client = CertifierClient::connect(single.addr().to_string())
        .await
        .unwrap();
    for i in 1..=3 {
        let o = client.certify(writeset(&format!("t{i}"), &format!("k{i}")));
        assert_eq!(committed(o.await.unwrap()), i);
    }
    drop(client);
    let exit = tokio::task::block_in_place(|| single.stop_with(Signal::SIGINT)).unwrap();
    assert!(exit.success(), "{exit}");

    // Ports below the ephemeral range: a node dialing one not bound yet
    // cannot take it for its own end of the connection.
    let addrs: Vec<String> = (0..3)
        .map(|_| {
            format!(
                "127.0.0.1:{}",
                tashkent::ops::process::free_loopback_port().unwrap()
            )
        })
        .collect();
    let peers = tashkent_certifier::config::format_peers(&addrs);
    let node_args = |i: usize| -> Vec<String> {
        let mut a = certifier_args(dirs[i].path());
        a[2] = addrs[i].clone();
        a.extend([
            "--node-id".into(),
            (i + 1).to_string(),
            "--peers".into(),
            peers.clone(),
        ]);
        a
    };
    let seed = |args: &[String]| {
        let mut a = vec!["certifier".to_string(), "seed".to_string()];
        a.extend(args[1..].iter().cloned());
        crate::common::cluster::tashkent(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (ok, out) = seed(&certifier_args(dirs[0].path()));
    assert!(!ok && out.contains("--peers"), "{out}");
    let (ok, out) = seed(&node_args(1));
    assert!(!ok && out.contains("smallest id"), "{out}");
    let mut elsewhere = node_args(0);
    elsewhere[4] = dirs[1].path().join("none").display().to_string();
    let (ok, out) = seed(&elsewhere);
    assert!(!ok && out.contains("holds no certifier log"), "{out}");
    let (ok, out) = seed(&node_args(0));
    assert!(ok && out.contains("versions 1 to 3"), "{out}");
    let (ok, out) = seed(&node_args(0));
    assert!(!ok && out.contains("holds raft state already"), "{out}");

    let nodes: Vec<_> = (0..3)
        .rev()
        .map(|i| ChildProcess::spawn(exe, &format!("node {}", i + 1), &node_args(i)).unwrap())
        .collect();
    let client = CertifierClient::connect(addrs.join(",")).await.unwrap();
    let next = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        client.certify(writeset("t4", "k4")),
    )
    .await
    .expect("the group answers");
    assert_eq!(committed(next.unwrap()), 4);
    let retried = client.certify(writeset("t2", "k2")).await.unwrap();
    assert_eq!(committed(retried), 2, "the single certifier's answer");
    drop(client);
    for node in nodes {
        let exit = tokio::task::block_in_place(|| node.stop_with(Signal::SIGTERM)).unwrap();
        assert!(exit.success(), "{exit}");
    }
}
