//! A raft snapshot's bytes on disk: openraft's `SnapshotData` is a file in
//! the node's raft directory, so no node holds a snapshot in memory to
//! build, send, receive or install it (a snapshot taken while a large
//! writeset's chunks arrive copies them from the spool, `chunks.rs`).
//!
//! In `<dir>`:
//!
//! - `snapshot`: the current one (`snapshot.rs` has the format), replaced
//!   by a rename (the new file synced first, the directory after), so a
//!   crash leaves the old or the new one;
//! - `snapshot.new-<n>`: one being written, built here or received from
//!   the leader; removed when dropped without being kept, and at start
//!   (what a crash left).

use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::error::CertifierError;

/// File of the current snapshot in a node's raft directory.
pub const SNAPSHOT_FILE: &str = "snapshot";
const NEW_PREFIX: &str = "snapshot.new-";

/// A snapshot file not kept yet: removed when dropped.
#[derive(Debug)]
pub struct NewSnapshot {
    path: Option<PathBuf>,
}

impl NewSnapshot {
    /// Creates a new file for a snapshot in `dir`.
    pub fn create(dir: &Path) -> io::Result<(std::fs::File, NewSnapshot)> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{NEW_PREFIX}{}-{n}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((file, NewSnapshot { path: Some(path) }))
    }

    fn dir(&self) -> Option<&Path> {
        self.path.as_deref().and_then(Path::parent)
    }

    /// Makes this file its directory's current snapshot (its content
    /// must be durable already: see [`durable`]); [`sync_dir`] then makes
    /// that durable.
    pub fn rename(mut self) -> Result<(), CertifierError> {
        let Some(path) = self.path.take() else {
            return Ok(());
        };
        let target = path.with_file_name(SNAPSHOT_FILE);
        std::fs::rename(&path, &target).map_err(|e| CertifierError::RaftStorage {
            what: format!("snapshot {}", target.display()),
            reason: format!("cannot replace: {e}"),
        })
    }
}

impl Drop for NewSnapshot {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Writes `file`'s content to disk (before it is kept).
pub fn durable(file: &std::fs::File) -> Result<(), CertifierError> {
    file.sync_all().map_err(|e| CertifierError::RaftStorage {
        what: "snapshot".into(),
        reason: format!("cannot write: {e}"),
    })
}

/// Makes a rename in `dir` durable. A failure is this node's end: the
/// snapshot a restart finds is then not known.
pub fn sync_dir(dir: &Path) -> Result<(), CertifierError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CertifierError::RaftStorage {
            what: format!("snapshot directory {}", dir.display()),
            reason: format!("cannot sync: {e}"),
        })
}

/// Removes the files of snapshots a crash left half written (or that a
/// stopped node's build still removes itself).
pub fn remove_unkept(dir: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with(NEW_PREFIX) {
            match std::fs::remove_file(e.path()) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Opens `dir`'s current snapshot, to read.
pub fn open_current(dir: &Path) -> io::Result<std::fs::File> {
    std::fs::File::open(dir.join(SNAPSHOT_FILE))
}

/// openraft's `SnapshotData`: a snapshot's file, the current one (to send)
/// or a new one (received, until it is installed and kept).
#[derive(Debug)]
pub struct SnapshotFile {
    file: tokio::fs::File,
    new: Option<NewSnapshot>,
}

impl SnapshotFile {
    /// A snapshot file to read from the start.
    pub fn reading(file: std::fs::File) -> SnapshotFile {
        SnapshotFile {
            file: tokio::fs::File::from_std(file),
            new: None,
        }
    }

    /// A new file in `dir` to receive a snapshot into.
    pub fn receiving(dir: &Path) -> io::Result<SnapshotFile> {
        let (file, new) = NewSnapshot::create(dir)?;
        Ok(SnapshotFile {
            file: tokio::fs::File::from_std(file),
            new: Some(new),
        })
    }

    /// Its size in bytes.
    pub async fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata().await?.len())
    }

    /// The file, written through and positioned at its start, and, for
    /// one received here, what keeps it.
    pub async fn into_parts(mut self) -> io::Result<(std::fs::File, Option<NewSnapshot>)> {
        self.file.flush().await?;
        let mut file = self.file.into_std().await;
        file.seek(SeekFrom::Start(0))?;
        Ok((file, self.new.take()))
    }

    /// The file as `dir`'s next snapshot: the received file itself when it
    /// is one of `dir`'s, else a copy (blocking).
    pub async fn into_new_in(
        self,
        dir: &Path,
    ) -> Result<(std::fs::File, NewSnapshot), CertifierError> {
        let io = |e: io::Error| CertifierError::RaftStorage {
            what: "snapshot".into(),
            reason: format!("cannot write: {e}"),
        };
        let (mut file, new) = self.into_parts().await.map_err(io)?;
        if let Some(new) = new.filter(|n| n.dir() == Some(dir)) {
            return Ok((file, new));
        }
        let (mut copy, new) = NewSnapshot::create(dir).map_err(io)?;
        io::copy(&mut file, &mut copy).map_err(io)?;
        copy.seek(SeekFrom::Start(0)).map_err(io)?;
        Ok((copy, new))
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().file).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.get_mut().file).start_seek(position)
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.get_mut().file).poll_complete(cx)
    }
}
