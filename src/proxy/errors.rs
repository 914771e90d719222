//! Every error and warning the proxy sends a client itself, one named
//! constructor each, with its SQLSTATE. (Errors of PostgreSQL are relayed
//! as they are.)

use crate::proxy::wire::{ErrorResponse, Message};
use tashkent_certifier::{CertifierError, LogFailure, Version};

/// `0A000`: a statement the proxy refuses (see `sql::Kind::Refused`).
pub fn feature_not_supported(message: impl Into<String>, hint: impl Into<String>) -> ErrorResponse {
    ErrorResponse::error("0A000", message).with_hint(hint)
}

/// `0A000`: the fast-path function call protocol.
pub fn fast_path_refused() -> ErrorResponse {
    feature_not_supported(
        "fast-path function calls are not supported by tashkent",
        "Call the function with SELECT.",
    )
}

/// `40001`: certification found a conflict (first committer wins).
pub fn certification_conflict(reason: String) -> ErrorResponse {
    ErrorResponse::error(
        "40001",
        "could not serialize access: the transaction conflicts with a concurrently committed one",
    )
    .with_detail(reason)
    .with_hint("Retry the transaction.")
}

/// `40001`: aborted early, it blocked the applier.
pub fn early_abort() -> ErrorResponse {
    ErrorResponse::error(
        "40001",
        "could not serialize access: the transaction was aborted because it blocked a committed transaction being applied",
    )
    .with_hint("Retry the transaction.")
}

