//! The `tashkent` command line.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tashkent::cluster::{ClusterConfig, DurabilityMode, LocalCluster};

#[derive(Parser)]
#[command(
    name = "tashkent",
    version,
    about = "Replication middleware for PostgreSQL (Tashkent-MW)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local cluster (replicas, certifier, proxies) and print how to connect; Ctrl-C stops it.
    Up(UpArgs),
    /// Run the certifier: GSI certification, global order, durable log, gRPC.
    Certifier(tashkent_certifier::CertifierArgs),
    /// Run a replica proxy: PostgreSQL clients connect here.
    Proxy(tashkent::proxy::ProxyArgs),
    /// Take a checkpoint of a replica (a consistent dump at a known version) while it serves.
    Checkpoint(tashkent::checkpoint::CheckpointArgs),
    /// Rebuild a replica whose data directory is lost or untrusted from the newest usable checkpoint.
    Recover(tashkent::recover::RecoverArgs),
    /// Measure standalone PostgreSQL (fsync on), Base and Tashkent-MW side by side (AllUpdates, TPC-B).
    Bench(tashkent::bench::BenchArgs),
    /// Check online that every replica holds the same contents (checksums
    /// of every replicated table, chunk by chunk, each at one version on
    /// all replicas); exits 0 only when they are identical
    Verify(tashkent::verify::VerifyArgs),
}

#[derive(clap::Args)]
struct UpArgs {
    /// TOML file whose `[cluster]` section describes the cluster (see
    /// cluster.example.toml); the flags below override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// State directory; kept, so a second `up` resumes the same cluster.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Number of PostgreSQL replicas (each with its proxy).
    #[arg(long)]
    replicas: Option<u32>,
    /// Where durability lives: `middleware` (Tashkent-MW: the certifier's
    /// log, replicas with fsync off) or `database` (Base: every replica
    /// commit pays PostgreSQL's own fsync).
    #[arg(long, value_enum)]
    durability: Option<DurabilityMode>,
    /// Port of the first proxy, the others follow (default: free ports,
    /// kept in the state directory).
    #[arg(long)]
    proxy_port: Option<u16>,
}

// The proxy and the certifier allocate per message; mimalloc is what the
// certifier's benchmark measures (glibc malloc cost a quarter of its CPU).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let cli = Cli::parse();
    // The bench draws progress bars on stderr: only warnings may cross them.
    let level = match cli.command {
        Command::Bench(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Up(args) => up(args),
        Command::Certifier(args) => tokio::runtime::Runtime::new()
            .context("starting the tokio runtime")?
            .block_on(tashkent_certifier::run(args))
            .context("certifier"),
        Command::Proxy(args) => tokio::runtime::Runtime::new()
            .context("starting the tokio runtime")?
            .block_on(tashkent::proxy::run(args)),
        Command::Checkpoint(args) => tokio::runtime::Runtime::new()
            .context("starting the tokio runtime")?
            .block_on(tashkent::checkpoint::run(args)),
        Command::Recover(args) => tokio::runtime::Runtime::new()
            .context("starting the tokio runtime")?
            .block_on(tashkent::recover::run(args)),
        Command::Bench(args) => tashkent::bench::main(args),
        Command::Verify(args) => {
            let identical = tokio::runtime::Runtime::new()
                .context("starting the tokio runtime")?
                .block_on(tashkent::verify::run(args))?;
            if !identical {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn up(args: UpArgs) -> Result<()> {
    let mut cfg = match &args.config {
        Some(p) => ClusterConfig::load(p)?,
        None => ClusterConfig::default(),
    };
    if let Some(v) = args.state_dir {
        cfg.state_dir = v;
    }
    if let Some(v) = args.replicas {
        cfg.replicas = v;
    }
    if let Some(v) = args.durability {
        cfg.durability = v;
    }
    if let Some(v) = args.proxy_port {
        cfg.proxy_port = v;
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        // Signals are caught before anything starts, so a Ctrl-C during
        // startup still ends in an orderly stop.
        let shutdown = ShutdownSignal::install()?;
        let cluster = LocalCluster::start(&cfg)
            .await
            .context("starting the cluster")?;
        let _checkpoints = cluster.periodic_checkpoints(args.config.as_deref())?;
        let mut text = format!(
            "tashkent is up: {} replica(s), durability {:?} (state in {}).\n",
            cfg.replicas,
            cfg.durability,
            cluster.state_dir().display()
        )
        .to_lowercase();
        text.push_str(&format!(
            "connect: psql \"{}\"\n",
            cluster.proxy_conninfo(0)
        ));
        for i in 1..cfg.replicas as usize {
            text.push_str(&format!(
                "proxy {}: psql \"{}\"\n",
                i + 1,
                cluster.proxy_conninfo(i)
            ));
        }
        text.push_str(&format!(
            "failover: psql \"{}\"\n",
            cluster.multi_host_conninfo()
        ));
        text.push_str("Ctrl-C stops it.");
        say(&text);
        let signal = shutdown.wait().await;
        eprintln!("{signal}: stopping");
        cluster.shutdown().await.context("stopping the cluster")
    })
}

/// Prints a line for the operator. A closed stdout (the reader went away)
/// must not stop a running cluster, so write errors are ignored.
fn say(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// SIGINT/SIGTERM, installed early.
struct ShutdownSignal {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    fn install() -> Result<ShutdownSignal> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignal {
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
        })
    }

    async fn wait(mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}
