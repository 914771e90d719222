//! The service over real gRPC on 127.0.0.1:0: concurrent clients, chunked
//! writesets, malformed requests, Subscribe while commits continue,
//! idempotent retries, restart on the same WAL.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use tashkent_certifier::writeset::item;
use tashkent_certifier::{
    AbortCode, CertifierClient, CertifierConfig, ClientOptions, Item, Op, Outcome,
    RunningCertifier, WalBackend, Writeset, WRITESET_FORMAT_VERSION,
};
use tempfile::TempDir;

fn config(dir: &TempDir) -> CertifierConfig {
    CertifierConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        wal_dir: dir.path().join("wal"),
        wal_backend: WalBackend::Auto,
        wal_segment_bytes: 1 << 20,
        ..CertifierConfig::default()
    }
}

async fn start(cfg: CertifierConfig) -> (RunningCertifier, CertifierClient) {
    let running = tashkent_certifier::start(cfg.clone()).await.unwrap();
    let opts = ClientOptions {
        max_message_bytes: cfg.max_message_bytes,
        chunk_bytes: cfg.max_message_bytes / 2,
        ..ClientOptions::default()
    };
    let client = CertifierClient::connect_with(running.local_addr().to_string(), opts)
        .await
        .unwrap();
    (running, client)
}

fn ws(id: &str, snapshot: u64, keys: &[String]) -> Writeset {
    Writeset {
        format_version: WRITESET_FORMAT_VERSION,
        txn_id: Bytes::copy_from_slice(id.as_bytes()),
        origin: 1,
        snapshot,
        items: keys
            .iter()
            .map(|k| Item {
                row: Bytes::from(format!("row of {k} by {id}")),
                ..item("t", Op::Update, k.clone().into_bytes())
            })
            .collect(),
        ddl: vec![],
        last_chunk: false,
        spool: None,
        session: 0,
        losses: 0,
    }
}

