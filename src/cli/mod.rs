//! The `tashkent` command line: one module per subcommand. This is the
//! only place that uses anyhow; the libraries have their own error types.

mod admin;
mod bench;
mod certifier;
mod checkpoint;
mod proxy;
mod recover;
mod status;
mod up;
mod verify;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// Copies each flag that was given (`Some`) over the same-named field of a
/// setting read from the cluster file: `override_fields!(args => cfg;
/// replicas, database)`.
macro_rules! override_fields {
    ($args:expr => $cfg:expr; $($f:ident),* $(,)?) => {
        $( if let Some(v) = $args.$f.clone() { $cfg.$f = v; } )*
    };
}
pub(crate) use override_fields;

#[derive(Parser)]
#[command(
    name = "tashkent",
    version,
    about = "Replication middleware for PostgreSQL (Tashkent-MW)"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local cluster (replicas, certifier, proxies) and print how to connect; Ctrl-C stops it.
    Up(up::UpArgs),
    /// Run the certifier: GSI certification, global order, durable log, gRPC (add-node, remove-node: change a replicated one's membership).
    Certifier(certifier::CertifierCmd),
    /// Run a replica proxy: PostgreSQL clients connect here.
    Proxy(proxy::ProxyArgs),
    /// Take a checkpoint of a replica (a consistent dump at a known version) while it serves.
    Checkpoint(checkpoint::CheckpointArgs),
    /// Rebuild a replica whose data directory is lost or untrusted from the newest usable checkpoint.
    Recover(recover::RecoverArgs),
    /// Measure standalone PostgreSQL (fsync on), Base and Tashkent-MW side by side (AllUpdates, TPC-B).
    Bench(bench::BenchArgs),
    /// Check online that every replica holds the same contents (checksums
    /// of every replicated table, chunk by chunk, each at one version on
    /// all replicas); exits 0 only when they are identical
    Verify(verify::VerifyArgs),
    /// Show a running cluster: the certifier, each replica's state,
    /// applied version, lag and connections, the newest checkpoint
    Status(status::StatusArgs),
    /// Roles on every replica at once (create-role, set-password, drop-role): roles are per server and cannot go through a proxy
    Admin(admin::AdminArgs),
}

/// Parses the command line and runs the subcommand.
pub fn main() -> Result<()> {
    let cli = Cli::parse();
    // The bench draws progress bars on stderr: only warnings may cross them.
    let level = match cli.command {
        Command::Bench(_) | Command::Status(_) | Command::Admin(_) => "warn",
        _ => tashkent_certifier::LOG_FILTER,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal, and not when NO_COLOR asks so
        // (no-color.org): never escape codes in a file or pipe.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    match cli.command {
        Command::Up(args) => up::run(args),
        Command::Certifier(cmd) => certifier::run(cmd),
        Command::Proxy(args) => {
            let cfg = args.config()?;
            tashkent_certifier::runtime::build(cfg.worker_threads)
                .context("starting the tokio runtime")?
                .block_on(proxy::run(cfg))
        }
        Command::Checkpoint(args) => tokio::runtime::Runtime::new()
            .context("starting the tokio runtime")?
            .block_on(checkpoint::run(args)),
        Command::Recover(args) => tokio::runtime::Runtime::new()
            .context("starting the tokio runtime")?
            .block_on(recover::run(args)),
        Command::Bench(args) => bench::main(args),
        Command::Admin(args) => tokio::runtime::Runtime::new()
            .context("starting the tokio runtime")?
            .block_on(admin::run(args)),
        Command::Status(args) => tokio::runtime::Runtime::new()
            .context("starting the tokio runtime")?
            .block_on(status::run(args)),
        Command::Verify(args) => {
            let identical = tokio::runtime::Runtime::new()
                .context("starting the tokio runtime")?
                .block_on(verify::run(args))?;
            if !identical {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// Prints a line for the operator. A closed stdout (the reader went away)
/// must not stop a running cluster, so write errors are ignored.
pub(crate) fn say(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// SIGINT/SIGTERM, installed early.
pub(crate) struct ShutdownSignal {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    pub(crate) fn install() -> Result<ShutdownSignal> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignal {
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
        })
    }

    pub(crate) async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}
