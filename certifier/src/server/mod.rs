//! The certifier's server side: the service on top of the WAL, its gRPC
//! face, and running it (open the WAL, recover, listen, serve until told
//! to stop, close the WAL).
//!
//! Arrows point one way: `grpc` hands each RPC to `service` (certify),
//! `pipeline` or `subscribe`, which use `service`'s state; `service` uses
//! the WAL, the `spool`, the `tail` cache and `purge`; `recovery` rebuilds
//! its state at start.

mod chunked;
mod contact;
mod grpc;
mod log_watch;
pub mod metrics;
mod node;
mod pipeline;
pub mod purge;
pub mod recovery;
mod rejoin;
mod replicated;
pub mod service;
pub mod spool;
mod standing;
mod streamed;
mod subscribe;
pub(crate) mod tail;

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;

use tashkent_wal::Wal;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::config::CertifierConfig;
use crate::error::CertifierError;
use crate::proto::certifier_server::CertifierServer;
use service::{CertifierService, ServiceLimits};
use spool::Spool;
use tail::Tail;

/// Largest HTTP/2 frame peers may send us (the protocol's default is
/// 16 KiB): a leader's raft entry of many writesets reaches a follower in
/// one DATA frame instead of many.
const MAX_FRAME_BYTES: u32 = 1 << 20;

/// Most records the subscriber tail cache holds (besides its byte bound).
pub(crate) const TAIL_MAX_RECORDS: usize = 1 << 20;

/// A certifier serving in this process.
pub struct RunningCertifier {
    local_addr: SocketAddr,
    metrics: Option<tashkent_metrics::MetricsServer>,
    service: CertifierService,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), CertifierError>>,
}

impl RunningCertifier {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where its metrics are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.local_addr())
    }

    /// The service itself, for in-process use (benchmarks, tests).
    pub fn service(&self) -> &CertifierService {
        &self.service
    }

    /// Stops serving (ends subscriber streams, drains requests) and closes
    /// the WAL.
    pub async fn shutdown(mut self) -> Result<(), CertifierError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.wait().await
    }

    /// Waits until the server stops (after `shutdown` or a fatal error).
    pub async fn wait(self) -> Result<(), CertifierError> {
        self.task
            .await
            .map_err(|e| CertifierError::Io(std::io::Error::other(e)))?
    }
}

/// What a start opened before it serves: the logs, the service on them
/// and, on a raft node, its core. Closed by [`Parts::close`] when serving
/// ends, and also when the start fails after opening them (a port taken),
/// so that no failed start leaves a log locked or a raft core running.
struct Parts {
    wal: Wal,
    spool: std::sync::Arc<Spool>,
    service: CertifierService,
    raft: Option<(crate::raft::Raft, node::Leftovers)>,
}

impl Parts {
    async fn close(self) -> Result<(), CertifierError> {
        let Parts {
            wal,
            spool,
            service,
            raft,
        } = self;
        service.stop();
        drop(service);
        if let Some((raft, leftovers)) = raft {
            // Also when serving failed before its drain.
            leftovers.purge_waits().no_more_kept();
            // Before the versions log closes: the state machine appends
            // to it.
            if let Err(e) = raft.shutdown().await {
                tracing::warn!("raft shutdown: {e}");
            }
            if let Err(e) = leftovers.stop().await {
                tracing::warn!("raft log close: {e}");
            }
        }
        let closed = wal.close().await;
        // Also while the service's tasks still hold it for a moment: a
        // start again on this directory (a failed start tried once more)
        // must find it unlocked.
        let spool_closed = spool.close().await;
        closed?;
        spool_closed?;
        Ok(())
    }
}

