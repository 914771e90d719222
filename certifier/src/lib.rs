//! tashkent-certifier: GSI certification and the global commit order.
//!
//! The certifier decides which update transactions commit and in which
//! order, and makes each committed writeset durable in its WAL before anyone
//! is told (ARCHITECTURE.md, "The life of a transaction" steps 4–5).
//!
//! - [`rule`], [`window`], [`dedupe`], [`certifier`]: the decision, pure code;
//! - [`writeset`] and [`proto`]: the writeset format (protobuf, versioned);
//! - [`record`]: the WAL record (one per committed version, version == LSN);
//! - [`outcome`]: what a certification answers, on and off the wire;
//! - [`server`]: the gRPC service on top of the WAL (certify, the
//!   pipeline's server half, Subscribe, the spool, recovery, purge);
//! - [`client`]: what the proxy uses (the pipeline's client half);
//! - [`config`]: `CertifierConfig` (TOML `[certifier]`) and `CertifierArgs`;
//! - [`tls`]: TLS between the certifier and its clients (optional);
//! - [`turns`]: fair turns for sessions that keep losing on a hot row;
//! - [`raft`]: the replicated certifier's foundation on openraft (log
//!   storage on the WAL, the certifier as a state machine); not yet served.

mod batch;
pub mod certifier;
pub mod client;
mod codec;
pub mod config;
pub mod dedupe;
pub mod error;
pub mod outcome;
pub mod raft;
pub mod record;
mod record_view;
pub mod rule;
pub mod runtime;
pub mod server;
pub mod tls;
pub mod turns;
pub mod window;
pub mod writeset;

/// Generated from `proto/certifier.proto`.
#[allow(clippy::all)]
pub mod proto {
    tonic::include_proto!("tashkent.certifier.v1");
}

/// A position in the global commit order: the first committed transaction
/// is version 1, each commit adds exactly one; 0 means "nothing".
pub type Version = u64;

/// The log filter a process serving the certifier uses when `RUST_LOG`
/// is not set. openraft logs its core's every step (votes, elections,
/// its whole state at start) at `info`, which buried an operator's
/// terminal under `tashkent up --certifiers 3`; its warnings and errors
/// (an unreachable peer, a failed append) still show.
pub const LOG_FILTER: &str = "info,openraft=warn";

pub use certifier::{Certifier, Decision, Limits};
pub use client::{CertifierClient, ChunkSender, ClientOptions, CommittedWriteset, FrameStream};
pub use config::{CertifierArgs, CertifierConfig, WalBackend};
pub use error::{CertifierError, LogFailure};
pub use outcome::Outcome;
pub use proto::{AbortCode, Ddl, Item, Op, ParentRef, Writeset};
pub use rule::{Abort, ConflictSet};
pub use server::service::CertifierService;
pub use server::{run, serve, start, RunningCertifier};
pub use tls::ClientTls;
pub use window::{HorizonCause, WindowLimits};
pub use writeset::WRITESET_FORMAT_VERSION;
