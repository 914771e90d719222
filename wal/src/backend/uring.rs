//! io_uring backend: the group is submitted as a `Write` linked
//! (`IO_LINK`) to an `Fsync(DATASYNC)`, so one `io_uring_enter` both writes
//! and syncs. A short write breaks the link (the kernel cancels the fsync
//! with `ECANCELED`); the remainder is then resubmitted, again linked to a
//! fresh fsync, until everything is written and synced.
//!
//! Safety: the kernel reads the buffer asynchronously, so we never return
//! while an operation we submitted is still in flight; the only exit
//! without reaping both completions is an `io_uring_enter` failure that is
//! not retryable, after which the ring is marked broken (see `broken`).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use io_uring::{opcode, squeue, types, IoUring};

use super::{is_retryable, IoBackend};
use crate::{fault, Backend, WalError};

const WRITE_TAG: u64 = 1;
const FSYNC_TAG: u64 = 2;
/// Largest single write we submit (the SQE length field is 32 bits; Linux
/// caps one write at ~2 GiB anyway).
const MAX_CHUNK: usize = 1 << 30;

pub(crate) struct Uring {
    ring: IoUring,
    /// Set when `io_uring_enter` failed in a way that leaves us unsure what
    /// is in flight; every later call fails instead of reusing the ring.
    broken: bool,
}

impl Uring {
    /// Sets up a small ring and proves it works with a NOP, so that `Auto`
    /// falls back cleanly where io_uring_setup (or enter) is refused
    /// (EPERM/ENOSYS under seccomp, `kernel.io_uring_disabled`).
    pub(crate) fn new() -> io::Result<Uring> {
        let mut ring = IoUring::new(8)?;
        let nop = opcode::Nop::new().build().user_data(0);
        // SAFETY: a NOP references no memory.
        unsafe { ring.submission().push(&nop) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        ring.submit_and_wait(1)?;
        let cqe = ring
            .completion()
            .next()
            .ok_or_else(|| io::Error::other("io_uring probe: no completion"))?;
        if cqe.result() < 0 {
            return Err(io::Error::from_raw_os_error(-cqe.result()));
        }
        Ok(Uring {
            ring,
            broken: false,
        })
    }

    /// Submits what is queued and collects completions (by tag) into
    /// `wrote`/`synced` until `done` says enough is in.
    fn reap_until(
        &mut self,
        wrote: &mut Option<i32>,
        synced: &mut Option<i32>,
        done: impl Fn(&Option<i32>, &Option<i32>) -> bool,
    ) -> io::Result<()> {
        loop {
            for c in self.ring.completion() {
                match c.user_data() {
                    WRITE_TAG => *wrote = Some(c.result()),
                    FSYNC_TAG => *synced = Some(c.result()),
                    _ => {}
                }
            }
            if done(wrote, synced) {
                return Ok(());
            }
            if let Err(e) = self.ring.submit_and_wait(1) {
                if !is_retryable(&e) {
                    self.broken = true;
                    return Err(e);
                }
            }
        }
    }
}

impl IoBackend for Uring {
    fn kind(&self) -> Backend {
        Backend::IoUring
    }

    fn write_and_sync(
        &mut self,
        file: &File,
        path: &Path,
        offset: u64,
        buf: &[u8],
        on_written: &mut dyn FnMut(),
        sync: bool,
    ) -> Result<(), WalError> {
        if self.broken {
            return Err(WalError::io(
                path,
                io::Error::other("io_uring ring unusable after an earlier failure"),
            ));
        }
        if let Some(e) = fault::injected("wal::write") {
            return Err(WalError::io(path, e));
        }
        if buf.is_empty() {
            on_written();
            if !sync {
                return Ok(());
            }
            file.sync_data().map_err(|e| WalError::io(path, e))?;
            if let Some(e) = fault::injected("wal::fsync") {
                return Err(WalError::io(path, e));
            }
            return Ok(());
        }
        let fd = types::Fd(file.as_raw_fd());
        let mut done = 0usize;
        let mut first = true;
        loop {
            let rest = buf.len() - done;
            let mut len = rest.min(MAX_CHUNK);
            if first && len > 1 && fault::fires("wal::short_write") {
                // Hand the kernel only half: the link is then sized for the
                // half, and the loop must resubmit the remainder.
                len /= 2;
            }
            first = false;
            // Link the fsync only to the write meant to finish the buffer.
            let with_fsync = sync && len == rest;
            let write = opcode::Write::new(fd, buf[done..].as_ptr(), len as u32)
                .offset(offset + done as u64)
                .build()
                .user_data(WRITE_TAG);
            let write = if with_fsync {
                write.flags(squeue::Flags::IO_LINK)
            } else {
                write
            };
            let fsync = opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(FSYNC_TAG);
            {
                let mut sq = self.ring.submission();
                // SAFETY: `buf` outlives the operation: `reap` below does not
                // return until both completions are in (or the ring is marked
                // broken and never used again).
                let pushed = unsafe {
                    if with_fsync {
                        sq.push_multiple(&[write, fsync])
                    } else {
                        sq.push(&write)
                    }
                };
                if pushed.is_err() {
                    return Err(WalError::io(
                        path,
                        io::Error::other("io_uring submission queue unexpectedly full"),
                    ));
                }
            }
            // Reap the write first, so `on_written` (the written LSN) moves
            // while the fsync is still running; then, if linked, the fsync
            // (always reaped, even when cancelled, so no stale completion is
            // left in the ring for the next round).
            let mut wrote: Option<i32> = None;
            let mut synced: Option<i32> = None;
            self.reap_until(&mut wrote, &mut synced, |w, _| w.is_some())
                .map_err(|e| WalError::io(path, e))?;
            let wrote = wrote.unwrap_or(-libc::EIO);
            let complete = wrote > 0 && done + wrote as usize == buf.len();
            if complete {
                on_written();
            }
            if with_fsync {
                self.reap_until(&mut None, &mut synced, |_, s| s.is_some())
                    .map_err(|e| WalError::io(path, e))?;
            }
            if wrote < 0 {
                let e = io::Error::from_raw_os_error(-wrote);
                if is_retryable(&e) {
                    continue;
                }
                return Err(WalError::io(path, e));
            }
            if wrote == 0 && len > 0 {
                return Err(WalError::io(
                    path,
                    io::Error::new(io::ErrorKind::WriteZero, "io_uring write wrote 0 bytes"),
                ));
            }
            done += wrote as usize;
            if !complete {
                // Short write (or a non-final chunk): any linked fsync was
                // cancelled or is moot; write the remainder.
                continue;
            }
            if !sync {
                return Ok(());
            }
            if let Some(e) = fault::injected("wal::before_fsync") {
                return Err(WalError::io(path, e));
            }
            let synced = match synced {
                Some(r) => r,
                // Everything was written by a chunk without a linked fsync
                // (cannot happen with the sizing above, but be exact).
                None => {
                    file.sync_data().map_err(|e| WalError::io(path, e))?;
                    0
                }
            };
            if synced < 0 {
                // ECANCELED only follows a short write, handled above; this
                // is a real fsync failure.
                return Err(WalError::io(path, io::Error::from_raw_os_error(-synced)));
            }
            if let Some(e) = fault::injected("wal::fsync") {
                return Err(WalError::io(path, e));
            }
            return Ok(());
        }
    }
}
