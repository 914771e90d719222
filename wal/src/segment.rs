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
    /// Every byte from `write_pos` up to here has been written (zeroes),
    /// not just allocated: see [`ActiveSegment::zero_ahead`].
    pub zeroed_to: u64,
    /// Whether zeroes ahead pay on this file ([`zeroes_pay`]).
    zeroes_pay: bool,
}

/// Whether writing zeroes ahead of the records pays on `file`: its space is
/// allocated (not a sparse file from the `set_len` fallback, where the
/// zeroes would allocate blocks and meet a full disk a MiB early) and it
/// lives on ext4 or XFS, whose `fallocate` leaves unwritten extents (on a
/// copy-on-write filesystem such as btrfs, a write over zeroes is a new
/// extent each time, the opposite of the point).
fn zeroes_pay(file: &File, capacity: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    const EXT4_SUPER_MAGIC: i64 = 0xEF53;
    const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
    let allocated = file
        .metadata()
        .is_ok_and(|m| m.blocks().saturating_mul(512) >= capacity);
    // SAFETY: fstatfs on an fd we own, into a zeroed struct it fills.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs by target.
    let kind = fs.f_type as i64;
    allocated && rc == 0 && (kind == EXT4_SUPER_MAGIC || kind == XFS_SUPER_MAGIC)
}

/// How far ahead of the records a segment's space is written with zeroes.
pub(crate) const ZERO_AHEAD: u64 = 1 << 20;

/// Groups of at least this many bytes write no zeroes ahead: every byte
/// zeroed is written twice, and for a group this large its own bytes
/// outweigh the one conversion its sync does (`wal_append` bench, c64 ×
/// 16 KiB, groups of ~1 MiB: 25 % slower with zeroes ahead).
pub(crate) const ZERO_AHEAD_BELOW: usize = 256 << 10;

static ZEROES: [u8; ZERO_AHEAD as usize] = [0; ZERO_AHEAD as usize];

impl ActiveSegment {
    /// The segment, open at `write_pos`, whose space after it is only
    /// known to be allocated.
    pub(crate) fn new(
        first_lsn: Lsn,
        path: PathBuf,
        file: File,
        capacity: u64,
        write_pos: u64,
    ) -> ActiveSegment {
        let zeroes_pay = zeroes_pay(&file, capacity);
        ActiveSegment {
            first_lsn,
            path,
            file,
            capacity,
            write_pos,
            zeroed_to: write_pos,
            zeroes_pay,
        }
    }

