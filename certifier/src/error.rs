//! The one error type of the crate, and its mapping to gRPC status codes at
//! the service edge (and back, in the client).

use tashkent_wal::WalError;

use crate::Version;

/// Everything that can go wrong in the certifier, its service and its client.
#[derive(Debug, thiserror::Error)]
pub enum CertifierError {
    /// The request is malformed (bad writeset, bad report, unknown format
    /// version). Never retried with the same input: it would fail again.
    #[error("invalid request: {0}")]
    InvalidArgument(String),

    /// The writeset exceeds `max_writeset_bytes`.
    #[error(
        "writeset too large: more than {max} bytes (max_writeset_bytes); split the transaction"
    )]
    WritesetTooLarge { max: u64 },

    /// The WAL failed earlier; this certifier acknowledges nothing any more
    /// and must be restarted (recovery rebuilds everything from the log).
    #[error("certifier unavailable, WAL failed: {0}")]
    Poisoned(String),

    /// The WAL returned an error.
    #[error("WAL error: {0}")]
    Wal(#[from] WalError),

    /// A WAL record could not be decoded: the log is not a certifier log, or
    /// it is damaged in a way the WAL's checksums did not catch.
    #[error("corrupt certifier record at version {version}: {reason}")]
    CorruptRecord { version: Version, reason: String },

    /// A retried transaction's outcome cannot be determined (its snapshot is
    /// older than what the certifier remembers and the WAL was purged).
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),

    /// The versions a subscriber asked for were purged from the WAL: the
    /// replica cannot catch up from the log and must be rebuilt from a
    /// checkpoint. Sent as FAILED_PRECONDITION with the oldest retained
    /// version in the `tashkent-first-version` metadata, which the client
    /// turns back into this variant.
    #[error(
        "versions from {from} were purged from the certifier's log (oldest retained: {first}): \
         this replica cannot catch up from the log; rebuild it from a checkpoint \
         (`tashkent recover`)"
    )]
    Purged { from: Version, first: Version },

    /// Configuration is inconsistent or unreadable.
    #[error("configuration error: {0}")]
    Config(String),

    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// Client side: could not connect.
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),

    /// Client side: the server answered with an error status.
    #[error("certifier returned {}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),

    /// Client side: the server's answer violates the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// gRPC metadata key of a Purged answer: the oldest version still in the log.
pub const FIRST_VERSION_METADATA: &str = "tashkent-first-version";

impl CertifierError {
    /// A Subscribe answer that says the log no longer holds the versions
    /// asked for (see [`CertifierError::Purged`]); `None` for other errors.
    pub fn purged_from_status(status: &tonic::Status, from: Version) -> Option<CertifierError> {
        if status.code() != tonic::Code::FailedPrecondition {
            return None;
        }
        let first = status
            .metadata()
            .get(FIRST_VERSION_METADATA)?
            .to_str()
            .ok()?
            .parse()
            .ok()?;
        Some(CertifierError::Purged { from, first })
    }

    /// True for [`CertifierError::Purged`].
    pub fn is_purged(&self) -> bool {
        matches!(self, CertifierError::Purged { .. })
    }
}

impl From<CertifierError> for tonic::Status {
    fn from(e: CertifierError) -> tonic::Status {
        use tonic::Status;
        let msg = e.to_string();
        match e {
            CertifierError::InvalidArgument(_) => Status::invalid_argument(msg),
            CertifierError::WritesetTooLarge { .. } => Status::resource_exhausted(msg),
            CertifierError::Poisoned(_) => Status::unavailable(msg),
            CertifierError::Wal(ref w) if w.is_poisoned() => Status::unavailable(msg),
            CertifierError::OutcomeUnknown(_) => Status::failed_precondition(msg),
            CertifierError::Purged { first, .. } => {
                let mut s = Status::failed_precondition(msg);
                if let Ok(v) = first.to_string().parse() {
                    s.metadata_mut().insert(FIRST_VERSION_METADATA, v);
                }
                s
            }
            CertifierError::Rpc(s) => s,
            CertifierError::Wal(_)
            | CertifierError::CorruptRecord { .. }
            | CertifierError::Config(_)
            | CertifierError::Io(_)
            | CertifierError::Transport(_)
            | CertifierError::Protocol(_) => Status::internal(msg),
        }
    }
}
