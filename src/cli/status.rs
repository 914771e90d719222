//! `tashkent status`: one screen on a running cluster (the certifier, each
//! replica's state, applied version, lag and connections, the newest
//! checkpoint); `--json` for scripts, `--watch` to refresh.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tashkent::ops::certifier::CertifierTarget;
use tashkent::ops::config::ConfigFile;
use tashkent::ops::state_dir::StateDir;
use tashkent::ops::status::{gather, Targets};

/// Flags of `tashkent status`: a local cluster's `--state-dir` (or the
/// cluster file's), or the addresses of the parts.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StatusArgs {
    /// TOML file: its `[cluster] state_dir` and `[checkpoint] dir`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory of a local cluster (`tashkent up`).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The certifier (host:port), instead of the state directory's.
    #[arg(long, value_name = "ADDR")]
    pub certifier: Option<String>,
    /// PEM certificate(s) to trust for the certifier's TLS (default: the
    /// state directory's, when its certifier serves TLS).
    #[arg(long, value_name = "FILE")]
    pub certifier_tls_ca: Option<PathBuf>,
    /// The proxies' metrics endpoints (host:port, replica 1 first),
    /// instead of the state directory's.
    #[arg(long, value_name = "ADDR,...", value_delimiter = ',')]
    pub proxy_metrics: Option<Vec<String>>,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Print again every SECS seconds until interrupted.
    #[arg(long, value_name = "SECS")]
    pub watch: Option<f64>,
    /// How long each part may take to answer, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    pub timeout: f64,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let targets = targets(&args)?;
    let timeout = Duration::from_secs_f64(args.timeout.max(0.1));
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        let status = gather(&targets, timeout).await;
        let text = if args.json {
            serde_json::to_string_pretty(&status).context("writing JSON")?
        } else {
            status.render()
        };
        if args.watch.is_some() && on_terminal && !args.json {
            // Clear the screen, so the table stays in place.
            print!("\x1b[2J\x1b[H");
        }
        super::say(text.trim_end());
        let Some(every) = args.watch else {
            return Ok(());
        };
        tokio::time::sleep(Duration::from_secs_f64(every.max(0.2))).await;
    }
}

fn targets(args: &StatusArgs) -> anyhow::Result<Targets> {
    let file = ConfigFile::load_or_default(args.config.as_deref())?;
    let state_dir = args
        .state_dir
        .clone()
        .or_else(|| args.config.as_ref().map(|_| file.cluster.state_dir.clone()));
    let mut targets = match &state_dir {
        Some(dir) => Targets::of_state_dir(&StateDir::new(dir), &file.checkpoint.dir)?,
        None => Targets {
            certifier: CertifierTarget::new("", None),
            proxies: Vec::new(),
            checkpoints: None,
        },
    };
    let found = (!targets.certifier.addr.is_empty()).then(|| targets.certifier.clone());
    let Some(certifier) = CertifierTarget::overridden(
        found,
        args.certifier.as_deref(),
        args.certifier_tls_ca.clone(),
    ) else {
        anyhow::bail!(
            "say which cluster: --state-dir (or --config), or --certifier and --proxy-metrics"
        );
    };
    targets.certifier = certifier;
    if let Some(m) = &args.proxy_metrics {
        targets.proxies = m.iter().map(|a| (a.clone(), Some(a.clone()))).collect();
    }
    Ok(targets)
}
