//! The proxy's wire protocol edge: real clients (psql, COPY, cancel) and
//! malformed input over a raw socket, before and after startup.

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::Cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;

pub(crate) fn startup_packet() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196608u32.to_be_bytes());
    for s in ["user", "postgres", "database", "postgres", ""] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

/// Reads messages until one with `tag` arrives; returns (tag, body) of
/// every message read.
pub(crate) async fn read_until(s: &mut TcpStream, tag: u8) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let mut head = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head))
            .await
            .expect("the proxy answers")
            .expect("reading a message");
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0; len - 4];
        s.read_exact(&mut body).await.unwrap();
        let done = head[0] == tag || head[0] == b'E' && tag != b'E';
        out.push((head[0], body));
        if done {
            return out;
        }
    }
}

pub(crate) fn sqlstate_of(body: &[u8]) -> String {
    let mut fields = body.split(|b| *b == 0);
    fields
        .find_map(|f| {
            f.strip_prefix(b"C")
                .map(|c| String::from_utf8_lossy(c).into_owned())
        })
        .unwrap_or_default()
}

async fn connected(cluster: &Cluster) -> TcpStream {
    let addr = cluster.proxy_addrs()[0];
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&startup_packet()).await.unwrap();
    let msgs = read_until(&mut s, b'Z').await;
    assert!(
        msgs.iter().any(|(t, b)| *t == b'R' && b == &[0, 0, 0, 0]),
        "AuthenticationOk"
    );
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_input_gets_08p01_and_never_runs_sql() {
    let cluster = Cluster::start(1).await;

    // GSS encryption is declined with 'N', then a normal startup works
    // (SSL: tests/proxy/tls.rs).
    let addr = cluster.proxy_addrs()[0];
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 4, 210, 22, 48]).await.unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    s.write_all(&startup_packet()).await.unwrap();
    read_until(&mut s, b'Z').await;

    // A second StartupMessage is a protocol violation.
    s.write_all(&startup_packet()).await.unwrap();
    let msgs = read_until(&mut s, b'E').await;
    assert_eq!(sqlstate_of(&msgs.last().unwrap().1), "08P01");

    // A message longer than the maximum is refused before it is buffered.
    let mut s = connected(&cluster).await;
    s.write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xff]).await.unwrap();
    let msgs = read_until(&mut s, b'E').await;
    assert_eq!(sqlstate_of(&msgs.last().unwrap().1), "08P01");

    // An unknown message type too.
    let mut s = connected(&cluster).await;
    s.write_all(&[b'!', 0, 0, 0, 4]).await.unwrap();
    let msgs = read_until(&mut s, b'E').await;
    assert_eq!(sqlstate_of(&msgs.last().unwrap().1), "08P01");

    // A query before authentication is not a startup packet: refused, and
    // nothing ran.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"Q\0\0\0\x1bCREATE TABLE evil (x int)\0")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    let c = cluster.replica(0).await;
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'evil'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

/// The ErrorResponse a connection gets for `first` bytes: its SQLSTATE and
/// message; the proxy then closes the connection.
async fn refused(addr: std::net::SocketAddr, first: &[u8]) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(first).await.unwrap();
    let msgs = read_until(&mut s, b'E').await;
    let (tag, body) = msgs.last().unwrap();
    assert_eq!(*tag, b'E', "{msgs:?}");
    let field = |code: u8| {
        body.split(|b| *b == 0)
            .find_map(|f| f.strip_prefix(&[code]))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    assert_eq!(field(b'S'), "FATAL");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("the proxy closes the connection")
        .unwrap();
    assert!(rest.is_empty(), "after the error: {rest:?}");
    (sqlstate_of(body), field(b'M'))
}

