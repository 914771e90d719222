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

    /// The certifier's log failed (disk full, a write or an fsync error):
    /// this certifier acknowledges nothing any more and must be restarted
    /// (recovery rebuilds everything from the log). `outcome_unknown`:
    /// this request's record was submitted when the log failed, so whether
    /// it is durable shows only after the restart; otherwise the request
    /// was refused before anything of it was written (it is not committed).
    /// Sent as UNAVAILABLE with the `tashkent-log-failure` metadata (and
    /// `tashkent-outcome: unknown`), which the client turns back into this
    /// variant.
    #[error("the certifier's log failed{}: {cause}", failure.describe())]
    LogFailed {
        failure: LogFailure,
        cause: String,
        outcome_unknown: bool,
    },

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

    /// TLS cannot be set up: a certificate, key or CA file that cannot be
    /// read or used (server or client side).
    #[error("TLS: {0}")]
    Tls(String),

    /// Client side: the address or the transport settings are unusable.
    #[error("transport error: {}", chain(.0))]
    Transport(#[from] tonic::transport::Error),

    /// Client side: could not connect, or (with TLS) complete the
    /// handshake; `reason` is the whole chain of causes, e.g. rustls's
    /// "invalid peer certificate: UnknownIssuer" for a certificate the
    /// client does not trust.
    #[error("could not connect to the certifier at {addr}{}: {reason}", over_tls(*.tls))]
    Connect {
        addr: String,
        tls: bool,
        reason: String,
    },

    /// Client side: the server answered with an error status (or the
    /// connection failed under the call: then its cause follows, e.g. a
    /// connection a TLS-only certifier closed on a plaintext client).
    #[error("certifier returned {}", status_text(.0))]
    Rpc(tonic::Status),

    /// Client side: the server's answer violates the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// The replicated certifier: this node is not the leader; `leader` is
    /// the one it knows of, if any, and `addr` its client address (retry
    /// there). `outcome_unknown`: this node proposed the request as leader
    /// and lost its entry unapplied (truncated, or purged behind a
    /// snapshot that may hold it), so it may have committed; a retry under
    /// the same txn id finds out. Sent as UNAVAILABLE with the address in
    /// the `tashkent-leader` metadata (and the outcome in
    /// [`OUTCOME_METADATA`]), which the client turns back into this
    /// variant (with `leader` unknown).
    #[error(
        "this certifier node is not the leader (leader: {}){}",
        not_leader_text(*.leader, .addr.as_deref()),
        if *.outcome_unknown { "; outcome unknown" } else { "" }
    )]
    NotLeader {
        leader: Option<u64>,
        addr: Option<String>,
        outcome_unknown: bool,
    },

    /// The replicated certifier's storage (`raft`): a log entry, the vote
    /// file or a snapshot that cannot be decoded, or an operation the raft
    /// log cannot do; `what` names the file or LSN.
    #[error("raft storage, {what}: {reason}")]
    RaftStorage { what: String, reason: String },

    /// The replicated certifier: this node is out of contact with its
    /// group (see `server::contact`) and refused `refused`;
    /// `outcome_unknown`: a certification was in flight (proposed, maybe
    /// committed by the others). Sent as UNAVAILABLE: clients retry on
    /// another node (under the same txn id).
    #[error(
        "certifier node {node} is out of contact with its group ({why}){}, {refused}",
        if *.outcome_unknown { "; outcome unknown" } else { "" }
    )]
    OutOfContact {
        node: u64,
        why: &'static str,
        refused: String,
        outcome_unknown: bool,
    },
}

/// An error and its causes, outermost first, as one line (tonic's
/// transport errors say only "transport error" and keep the cause, a
/// refused connection or a TLS alert, in their sources).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        // Some layers repeat their cause in their own message.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

/// "code: message", the message followed by the causes of a status that
/// carries a transport error (tonic's message is then "transport error"
/// alone).
fn status_text(status: &tonic::Status) -> String {
    let (code, message) = (status.code(), status.message());
    let Some(source) = std::error::Error::source(status) else {
        return format!("{code}: {message}");
    };
    let causes = chain(source);
    if causes.starts_with(message) {
        format!("{code}: {causes}")
    } else if message.ends_with(&causes) {
        format!("{code}: {message}")
    } else {
        format!("{code}: {message} ({causes})")
    }
}

fn not_leader_text(leader: Option<u64>, addr: Option<&str>) -> String {
    match (leader, addr) {
        (Some(l), Some(a)) => format!("node {l} at {a}"),
        (Some(l), None) => format!("node {l}"),
        (None, Some(a)) => a.to_owned(),
        (None, None) => "unknown".to_owned(),
    }
}

fn over_tls(tls: bool) -> &'static str {
    if tls {
        " over TLS"
    } else {
        ""
    }
}

/// gRPC metadata key of a Purged answer: the oldest version still in the log.
pub const FIRST_VERSION_METADATA: &str = "tashkent-first-version";
/// gRPC metadata key of a [`CertifierError::LogFailed`] answer: its
/// [`LogFailure`].
pub const LOG_FAILURE_METADATA: &str = "tashkent-log-failure";
/// gRPC metadata key saying a request's outcome is unknown (`unknown`),
/// or that it was refused before anything of it was written
/// ([`OUTCOME_NOT_WRITTEN`]).
pub const OUTCOME_METADATA: &str = "tashkent-outcome";
/// [`OUTCOME_METADATA`]'s value for a request whose outcome is unknown.
pub const OUTCOME_UNKNOWN: &str = "unknown";
/// [`OUTCOME_METADATA`]'s value for a request refused unwritten.
pub const OUTCOME_NOT_WRITTEN: &str = "not-written";

