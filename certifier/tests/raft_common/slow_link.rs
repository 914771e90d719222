//! A TCP relay that passes on what its target sends at a bounded rate (per
//! connection), so that a test can make a stream from a node (a gap copy
//! reading Subscribe) take seconds, tell from the bytes it passed which
//! node a client is streaming from, and close the link for a while.
//! Requests go through unthrottled. It stops, with every connection, when
//! dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

pub struct SlowLink {
    addr: SocketAddr,
    passed: Arc<AtomicU64>,
    closed: Arc<watch::Sender<bool>>,
    accept: JoinHandle<()>,
}

impl SlowLink {
    /// A link on a free local port to `target`, passing on at most
    /// `bytes_per_ms` of what the target sends on each connection.
    pub async fn start(target: SocketAddr, bytes_per_ms: u64) -> SlowLink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let passed = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(watch::channel(false).0);
        let accept = {
            let (passed, closed) = (passed.clone(), closed.clone());
            tokio::spawn(async move {
                // Dropped with this task: every connection ends with it.
                let mut conns = JoinSet::new();
                while let Ok((conn, _)) = listener.accept().await {
                    while conns.try_join_next().is_some() {}
                    if *closed.borrow() {
                        continue;
                    }
                    let link = (bytes_per_ms.max(1), passed.clone(), closed.subscribe());
                    conns.spawn(pass(conn, target, link));
                }
            })
        };
        SlowLink {
            addr,
            passed,
            closed,
            accept,
        }
    }

    /// Where clients of the link connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes of the target's passed on so far.
    pub fn passed(&self) -> u64 {
        self.passed.load(Ordering::Relaxed)
    }

    /// Closes every connection, and each new one at once, until `open`.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    pub fn open(&self) {
        self.closed.send_replace(false);
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Relays `conn` to `target` until either side closes, or the link.
async fn pass(
    conn: TcpStream,
    target: SocketAddr,
    (bytes_per_ms, passed, mut closed): (u64, Arc<AtomicU64>, watch::Receiver<bool>),
) {
    let Ok(out) = TcpStream::connect(target).await else {
        return;
    };
    let _ = (conn.set_nodelay(true), out.set_nodelay(true));
    let (mut from_client, mut to_client) = conn.into_split();
    let (mut from_target, mut to_target) = out.into_split();
    let requests = tokio::io::copy(&mut from_client, &mut to_target);
    let answers = async {
        let mut buf = vec![0u8; 8192];
        loop {
            let n = from_target.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            to_client.write_all(&buf[..n]).await?;
            passed.fetch_add(n as u64, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_micros(n as u64 * 1000 / bytes_per_ms)).await;
        }
    };
    tokio::select! {
        _ = requests => {}
        _ = answers => {}
        _ = closed.wait_for(|c| *c) => {}
    }
}