/// A first packet of `code` and `body`, its length as given.
fn packet(len: u32, code: u32, body: &[u8]) -> Vec<u8> {
    let mut p = len.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(body);
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_startup_packets_get_postgres_errors() {
    let mut cluster = Cluster::start(1).await;
    let addr = cluster.proxy_addrs()[0];
    let v3 = 3 << 16;

    // Lengths PostgreSQL refuses: below 8 and above 10000 (answered
    // before the body arrives).
    for first in [
        vec![0, 0, 0, 4],
        vec![0, 0, 0, 0],
        vec![0xff, 0xff, 0xff, 0xff],
        vec![0x7f, 0xff, 0xff, 0xff],
        10_001u32.to_be_bytes().to_vec(),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ] {
        let (code, message) = refused(addr, &first).await;
        assert_eq!(code, "08P01", "{first:?}: {message}");
        assert_eq!(message, "invalid length of startup packet");
    }

    // Protocol versions and request codes it does not speak: 0A000.
    for (version, shown) in [
        (2 << 16, "2.0"),
        (4 << 16, "4.0"),
        (1234 << 16 | 5681, "1234.5681"),
    ] {
        let (code, message) = refused(addr, &packet(8, version, b"")).await;
        assert_eq!(code, "0A000", "{message}");
        assert!(
            message.starts_with(&format!("unsupported frontend protocol {shown}:")),
            "{message}"
        );
    }

    // A 3.0 startup packet whose parameter list is not terminated.
    let body = b"user\0postgres";
    let (code, message) = refused(addr, &packet(8 + body.len() as u32, v3, body)).await;
    assert_eq!(code, "08P01", "{message}");
    assert!(
        message.contains("invalid startup packet layout"),
        "{message}"
    );

    // Bytes sent right behind an SSLRequest were not encrypted: refused
    // instead of answering 'S' (the cluster has a certificate).
    let mut first = vec![0, 0, 0, 8, 4, 210, 22, 47];
    first.extend_from_slice(&startup_packet());
    let (code, message) = refused(addr, &first).await;
    assert_eq!(code, "08P01");
    assert_eq!(message, "received unencrypted data after SSL request");

    // A client that says nothing, or half a packet, is closed after
    // authentication_timeout with PostgreSQL's words.
    cluster
        .restart_proxies_with(|p| p.authentication_timeout = Duration::from_secs(1))
        .await;
    for first in [&[][..], &startup_packet()[..6]] {
        let (code, message) = refused(addr, first).await;
        assert_eq!(code, "57014", "{message}");
        assert_eq!(message, "canceling authentication due to timeout");
    }
    // One that asked for TLS and never starts the handshake is closed
    // after the 'S' without a word (mid-handshake nothing can be said).
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut all))
        .await
        .expect("closed after authentication_timeout")
        .unwrap();
    assert_eq!(all, b"S");

    // The proxy still serves.
    connected(&cluster).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_copy_in_and_out_and_cancel_work_through_the_proxy() {
    let cluster = Cluster::start(2).await;
    let conninfo = cluster.proxy_conninfo(0);
    let psql = cluster.replicas[0].binaries().tool("psql").unwrap();
    let mut child = Command::new(&psql)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", &conninfo])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let script = "CREATE TABLE t (id int PRIMARY KEY, v text);\n\
                  COPY t FROM STDIN;\n1\tone\n2\ttwo\n3\t\\N\n\\.\n\
                  \\copy t TO STDOUT\n\
                  SELECT count(*) AS n FROM t;\n";
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("COPY 3"), "{stdout}");
    assert!(stdout.contains("2\ttwo"), "{stdout}");
    cluster.assert_identical().await;
    let c = cluster.replica(1).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "the COPY reached the other replica");

    // COPY over the extended protocol (tokio-postgres), twice in a row.
    let client = cluster.client(0).await;
    for round in 0..2i32 {
        use futures::SinkExt;
        let sink = client.copy_in("COPY t FROM STDIN").await.unwrap();
        futures::pin_mut!(sink);
        let row = format!("{}\tx\n", 10 + round);
        sink.send(bytes::Bytes::from(row)).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 1);
    }
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5);

    // A long statement is cancelled through the proxy (CancelRequest
    // routed to the right backend).
    let token = client.cancel_token();
    let replica = cluster.replica(0).await;
    let canceller = tokio::spawn(async move {
        common::cluster::until_running(&replica, "SELECT pg_sleep(30)").await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let err = client
        .batch_execute("SELECT pg_sleep(30)")
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().map(|d| d.code()),
        Some(&SqlState::QUERY_CANCELED),
        "{err}"
    );
    canceller.await.unwrap().unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
}
