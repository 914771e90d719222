//! `tashkent proxy`: one replica's proxy, until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use tashkent::ops::config::ConfigFile;
use tashkent::proxy::{self, ProxyConfig};

/// Command-line flags of `tashkent proxy`; each overrides the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ProxyArgs {
    /// TOML file whose `[proxy]` section holds the settings.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This replica's id (1..=replicas).
    #[arg(long)]
    pub replica_id: Option<u32>,
    /// Number of replicas in the cluster.
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Client listen address (port 0: any free port; printed as "listening on ADDR").
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Host of the replica's PostgreSQL.
    #[arg(long)]
    pub pg_host: Option<String>,
    /// Port of the replica's PostgreSQL.
    #[arg(long)]
    pub pg_port: Option<u16>,
    /// The replicated database.
    #[arg(long)]
    pub database: Option<String>,
    /// Superuser the proxy uses for capture and apply.
    #[arg(long)]
    pub admin_user: Option<String>,
    /// The certifier's address, host:port (or https://host:port with
    /// --certifier-tls-ca); a replicated certifier's nodes as a
    /// comma-separated list (commits follow the leader).
    #[arg(long, value_name = "ADDR")]
    pub certifier: Option<String>,
    /// PEM certificate(s) to trust for the certifier's TLS (its CA or its
    /// self-signed certificate): reach the certifier over TLS only.
    #[arg(long, value_name = "FILE")]
    pub certifier_tls_ca: Option<PathBuf>,
    /// Name the certifier's certificate must be valid for (default: the
    /// host of --certifier).
    #[arg(long, value_name = "NAME")]
    pub certifier_tls_name: Option<String>,
    /// Largest client protocol message in bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Largest writeset of one transaction in bytes (at most the
    /// certifier's max_writeset_bytes); larger ones fail with 54000.
    #[arg(long, value_name = "BYTES")]
    pub max_writeset_bytes: Option<u64>,
    /// Most versions the applier commits in one replica transaction while
    /// catching up (1: one each).
    #[arg(long, value_name = "N")]
    pub max_apply_batch: Option<usize>,
    /// Serve Prometheus metrics on ADDR (`GET /metrics`; default: off).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// PEM certificate chain for clients' TLS (with --tls-key; without
    /// one, an SSLRequest is answered N).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Refuse clients that do not use TLS (28000), like hostssl-only
    /// pg_hba.conf; `--tls-required=false` overrides the file.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub tls_required: Option<bool>,
    /// Seconds a client may take from connecting to being authenticated
    /// (PostgreSQL's authentication_timeout).
    #[arg(long, value_name = "SECONDS")]
    pub authentication_timeout: Option<f64>,
    /// Worker threads of the proxy's runtime (default 0: half the cores,
    /// at least one, or TOKIO_WORKER_THREADS when set).
    #[arg(long, value_name = "N")]
    pub worker_threads: Option<usize>,
    /// Whether a session's transaction after a 40001 waits for the version
    /// it lost to (`--fair-retries=false` turns it off).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub fair_retries: Option<bool>,
    /// Whether rows locked FOR UPDATE / FOR NO KEY UPDATE conflict across
    /// proxies like written ones (`--lock-conflicts=false` turns it off).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub lock_conflicts: Option<bool>,
    /// The cluster's durability mode, as `tashkent up --durability`:
    /// `database-grouped` (Tashkent-API) acknowledges a COMMIT only once
    /// the replica's WAL is flushed past it (sets --ack-after-flush); the
    /// replica must then run fsync on and synchronous_commit off.
    #[arg(long, value_name = "MODE")]
    pub durability: Option<tashkent::ops::cluster::DurabilityMode>,
    /// Acknowledge a COMMIT only once the replica's WAL is flushed past its
    /// commit record (`--ack-after-flush=false` overrides the file).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub ack_after_flush: Option<bool>,
}

impl ProxyArgs {
    /// The file's `[proxy]` section (or the defaults), flags over it.
    pub fn config(self) -> anyhow::Result<ProxyConfig> {
        let args = self;
        let mut c = ConfigFile::load_or_default(args.config.as_deref())?.proxy;
        super::override_fields!(args => c;
            replica_id,
            replicas,
            listen,
            pg_host,
            pg_port,
            database,
            admin_user,
            certifier,
            max_message_bytes,
            max_apply_batch,
            max_writeset_bytes,
            tls_required,
            worker_threads
        );
        if let Some(f) = args.fair_retries {
            c.fair_retries = f;
        }
        if let Some(f) = args.lock_conflicts {
            c.lock_conflicts = f;
        }
        if let Some(mode) = args.durability {
            c.ack_after_flush = mode.ack_after_flush();
        }
        if let Some(f) = args.ack_after_flush {
            c.ack_after_flush = f;
        }
        if args.metrics_listen.is_some() {
            c.metrics_listen = args.metrics_listen;
        }
        if let Some(ca) = args.certifier_tls_ca {
            c.certifier_tls_ca = Some(ca);
        }
        if let Some(name) = args.certifier_tls_name {
            c.certifier_tls_name = Some(name);
        }
        if let Some(cert) = args.tls_cert {
            c.tls_cert = Some(cert);
        }
        if let Some(key) = args.tls_key {
            c.tls_key = Some(key);
        }
        if let Some(secs) = args.authentication_timeout {
            c.authentication_timeout = std::time::Duration::try_from_secs_f64(secs)
                .map_err(|e| anyhow::anyhow!("--authentication-timeout {secs}: {e}"))?;
        }
        c.validate()?;
        Ok(c)
    }
}

/// Runs a proxy with `cfg` (`ProxyArgs::config`, resolved before the
/// runtime is built: it says how many workers) until SIGINT/SIGTERM (the
/// `tashkent proxy` command).
pub async fn run(cfg: ProxyConfig) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut shutdown = super::ShutdownSignal::install()?;
    let proxy = proxy::start(cfg).await.context("starting the proxy")?;
    // Before the address line: whoever waits for that one has both.
    if let Some(m) = proxy.metrics_addr() {
        println!("metrics on {m}");
    }
    println!("listening on {}", proxy.local_addr());
    shutdown.wait().await;
    proxy.shutdown().await;
    Ok(())
}