/// Opens the WAL, rebuilds the state from it, binds `config.listen` and
/// starts serving in the background.
pub async fn start(config: CertifierConfig) -> Result<RunningCertifier, CertifierError> {
    config.validate()?;
    // Before the log is opened: a certificate that cannot be used stops
    // the start with the file's name, not the first client's handshake.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            // A node's peers show certificates their CA signed (`tls.rs`).
            let peers_ca = config.node_id.and(config.peers_ca());
            Some(crate::tls::server_config(cert, key, peers_ca)?)
        }
        _ => None,
    };
    let limits = ServiceLimits {
        max_writeset_bytes: config.max_writeset_bytes,
        max_message_bytes: config.max_message_bytes,
        purge_replica_timeout: std::time::Duration::from_millis(config.purge_replica_timeout_ms),
    };
    // A raft node's leader hands over before it stops (`raft::transfer`).
    let mut hand_over_on_stop = None;
    let (parts, listen, raft_rpc) = if config.node_id.is_some() {
        let n = node::open(&config, limits).await?;
        hand_over_on_stop = config.hand_over_on_stop.then(|| n.hand_over.clone());
        let mut rpc = crate::raft::RaftService::new(n.raft.clone())
            .stops_with(n.service.inner.stop_signal.subscribe())
            .hands_over(n.hand_over)
            .stands_when(n.may_stand);
        if tls.is_some() {
            rpc = rpc.peer_certificates_required();
        }
        let rpc = match n.votes_held {
            Some(until) => rpc.votes_held_until(until),
            None => rpc,
        };
        let parts = Parts {
            wal: n.wal,
            spool: n.spool,
            service: n.service,
            raft: Some((n.raft, n.leftovers)),
        };
        (parts, n.listen, Some(rpc.into_server()))
    } else {
        let (wal, spool, certifier, tail) = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || -> Result<_, CertifierError> {
                let wal = Wal::open(&config.wal_dir, config.wal_options())?;
                crate::raft::seed::single_may_run_in(&config.wal_dir)?;
                let spool = Spool::open(&config.wal_dir, config.spool_options())?;
                let mut tail = Tail::new(config.tail_cache_bytes, TAIL_MAX_RECORDS);
                let certifier = recovery::recover(&wal, &spool, config.limits(), &mut tail)?;
                Ok((wal, spool, certifier, tail))
            })
            .await
            .map_err(|e| CertifierError::Io(std::io::Error::other(e)))??
        };
        let spool = std::sync::Arc::new(spool);
        let service = CertifierService::new(
            wal.clone(),
            spool.clone(),
            certifier,
            tail,
            limits,
            config.max_record_bytes(),
        );
        let parts = Parts {
            wal,
            spool,
            service,
            raft: None,
        };
        (parts, config.listen, None)
    };
    let up = async {
        // What no retained version and no call needs (chunks of calls that
        // never finished before a restart).
        parts.spool.purge(parts.wal.first_lsn()).await?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let metrics = match config.metrics_listen {
            Some(addr) => {
                let svc = parts.service.clone();
                let render: tashkent_metrics::Render =
                    std::sync::Arc::new(move || svc.render_metrics());
                let server = tashkent_metrics::MetricsServer::serve(addr, render)
                    .await
                    .map_err(|e| CertifierError::Io(std::io::Error::other(e)))?;
                tracing::debug!(addr = %server.local_addr(), "certifier metrics");
                Some(server)
            }
            None => None,
        };
        let mut server = Server::builder()
            .initial_stream_window_size(Some(crate::client::WINDOW_BYTES))
            .initial_connection_window_size(Some(crate::client::WINDOW_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        if let Some(tls) = tls {
            server = server
                .tls_config(tls)
                .map_err(|e| CertifierError::Tls(crate::error::chain(&e)))?;
        }
        Ok::<_, CertifierError>((listener, local_addr, metrics, server))
    }
    .await;
    let (listener, local_addr, metrics, mut server) = match up {
        Ok(up) => up,
        Err(e) => {
            // A port taken: nothing may stay locked or running behind the
            // error (a caller starts again, on this log).
            if let Err(closing) = parts.close().await {
                tracing::warn!("closing the certifier after a failed start: {closing}");
            }
            return Err(e);
        }
    };
    let service = parts.service.clone();
    let grpc = CertifierServer::new(service.clone())
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let purge_waits = parts.raft.as_ref().map(|(_, left)| left.purge_waits());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let svc_on_stop = service.clone();
    let silent_peer_timeout = std::time::Duration::from_millis(config.silent_peer_timeout_ms);
    let task = tokio::spawn(async move {
        let incoming = silent_peers_dropped(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            silent_peer_timeout,
        );
        // With TLS, a connection whose handshake fails (a plaintext
        // client, an untrusting one) is dropped alone; serving goes on.
        let served = server
            .add_service(grpc)
            .add_optional_service(raft_rpc)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop_rx.await;
                // While this node still serves: the target's vote request
                // comes to it.
                if let Some(h) = hand_over_on_stop {
                    crate::raft::transfer::before_stopping(&h).await;
                }
                // Ends subscriber streams so the graceful drain can finish.
                svc_on_stop.stop();
                if let Some(p) = purge_waits {
                    p.no_more_kept();
                }
            })
            .await;
        let closed = parts.close().await;
        served?;
        closed
    });
    // Debug: `tashkent up` prints the addresses itself, the binary on stdout.
    tracing::debug!(
        %local_addr,
        wal_dir = %config.wal_dir.display(),
        tls = config.tls_cert.is_some(),
        "certifier listening"
    );
    Ok(RunningCertifier {
        local_addr,
        metrics,
        service,
        stop: Some(stop_tx),
        task,
    })
}

