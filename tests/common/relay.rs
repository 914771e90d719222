//! A TCP relay a test puts on one network link so that it can cut it: it
//! forwards every connection to its target until `cut`, then black-holes
//! them (bytes are read and dropped, nothing is answered, nothing is
//! closed), as a partitioned network does; after `heal`, new connections
//! are forwarded again (the black-holed ones stay dead: their peers time
//! out and reconnect). It runs on the test's runtime and stops when
//! dropped.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Relay {
    addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// A relay on a free local port to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(watch::channel(false).0);
        let accept = {
            let cut = cut.clone();
            tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    tokio::spawn(relay(conn, target, cut.subscribe()));
                }
            })
        };
        Relay { addr, cut, accept }
    }

    /// Where clients of the link connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding, on open connections and new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// New connections are forwarded again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        // Every connection ends when the sender is gone.
        self.cut.send_replace(true);
    }
}

/// Forwards `conn` to `target` until the link is cut, then drops its bytes.
async fn relay(mut conn: TcpStream, target: SocketAddr, mut cut: watch::Receiver<bool>) {
    let is_cut = *cut.borrow_and_update();
    if !is_cut {
        if let Ok(mut out) = TcpStream::connect(target).await {
            let _ = out.set_nodelay(true);
            let _ = conn.set_nodelay(true);
            let (mut a, mut b) = (conn.split(), out.split());
            let forward = async {
                tokio::select! {
                    r = tokio::io::copy(&mut a.0, &mut b.1) => r.map(drop),
                    r = tokio::io::copy(&mut b.0, &mut a.1) => r.map(drop),
                }
            };
            tokio::select! {
                // Either side closed: close the other.
                _ = forward => {
                    let _ = b.1.shutdown().await;
                    return;
                }
                _ = async { cut.wait_for(|c| *c).await.map(|_| ()) } => {}
            }
            // `out` is dropped: the target sees its peer vanish only when it
            // writes; the client sees nothing at all.
        } else {
            return;
        }
    }
    // Black hole: read and drop until the client gives up or the relay
    // is dropped.
    let mut sink = vec![0u8; 16 << 10];
    loop {
        tokio::select! {
            r = conn.read(&mut sink) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            r = cut.changed() => if r.is_err() {
                return;
            },
        }
    }
}
