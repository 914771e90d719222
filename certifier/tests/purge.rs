//! Log purge over real gRPC: ReportCheckpoint purges what neither the
//! checkpoint nor a live replica needs; Subscribe below the purge point is
//! FAILED_PRECONDITION, turned back into `CertifierError::Purged` by the
//! client; the purge survives a restart.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tashkent_certifier::writeset::item;
use tashkent_certifier::{
    CertifierClient, CertifierConfig, CertifierError, Op, Outcome, Writeset,
    WRITESET_FORMAT_VERSION,
};
use tempfile::TempDir;

fn config(dir: &TempDir) -> CertifierConfig {
    CertifierConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        wal_dir: dir.path().join("wal"),
        // A few records per segment, so that purges delete something.
        wal_segment_bytes: 4096,
        purge_replica_timeout_ms: 1500,
        ..CertifierConfig::default()
    }
}

fn ws(i: u64) -> Writeset {
    Writeset {
        format_version: WRITESET_FORMAT_VERSION,
        txn_id: Bytes::from(format!("t{i}")),
        origin: 1,
        snapshot: i,
        items: vec![tashkent_certifier::Item {
            row: Bytes::from(vec![b'x'; 200]),
            ..item("t", Op::Update, format!("k{i}").into_bytes())
        }],
        ddl: vec![],
        last_chunk: false,
        spool: None,
        session: 0,
        losses: 0,
    }
}

/// Starts a certifier on `cfg` and connects a client to it.
async fn serve(cfg: &CertifierConfig) -> (tashkent_certifier::RunningCertifier, CertifierClient) {
    let server = tashkent_certifier::start(cfg.clone()).await.unwrap();
    let client = CertifierClient::connect(server.local_addr().to_string())
        .await
        .unwrap();
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_report_purges_what_nobody_needs() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    let started = std::time::Instant::now();
    let (server, client) = serve(&cfg).await;
    for i in 0..300 {
        assert_eq!(
            client.certify(ws(i)).await.unwrap(),
            Outcome::Committed { version: i + 1 }
        );
        if i == 10 {
            // Too soon after the start (within `purge_replica_timeout_ms`;
            // a loaded machine may not get here that soon, and then
            // there is nothing to check): nothing is purged yet.
            let r = client.report_checkpoint(10).await.unwrap();
            if started.elapsed() < Duration::from_millis(1400) {
                assert_eq!((r.purge_below, r.first_version), (0, 1));
            } else {
                eprintln!(
                    "not checked: version 11 came {:?} after the start",
                    started.elapsed()
                );
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A live replica at 120 holds the log back to 121.
    client.report_applied(1, 120, 120).await.unwrap();
    let r = client.report_checkpoint(200).await.unwrap();
    assert_eq!(r.purge_below, 121);
    assert!(
        r.first_version > 1 && r.first_version <= 121,
        "first version {}",
        r.first_version
    );
    // Beyond the durable version is refused.
    assert!(client.report_checkpoint(1000).await.is_err());
    // Once the replica is silent, the checkpoint alone bounds the purge.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = client.report_checkpoint(200).await.unwrap();
    assert_eq!(r.purge_below, 201);
    let first = r.first_version;
    assert!(first > 121 && first <= 201, "first version {first}");
    let status = client.status().await.unwrap();
    assert_eq!(status.first_version, first);
    assert_eq!(status.checkpoint_version, 200);

    // Below the purge point: a clear refusal, with the first version.
    let err = match client.subscribe(1).await {
        Err(e) => e,
        Ok(_) => panic!("subscribe from a purged version succeeded"),
    };
    match &err {
        CertifierError::Purged { from, first: f } => assert_eq!((*from, *f), (1, first)),
        other => panic!("expected Purged, got {other:?}"),
    }
    assert!(err.to_string().contains("checkpoint"), "{err}");
    // From the first retained version on, everything is there.
    let got: Vec<u64> = client
        .subscribe(first)
        .await
        .unwrap()
        .take((301 - first) as usize)
        .map(|c| c.unwrap().version)
        .collect()
        .await;
    assert_eq!(got, (first..=300).collect::<Vec<_>>());

    // The purge is durable: a restart on the same WAL keeps it.
    server.shutdown().await.unwrap();
    let (server, client) = serve(&cfg).await;
    let status = client.status().await.unwrap();
    assert_eq!(status.first_version, first);
    assert_eq!(status.latest_version, 300);
    assert!(client.subscribe(first - 1).await.is_err());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_version_survives_a_restart_and_purging_resumes() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    let (server, client) = serve(&cfg).await;
    for i in 0..300 {
        client.certify(ws(i)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A replica at 120 holds the purge back.
    client.report_applied(1, 120, 120).await.unwrap();
    let r = client.report_checkpoint(200).await.unwrap();
    assert_eq!(r.purge_below, 121);
    server.shutdown().await.unwrap();

    let (server, client) = serve(&cfg).await;
    let status = client.status().await.unwrap();
    assert_eq!(status.checkpoint_version, 200);
    assert!(status.first_version <= 121, "{}", status.first_version);
    // Nobody reports now: once the start-up grace period is over, the
    // certifier purges on its own up to the remembered checkpoint.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let first = loop {
        let first = client.status().await.unwrap().first_version;
        if first > 121 {
            break first;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no purge after the restart (first version {first})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(first <= 201, "purged past the checkpoint: {first}");
    server.shutdown().await.unwrap();
}