    /// Before a group of `group` bytes ending at `end` is written: writes
    /// zeroes over the segment's space from `end` to [`ZERO_AHEAD`] beyond,
    /// unless that space was written already, the group is large
    /// ([`ZERO_AHEAD_BELOW`]) or zeroes do not pay on this file
    /// ([`zeroes_pay`]).
    ///
    /// `fallocate` leaves the space *unwritten* (ext4, XFS): the first
    /// write to each block converts its extent, and the `fdatasync` after
    /// it must then write that metadata too. On this project's machine
    /// that made each group's fdatasync cost ~2.5x the CPU and ~2x the
    /// time of one over written space (`pwrite` 20 KiB + `fdatasync`,
    /// 3,000 times: 150–220 µs CPU and 300–400 µs against 80 µs and
    /// 185 µs). Zeroes written a MiB ahead convert the extents in one
    /// sync per MiB instead of in every one. (PostgreSQL zero-fills its WAL
    /// segments for the same reason, `wal_init_zero`.) Recovery reads the
    /// zeroes as it read the unwritten space: no more records.
    pub(crate) fn zero_ahead(&mut self, end: u64, group: usize) -> Result<(), WalError> {
        if end <= self.zeroed_to || group >= ZERO_AHEAD_BELOW || !self.zeroes_pay {
            return Ok(());
        }
        let to = end.saturating_add(ZERO_AHEAD).min(self.capacity);
        if to > end {
            if let Some(e) = fault::injected("wal::zero_ahead") {
                return Err(WalError::io(&self.path, e));
            }
            let len = (to - end) as usize;
            self.file
                .write_all_at(&ZEROES[..len], end)
                .ctx(&self.path)?;
        }
        self.zeroed_to = to.max(end);
        Ok(())
    }
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
    Ok(ActiveSegment::new(
        first_lsn,
        path,
        file,
        size,
        SEGMENT_HEADER_LEN as u64,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The unwritten (allocated, never written) bytes of `file` in
    /// `from..to`, per FIEMAP; `None` where the filesystem cannot say.
    fn unwritten_bytes(file: &File, from: u64, to: u64) -> Option<u64> {
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Extent {
            logical: u64,
            physical: u64,
            length: u64,
            reserved64: [u64; 2],
            flags: u32,
            reserved: [u32; 3],
        }
        #[repr(C)]
        struct Fiemap {
            start: u64,
            length: u64,
            flags: u32,
            mapped_extents: u32,
            extent_count: u32,
            reserved: u32,
            extents: [Extent; 64],
        }
        const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
        const FIEMAP_FLAG_SYNC: u32 = 1;
        const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
        let mut map = Fiemap {
            start: from,
            length: to - from,
            flags: FIEMAP_FLAG_SYNC,
            mapped_extents: 0,
            extent_count: 64,
            reserved: 0,
            extents: [Extent::default(); 64],
        };
        // SAFETY: FS_IOC_FIEMAP on an fd we own, with a buffer sized for
        // the `extent_count` extents it may fill in.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP as _, &mut map) };
        if rc != 0 {
            return None;
        }
        let found = &map.extents[..map.mapped_extents as usize];
        Some(
            found
                .iter()
                .filter(|e| e.flags & FIEMAP_EXTENT_UNWRITTEN != 0)
                .map(|e| {
                    let lo = e.logical.max(from);
                    let hi = (e.logical + e.length).min(to);
                    hi.saturating_sub(lo)
                })
                .sum(),
        )
    }

    fn segment(dir: &Path, size: u64) -> ActiveSegment {
        create_segment(dir, 1, size).expect("create segment")
    }

    #[test]
    fn zeroes_go_a_window_ahead_of_the_frames_and_never_over_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = segment(dir.path(), 4 * ZERO_AHEAD);
        // The window's rules, whatever filesystem the test runs on (on
        // tmpfs or btrfs `zeroes_pay` says no, and nothing is written).
        seg.zeroes_pay = true;
        let frames = vec![0xabu8; 5000];
        let at = seg.write_pos;
        seg.file.write_all_at(&frames, at).unwrap();
        let end = at + frames.len() as u64;
        seg.zero_ahead(end, frames.len()).unwrap();
        assert_eq!(seg.zeroed_to, end + ZERO_AHEAD);
        let mut back = vec![0u8; frames.len()];
        seg.file.read_exact_at(&mut back, at).unwrap();
        assert_eq!(back, frames, "the frames are untouched");

        // Within the window: nothing written (a byte put there stays).
        seg.file.write_all_at(&[7], end + 10).unwrap();
        seg.zero_ahead(end + 100, 100).unwrap();
        let mut b = [0u8; 1];
        seg.file.read_exact_at(&mut b, end + 10).unwrap();
        assert_eq!(b, [7]);

        // A large group past it: none.
        let zeroed = seg.zeroed_to;
        seg.zero_ahead(zeroed + 1, ZERO_AHEAD_BELOW).unwrap();
        assert_eq!(seg.zeroed_to, zeroed);
        // A small one: the next window, capped at the segment's end.
        seg.zero_ahead(seg.zeroed_to + 1, 1).unwrap();
        assert_eq!(seg.zeroed_to, end + 2 * ZERO_AHEAD + 1);
        seg.zero_ahead(4 * ZERO_AHEAD - 8, 8).unwrap();
        assert_eq!(seg.zeroed_to, 4 * ZERO_AHEAD);
    }

    #[test]
    fn the_space_ahead_of_the_frames_is_written_not_just_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = segment(dir.path(), 8 * ZERO_AHEAD);
        let end = seg.write_pos + 4096;
        // Before: fallocate left the space unwritten, if this filesystem
        // says so at all (ext4 and XFS do; tmpfs has no extents).
        match unwritten_bytes(&seg.file, end, end + ZERO_AHEAD) {
            Some(n) if n > 0 => {}
            other => {
                eprintln!("skipped: this filesystem shows no unwritten extents ({other:?})");
                return;
            }
        }
        seg.file.write_all_at(&[1u8; 4096], seg.write_pos).unwrap();
        seg.zero_ahead(end, 4096).unwrap();
        assert_eq!(unwritten_bytes(&seg.file, end, end + ZERO_AHEAD), Some(0));
        // Beyond the window it still is.
        let beyond = unwritten_bytes(&seg.file, end + 2 * ZERO_AHEAD, end + 3 * ZERO_AHEAD);
        assert!(beyond.is_some_and(|n| n > 0), "{beyond:?}");
    }

    #[test]
    fn a_logs_writer_writes_the_space_ahead_of_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let wal = crate::Wal::open(dir.path(), crate::WalOptions::default()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut last = None;
        for i in 0..10u8 {
            last = Some(wal.submit(vec![i; 3000]).unwrap());
        }
        rt.block_on(last.unwrap()).unwrap();
        let path = segment_path(dir.path(), 1);
        let file = File::open(&path).unwrap();
        let frame = format::frame_len(3000) as u64;
        let end = SEGMENT_HEADER_LEN as u64 + 10 * frame;
        // The first group wrote at least the first record, and a window
        // of zeroes after its end.
        let zeroed = SEGMENT_HEADER_LEN as u64 + frame + ZERO_AHEAD;
        // Only where the space beyond is unwritten (fallocate's kind, on
        // a filesystem whose extents FIEMAP shows) does this say anything.
        let beyond = unwritten_bytes(&file, zeroed + ZERO_AHEAD, zeroed + 2 * ZERO_AHEAD);
        if beyond.is_none_or(|n| n == 0) {
            eprintln!("skipped: no unwritten extents here ({beyond:?})");
            return;
        }
        assert_eq!(
            unwritten_bytes(&file, end, zeroed),
            Some(0),
            "unwritten bytes right after the records"
        );
        drop(wal);
    }
}
