//! `tashkent-certifier`: the certifier as a standalone binary (the same
//! `CertifierArgs` as `tashkent certifier`). Prints `listening on ADDR` on
//! stdout once it accepts connections.

use clap::Parser;
use tashkent_certifier::CertifierArgs;

// Per-message allocations dominated glibc malloc's profile; see the
// `certify` benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tashkent-certifier", version, about = "tashkent GSI certifier")]
struct Cli {
    #[command(flatten)]
    args: CertifierArgs,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(tashkent_certifier::LOG_FILTER)
            }),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: never escape codes in a file or pipe.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let served = Cli::parse().args.resolve().and_then(|config| {
        tashkent_certifier::runtime::build(config.worker_threads)?
            .block_on(tashkent_certifier::run(config))
    });
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tashkent-certifier: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
