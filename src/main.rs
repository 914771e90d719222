//! The `tashkent` command line.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tashkent::pg::{Durability, PgConfig, PgServer};

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
    /// Start a local PostgreSQL server and print how to connect; Ctrl-C stops it.
    Up(UpArgs),
    /// Run the certifier: GSI certification, global order, durable log, gRPC.
    Certifier(tashkent_certifier::CertifierArgs),
}

#[derive(clap::Args)]
struct UpArgs {
    /// State directory; kept, so a second `up` resumes the same server.
    #[arg(long, default_value = "tashkent-state")]
    state_dir: PathBuf,
    /// Port of the server (default: a free one).
    #[arg(long)]
    port: Option<u16>,
    /// Where durability lives: `middleware` runs PostgreSQL with fsync off,
    /// `database` keeps PostgreSQL's own fsync per commit.
    #[arg(long, value_enum, default_value_t = DurabilityMode::Middleware)]
    durability: DurabilityMode,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityMode {
    Middleware,
    Database,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Up(args) => up(args),
        Command::Certifier(args) => tokio::runtime::Runtime::new()
            .context("starting the tokio runtime")?
            .block_on(tashkent_certifier::run(args))
            .context("certifier"),
    }
}

fn up(args: UpArgs) -> Result<()> {
    let base = std::path::absolute(&args.state_dir)
        .with_context(|| format!("resolving {}", args.state_dir.display()))?;
    let durability = match args.durability {
        DurabilityMode::Middleware => Durability::Off,
        DurabilityMode::Database => Durability::On,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // Signals are caught before the server starts, so a Ctrl-C during
    // startup still ends in an orderly stop.
    let shutdown = runtime.block_on(async { ShutdownSignal::install() })?;
    let server = PgServer::start(PgConfig {
        base_dir: Some(base.join("replica-1")),
        port: args.port,
        durability,
        ..PgConfig::default()
    })
    .context("starting PostgreSQL")?;
    say(&format!(
        "PostgreSQL is up (data in {}).\nconnect: psql \"{}\"\nurl:     {}\nCtrl-C stops it.",
        server.data_dir().display(),
        server.conninfo("postgres"),
        server.url("postgres")
    ));
    let signal = runtime.block_on(shutdown.wait());
    eprintln!("{signal}: stopping");
    drop(server);
    Ok(())
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