/// Says `outcome` ([`OUTCOME_UNKNOWN`] or [`OUTCOME_NOT_WRITTEN`]) in
/// `md` under [`OUTCOME_METADATA`].
pub(crate) fn say_outcome(md: &mut tonic::metadata::MetadataMap, outcome: &'static str) {
    md.insert(
        OUTCOME_METADATA,
        tonic::metadata::MetadataValue::from_static(outcome),
    );
}

/// Whether `md` says `outcome` under [`OUTCOME_METADATA`].
pub(crate) fn says_outcome(md: &tonic::metadata::MetadataMap, outcome: &str) -> bool {
    md.get(OUTCOME_METADATA)
        .is_some_and(|v| v.as_bytes() == outcome.as_bytes())
}
/// gRPC metadata key of a [`CertifierError::NotLeader`] answer: the
/// leader's client address (`host:port`), when the node knows it.
pub const LEADER_METADATA: &str = "tashkent-leader";
/// What a NotLeader answer's message starts with (the metadata is optional).
const NOT_LEADER_TEXT: &str = "this certifier node is not the leader";

/// How the certifier's log failed, so that clients can name the cause
/// (PostgreSQL clients get `53100` for a full disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFailure {
    /// ENOSPC: free space on the log's disk, then restart the certifier.
    DiskFull,
    /// Any other write, fsync or consistency failure.
    Io,
}

impl LogFailure {
    /// How `e`, the error that poisoned the log, failed.
    pub fn of(e: &WalError) -> LogFailure {
        match e {
            WalError::DiskFull { .. } => LogFailure::DiskFull,
            WalError::Poisoned { cause } => LogFailure::of(cause),
            _ => LogFailure::Io,
        }
    }

    /// The wire name (metadata value).
    pub fn name(self) -> &'static str {
        match self {
            LogFailure::DiskFull => "disk-full",
            LogFailure::Io => "io",
        }
    }

    fn from_name(name: &str) -> LogFailure {
        match name {
            "disk-full" => LogFailure::DiskFull,
            _ => LogFailure::Io,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            LogFailure::DiskFull => " (its disk is full)",
            LogFailure::Io => "",
        }
    }
}

impl From<tonic::Status> for CertifierError {
    /// A status the server sent: a log failure comes back as
    /// [`CertifierError::LogFailed`], everything else as
    /// [`CertifierError::Rpc`].
    fn from(status: tonic::Status) -> CertifierError {
        if status.code() == tonic::Code::Unavailable
            && status.message().starts_with(NOT_LEADER_TEXT)
        {
            let addr = status
                .metadata()
                .get(LEADER_METADATA)
                .and_then(|v| v.to_str().ok())
                .filter(|a| !a.is_empty())
                .map(str::to_owned);
            return CertifierError::NotLeader {
                leader: None,
                addr,
                outcome_unknown: says_outcome(status.metadata(), OUTCOME_UNKNOWN),
            };
        }
        let failure = status
            .metadata()
            .get(LOG_FAILURE_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(LogFailure::from_name);
        let Some(failure) = failure else {
            return CertifierError::Rpc(status);
        };
        let outcome_unknown = says_outcome(status.metadata(), OUTCOME_UNKNOWN);
        // The message is this error's Display; keep the cause after it.
        let message = status.message();
        let cause = message
            .split_once(": ")
            .map_or(message, |(_, cause)| cause)
            .to_owned();
        CertifierError::LogFailed {
            failure,
            cause,
            outcome_unknown,
        }
    }
}

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
            CertifierError::NotLeader {
                addr,
                outcome_unknown,
                ..
            } => {
                let mut s = Status::unavailable(msg);
                if let Some(v) = addr.and_then(|a| a.parse().ok()) {
                    s.metadata_mut().insert(LEADER_METADATA, v);
                }
                if outcome_unknown {
                    say_outcome(s.metadata_mut(), OUTCOME_UNKNOWN);
                }
                s
            }
            CertifierError::LogFailed {
                failure,
                outcome_unknown,
                ..
            } => {
                let mut s = Status::unavailable(msg);
                let md = s.metadata_mut();
                md.insert(
                    LOG_FAILURE_METADATA,
                    tonic::metadata::MetadataValue::from_static(failure.name()),
                );
                if outcome_unknown {
                    say_outcome(md, OUTCOME_UNKNOWN);
                }
                s
            }
            CertifierError::Wal(ref w) if w.is_poisoned() => Status::unavailable(msg),
            CertifierError::OutOfContact {
                outcome_unknown, ..
            } => {
                let mut s = Status::unavailable(msg);
                let outcome = if outcome_unknown {
                    OUTCOME_UNKNOWN
                } else {
                    OUTCOME_NOT_WRITTEN
                };
                say_outcome(s.metadata_mut(), outcome);
                s
            }
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
            | CertifierError::Tls(_)
            | CertifierError::Transport(_)
            | CertifierError::Connect { .. }
            | CertifierError::Protocol(_)
            | CertifierError::RaftStorage { .. } => Status::internal(msg),
        }
    }
}
