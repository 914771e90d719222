//! `tashkent checkpoint`: a consistent dump of a replica at a known
//! version, taken while it serves; once or every N seconds.

use std::path::PathBuf;
use std::time::Duration;

use tashkent::ops::certifier::CertifierTarget;
use tashkent::ops::checkpoint::{checkpoint_and_purge, remove_partial, Source};
use tashkent::ops::config::ConfigFile;
use tashkent::ops::pg::PgBinaries;
use tashkent::ops::state_dir::StateDir;

/// Flags of `tashkent checkpoint`; each overrides the config file.
///
/// Either `--state-dir` (a local cluster of `tashkent up`: the replica's
/// port is read from its running server, the certifier's from
/// `ports.json`, checkpoints go to `<state>/checkpoints`) or `--pg-port`
/// (any replica) says what to dump.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CheckpointArgs {
    /// TOML file: its `[checkpoint]` section (dir, keep, interval_secs,
    /// replica, jobs) and `[cluster]` section (state_dir, database).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory of a local cluster (`tashkent up`).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The replica to dump (1-based id; recorded in the manifest).
    #[arg(long)]
    pub replica: Option<u32>,
    /// Host of the replica's PostgreSQL (default 127.0.0.1).
    #[arg(long)]
    pub pg_host: Option<String>,
    /// Port of the replica's PostgreSQL.
    #[arg(long)]
    pub pg_port: Option<u16>,
    /// The replicated database (default postgres).
    #[arg(long)]
    pub database: Option<String>,
    /// Where checkpoints are kept.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// How many valid checkpoints to keep.
    #[arg(long)]
    pub keep: Option<usize>,
    /// Parallel pg_dump jobs.
    #[arg(long)]
    pub jobs: Option<u32>,
    /// The certifier (host:port; every node's, a,b,c, for a replicated
    /// one): the oldest kept checkpoint is reported
    /// to it, and it purges the log nobody needs any more.
    #[arg(long, value_name = "ADDR")]
    pub certifier: Option<String>,
    /// PEM certificate(s) to trust for the certifier's TLS (default: the
    /// state directory's, when its certifier serves TLS).
    #[arg(long, value_name = "FILE")]
    pub certifier_tls_ca: Option<PathBuf>,
    /// Keep running and take a checkpoint every SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub every: Option<u64>,
}

/// `tashkent checkpoint`.
pub async fn run(args: CheckpointArgs) -> anyhow::Result<()> {
    let file = ConfigFile::load_or_default(args.config.as_deref())?;
    let (mut cfg, cluster) = (file.checkpoint, file.cluster);
    super::override_fields!(args => cfg; replica, keep, jobs);
    cfg.validate()?;
    let state_dir = args
        .state_dir
        .clone()
        .or_else(|| args.config.as_ref().map(|_| cluster.state_dir.clone()));
    let database = args.database.clone().unwrap_or(cluster.database.clone());
    let (port, found, dir) = match (&state_dir, args.pg_port) {
        (_, Some(port)) => (
            port,
            None,
            args.dir.clone().unwrap_or_else(|| cfg.dir.clone()),
        ),
        (Some(state), None) => {
            let local = StateDir::new(state);
            let port = local.running_port(cfg.replica)?;
            (
                port,
                CertifierTarget::of_state_dir(&local).ok(),
                args.dir.clone().unwrap_or_else(|| local.checkpoints(&cfg.dir)),
            )
        }
        (None, None) => anyhow::bail!(
            "say which replica to dump: --state-dir of a local cluster, or --pg-port (and --pg-host)"
        ),
    };
    let certifier = CertifierTarget::overridden(
        found,
        args.certifier.as_deref(),
        args.certifier_tls_ca.clone(),
    );
    let src = Source {
        host: args.pg_host.clone().unwrap_or_else(|| "127.0.0.1".into()),
        port,
        user: "postgres".into(),
        database,
        replica_id: cfg.replica,
        binaries: PgBinaries::locate()?,
    };
    let cert = match &certifier {
        Some(target) => Some(target.connect().await?),
        None => None,
    };
    remove_partial(&dir)?;
    loop {
        let (c, first) = checkpoint_and_purge(&src, &cfg, &dir, cert.as_ref()).await?;
        let mut line = format!(
            "checkpoint at version {} of replica {}: {} ({} bytes, dump {:.1}s)",
            c.manifest.version,
            c.manifest.replica_id,
            c.dir.display(),
            c.manifest.dump_bytes(),
            c.manifest.dump_seconds
        );
        if let Some(first) = first {
            line.push_str(&format!("; certifier log starts at version {first}"));
        }
        println!("{line}");
        match args.every {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs.max(1))).await,
            None => return Ok(()),
        }
    }
}
