//! A TCP relay that passes on what its target sends at a bounded rate (per
//! connection), so that a test can make a stream from a node (a gap copy
//! reading Subscribe) take seconds, tell from the bytes it passed which
//! node a client is streaming from, close the link for a while, or make
//! it go silent (`stall`: a partition, every connection left open and
//! nothing passed either way). Requests go through unthrottled. It stops,
//! with every connection, when dropped.

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
    stalled: Arc<watch::Sender<bool>>,
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
        let stalled = Arc::new(watch::channel(false).0);
        let accept = {
            let (passed, closed, stalled) = (passed.clone(), closed.clone(), stalled.clone());
            tokio::spawn(async move {
                // Dropped with this task: every connection ends with it.
                let mut conns = JoinSet::new();
                while let Ok((conn, _)) = listener.accept().await {
                    while conns.try_join_next().is_some() {}
                    if *closed.borrow() {
                        continue;
                    }
                    let link = (
                        bytes_per_ms.max(1),
                        passed.clone(),
                        closed.subscribe(),
                        stalled.subscribe(),
                    );
                    conns.spawn(pass(conn, target, link));
                }
            })
        };
        SlowLink {
            addr,
            passed,
            closed,
            stalled,
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

    /// Stops passing anything, either way, on every connection, and
    /// leaves them open: the link goes silent, as a partitioned network
    /// does (nothing is closed or refused). New connections stall too.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
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
    (bytes_per_ms, passed, mut closed, mut stalled): (
        u64,
        Arc<AtomicU64>,
        watch::Receiver<bool>,
        watch::Receiver<bool>,
    ),
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
    // Biased, the stall first: once it is seen, nothing more is relayed.
    let silent = tokio::select! {
        biased;
        _ = stalled.wait_for(|s| *s) => true,
        _ = closed.wait_for(|c| *c) => false,
        _ = requests => false,
        _ = answers => false,
    };
    if silent {
        // Both sockets stay open, unread and unwritten, until the link is
        // closed or dropped.
        let _held = (from_client, to_client, from_target, to_target);
        let _ = closed.wait_for(|c| *c).await;
    }
}