/// The connections `incoming` accepts, each dropped once its peer has
/// acknowledged nothing for `timeout` (zero: the kernel's defaults), and
/// with it its streams. Data queued for a silent peer goes
/// unacknowledged, or stays behind a window its stopped process never
/// opens again, and `TCP_USER_TIMEOUT` ends the connection; an idle one
/// is probed (TCP keepalive, after half of `timeout` idle, about four
/// probes before it ends), so one lost probe does not end it.
fn silent_peers_dropped(
    incoming: TcpIncoming,
    timeout: std::time::Duration,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    let on = !timeout.is_zero();
    let incoming = match on {
        true => incoming
            .with_keepalive(Some(timeout / 2))
            .with_keepalive_interval(Some((timeout / 8).max(std::time::Duration::from_secs(1)))),
        false => incoming,
    };
    incoming.map(move |accepted| {
        let stream = accepted?;
        if on {
            if let Err(e) = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(timeout)) {
                tracing::warn!("TCP_USER_TIMEOUT on an accepted connection: {e}");
            }
        }
        Ok(stream)
    })
}

/// Serves until `shutdown` resolves. Prints `listening on ADDR` (the bound
/// address) as one line on stdout once ready, for scripts and tests.
pub async fn serve(
    config: CertifierConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CertifierError> {
    let running = start(config).await?;
    {
        let mut out = std::io::stdout().lock();
        // Before the address line: whoever waits for that one has both.
        if let Some(m) = running.metrics_addr() {
            writeln!(out, "metrics on {m}")?;
        }
        writeln!(out, "listening on {}", running.local_addr())?;
        out.flush()?;
    }
    let RunningCertifier {
        stop,
        mut task,
        metrics: _metrics,
        ..
    } = running;
    let joined = tokio::select! {
        () = shutdown => {
            if let Some(stop) = stop {
                let _ = stop.send(());
            }
            (&mut task).await
        }
        r = &mut task => r,
    };
    joined.map_err(|e| CertifierError::Io(std::io::Error::other(e)))?
}

/// `tashkent certifier` / `tashkent-certifier`: serves `config` (the flags
/// and config file resolved, `crate::CertifierArgs::resolve`, before the runtime
/// is built: it says how many workers, `runtime`) until SIGINT or SIGTERM.
pub async fn run(config: CertifierConfig) -> Result<(), CertifierError> {
    // Installed before `serve` prints its address: whoever reads that line
    // may signal at once, and a signal before the handlers exist would
    // kill the process with the default action instead of stopping it.
    let shutdown = shutdown_signal()?;
    serve(config, shutdown).await
}

fn shutdown_signal() -> Result<impl Future<Output = ()>, CertifierError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("certifier shutting down");
    })
}
