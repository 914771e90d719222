//! The certifier's gRPC over TLS (`tls_cert`/`tls_key`, `ClientTls`):
//! certification and Subscribe work over it; a plaintext client, a client
//! trusting another certificate and a TLS client of a plaintext server
//! each fail with an error that says why, and the server goes on serving;
//! an unusable certificate fails the start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tashkent_certifier::writeset::item;
use tashkent_certifier::{
    CertifierClient, CertifierConfig, ClientOptions, ClientTls, Op, Outcome, RunningCertifier,
    Writeset, WRITESET_FORMAT_VERSION,
};
use tempfile::TempDir;

mod raft_common;
use raft_common::certificate;

fn config(dir: &TempDir, tls: Option<(PathBuf, PathBuf)>) -> CertifierConfig {
    let (tls_cert, tls_key) = tls.unzip();
    CertifierConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        wal_dir: dir.path().join("wal"),
        wal_segment_bytes: 1 << 20,
        tls_cert,
        tls_key,
        ..CertifierConfig::default()
    }
}

fn trusting(ca: &Path) -> ClientOptions {
    ClientOptions {
        tls: Some(ClientTls::from_ca_file(ca).unwrap()),
        ..ClientOptions::default()
    }
}

fn ws(id: &str) -> Writeset {
    Writeset {
        format_version: WRITESET_FORMAT_VERSION,
        txn_id: Bytes::copy_from_slice(id.as_bytes()),
        origin: 1,
        snapshot: 0,
        items: vec![item("t", Op::Update, id.as_bytes().to_vec())],
        ddl: vec![],
        last_chunk: false,
        spool: None,
        session: 0,
        losses: 0,
    }
}

/// A connection and one call: what a client does first. Bounded, so that
/// a hang fails the test instead of stalling it (the bound is generous:
/// it detects a hang, it does not measure anything).
async fn first_call(addr: &str, opts: ClientOptions) -> Result<u64, String> {
    tokio::time::timeout(Duration::from_secs(60), async {
        let client = CertifierClient::connect_with(addr, opts)
            .await
            .map_err(|e| e.to_string())?;
        let status = client.status().await.map_err(|e| e.to_string())?;
        Ok(status.latest_version)
    })
    .await
    .expect("an answer or an error, not a hang")
}

async fn start(cfg: CertifierConfig) -> RunningCertifier {
    tashkent_certifier::start(cfg).await.unwrap()
}

#[tokio::test]
async fn certify_and_subscribe_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "server", &["localhost", "127.0.0.1"]);
    let running = start(config(&dir, Some((cert.clone(), key)))).await;
    let addr = running.local_addr().to_string();
    let client = CertifierClient::connect_with(&addr, trusting(&cert))
        .await
        .unwrap();
    assert!(matches!(
        client.certify(ws("a")).await.unwrap(),
        Outcome::Committed { version: 1 }
    ));
    // Chunked, over a call of its own.
    assert!(matches!(
        client.certify_chunked(ws("b"), 64).await.unwrap(),
        Outcome::Committed { version: 2 }
    ));
    // A second connection made like the first (the proxy's applier).
    let again = client.connect_again().await.unwrap();
    let mut sub = again.subscribe(0).await.unwrap();
    for v in 1..=2 {
        assert_eq!(sub.next().await.unwrap().unwrap().version, v);
    }
    // https:// says the same; a name the certificate lists verifies too.
    let named = ClientOptions {
        tls: Some(
            ClientTls::from_ca_file(&cert)
                .unwrap()
                .with_server_name("localhost"),
        ),
        ..ClientOptions::default()
    };
    assert_eq!(first_call(&format!("https://{addr}"), named).await, Ok(2));
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn wrong_clients_fail_with_a_reason_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "server", &["localhost", "127.0.0.1"]);
    let (other, _) = certificate(dir.path(), "other", &["localhost", "127.0.0.1"]);
    let running = start(config(&dir, Some((cert.clone(), key)))).await;
    let addr = running.local_addr().to_string();

    // Plaintext against TLS: an error, not a hang.
    let err = first_call(&addr, ClientOptions::default())
        .await
        .unwrap_err();
    println!("plaintext client: {err}");

    // Trusting another certificate: the handshake fails and says so.
    let err = first_call(&addr, trusting(&other)).await.unwrap_err();
    assert!(err.contains("over TLS"), "{err}");
    assert!(err.contains("certificate"), "{err}");
    println!("untrusting client: {err}");

    // A name the certificate does not list.
    let misnamed = ClientOptions {
        tls: Some(
            ClientTls::from_ca_file(&cert)
                .unwrap()
                .with_server_name("certifier.example"),
        ),
        ..ClientOptions::default()
    };
    let err = first_call(&addr, misnamed).await.unwrap_err();
    assert!(err.contains("certificate"), "{err}");

    // The server still serves a client that trusts it.
    assert_eq!(first_call(&addr, trusting(&cert)).await, Ok(0));
    running.shutdown().await.unwrap();

    // TLS against a plaintext server: an error too.
    let plain = start(config(&dir, None)).await;
    let err = first_call(&plain.local_addr().to_string(), trusting(&cert))
        .await
        .unwrap_err();
    assert!(err.contains("over TLS"), "{err}");
    println!("TLS client of a plaintext server: {err}");
    plain.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unusable_certificate_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = certificate(dir.path(), "server", &["localhost"]);
    let (_, other_key) = certificate(dir.path(), "other", &["localhost"]);
    // The key of another certificate.
    let err = tashkent_certifier::start(config(&dir, Some((cert.clone(), other_key))))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.starts_with("TLS:"), "{err}");
    // A missing file, named.
    let missing = dir.path().join("missing.key");
    let err = tashkent_certifier::start(config(&dir, Some((cert, missing))))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("missing.key"), "{err}");
    // Half a pair.
    let half = CertifierConfig {
        tls_key: None,
        ..config(&dir, Some((dir.path().join("c"), dir.path().join("k"))))
    };
    assert!(tashkent_certifier::start(half).await.is_err());
}

