//! `tashkent recover`: rebuild a replica from the newest usable checkpoint.

use std::path::PathBuf;

use tashkent::ops::certifier::CertifierTarget;
use tashkent::ops::config::ConfigFile;
use tashkent::ops::recover::{recover_offline, OfflineRecovery};
use tashkent::ops::state_dir::StateDir;

/// Flags of `tashkent recover`; each overrides the config file.
///
/// With `--state-dir` (a stopped local cluster of `tashkent up`) replica
/// `--replica` is rebuilt in place and the next `tashkent up` replays the
/// log into it. Otherwise `--base-dir`, `--dir`, `--replica` and
/// `--replicas` say everything, and the replica's proxy is started by hand
/// afterwards.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RecoverArgs {
    /// TOML file: its `[checkpoint]` and `[cluster]` sections.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory of a local cluster (`tashkent up`), stopped.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The replica to rebuild (1-based id).
    #[arg(long)]
    pub replica: u32,
    /// Number of replicas in the cluster (sequence striping).
    #[arg(long)]
    pub replicas: Option<u32>,
    /// The replica's harness base directory (holds `data/`).
    #[arg(long, value_name = "DIR")]
    pub base_dir: Option<PathBuf>,
    /// Where the checkpoints are.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The replicated database (default postgres).
    #[arg(long)]
    pub database: Option<String>,
    /// The certifier (host:port; every node's, a,b,c, for a replicated
    /// one), to skip checkpoints older than its log.
    #[arg(long, value_name = "ADDR")]
    pub certifier: Option<String>,
    /// PEM certificate(s) to trust for the certifier's TLS (default: the
    /// state directory's, when its certifier serves TLS).
    #[arg(long, value_name = "FILE")]
    pub certifier_tls_ca: Option<PathBuf>,
    /// Parallel pg_restore jobs.
    #[arg(long)]
    pub jobs: Option<u32>,
}

/// `tashkent recover`.
pub async fn run(args: RecoverArgs) -> anyhow::Result<()> {
    let file = ConfigFile::load_or_default(args.config.as_deref())?;
    let (ckpt, cluster) = (file.checkpoint, file.cluster);
    let state_dir = args
        .state_dir
        .clone()
        .or_else(|| args.config.as_ref().map(|_| cluster.state_dir.clone()));
    let local = state_dir.as_deref().map(StateDir::new);
    let base_dir = match (&args.base_dir, &local) {
        (Some(b), _) => b.clone(),
        (None, Some(l)) => l.replica_base(args.replica),
        (None, None) => anyhow::bail!(
            "say which replica to rebuild: --state-dir of a local cluster, or --base-dir"
        ),
    };
    let dir = match (&args.dir, &state_dir) {
        (Some(d), _) => d.clone(),
        (None, Some(s)) => StateDir::new(s).checkpoints(&ckpt.dir),
        (None, None) => ckpt.dir.clone(),
    };
    let replicas = match (args.replicas, &local) {
        (Some(n), _) => n,
        (None, Some(l)) => l.replicas()?,
        (None, None) => anyhow::bail!("--replicas is needed without --state-dir"),
    };
    let certifier = match &args.certifier {
        Some(addr) => CertifierTarget::overridden(
            local
                .as_ref()
                .and_then(|l| CertifierTarget::of_state_dir(l).ok()),
            Some(addr),
            args.certifier_tls_ca.clone(),
        ),
        None => match local
            .as_ref()
            .and_then(|l| CertifierTarget::of_state_dir(l).ok())
        {
            Some(found) => {
                let target =
                    CertifierTarget::overridden(Some(found), None, args.certifier_tls_ca.clone())
                        .expect("an address was found");
                // A stopped cluster's certifier is not there: then the proxy
                // finds out at its start whether the log still reaches back.
                let reachable =
                    tokio::time::timeout(std::time::Duration::from_secs(2), target.connect())
                        .await
                        .is_ok_and(|c| c.is_ok());
                reachable.then_some(target)
            }
            None => None,
        },
    };
    let r = OfflineRecovery {
        base_dir,
        checkpoint_dir: dir,
        replica_id: args.replica,
        replicas,
        database: args.database.clone().unwrap_or(cluster.database.clone()),
        certifier,
        jobs: args.jobs.unwrap_or(ckpt.jobs),
    };
    let restored = recover_offline(&r).await?;
    for (dir, why) in &restored.refused {
        eprintln!("refused {}: {why}", dir.display());
    }
    println!(
        "replica {} rebuilt from {} at version {} in {:.1}s; its proxy replays the log from \
         version {} when it starts",
        r.replica_id,
        restored.checkpoint.dir.display(),
        restored.version,
        restored.seconds,
        restored.version + 1
    );
    Ok(())
}
