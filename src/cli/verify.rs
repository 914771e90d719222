//! `tashkent verify`: are the replicas identical?

use std::time::Duration;

use tashkent::ops::verify::{verify, Options, DEFAULT_CHUNK_ROWS};

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
    let targets = tashkent::ops::targets::replicas(
        args.state_dir.as_deref(),
        &args.proxies,
        &args.user,
        &args.database,
        "tashkent-verify",
    )
    .await
    .context("finding the replicas")?;
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
