//! Failpoint sites, compiled in only with the `failpoints` cargo feature
//! (which enables `fail/failpoints`). Without it every function here is a
//! constant `None`/`false` and costs nothing.
//!
//! Sites (configure with `fail::cfg(name, action)` in tests):
//! - `wal::write`            - the group write fails (`return(enospc)` gives ENOSPC, else EIO)
//! - `wal::short_write`      - the kernel is handed only half the buffer first (`return`)
//! - `wal::before_fsync`     - after the write, before the fdatasync is reported (`return` = EIO,
//!   `sleep(ms)`, `pause`); with io_uring the linked fsync has run by then
//! - `wal::fsync`            - the fdatasync reports failure (`return` = EIO)
//! - `wal::segment_roll`     - a new segment file was created but not yet renamed into place
//! - `wal::zero_ahead`       - writing zeroes ahead of a group's records fails
//! - `wal::purge_between`    - purge deleted one segment and is about to delete the next
//! - `wal::restart_between`  - restart_at deleted one segment and is about to delete the next
//! - `wal::truncate_step`    - truncate_after (or a recovery) deleted one segment / zeroed one
//!   chunk of the tail and is about to do the next

use std::io;

/// If failpoint `name` fires with a `return(arg)` action, the error to inject.
#[cfg(feature = "failpoints")]
pub(crate) fn injected(name: &str) -> Option<io::Error> {
    fail::eval(name, |arg| match arg.as_deref() {
        Some("enospc") => io::Error::from_raw_os_error(libc::ENOSPC),
        _ => io::Error::from_raw_os_error(libc::EIO),
    })
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn injected(_name: &str) -> Option<io::Error> {
    None
}

/// Whether failpoint `name` fires (for sites that change behaviour rather
/// than fail).
#[cfg(feature = "failpoints")]
pub(crate) fn fires(name: &str) -> bool {
    fail::eval(name, |_| ()).is_some()
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn fires(_name: &str) -> bool {
    false
}