/// A raw raft Vote over TLS to `addr`, trusting `ca`, showing `identity`
/// (certificate, key) if given.
async fn vote_over_tls(
    addr: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<(), tonic::Status> {
    raft_call_over_tls(addr, ca, identity, false).await
}

/// A Vote, or with `snapshot_chunk` an InstallSnapshotChunk, to `addr`.
async fn raft_call_over_tls(
    addr: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    snapshot_chunk: bool,
) -> Result<(), tonic::Status> {
    use tashkent_certifier::raft::proto::{raft_client::RaftClient, RaftMessage};
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return Err(tonic::Status::unavailable(format!("{e:?}"))),
    };
    let req: openraft::raft::VoteRequest<u64> =
        openraft::raft::VoteRequest::new(openraft::Vote::new(1, 9), None);
    let msg = RaftMessage {
        data: serde_json::to_vec(&req).unwrap().into(),
        entries: Vec::new(),
    };
    let mut client = RaftClient::new(channel);
    let call = async {
        if snapshot_chunk {
            // Refused before it is read: its content does not matter.
            client.install_snapshot_chunk(msg).await
        } else {
            client.vote(msg).await
        }
    };
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("an answer, not a hang")
        .map(|_| ())
}

/// Three raft nodes over TLS: they show each other their certificate and
/// replicate; a client that shows none, or one their CA did not sign,
/// cannot send them raft messages (a proxy trusted to talk to the
/// certifier cannot vote or append for a node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_messages_need_a_certificate_the_peers_ca_signed() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "node", &["localhost", "127.0.0.1"]);
    let (stranger, stranger_key) = certificate(dir.path(), "other", &["localhost"]);
    let addrs = raft_common::served::ports(3);
    let peers = tashkent_certifier::config::format_peers(&addrs);
    let mut nodes = Vec::new();
    for i in 0..3u64 {
        let d = dir.path().join(format!("node-{}", i + 1));
        std::fs::create_dir_all(&d).unwrap();
        let cfg = CertifierConfig {
            wal_dir: d.join("wal"),
            wal_segment_bytes: 1 << 20,
            node_id: Some(i + 1),
            peers: Some(peers.clone()),
            tls_cert: Some(cert.clone()),
            tls_key: Some(key.clone()),
            ..CertifierConfig::default()
        };
        nodes.push(start(cfg).await);
    }
    let client = CertifierClient::connect_with(&addrs.join(","), trusting(&cert))
        .await
        .unwrap();
    // The nodes elect over TLS, then replicate a certification.
    let v = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match client.certify(ws("over-mtls")).await {
                Ok(Outcome::Committed { version }) => break version,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("a leader commits within 30 s");
    assert_eq!(v, 1);
    let no_cert = vote_over_tls(&addrs[0], &cert, None).await.unwrap_err();
    assert_eq!(no_cert.code(), tonic::Code::PermissionDenied, "{no_cert}");
    assert!(
        no_cert.message().contains("client certificate"),
        "{no_cert}"
    );
    let no_cert = raft_call_over_tls(&addrs[0], &cert, None, true)
        .await
        .unwrap_err();
    assert_eq!(
        no_cert.code(),
        tonic::Code::PermissionDenied,
        "a snapshot chunk: {no_cert}"
    );
    assert!(
        vote_over_tls(&addrs[0], &cert, Some((&stranger, &stranger_key)))
            .await
            .is_err(),
        "a certificate the peers' CA did not sign"
    );
    // A node's own certificate is let through (the vote is answered).
    vote_over_tls(&addrs[0], &cert, Some((&cert, &key)))
        .await
        .unwrap();
    // Status (a proxy's and a tool's call) needs no client certificate.
    assert_eq!(client.status().await.unwrap().committed_version, 1);
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
