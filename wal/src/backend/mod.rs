//! The I/O backends that put a group of frames on disk: one write of the
//! group followed by one `fdatasync`. Two implementations behind
//! [`IoBackend`]: io_uring (linked `Write` -> `Fsync(DATASYNC)`, one
//! `io_uring_enter` per group) and portable `pwrite` + `fdatasync`.
//!
//! Only the hot path (group write + sync) goes through the backend; rare
//! operations (creating segments, zeroing a truncated tail, directory fsync)
//! use std directly in `segment.rs`.

mod portable;
mod uring;

use std::fs::File;
use std::io;
use std::path::Path;

use crate::{Backend, WalError};

pub(crate) use portable::Portable;
pub(crate) use uring::Uring;

/// Writes a buffer at an offset and makes it durable.
pub(crate) trait IoBackend: Send {
    /// Which backend this is, for stats and logs.
    fn kind(&self) -> Backend;

    /// Writes all of `buf` at `offset` in `file` (resubmitting the rest after
    /// a short write), calls `on_written` once every byte has been handed to
    /// the OS, then, if `sync`, `fdatasync`s the file. Returns only when the
    /// data is durable (written, without `sync`) or the attempt failed; a
    /// failure after `on_written` means the data may or may not be on disk,
    /// which the caller must treat as fatal. An empty `buf` with `sync` is
    /// an fdatasync alone.
    fn write_and_sync(
        &mut self,
        file: &File,
        path: &Path,
        offset: u64,
        buf: &[u8],
        on_written: &mut dyn FnMut(),
        sync: bool,
    ) -> Result<(), WalError>;
}

/// Builds the backend asked for. `Auto` probes io_uring and falls back to the
/// portable backend when the kernel (or a container's seccomp policy) refuses
/// it; `IoUring` reports the refusal as an error instead.
pub(crate) fn open(kind: Backend, dir: &Path) -> Result<Box<dyn IoBackend>, WalError> {
    match kind {
        Backend::Portable => Ok(Box::new(Portable)),
        Backend::IoUring => Ok(Box::new(Uring::new().map_err(|e| WalError::io(dir, e))?)),
        Backend::Auto => match Uring::new() {
            Ok(u) => Ok(Box::new(u)),
            Err(e) => {
                tracing::info!(error = %e, "io_uring unavailable, using the portable pwrite+fdatasync backend");
                Ok(Box::new(Portable))
            }
        },
    }
}

/// Whether this kernel lets this process use io_uring (what `Auto` decides by).
pub fn io_uring_available() -> bool {
    Uring::new().is_ok()
}

/// Errors a syscall should simply be retried on.
fn is_retryable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
    )
}
