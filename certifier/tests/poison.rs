//! A WAL failure poisons the certifier: the transaction whose fdatasync
//! failed is not acknowledged, nothing is acknowledged afterwards (even once
//! the disk is fine again), Status says so and names a full disk; a
//! restart recovers.
//! (Its own test binary: failpoints are process-global.)

use bytes::Bytes;
use tashkent_certifier::writeset::item;
use tashkent_certifier::{
    CertifierClient, CertifierConfig, CertifierError, LogFailure, Op, Outcome, Writeset,
    WRITESET_FORMAT_VERSION,
};

fn ws(id: &str, snapshot: u64) -> Writeset {
    Writeset {
        format_version: WRITESET_FORMAT_VERSION,
        txn_id: Bytes::copy_from_slice(id.as_bytes()),
        origin: 1,
        snapshot,
        items: vec![item("t", Op::Update, id.as_bytes().to_vec())],
        ddl: vec![],
        last_chunk: false,
        spool: None,
        session: 0,
        losses: 0,
    }
}

/// A certifier on any free port with its log in `dir`.
fn config(dir: &std::path::Path) -> CertifierConfig {
    CertifierConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        wal_dir: dir.join("wal"),
        ..CertifierConfig::default()
    }
}

/// Failpoints are process-global: one test at a time configures them.
static FAILPOINTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The answer of a certifier whose log failed: `outcome_unknown` for the
/// request whose record was submitted when it failed.
fn log_failed(r: Result<Outcome, CertifierError>, want: LogFailure, unknown: bool) {
    match r {
        Err(CertifierError::LogFailed {
            failure,
            cause,
            outcome_unknown,
        }) => {
            assert_eq!(failure, want, "{cause}");
            assert_eq!(outcome_unknown, unknown, "{cause}");
            assert!(cause.contains("WAL"), "{cause}");
        }
        other => panic!("expected LogFailed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_failure_poisons_and_restart_recovers() {
    let _only = FAILPOINTS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let server = tashkent_certifier::start(cfg.clone()).await.unwrap();
    let client = CertifierClient::connect(server.local_addr().to_string())
        .await
        .unwrap();
    assert_eq!(
        client.certify(ws("a", 0)).await.unwrap(),
        Outcome::Committed { version: 1 }
    );

    fail::cfg("wal::fsync", "return").unwrap();
    log_failed(client.certify(ws("b", 1)).await, LogFailure::Io, true);
    fail::remove("wal::fsync");
    // The disk works again, but this WAL handle cannot be trusted any more.
    log_failed(client.certify(ws("c", 1)).await, LogFailure::Io, false);
    log_failed(client.certify(ws("a", 0)).await, LogFailure::Io, false);
    let st = client.status().await.unwrap();
    assert!(st.poisoned);
    assert!(st.poison_cause.contains("log failed"), "{st:?}");
    assert_eq!(st.durable_version, 1);
    assert!(
        server.shutdown().await.is_err(),
        "closing a poisoned WAL reports the cause"
    );

    let server = tashkent_certifier::start(cfg).await.unwrap();
    let client = CertifierClient::connect(server.local_addr().to_string())
        .await
        .unwrap();
    let latest = client.status().await.unwrap().latest_version;
    // "b" was written but its fdatasync failed: it may or may not be in the
    // log, and it was never acknowledged, so either is correct.
    assert!(latest == 1 || latest == 2, "{latest}");
    assert_eq!(
        client.certify(ws("a", 0)).await.unwrap(),
        Outcome::Committed { version: 1 }
    );
    let c = client.certify(ws("c", latest)).await.unwrap();
    assert_eq!(
        c,
        Outcome::Committed {
            version: latest + 1
        }
    );
    server.shutdown().await.unwrap();
}

/// ENOSPC while writing a group: the request under it has an unknown
/// outcome, every later one is refused as "disk full" over both the
/// pipeline (small writesets) and a chunked Certify call, and Status names
/// the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_as_disk_full() {
    let _only = FAILPOINTS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let server = tashkent_certifier::start(cfg).await.unwrap();
    let client = CertifierClient::connect(server.local_addr().to_string())
        .await
        .unwrap();
    fail::cfg("wal::write", "return(enospc)").unwrap();
    log_failed(client.certify(ws("a", 0)).await, LogFailure::DiskFull, true);
    fail::remove("wal::write");
    log_failed(
        client.certify(ws("b", 0)).await,
        LogFailure::DiskFull,
        false,
    );
    log_failed(
        client.certify_chunked(ws("c", 0), 64).await,
        LogFailure::DiskFull,
        false,
    );
    let st = client.status().await.unwrap();
    assert!(st.poisoned);
    assert!(st.poison_cause.contains("disk is full"), "{st:?}");
    assert!(server.shutdown().await.is_err());
}
