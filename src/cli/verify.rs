//! `tashkent verify`: are the replicas identical?

use std::time::Duration;

use tashkent::ops::verify::{target_of_proxy, verify, Options, Target, DEFAULT_CHUNK_ROWS};

/// Flags of `tashkent verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// State directory of a running local cluster (`tashkent up`).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<std::path::PathBuf>,
    /// A proxy (host:port) of the cluster; give one per replica. Each names
    /// its replica (`SHOW tashkent.replica`), which verify connects to.
    #[arg(long = "proxy", value_name = "ADDR")]
    pub proxies: Vec<String>,
    /// The PostgreSQL superuser verify connects to the replicas as.
    #[arg(long, default_value = "postgres")]
    pub user: String,
    /// The replicated database (with --state-dir).
    #[arg(long, default_value = "postgres")]
    pub database: String,
    /// Rows per checksummed chunk.
    #[arg(long, default_value_t = DEFAULT_CHUNK_ROWS)]
    pub chunk_rows: u64,
    /// Seconds the replicas may take to meet at one version.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// `tashkent verify`: prints the differences and the verdict; true when
/// the replicas are identical.
pub async fn run(args: VerifyArgs) -> anyhow::Result<bool> {
    use anyhow::Context as _;
    let targets = match (&args.state_dir, args.proxies.is_empty()) {
        (Some(state), true) => {
            let local = tashkent::ops::state_dir::StateDir::new(state);
            let mut targets = Vec::new();
            for id in 1..=local.replicas()? {
                let port = local.running_port(id)?;
                targets.push(Target {
                    name: format!("replica {id}"),
                    conninfo: format!(
                        "host=127.0.0.1 port={port} user={} dbname={} application_name=tashkent-verify",
                        args.user, args.database
                    ),
                });
            }
            targets
        }
        (None, false) => {
            let mut targets = Vec::new();
            for p in &args.proxies {
                targets.push(
                    target_of_proxy(p, &args.user)
                        .await
                        .with_context(|| format!("asking proxy {p} for its replica"))?,
                );
            }
            targets
        }
        _ => anyhow::bail!(
            "say which cluster to verify: --state-dir of a local cluster, or --proxy for each replica's proxy"
        ),
    };
    let opts = Options {
        chunk_rows: args.chunk_rows.max(1),
        catch_up: Duration::from_secs(args.timeout),
    };
    let report = verify(&targets, &opts).await?;
    for d in &report.differences {
        println!("DIFFERS: {d}");
    }
    println!("{}", report.verdict());
    Ok(report.identical())
}
