//! Portable backend: positional `pwrite` of the whole group, then
//! `fdatasync`. Works on any Unix kernel and filesystem.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::IoBackend;
use crate::error::IoContext;
use crate::{fault, Backend, WalError};

pub(crate) struct Portable;

impl IoBackend for Portable {
    fn kind(&self) -> Backend {
        Backend::Portable
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
        if let Some(e) = fault::injected("wal::write") {
            return Err(WalError::io(path, e));
        }
        let mut done = 0usize;
        if buf.len() > 1 && fault::fires("wal::short_write") {
            // Behave as if the kernel had accepted only half: the loop below
            // must write the remainder at the right offset.
            done = file.write_at(&buf[..buf.len() / 2], offset).ctx(path)?;
        }
        // write_all_at loops over short writes and EINTR.
        file.write_all_at(&buf[done..], offset + done as u64)
            .ctx(path)?;
        on_written();
        if !sync {
            return Ok(());
        }
        if let Some(e) = fault::injected("wal::before_fsync") {
            return Err(WalError::io(path, e));
        }
        file.sync_data().ctx(path)?;
        if let Some(e) = fault::injected("wal::fsync") {
            return Err(WalError::io(path, e));
        }
        Ok(())
    }
}
