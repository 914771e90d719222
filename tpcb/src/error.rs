//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading, running or reporting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A [`crate::RunConfig`] or a load request that cannot be run.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A database operation failed. `message` spells out the server's
    /// error (severity, text, SQLSTATE), which tokio-postgres's own
    /// `Display` leaves out.
    #[error("{context}: {message}")]
    Db {
        context: String,
        message: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The tables a run needs are missing or have another size.
    #[error("workload not loaded: {0}")]
    NotLoaded(String),

    /// The TPC-B consistency condition does not hold.
    #[error("TPC-B invariant violated: {detail} (sum(abalance) = {accounts}, sum(tbalance) = {tellers}, sum(bbalance) = {branches}, sum(delta) = {history})")]
    Invariant {
        /// Which sums differ, in words.
        detail: String,
        accounts: i64,
        tellers: i64,
        branches: i64,
        history: i64,
    },

    /// A TPC-C consistency condition (clause 3.3.2) does not hold.
    #[error("TPC-C consistency condition {condition} violated: {detail}")]
    TpccCondition { condition: u8, detail: String },

    /// A TPC-C transaction found the data broken (a row the load and
    /// every transaction keep in place is missing).
    #[error("TPC-C data inconsistent: {0}")]
    Consistency(String),

    /// A client task panicked or was cancelled.
    #[error("client task {client}: {message}")]
    Task { client: usize, message: String },

    /// Writing a report file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Drawing a plot.
    #[error("plotting {what}: {message}")]
    Plot { what: String, message: String },

    /// Encoding or decoding a report as JSON.
    #[error("report JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a tokio-postgres error with what was being done.
    pub(crate) fn db(context: impl Into<String>, source: tokio_postgres::Error) -> Error {
        Error::Db {
            context: context.into(),
            message: describe(&source),
            source,
        }
    }

    /// The SQLSTATE of a database error, if the server sent one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Db { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// A tokio-postgres error in words, including the server's message.
pub(crate) fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => {
            let mut s = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(detail) = db.detail() {
                s.push_str("; ");
                s.push_str(detail);
            }
            s
        }
        None => {
            let mut s = err.to_string();
            let mut cause = std::error::Error::source(err);
            while let Some(c) = cause {
                s.push_str(": ");
                s.push_str(&c.to_string());
                cause = c.source();
            }
            s
        }
    }
}

/// `conninfo` with any password replaced, for error messages.
pub(crate) fn redact(conninfo: &str) -> String {
    if conninfo.contains("://") {
        // URL form: drop the user-info part, which may carry a password.
        if let Some((scheme, rest)) = conninfo.split_once("://") {
            if let Some((_, host)) = rest.split_once('@') {
                return format!("{scheme}://…@{host}");
            }
        }
        return conninfo.to_owned();
    }
    conninfo
        .split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=…"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("host=a password=secret user=u"),
            "host=a password=… user=u"
        );
        assert_eq!(redact("postgresql://u:pw@h:5/db"), "postgresql://…@h:5/db");
        assert_eq!(redact("host=a port=5"), "host=a port=5");
    }
}
