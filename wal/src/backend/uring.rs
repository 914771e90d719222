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

use io_uring::{cqueue, opcode, squeue, types, IoUring};

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

    /// Waits until `n` completions are available and returns them by tag.
    fn reap(&mut self, n: usize, out: &mut Vec<cqueue::Entry>) -> io::Result<()> {
        while out.len() < n {
            if let Err(e) = self.ring.submit_and_wait(n - out.len()) {
                if !is_retryable(&e) {
                    self.broken = true;
                    return Err(e);
                }
            }
            out.extend(self.ring.completion());
        }
        Ok(())
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
        let fd = types::Fd(file.as_raw_fd());
        let mut done = 0usize;
        let mut first = true;
        let mut cqes = Vec::with_capacity(2);
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
            let with_fsync = len == rest;
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
            let want = if with_fsync { 2 } else { 1 };
            cqes.clear();
            self.reap(want, &mut cqes)
                .map_err(|e| WalError::io(path, e))?;
            let mut wrote: Option<i32> = None;
            let mut synced: Option<i32> = None;
            for c in &cqes {
                match c.user_data() {
                    WRITE_TAG => wrote = Some(c.result()),
                    FSYNC_TAG => synced = Some(c.result()),
                    _ => {}
                }
            }
            let wrote = wrote.unwrap_or(-libc::EIO);
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
            if done < buf.len() {
                // Short write (or a non-final chunk): any linked fsync was
                // cancelled or is moot; write the remainder.
                continue;
            }
            on_written();
            if let Some(e) = fault::injected("wal::before_fsync") {
                return Err(WalError::io(path, e));
            }
            let synced = match synced {
                Some(r) => r,
                // The final bytes came from a chunk without a linked fsync
                // (cannot happen with the sizing above, but be exact).
                None => {
                    file.sync_data().map_err(|e| WalError::io(path, e))?;
                    0
                }
            };
            if synced < 0 {
                // Includes ECANCELED only if the write was short, which was
                // handled above; anything here is a real fsync failure.
                return Err(WalError::io(path, io::Error::from_raw_os_error(-synced)));
            }
            if let Some(e) = fault::injected("wal::fsync") {
                return Err(WalError::io(path, e));
            }
            return Ok(());
        }
    }
}
