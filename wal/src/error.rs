//! The one error type of the crate.
//!
//! `WalError` is `Clone` because one failure (a failed `fdatasync`, a full
//! disk) has to be delivered to every append waiting in the failed group and
//! to every later caller of a poisoned log; the underlying `io::Error` is
//! therefore shared behind an `Arc`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Lsn;

/// Everything that can go wrong in the WAL.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    /// An I/O operation on `path` failed.
    #[error("WAL I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },

    /// The log on disk is damaged somewhere other than a torn tail; the log
    /// refuses to open (or a reader stops) rather than skip a record.
    #[error("WAL corruption in {} at byte offset {offset}: {reason}", file.display())]
    Corruption {
        file: PathBuf,
        offset: u64,
        reason: String,
    },

    /// The payload is larger than `WalOptions::max_record_size`.
    #[error("WAL record of {size} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge { size: u64, max: u64 },

    /// The disk is full (ENOSPC). Every append of the group that hit it fails;
    /// the log is poisoned afterwards (see the crate docs, "Errors").
    #[error("WAL disk full (ENOSPC) on {}", path.display())]
    DiskFull { path: PathBuf },

    /// A write, `fdatasync` or segment operation on the log in `dir` has
    /// not returned for `after` (a hung disk); the log is failed as if it
    /// had returned an error (`WalOptions::stall_timeout`).
    #[error("WAL I/O in {} has not returned for {} s (a hung disk?)", dir.display(), after.as_secs_f64())]
    Stalled {
        dir: PathBuf,
        after: std::time::Duration,
    },

    /// An earlier write or `fdatasync` failed, so nothing more can be
    /// acknowledged through this handle. Reopen the log to recover.
    #[error("WAL is poisoned by an earlier failure: {cause}")]
    Poisoned { cause: Arc<WalError> },

    /// The log was closed (by `close` or by dropping the last handle).
    #[error("WAL is closed")]
    Closed,

    /// The LSN argument is outside the range the operation accepts.
    #[error("invalid LSN {lsn}: {reason}")]
    InvalidLsn { lsn: Lsn, reason: String },

    /// The requested records were purged; `first` is the oldest one retained.
    #[error("LSN {lsn} has been purged; the oldest retained LSN is {first}")]
    Purged { lsn: Lsn, first: Lsn },

    /// Another `Wal` (in this or another process) has the directory open.
    #[error("WAL directory {} is locked by another open log", path.display())]
    Locked { path: PathBuf },

    /// `WalOptions` are inconsistent.
    #[error("invalid WAL options: {0}")]
    Config(String),
}

impl WalError {
    /// An I/O error with the path it happened on. ENOSPC becomes
    /// [`WalError::DiskFull`] so callers can tell "free some space" apart.
    pub fn io(path: &Path, source: io::Error) -> WalError {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return WalError::DiskFull {
                path: path.to_path_buf(),
            };
        }
        WalError::Io {
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn corruption(file: &Path, offset: u64, reason: impl Into<String>) -> WalError {
        WalError::Corruption {
            file: file.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }

    /// True for the errors that make the log unusable for appends.
    pub fn is_poisoned(&self) -> bool {
        matches!(self, WalError::Poisoned { .. })
    }
}

/// Extension to attach a path to `io::Result`s.
pub(crate) trait IoContext<T> {
    fn ctx(self, path: &Path) -> Result<T, WalError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, path: &Path) -> Result<T, WalError> {
        self.map_err(|e| WalError::io(path, e))
    }
}