fn committed(o: &Outcome) -> Option<u64> {
    match o {
        Outcome::Committed { version } => Some(*version),
        Outcome::Aborted { .. } => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_dense_versions_and_subscribe_sees_them() {
    let dir = TempDir::new().unwrap();
    let (server, client) = start(config(&dir)).await;
    let mut tasks = Vec::new();
    for c in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c);
            let mut acks = Vec::new();
            for i in 0..150 {
                let snapshot = client.status().await.unwrap().durable_version;
                let keys: Vec<String> = (0..3)
                    .map(|_| format!("k{}", rng.random_range(0..50)))
                    .collect();
                let w = ws(&format!("c{c}-{i}"), snapshot, &keys);
                let o = client.certify(w.clone()).await.unwrap();
                if let Some(v) = committed(&o) {
                    acks.push((v, w));
                }
            }
            acks
        }));
    }
    let mut acked = BTreeMap::new();
    for t in tasks {
        for (v, w) in t.await.unwrap() {
            assert!(acked.insert(v, w).is_none(), "version {v} given twice");
        }
    }
    let n = acked.len() as u64;
    assert!(n > 100, "only {n} commits");
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    let st = client.status().await.unwrap();
    assert_eq!((st.latest_version, st.durable_version), (n, n));
    let got: Vec<_> = client
        .subscribe(0)
        .await
        .unwrap()
        .take(n as usize)
        .collect()
        .await;
    for (i, cw) in got.into_iter().enumerate() {
        let cw = cw.unwrap();
        assert_eq!(cw.version, i as u64 + 1);
        assert_eq!(&cw.writeset, &acked[&cw.version]);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_writeset_is_chunked_both_ways_and_the_limit_is_enforced() {
    let dir = TempDir::new().unwrap();
    let cfg = CertifierConfig {
        max_message_bytes: 64 << 10,
        max_writeset_bytes: 8 << 20,
        ..config(&dir)
    };
    let (server, client) = start(cfg).await;
    let keys: Vec<String> = (0..50_000).map(|i| format!("key-{i}")).collect();
    let big = ws("big", 0, &keys);
    let size = prost::Message::encoded_len(&big);
    assert!(size > 2 << 20, "{size}");
    assert_eq!(
        client.certify(big.clone()).await.unwrap(),
        Outcome::Committed { version: 1 }
    );
    let mut sub = client.subscribe(1).await.unwrap();
    let cw = sub.next().await.unwrap().unwrap();
    assert_eq!((cw.version, cw.writeset == big), (1, true));

    let keys: Vec<String> = (0..200_000).map(|i| format!("key-{i}")).collect();
    let err = client
        .certify(ws("huge", 1, &keys))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("too large") && err.contains("max_writeset_bytes"),
        "{err}"
    );
    assert!(err.contains("resource"), "{err}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_writesets_survive_a_restart_and_an_unfinished_stream_certifies_nothing() {
    let dir = TempDir::new().unwrap();
    let cfg = CertifierConfig {
        max_message_bytes: 64 << 10,
        ..config(&dir)
    };
    let (server, client) = start(cfg.clone()).await;
    let keys: Vec<String> = (0..20_000).map(|i| format!("key-{i}")).collect();
    let big = ws("big", 0, &keys);
    assert_eq!(
        client.certify(big.clone()).await.unwrap(),
        Outcome::Committed { version: 1 }
    );
    // A client that gives up half way: nothing is certified.
    let (sender, call) = client.certify_stream();
    let call = tokio::spawn(call);
    let mut chunks = tashkent_certifier::writeset::split(ws("quit", 1, &keys[..5000]), 16 << 10);
    assert!(chunks.len() > 2);
    chunks.pop();
    for c in chunks {
        sender.send(c).await.unwrap();
    }
    drop(sender);
    let err = call.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("last_chunk"), "{err}");
    assert_eq!(client.status().await.unwrap().latest_version, 1);
    let small = ws("small", 1, &["other".to_string()]);
    assert_eq!(
        client.certify(small.clone()).await.unwrap(),
        Outcome::Committed { version: 2 }
    );
    server.shutdown().await.unwrap();

    // After a restart the spooled version streams back identical and its
    // keys are in the rebuilt conflict window.
    let (server, client) = start(cfg).await;
    let mut sub = client.subscribe(1).await.unwrap();
    let cw = sub.next().await.unwrap().unwrap();
    assert_eq!((cw.version, cw.writeset == big), (1, true));
    let cw = sub.next().await.unwrap().unwrap();
    assert_eq!((cw.version, cw.writeset == small), (2, true));
    let o = client
        .certify(ws("late", 0, &["key-1234".to_string()]))
        .await
        .unwrap();
    assert!(
        matches!(
            o,
            Outcome::Aborted {
                code: AbortCode::Conflict,
                ..
            }
        ),
        "{o:?}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_invalid_argument_with_the_reason() {
    let dir = TempDir::new().unwrap();
    let (server, client) = start(config(&dir)).await;
    let bad = |mutate: fn(&mut Writeset)| {
        let mut w = ws("bad", 0, &["k".into()]);
        mutate(&mut w);
        w
    };
    for (w, want) in [
        (bad(|w| w.format_version = 7), "format_version 7"),
        (bad(|w| w.txn_id = Bytes::new()), "txn_id"),
        (bad(|w| w.items[0].op = 0), "op not set"),
        (bad(|w| w.snapshot = 99), "ahead of the latest"),
        (bad(|w| w.items.clear()), "empty writeset"),
    ] {
        match client.certify(w).await {
            Err(tashkent_certifier::CertifierError::Rpc(s)) => {
                assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
                assert!(s.message().contains(want), "{} !~ {want}", s.message());
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
    let e = client
        .report_applied(1, 5, 0)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("beyond the latest"), "{e}");
    // Bytes that are not protobuf at all.
    let s = raw::call(
        server.local_addr(),
        "/tashkent.certifier.v1.Certifier/ReportApplied",
        &[0xff, 0xff, 0xff],
    )
    .await
    .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("malformed"), "{s:?}");
    // Nothing above consumed a version.
    let o = client.certify(ws("good", 0, &["k".into()])).await.unwrap();
    assert_eq!(o, Outcome::Committed { version: 1 });
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_from_zero_and_from_the_middle_while_commits_continue() {
    subscribe_while_committing(64 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_reads_the_wal_for_what_the_tail_cache_dropped() {
    // A tail cache of 2 KiB holds the last ~25 records: older ones come from
    // the WAL reader, then the stream switches to the tail and follows.
    let dir = TempDir::new().unwrap();
    let cfg = CertifierConfig {
        tail_cache_bytes: 2048,
        ..config(&dir)
    };
    let (server, client) = start(cfg).await;
    let mut acked = Vec::new();
    for i in 0..400u64 {
        let w = ws(&format!("w{i}"), i, &[format!("k{i}")]);
        assert_eq!(
            client.certify(w.clone()).await.unwrap(),
            Outcome::Committed { version: i + 1 }
        );
        acked.push(w);
    }
    let from_one = client.subscribe(1).await.unwrap();
    let from_mid = client.subscribe(123).await.unwrap();
    for i in 400..450u64 {
        let w = ws(&format!("w{i}"), i, &[format!("k{i}")]);
        assert_eq!(
            client.certify(w.clone()).await.unwrap(),
            Outcome::Committed { version: i + 1 }
        );
        acked.push(w);
    }
    let a: Vec<_> = from_one.take(450).collect().await;
    let b: Vec<_> = from_mid.take(450 - 122).collect().await;
    for (i, cw) in a.into_iter().enumerate() {
        let cw = cw.unwrap();
        assert_eq!((cw.version, &cw.writeset), (i as u64 + 1, &acked[i]));
    }
    for (i, cw) in b.into_iter().enumerate() {
        let cw = cw.unwrap();
        assert_eq!(
            (cw.version, &cw.writeset),
            (i as u64 + 123, &acked[i + 122])
        );
    }
    server.shutdown().await.unwrap();
}

async fn subscribe_while_committing(tail_cache_bytes: usize) {
    let dir = TempDir::new().unwrap();
    let cfg = CertifierConfig {
        tail_cache_bytes,
        ..config(&dir)
    };
    let (server, client) = start(cfg).await;
    const N: u64 = 300;
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..N {
                // Snapshot = all previous: never conflicts.
                let w = ws(&format!("w{i}"), i, &[format!("k{}", i % 7)]);
                assert_eq!(
                    client.certify(w.clone()).await.unwrap(),
                    Outcome::Committed { version: i + 1 }
                );
                acked.push(w);
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            acked
        })
    };
    let from_zero = client.subscribe(0).await.unwrap();
    while client.status().await.unwrap().durable_version < 50 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let from_mid = client.subscribe(40).await.unwrap();
    let a: Vec<_> = from_zero.take(N as usize).collect().await;
    let b: Vec<_> = from_mid.take((N - 39) as usize).collect().await;
    let acked = writer.await.unwrap();
    for (i, cw) in a.into_iter().enumerate() {
        let cw = cw.unwrap();
        assert_eq!((cw.version, &cw.writeset), (i as u64 + 1, &acked[i]));
    }
    for (i, cw) in b.into_iter().enumerate() {
        let cw = cw.unwrap();
        assert_eq!((cw.version, &cw.writeset), (i as u64 + 40, &acked[i + 39]));
    }
    // Beyond the head is refused, at the head waits.
    let e = client.subscribe(N + 2).await.err().unwrap().to_string();
    assert!(e.contains("latest version"), "{e}");
    server.shutdown().await.unwrap();
}

/// A start that fails after opening the log (its metrics port taken)
/// leaves the log free: the next start on it serves what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_failed_leaves_the_log_to_the_next() {
    let dir = TempDir::new().unwrap();
    let (running, client) = start(config(&dir)).await;
    let first = client.certify(ws("t1", 0, &["a".into()])).await.unwrap();
    assert_eq!(committed(&first), Some(1));
    running.shutdown().await.unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let failed = tashkent_certifier::start(CertifierConfig {
        metrics_listen: Some(taken.local_addr().unwrap()),
        ..config(&dir)
    })
    .await
    .err()
    .expect("the metrics port is taken");
    assert!(failed.to_string().contains("metrics"), "{failed}");
    let (running, client) = start(config(&dir)).await;
    let second = client.certify(ws("t2", 1, &["b".into()])).await.unwrap();
    assert_eq!(committed(&second), Some(2));
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_reports_status_and_restart() {
    let dir = TempDir::new().unwrap();
    let cfg = CertifierConfig {
        window_max_versions: 5,
        dedupe_max_entries: 5,
        ..config(&dir)
    };
    let (server, client) = start(cfg.clone()).await;
    let a = ws("a", 0, &["x".into()]);
    let b = ws("b", 0, &["x".into()]);
    assert_eq!(
        client.certify(a.clone()).await.unwrap(),
        Outcome::Committed { version: 1 }
    );
    let abort_b = client.certify(b.clone()).await.unwrap();
    assert!(
        matches!(
            &abort_b,
            Outcome::Aborted {
                code: AbortCode::Conflict,
                ..
            }
        ),
        "{abort_b:?}"
    );
    assert_eq!(
        client.certify(a.clone()).await.unwrap(),
        Outcome::Committed { version: 1 }
    );
    assert_eq!(client.certify(b.clone()).await.unwrap(), abort_b);
    for i in 0..20u64 {
        let w = ws(&format!("n{i}"), i + 1, &[format!("y{i}")]);
        assert_eq!(
            client.certify(w).await.unwrap(),
            Outcome::Committed { version: i + 2 }
        );
    }
    let st = client.status().await.unwrap();
    assert_eq!(st.latest_version, 21);
    assert_eq!(st.horizon, 16, "window of 5 versions");
    assert!(
        st.horizon_cause.contains("memory limit"),
        "{}",
        st.horizon_cause
    );
    // "a" is older than both the window and the dedupe table: found in the WAL.
    assert_eq!(
        client.certify(a.clone()).await.unwrap(),
        Outcome::Committed { version: 1 }
    );
    // A new transaction with that old snapshot is too old.
    match client.certify(ws("c", 0, &["z".into()])).await.unwrap() {
        Outcome::Aborted { code, reason, .. } => {
            assert_eq!(code, AbortCode::SnapshotTooOld);
            assert!(
                reason.contains("horizon 16") && reason.contains("memory limit"),
                "{reason}"
            );
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(client.report_applied(3, 21, 18).await.unwrap(), 18);
    let st = client.status().await.unwrap();
    assert_eq!(st.replicas.len(), 1);
    assert_eq!(
        (st.replicas[0].replica_id, st.replicas[0].applied_version),
        (3, 21)
    );
    server.shutdown().await.unwrap();

    let (server, client) = start(cfg).await;
    let st = client.status().await.unwrap();
    assert_eq!((st.latest_version, st.durable_version), (21, 21));
    assert_eq!(st.horizon, 16, "rebuilt window: 5 versions");
    assert_eq!(
        client.certify(a.clone()).await.unwrap(),
        Outcome::Committed { version: 1 }
    );
    let n19 = ws("n19", 20, &["y19".into()]);
    assert_eq!(
        client.certify(n19).await.unwrap(),
        Outcome::Committed { version: 21 }
    );
    // The conflict is rebuilt from the WAL: a concurrent writer of y19 aborts.
    let late = ws("late", 20, &["y19".into()]);
    assert!(matches!(
        client.certify(late).await.unwrap(),
        Outcome::Aborted {
            code: AbortCode::Conflict,
            ..
        }
    ));
    assert_eq!(
        client.certify(ws("next", 21, &["x".into()])).await.unwrap(),
        Outcome::Committed { version: 22 }
    );
    let all: Vec<_> = client.subscribe(1).await.unwrap().take(22).collect().await;
    let ids: HashSet<_> = all
        .iter()
        .map(|c| c.as_ref().unwrap().writeset.txn_id.clone())
        .collect();
    assert_eq!(ids.len(), 22);
    assert_eq!(all[0].as_ref().unwrap().writeset, a);
    server.shutdown().await.unwrap();
}

/// A gRPC call with an arbitrary request body.
mod raw {
    use bytes::{Buf, BufMut, Bytes};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::Status;

    #[derive(Default)]
    struct RawCodec;
    struct Enc;
    struct Dec;

    impl Encoder for Enc {
        type Item = Bytes;
        type Error = Status;
        fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for Dec {
        type Item = Bytes;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
            Ok(Some(src.copy_to_bytes(src.remaining())))
        }
    }

    impl Codec for RawCodec {
        type Encode = Bytes;
        type Decode = Bytes;
        type Encoder = Enc;
        type Decoder = Dec;
        fn encoder(&mut self) -> Enc {
            Enc
        }
        fn decoder(&mut self) -> Dec {
            Dec
        }
    }

    pub async fn call(
        addr: std::net::SocketAddr,
        path: &'static str,
        body: &[u8],
    ) -> Result<Bytes, Status> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        grpc.unary(
            tonic::Request::new(Bytes::copy_from_slice(body)),
            path,
            RawCodec,
        )
        .await
        .map(|r| r.into_inner())
    }
}

#[tokio::test]
async fn an_origin_gets_its_own_writesets_as_headers_only_and_others_whole() {
    let dir = TempDir::new().unwrap();
    let (_running, client) = start(config(&dir)).await;
    let mut sent = Vec::new();
    for (i, id) in ["mine-1", "other-1", "mine-2", "mine-3"].iter().enumerate() {
        let w = ws(id, 0, &[format!("k{i}")]);
        let v = committed(&client.certify(w.clone()).await.unwrap()).expect("commits");
        sent.push((v, w));
    }
    let read = |elide_from: u64| {
        let client = client.clone();
        async move {
            let frames = client
                .subscribe_frames_eliding(1, Bytes::from_static(b"mine-"), elide_from)
                .await
                .unwrap();
            frames.take(4).map(|f| f.unwrap()).collect::<Vec<_>>().await
        }
    };
    for (elide_from, elided) in [
        (0, vec![true, false, true, true]),
        (3, vec![false, false, true, true]),
    ] {
        let frames = read(elide_from).await;
        for ((frame, (v, w)), want_elided) in frames.iter().zip(&sent).zip(elided) {
            assert_eq!(frame.version, *v);
            assert!(frame.last, "one frame each");
            assert_eq!(frame.elided, want_elided, "version {v} from {elide_from}");
            let got = <Writeset as prost::Message>::decode(frame.data.clone()).unwrap();
            let want = if want_elided {
                Writeset {
                    items: vec![],
                    ..w.clone()
                }
            } else {
                w.clone()
            };
            assert_eq!(got, want, "version {v}");
        }
    }
    // Without a prefix nothing is elided.
    let whole: Vec<_> = client
        .subscribe_frames(1)
        .await
        .unwrap()
        .take(4)
        .map(|f| f.unwrap())
        .collect()
        .await;
    assert!(whole.iter().all(|f| !f.elided));
}

/// A Certify stream waiting for its next chunk does not hold a shutdown
/// up: it is answered UNAVAILABLE (nothing of it was certified; retry),
/// and the certifier stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_ends_a_certify_stream_that_waits_for_chunks() {
    let dir = TempDir::new().unwrap();
    let (server, client) = start(config(&dir)).await;
    let (tx, call) = client.certify_stream();
    let call = tokio::spawn(call);
    tx.send(ws("waits", 0, &["k1".to_owned()])).await.unwrap();
    // Time for the stream to reach the server, which spools the chunk and
    // waits for the next.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("the shutdown waited for the stream")
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap()
        .unwrap();
    match answer {
        Err(tashkent_certifier::CertifierError::Rpc(s)) if s.code() == tonic::Code::Unavailable => {
            assert!(s.message().contains("shutting down"), "{s:?}");
        }
        // On a loaded machine the server may stop before the stream
        // reaches it: the connection's GOAWAY ends the call instead.
        Err(e) if format!("{e:?}").contains("GoAway") => {}
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    drop(tx);
}

/// Drops every TCP packet to or from a port of 127.0.0.1 (a table of
/// nftables of its own; needs root, as the whole suite does), until
/// dropped: a link that goes silent, closing nothing and refusing nothing.
struct Silenced {
    table: String,
}

impl Silenced {
    fn port(port: u16) -> Silenced {
        Silenced::remove_stale();
        let table = format!("{SILENCED}{}_{port}", std::process::id());
        let script = format!(
            "add table inet {table}\n\
             add chain inet {table} out {{ type filter hook output priority 0; }}\n\
             add rule inet {table} out ip saddr 127.0.0.1 tcp sport {port} drop\n\
             add rule inet {table} out ip daddr 127.0.0.1 tcp dport {port} drop\n"
        );
        let out = nft(&["-f", "-"], &script);
        assert!(out.is_ok(), "nft: {out:?}");
        Silenced { table }
    }

    /// Removes the tables of test processes that died holding them
    /// (SIGKILLed): their port would stay silent.
    fn remove_stale() {
        let Ok(tables) = nft(&["list", "tables"], "") else {
            return;
        };
        for name in tables
            .split_whitespace()
            .filter(|w| w.starts_with(SILENCED))
        {
            let pid = name[SILENCED.len()..].split('_').next().unwrap_or("");
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = nft(&["delete", "table", "inet", name], "");
            }
        }
    }
}

/// The prefix of the tables [`Silenced`] makes: then its process id.
const SILENCED: &str = "tashkent_silent_";

impl Drop for Silenced {
    fn drop(&mut self) {
        // Not an assertion: this may run while a failed test unwinds.
        if let Err(e) = nft(&["delete", "table", "inet", &self.table], "") {
            eprintln!("removing nftables table {}: {e}", self.table);
        }
    }
}

/// Runs `nft args` with `stdin`; its output, or why it failed.
fn nft(args: &[&str], stdin: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft (package nftables; bash scripts/setup.sh installs it): {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// The certifier's open Subscribe streams, as its metrics say.
fn subscribers(running: &RunningCertifier) -> f64 {
    let text = running.service().render_metrics();
    tashkent_metrics::Scrape::parse(&text)
        .unwrap()
        .value("tashkent_certifier_subscribers", &[])
        .unwrap()
}

/// A subscriber whose link goes silent (every packet dropped) is dropped
/// by the certifier, with its stream and what was queued for it, once it
/// has acknowledged nothing for `silent_peer_timeout_ms`, rather than
/// when TCP gives up a quarter of an hour later; the next subscriber is
/// served every version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_whose_link_goes_silent_is_dropped() {
    silent_subscriber_is_dropped(true).await;
}

/// The same with nothing committed while the link is silent: the idle
/// connection's keepalive probes go unanswered, and it is dropped as well
/// (TCP alone never would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_subscriber_whose_link_goes_silent_is_dropped() {
    silent_subscriber_is_dropped(false).await;
}

async fn silent_subscriber_is_dropped(committing: bool) {
    let dir = TempDir::new().unwrap();
    let (running, client) = start(CertifierConfig {
        silent_peer_timeout_ms: 2_000,
        ..config(&dir)
    })
    .await;
    let first = client.certify(ws("s0", 0, &["k0".into()])).await.unwrap();
    assert_eq!(committed(&first), Some(1));
    let mut stream = client.subscribe(1).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().version, 1);
    assert_eq!(subscribers(&running), 1.0);

    let silenced = Silenced::port(running.local_addr().port());
    let since = std::time::Instant::now();
    let mut n = 1;
    while subscribers(&running) > 0.0 {
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "the silent subscriber is still served after {:?}",
            since.elapsed()
        );
        if committing {
            // In process: no client reaches the certifier now. Data waits
            // unacknowledged for the subscriber.
            n += 1;
            let o = running
                .service()
                .certify(ws(&format!("s{n}"), 0, &[format!("k{n}")]))
                .await
                .unwrap();
            assert_eq!(committed(&o), Some(n));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(silenced);
    drop(stream);

    let again = CertifierClient::connect(running.local_addr().to_string())
        .await
        .unwrap();
    let versions: Vec<u64> = again
        .subscribe(1)
        .await
        .unwrap()
        .take(n as usize)
        .map(|r| r.unwrap().version)
        .collect()
        .await;
    assert_eq!(versions, (1..=n).collect::<Vec<_>>());
    running.shutdown().await.unwrap();
}
