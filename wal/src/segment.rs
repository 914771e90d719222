//! Segment files: creating them crash-safely, listing them, zeroing ranges,
//! directory fsync and the directory lock. Rare operations, done with std
//! I/O on the writer thread (the group-commit hot path is in `backend`).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::format::{self, SEGMENT_HEADER_LEN};
use crate::{fault, Lsn, WalError};

/// A segment as the reader and purge see it: its name says where it starts.
#[derive(Debug, Clone)]
pub(crate) struct SegmentInfo {
    pub first_lsn: Lsn,
    pub path: PathBuf,
}

/// The segment the writer appends to.
pub(crate) struct ActiveSegment {
    pub first_lsn: Lsn,
    pub path: PathBuf,
    pub file: File,
    /// File size, fixed at creation (preallocated): a group that does not
    /// fit rolls to a new segment.
    pub capacity: u64,
    /// Where the next frame goes.
    pub write_pos: u64,
}

pub(crate) fn segment_path(dir: &Path, first_lsn: Lsn) -> PathBuf {
    dir.join(format::segment_file_name(first_lsn))
}

/// fsync a directory so that file creations, renames and unlinks in it are
/// durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).ctx(dir)
}

/// Creates segment `first_lsn` of `size` bytes: written and synced under a
/// temporary name, then renamed into place and the directory synced. A crash
/// at any point leaves either no segment (a `.tmp` file that open deletes)
/// or a complete, preallocated one with a valid header.
pub(crate) fn create_segment(
    dir: &Path,
    first_lsn: Lsn,
    size: u64,
) -> Result<ActiveSegment, WalError> {
    let path = segment_path(dir, first_lsn);
    let tmp = dir.join(format!("{first_lsn:020}{}", format::TEMP_SUFFIX));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .ctx(&tmp)?;
    let size = size.max(SEGMENT_HEADER_LEN as u64);
    preallocate(&file, size).ctx(&tmp)?;
    file.write_all_at(&format::encode_segment_header(first_lsn), 0)
        .ctx(&tmp)?;
    file.sync_all().ctx(&tmp)?;
    if let Some(e) = fault::injected("wal::segment_roll") {
        return Err(WalError::io(&tmp, e));
    }
    fs::rename(&tmp, &path).ctx(&path)?;
    sync_dir(dir)?;
    Ok(ActiveSegment {
        first_lsn,
        path,
        file,
        capacity: size,
        write_pos: SEGMENT_HEADER_LEN as u64,
    })
}

/// Reserves the blocks up front so appends do not allocate (and a full disk
/// shows up at roll time). Falls back to a sparse `set_len` on filesystems
/// without `fallocate`; either way the space reads as zeroes, which recovery
/// treats as "no more records".
fn preallocate(file: &File, size: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(size).map_err(|_| io::Error::other("segment too large"))?;
    // SAFETY: plain syscall on an fd we own.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => file.set_len(size),
        _ => Err(e),
    }
}

/// All segment files in `dir`, sorted by first LSN. Leftover `.tmp` files
/// from a crash during segment creation are deleted.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<SegmentInfo>, WalError> {
    let mut segs = Vec::new();
    let mut removed_tmp = false;
    for entry in fs::read_dir(dir).ctx(dir)? {
        let entry = entry.ctx(dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(format::TEMP_SUFFIX) {
            fs::remove_file(entry.path()).ctx(&entry.path())?;
            removed_tmp = true;
        } else if let Some(first_lsn) = format::parse_segment_file_name(name) {
            segs.push(SegmentInfo {
                first_lsn,
                path: entry.path(),
            });
        }
    }
    if removed_tmp {
        sync_dir(dir)?;
    }
    segs.sort_by_key(|s| s.first_lsn);
    Ok(segs)
}

/// Overwrites `[from, to)` with zeroes and makes it durable, zeroing the
/// LAST chunk first and syncing after each chunk. A crash part-way thus
/// leaves a log whose surviving records form a prefix followed by a torn
/// record, which recovery truncates like any torn tail, never a hole
/// followed by intact records.
pub(crate) fn zero_range_backwards(
    file: &File,
    path: &Path,
    from: u64,
    to: u64,
) -> Result<(), WalError> {
    const CHUNK: u64 = 4 << 20;
    if from >= to {
        return Ok(());
    }
    let zeroes = vec![0u8; CHUNK.min(to - from) as usize];
    let mut end = to;
    while end > from {
        let start = end.saturating_sub(CHUNK).max(from);
        file.write_all_at(&zeroes[..(end - start) as usize], start)
            .ctx(path)?;
        file.sync_data().ctx(path)?;
        end = start;
        if end > from {
            if let Some(e) = fault::injected("wal::truncate_step") {
                return Err(WalError::io(path, e));
            }
        }
    }
    Ok(())
}

/// Exclusive lock on `dir/LOCK` so two `Wal`s never write one directory.
/// Held for as long as the returned file is open (the writer thread owns
/// it); the kernel drops it when a process dies.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .ctx(&path)?;
    // SAFETY: plain syscall on an fd we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(WalError::Locked {
                path: dir.to_path_buf(),
            });
        }
        return Err(WalError::io(&path, e));
    }
    Ok(file)
}

/// Read-only map of a whole segment file (`None` for an empty file, which
/// cannot be mapped).
pub(crate) fn map_file(file: &File, path: &Path) -> Result<Option<memmap2::Mmap>, WalError> {
    let len = file.metadata().ctx(path)?.len();
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: segment files are only ever modified in place by this crate
    // (never shrunk while open), so the mapping stays valid; bytes that are
    // concurrently rewritten are re-validated by CRC before use.
    let map = unsafe { memmap2::Mmap::map(file) }.ctx(path)?;
    Ok(Some(map))
}
