//! The replica proxy: what tashkent's users connect to.
//!
//! One proxy sits in front of one PostgreSQL replica. It speaks the
//! PostgreSQL wire protocol to clients (`session`), runs their
//! transactions on its replica with writeset capture, certifies update
//! transactions with the certifier, and commits them in the global order
//! together with every other replica's transactions (`applier`).

mod applier;
pub mod capture;
mod commit_order;
mod config;
mod conn;
pub mod consistency;
mod coordination;
pub mod errors;
pub mod flush;
mod metrics;
mod session;
pub mod sql;
mod tls;
pub mod wire;
pub mod writeset;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tashkent_certifier::{CertifierClient, ClientOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::ProxyConfig;
use coordination::Shared;
pub use tls::acceptor as tls_acceptor;

use crate::error::{Error, Result};

/// A proxy serving clients; dropping it (or `shutdown`) stops accepting
/// and ends its sessions.
pub struct RunningProxy {
    addr: SocketAddr,
    metrics: Option<tashkent_metrics::MetricsServer>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningProxy {
    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where its metrics are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.local_addr())
    }

    /// Stops the proxy and waits for its tasks.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Prepares the replica (capture installed, sequences striped), connects
/// to the certifier, and starts serving on `cfg.listen`.
pub async fn start(cfg: ProxyConfig) -> Result<RunningProxy> {
    cfg.validate()?;
    // A certificate that cannot be used is an error at start, not at the
    // first client's SSLRequest.
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    let certifier_options = cfg.certifier_options()?;
    let admin = applier::connect_admin(&cfg).await?;
    capture::install(&admin, cfg.max_writeset_bytes).await?;
    capture::configure_replica(&admin, cfg.replica_id, cfg.replicas).await?;
    let applied = capture::applied_version(&admin).await?;
    drop(admin);
    let certifier = connect_certifier(&cfg, certifier_options).await?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(Error::io(format!("listening on {}", cfg.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(Error::io("reading the listening address"))?;
    let (flusher, flush_task) = if cfg.ack_after_flush {
        let (f, t) = flush::Flusher::start(&cfg).await?;
        (Some(f), Some(t))
    } else {
        (None, None)
    };
    let shared = Arc::new(Shared::new(cfg, certifier, applied, tls, flusher));
    let metrics = match shared.cfg.metrics_listen {
        Some(at) => {
            let s = shared.clone();
            let render: tashkent_metrics::Render = Arc::new(move || s.metrics.render(&s));
            let server = tashkent_metrics::MetricsServer::serve(at, render)
                .await
                .map_err(|e| Error::Config(format!("serving metrics: {e}")))?;
            Some(server)
        }
        None => None,
    };
    let (stop, stopped) = watch::channel(false);
    let mut tasks = vec![
        tokio::spawn(applier::run(shared.clone())),
        tokio::spawn(report_ticker(shared.clone())),
        tokio::spawn(accept_loop(shared, listener, stopped)),
    ];
    tasks.extend(flush_task);
    Ok(RunningProxy {
        addr,
        metrics,
        stop,
        tasks,
    })
}

/// Connects to the certifier and asks for its status, trying again until
/// `connect_timeout` (it may be starting too); the last error says why, a
/// TLS handshake's included. The applier's own connection is made later, with the same
/// options (`CertifierClient::connect_again`).
async fn connect_certifier(cfg: &ProxyConfig, opts: ClientOptions) -> Result<CertifierClient> {
    let deadline = tokio::time::Instant::now() + cfg.connect_timeout;
    loop {
        // One call too: HTTP/2 connects lazily, and a certifier that
        // closes the connection (TLS-only, and this proxy speaks
        // plaintext) would otherwise be found out by the first client.
        let attempt = async {
            let c = CertifierClient::connect_with(&cfg.certifier, opts.clone()).await?;
            c.status().await?;
            Ok(c)
        };
        // Bounded too: a call on a connection the certifier dropped was
        // once seen pending for good (CI, a plaintext proxy of a TLS
        // certifier), and the proxy's start hung.
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_millis(100));
        let attempt = tokio::time::timeout(left, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(tashkent_certifier::CertifierError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the certifier did not answer within {left:?}"),
                )))
            });
        match attempt {
            Ok(c) => return Ok(c),
            // An address that cannot work never will.
            Err(e @ tashkent_certifier::CertifierError::Config(_)) => {
                return Err(Error::Certifier {
                    context: "the certifier's address".into(),
                    source: e,
                })
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                // Connected, then the call died under the connection: what
                // a TLS-only certifier does to a plaintext client.
                let hint = if opts.tls.is_none()
                    && matches!(
                        e,
                        tashkent_certifier::CertifierError::Rpc(_)
                            | tashkent_certifier::CertifierError::Io(_)
                    ) {
                    " (in plaintext: a certifier with tls_cert needs certifier_tls_ca)"
                } else {
                    ""
                };
                return Err(Error::Certifier {
                    context: format!(
                        "no connection to the certifier within connect_timeout ({}s){hint}",
                        cfg.connect_timeout.as_secs_f64()
                    ),
                    source: e,
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
) {
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    sessions.spawn(session::serve(shared.clone(), stream));
                }
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = stopped.changed() => break,
        }
    }
    sessions.shutdown().await;
}

/// Keeps the certifier's view of this replica fresh while no writesets
/// arrive (open snapshots move on as transactions end).
async fn report_ticker(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        applier::report(&shared).await;
    }
}
