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

/// A self-signed certificate for `names` in `dir` as `<stem>.crt` and
/// `<stem>.key`.
fn certificate(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

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
