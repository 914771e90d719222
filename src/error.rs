//! The `tashkent` library's error type.
//!
//! One enum for the crate; binaries wrap it with `anyhow` context. Each
//! variant says what failed and, where the operator can fix it, how.

use std::path::PathBuf;

/// Errors of the `tashkent` library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable PostgreSQL server installation was found.
    #[error(
        "PostgreSQL server binaries not found: {searched}. Install them with \
         `sudo apt-get install -y postgresql` (or run `bash scripts/setup.sh`), \
         or set PG_BIN to the directory that holds `postgres` and `initdb`"
    )]
    PgNotInstalled {
        /// Where the search looked, for the message.
        searched: String,
    },

    /// A required PostgreSQL tool is missing from an otherwise found directory.
    #[error("PostgreSQL tool `{tool}` not found in {dir}")]
    PgToolMissing { tool: String, dir: PathBuf },

    /// The account PostgreSQL must run as (it refuses root) does not exist.
    #[error(
        "running as root, PostgreSQL must run as an unprivileged account, but user `{user}` \
         does not exist; install the postgresql package (it creates `postgres`) or set \
         TASHKENT_PG_USER to an existing account"
    )]
    PgUserMissing { user: String },

    /// A directory the server needs cannot be reached by the account it runs as.
    #[error(
        "{path} is not reachable by user `{user}` (an ancestor directory lacks search \
         permission); put the cluster under a world-traversable directory such as /tmp"
    )]
    DirNotReachable { path: PathBuf, user: String },

    /// `initdb` failed.
    #[error("initdb for {data_dir} failed ({status}): {output}")]
    InitDb {
        data_dir: PathBuf,
        status: String,
        output: String,
    },

    /// The server did not come up; `log_tail` is the end of its log.
    #[error("PostgreSQL on port {port} (data {data_dir}) did not start: {reason}\n--- server log (tail) ---\n{log_tail}")]
    PgStart {
        port: u16,
        data_dir: PathBuf,
        reason: String,
        log_tail: String,
    },

    /// The server did not stop within its deadline.
    #[error("PostgreSQL (pid {pid}) did not stop: {reason}")]
    PgStop { pid: i32, reason: String },

    /// An operation needs a running server but it is stopped, or vice versa.
    #[error("PostgreSQL server {data_dir} is {state}")]
    PgState {
        data_dir: PathBuf,
        state: &'static str,
    },

    /// A statement sent to a replica failed.
    #[error("{context}: {}", server_text(source))]
    Sql {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// Captured writeset text that cannot be read.
    #[error("writeset capture: {reason}")]
    Capture { reason: String },

    /// A transaction's writeset is larger than the cluster accepts.
    #[error(
        "the transaction's writeset is larger than {max} bytes (max_writeset_bytes): split the \
         transaction into smaller ones"
    )]
    WritesetTooLarge { max: u64 },

    /// The certifier could not be reached or refused a request.
    #[error("{context}: {source}")]
    Certifier {
        context: String,
        #[source]
        source: tashkent_certifier::CertifierError,
    },

    /// A configuration value or file is unusable.
    #[error("configuration: {0}")]
    Config(String),

    /// A TLS certificate or key cannot be read, used or generated.
    #[error("TLS: {context}: {reason}")]
    Tls { context: String, reason: String },

    /// A checkpoint is damaged or unreadable; it is never restored.
    #[error("checkpoint {path} is refused: {reason}")]
    CheckpointInvalid { path: PathBuf, reason: String },

    /// No checkpoint can rebuild a replica; `details` lists why each one
    /// was refused and what the operator can do.
    #[error("no usable checkpoint in {dir}: {details}")]
    NoCheckpoint { dir: PathBuf, details: String },

    /// A PostgreSQL tool (pg_dump, pg_restore) failed.
    #[error("{tool} failed ({status}): {output}")]
    ToolFailed {
        tool: String,
        status: String,
        output: String,
    },

    /// Recovery of a replica cannot proceed (e.g. its server still runs).
    #[error("recovery: {0}")]
    Recovery(String),

    /// An I/O error with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with the operation that failed.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

impl Error {
    /// Wraps a database error with the operation that failed.
    pub fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let context = context.into();
        move |source| Error::Sql { context, source }
    }
}

/// A PostgreSQL error as its server message says it (SQLSTATE, message,
/// detail), not tokio-postgres's bare "db error".
pub fn server_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                text.push_str(": ");
                text.push_str(d);
            }
            text
        }
        None => e.to_string(),
    }
}

/// Result alias for the `tashkent` library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