/// `25P02`: a statement sent into a failed transaction.
pub fn in_failed_transaction() -> ErrorResponse {
    ErrorResponse::error(
        "25P02",
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

/// `08007`: the certifier could not be reached after COMMIT was sent.
pub fn unknown_outcome(why: &str) -> ErrorResponse {
    ErrorResponse::error(
        "08007",
        "the outcome of the COMMIT is unknown: the certifier could not be reached after the transaction was sent",
    )
    .with_detail(why.to_string())
    .with_hint("Check whether the transaction's effects are present before retrying it.")
}

/// The certifier's log failed before this transaction's record was
/// written: it is committed nowhere. `53100` when its disk is full,
/// `58030` for any other failure of the log.
pub fn certifier_log_failed(failure: LogFailure, cause: &str) -> ErrorResponse {
    let (code, what, fix) = match failure {
        LogFailure::DiskFull => (
            "53100",
            "the certifier's log is out of disk space",
            "free space on its log's disk",
        ),
        LogFailure::Io => (
            "58030",
            "the certifier's log failed",
            "repair its log's disk (the detail says what failed)",
        ),
    };
    ErrorResponse::error(
        code,
        format!("could not commit: {what}; the transaction was not committed"),
    )
    .with_detail(cause.to_string())
    .with_hint(format!(
        "The certifier commits nothing until it is restarted (`tashkent status` shows it \
         poisoned); {fix}, restart it, then retry the transaction."
    ))
}

/// `08007`: the certifier's log failed while this transaction's record was
/// being written: whether it is durable shows once the certifier restarts.
pub fn unknown_outcome_log_failed(cause: &str) -> ErrorResponse {
    ErrorResponse::error(
        "08007",
        "the outcome of the COMMIT is unknown: the certifier's log failed while the transaction was being written",
    )
    .with_detail(cause.to_string())
    .with_hint(
        "The certifier commits nothing until it is restarted; once it has recovered its log, \
         check whether the transaction's effects are present before retrying it.",
    )
}

/// The client's error for a certification that failed with `e` after the
/// writeset was sent (not a conflict, not a refusal before sending).
pub fn certification_failed(e: &CertifierError) -> ErrorResponse {
    match e {
        CertifierError::LogFailed {
            failure,
            cause,
            outcome_unknown: false,
        } => certifier_log_failed(*failure, cause),
        CertifierError::LogFailed { .. } => unknown_outcome_log_failed(&e.to_string()),
        e => unknown_outcome(&e.to_string()),
    }
}

/// `08007`: certified as version `v` and committed on the replica, which
/// failed before its WAL was flushed past the commit (`ack_after_flush`).
pub fn not_durable(version: Version, replica: u32, why: &str) -> ErrorResponse {
    ErrorResponse::error(
        "08007",
        format!(
            "the outcome of the COMMIT is unknown: version {version} was committed on replica {replica}, which failed before its WAL was flushed past it"
        ),
    )
    .with_detail(why.to_string())
    .with_hint("The transaction is in the certifier's log and is applied again from there; check whether its effects are present before retrying it.")
}

/// `08007`: committed in the global order, but this replica cannot apply
/// the log up to it.
pub fn committed_elsewhere(
    version: Version,
    replica: u32,
    stuck_at: Version,
    cause: &str,
) -> ErrorResponse {
    ErrorResponse::error(
        "08007",
        format!(
            "the transaction is committed as version {version} in the global order, but \
             replica {replica} cannot apply version {stuck_at}: {cause}"
        ),
    )
    .with_detail(
        "It is durable and visible on the replicas that applied it; this one applies it once it recovers.",
    )
    .with_hint("Read it on another replica.")
}

/// `54000`: the transaction's writeset is over the cluster's cap.
pub fn writeset_too_large(max: u64) -> ErrorResponse {
    ErrorResponse::error(
        "54000",
        format!(
            "the transaction writes more than tashkent accepts: its writeset exceeds {max} bytes"
        ),
    )
    .with_detail("max_writeset_bytes limits the captured changes of one transaction.")
    .with_hint("Split the transaction into smaller ones.")
}

/// `55000`: the replica needs versions the certifier purged.
pub fn recovery_needed(why: String) -> ErrorResponse {
    ErrorResponse::error("55000", why).with_hint(
        "This replica must be rebuilt from a checkpoint (`tashkent recover`); \
         connect to another replica meanwhile.",
    )
}

/// `55000`: the replica's applier fails on a version.
pub fn replica_cannot_apply(replica: u32, version: Version, cause: &str) -> ErrorResponse {
    ErrorResponse::error(
        "55000",
        format!(
            "replica {replica} cannot apply version {version}: {cause}; writes are refused here until it can"
        ),
    )
    .with_hint("Connect to another replica meanwhile; the proxy's log has the details.")
}

/// `XX000`: something of the proxy's own failed (a bug).
pub fn internal(message: impl Into<String>) -> ErrorResponse {
    ErrorResponse::error("XX000", message)
}

/// `42704`: `SHOW tashkent.<name>` of a name the proxy does not know.
pub fn unknown_proxy_setting(name: &str) -> ErrorResponse {
    ErrorResponse::error(
        "42704",
        format!("unrecognized tashkent setting \"tashkent.{name}\""),
    )
    .with_hint(
        "The proxy shows tashkent.replica, tashkent.replica_id, tashkent.applied_version, \
         tashkent.last_commit_version, tashkent.consistency, tashkent.consistency_timeout and \
         tashkent.lock_conflicts; it sets the last three.",
    )
}

/// `22023`: a value a proxy setting does not take.
pub fn invalid_proxy_setting(name: &str, value: &str, takes: &str) -> ErrorResponse {
    ErrorResponse::error(
        "22023",
        format!("invalid value for parameter \"tashkent.{name}\": \"{value}\""),
    )
    .with_hint(format!("It takes {takes}."))
}

/// `25001`: a freshness request after the transaction took its snapshot.
pub fn snapshot_already_taken(what: &str) -> ErrorResponse {
    ErrorResponse::error(
        "25001",
        format!("{what} must come before the transaction's first query: its snapshot is taken"),
    )
    .with_hint("Put it right after BEGIN, or before the transaction.")
}

/// `57014`: the replica did not apply what the consistency level (or a
/// `tashkent.wait_for`) asked for within `tashkent.consistency_timeout`.
pub fn consistency_timeout(
    what: &str,
    replica: u32,
    wanted: Version,
    applied: Version,
    timeout: std::time::Duration,
) -> ErrorResponse {
    ErrorResponse::error(
        "57014",
        format!(
            "canceling statement due to tashkent.consistency_timeout: {what} needs version \
             {wanted}, replica {replica} has applied {applied} after {timeout:?}"
        ),
    )
    .with_hint(
        "The replica is behind (see `tashkent status`); retry, raise \
         tashkent.consistency_timeout, or use another proxy.",
    )
}

/// `57014`: the certifier could not say what it acknowledged in time.
pub fn acknowledged_unknown(why: &str, timeout: std::time::Duration) -> ErrorResponse {
    ErrorResponse::error(
        "57014",
        format!(
            "canceling statement due to tashkent.consistency_timeout: the certifier did not say \
             what it acknowledged within {timeout:?} ({why})"
        ),
    )
}

/// `28000` (FATAL): a startup packet without a user.
pub fn no_user() -> ErrorResponse {
    ErrorResponse::fatal(
        "28000",
        "no PostgreSQL user name specified in startup packet",
    )
}

/// `3D000` (FATAL): a database the proxy does not replicate.
pub fn not_replicated_database(asked: &str, served: &str) -> ErrorResponse {
    ErrorResponse::fatal(
        "3D000",
        format!("database \"{asked}\" is not replicated by this proxy (it serves \"{served}\")"),
    )
}

/// `08006` (FATAL): the replica cannot be reached at startup.
pub fn replica_unreachable(why: impl std::fmt::Display) -> ErrorResponse {
    ErrorResponse::fatal("08006", format!("cannot reach the replica: {why}"))
}

/// `08006` (FATAL): the connection to the replica broke.
pub fn replica_connection_lost(why: impl std::fmt::Display) -> ErrorResponse {
    ErrorResponse::fatal("08006", format!("connection to the replica lost: {why}"))
}

/// `08P01` (FATAL): the client broke the protocol.
pub fn protocol_violation(what: &str) -> ErrorResponse {
    ErrorResponse::fatal("08P01", format!("protocol violation: {what}"))
}

/// `08P01` (FATAL): a startup packet whose length is below 8 or above
/// 10,000 bytes (PostgreSQL only logs this and closes; the client is told
/// here).
pub fn invalid_startup_length() -> ErrorResponse {
    ErrorResponse::fatal("08P01", "invalid length of startup packet")
}

/// `08P01` (FATAL): a startup packet of a known kind whose contents do
/// not fit its layout.
pub fn invalid_startup_packet(reason: &str) -> ErrorResponse {
    ErrorResponse::fatal("08P01", format!("invalid startup packet layout: {reason}"))
}

/// `0A000` (FATAL): a startup packet of a protocol version (or request
/// code) the proxy does not speak, in PostgreSQL's words. Any 3.x goes on
/// to the replica, which negotiates the minor version.
pub fn unsupported_protocol(major: u16, minor: u16) -> ErrorResponse {
    ErrorResponse::fatal(
        "0A000",
        format!("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.x"),
    )
}

/// `08P01` (FATAL): bytes that arrived together with an SSLRequest, before
/// any TLS handshake (PostgreSQL's answer to the same; they may have been
/// injected on the way).
pub fn unencrypted_data_after_ssl_request() -> ErrorResponse {
    ErrorResponse::fatal("08P01", "received unencrypted data after SSL request").with_detail(
        "This could be either a client-software bug or evidence of an attempted \
         man-in-the-middle attack.",
    )
}

/// `28000` (FATAL): a plaintext StartupMessage while `tls_required` is
/// set (PostgreSQL says "no pg_hba.conf entry for host …, no encryption"
/// when only `hostssl` lines match).
pub fn tls_required(host: &str, user: &str, database: &str) -> ErrorResponse {
    ErrorResponse::fatal(
        "28000",
        format!(
            "connection for host \"{host}\", user \"{user}\", database \"{database}\" \
             refused: no encryption, this server accepts SSL connections only"
        ),
    )
    .with_hint("Connect with sslmode=require (or verify-ca, verify-full).")
}

/// `28000` (FATAL): a client asked to log in as the proxy's own admin
/// user, and `allow_admin_login` is off.
pub fn admin_login_refused(user: &str) -> ErrorResponse {
    ErrorResponse::fatal(
        "28000",
        format!("role \"{user}\" is the proxy's own and may not log in through it"),
    )
    .with_hint("Log in as an application role (see `tashkent admin create-role`).")
}

/// `57014` (FATAL): the client took longer than `authentication_timeout`
/// from connecting to being authenticated (PostgreSQL's code and words;
/// PostgreSQL itself closes without telling the client).
pub fn authentication_timeout() -> ErrorResponse {
    ErrorResponse::fatal("57014", "canceling authentication due to timeout")
}

/// `08P01` (FATAL): something else where an authentication answer belongs.
pub fn expected_authentication() -> ErrorResponse {
    ErrorResponse::fatal("08P01", "expected an authentication response")
}

/// `25001` (WARNING): BEGIN inside a transaction.
pub fn already_in_transaction() -> Message {
    warning("25001", "there is already a transaction in progress")
}

/// `25P01` (WARNING): COMMIT or ROLLBACK outside a transaction.
pub fn no_transaction() -> Message {
    warning("25P01", "there is no transaction in progress")
}

fn warning(sqlstate: &str, text: &str) -> Message {
    let mut n = ErrorResponse::error(sqlstate, text);
    for (code, value) in n.fields.iter_mut() {
        if *code == b'S' || *code == b'V' {
            *value = "WARNING".into();
        }
    }
    n.notice()
}
