//! # tashkent-wal: the certifier's group-committed write-ahead log
//!
//! Every acknowledged transaction in tashkent is a record in this log,
//! covered by an `fdatasync`; concurrent appends share one `fdatasync`
//! (group commit), which is where Tashkent-MW's speed comes from.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tashkent_wal::WalError> {
//! use tashkent_wal::{Wal, WalOptions};
//! let wal = Wal::open("/var/lib/tashkent/wal", WalOptions::default())?;
//! let lsn = wal.append(&b"writeset"[..]).await?;       // durable when this resolves
//! let ticket = wal.submit(&b"pipelined"[..])?;          // LSN known now ...
//! let _ = ticket.await?;                                // ... durable later
//! for rec in wal.read_from(lsn)? {
//!     let (lsn, payload) = rec?;
//! #   let _ = (lsn, payload);
//! }
//! wal.close().await
//! # }
//! ```
//!
//! ## Model
//!
//! - **LSNs** are dense record sequence numbers. The first record ever is
//!   LSN 1; 0 means "none". `submit` assigns LSNs synchronously, so
//!   submission order is LSN order.
//! - **Positions.** `last_lsn` (assigned) >= `written_lsn` (handed to the
//!   OS) >= `durable_lsn` (covered by an `fdatasync`). `first_lsn` is the
//!   oldest record still retained; when no record is retained it is
//!   `last_lsn() + 1`.
//! - **Writer.** One dedicated thread per log drains the submission queue.
//!   Whatever accumulated while the previous group was being written and
//!   synced becomes the next group: one write, ONE `fdatasync`, then every
//!   append of the group is acknowledged. Submitting never blocks on I/O.
//!   A log opened with [`Durability::Deferred`] lets appends wait in the
//!   queue and writes and syncs them in rounds (when someone waits for
//!   one, when a log operation is queued, at the latest after a delay):
//!   for a copy of records that another log holds durable.
//!   `truncate_after`, `purge_below` and `restart_at` run on the same
//!   thread in queue order.
//! - **Backends.** [`Backend::IoUring`] submits the group as a `Write`
//!   linked to an `Fsync(DATASYNC)` (short writes resubmitted);
//!   [`Backend::Portable`] uses `pwrite` + `fdatasync`. [`Backend::Auto`]
//!   probes io_uring at open and falls back when the kernel refuses it.
//! - **Raft shape.** `submit` (append with a durability future) or
//!   `submit_then` (with a callback the writer thread calls once the
//!   record is durable), `truncate_after`, `purge_below` and `read_from`
//!   map onto openraft's `RaftLogStorage` (`append` + callback,
//!   `truncate`, `purge`, log reader);
//!   `restart_at` empties the log and moves its next LSN anywhere (a
//!   follower's log after a snapshot that is ahead of it).
//!
//! ## On-disk format (version 1)
//!
//! A log is a directory of segment files plus a `LOCK` file (flock, one
//! open `Wal` per directory). A segment is named after the LSN of its first
//! record, zero-padded to 20 digits: `00000000000000000001.wal`. It is
//! created under `<name>.wal.tmp`, preallocated (`fallocate`, or `set_len`
//! where unsupported) to `segment_size` bytes, given its header, synced,
//! renamed into place, and the directory is synced. On ext4 and XFS the
//! writer writes its space with zeroes a MiB ahead of the records, so a
//! group's fdatasync does not also convert the blocks it wrote from
//! unwritten to written (`ActiveSegment::zero_ahead`). All integers are
//! little-endian.
//!
//! ```text
//! segment header (32 bytes)
//!   0   8  magic "TKNTWAL\0"
//!   8   4  format version (1)
//!  12   4  reserved, 0
//!  16   8  first LSN (must equal the file name)
//!  24   4  reserved, 0
//!  28   4  CRC32 (crc32fast) of bytes 0..28
//! record frames, from offset 32, each starting at a multiple of 8
//!   0   4  CRC32 of bytes 4..24 of this header followed by the payload
//!   4   4  payload length (0 ..= u32::MAX, limited by max_record_size)
//!   8   8  LSN (consecutive: first LSN of the segment, +1, +2, ...)
//!  16   8  synced LSN: the durable LSN when this frame was written
//!  24   n  payload
//!      pad zero bytes up to the next multiple of 8 (not checksummed)
//! end: the first offset that does not hold a valid frame with the next
//!      LSN (normally zeroes of the preallocated space)
//! ```
//!
//! A group that does not fit in the rest of the current segment rolls to a
//! new one; a record larger than `segment_size` gets a segment of its own,
//! sized to fit it. Consecutive segments must continue the LSN sequence
//! exactly.
//!
//! ## Recovery
//!
//! `open` validates every segment header and every frame. Damage in any
//! segment but the last, a bad header, or an LSN gap between segments
//! refuses to open with [`WalError::Corruption`] naming the file and byte
//! offset. In the last segment, what follows the last valid record is a
//! *torn tail* (discarded: zeroed and synced) unless a valid frame after it
//! carries a synced LSN at or beyond the damaged record, which proves the
//! damaged record had been durable: that is corruption and open fails. A bad
//! record is never skipped. A missing prefix of segments is accepted (that
//! is what an interrupted purge leaves); a missing segment in the middle is
//! not. Details in `recovery.rs`.
//!
//! ## Errors and durability rules
//!
//! - A failed write or `fdatasync` **poisons** the log: the group that
//!   failed gets the error (ENOSPC is reported as [`WalError::DiskFull`]),
//!   every other pending and future append gets [`WalError::Poisoned`], and
//!   nothing is ever acknowledged again by this handle (retrying an fsync
//!   can lie, and a partial write may be on disk). Recovery: drop or close
//!   the handle and `open` the directory again once the cause (e.g. a full
//!   disk) is fixed; recovery discards the unacknowledged tail.
//!   ENOSPC poisons too, for the same reason and because LSNs were already
//!   handed out for the failed records.
//! - With [`WalOptions::stall_timeout`], an I/O step of the writer that
//!   does not return in time (a hung disk) poisons the log with
//!   [`WalError::Stalled`]: appends submitted from then on are refused at
//!   once, `wait_durable` callers are answered, and the stuck group and
//!   everything queued behind it get the poison when (if) the disk
//!   returns, even if their fdatasync succeeded. Closing or dropping the
//!   handle stops waiting for the writer thread once the watchdog has
//!   failed the log, and leaves it behind (it still holds the directory's
//!   lock, so the log cannot be opened again until the disk returns).
//! - `purge_below` deletes oldest-first with a directory fsync after each
//!   deletion; its failure does not poison (the log stays consistent).
//! - The submission queue is unbounded; callers bound their own concurrency.
//!
//! ## Failpoints
//!
//! With the `failpoints` cargo feature, the sites listed in `fault.rs`
//! (`wal::write`, `wal::short_write`, `wal::before_fsync`, `wal::fsync`,
//! `wal::segment_roll`, `wal::purge_between`, `wal::restart_between`,
//! `wal::truncate_step`) are live; without it they compile to nothing.
//!
//! ## Tests and benchmarks
//!
//! ```text
//! cargo test -p tashkent-wal                                   # unit, conformance (both backends),
//!                                                              # recovery, crash (SIGKILL) tests
//! cargo test -p tashkent-wal --features failpoints --test faults   # fault injection
//! WAL_CRASH_SEED=<seed> cargo test -p tashkent-wal --test crash    # replay a crash run
//! cargo bench --bench wal_append [-- c64/256B]         # throughput matrix
//! ```

mod backend;
mod error;
mod fault;
mod format;
mod reader;
mod recovery;
mod segment;
mod shared;
mod stall;
mod wal;
mod writer;

pub use backend::io_uring_available;
pub use error::WalError;
pub use format::{holds_segments, segment_file_name, segment_first_lsns};
pub use reader::WalReader;
pub use wal::{AppendTicket, Wal, WalStats};

/// Log sequence number: dense, the first record ever is 1, 0 means "none".
pub type Lsn = u64;

/// Which I/O backend writes and syncs groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// io_uring if the kernel allows it at open, else portable.
    #[default]
    Auto,
    /// io_uring (linked write + fdatasync); `open` fails if unavailable.
    IoUring,
    /// `pwrite` + `fdatasync`.
    Portable,
}

/// One group the writer wrote and made durable with one fdatasync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSync {
    /// Records in the group.
    pub records: usize,
    /// Frame bytes written.
    pub bytes: usize,
    /// The write and the fdatasync, together.
    pub duration: std::time::Duration,
}

/// What [`Wal::observe_syncs`] calls for each [`GroupSync`].
pub type SyncObserver = std::sync::Arc<dyn Fn(GroupSync) + Send + Sync>;

/// Options for [`Wal::open`].
#[derive(Debug, Clone)]
pub struct WalOptions {
    pub backend: Backend,
    /// Preallocated size of each segment file. Default 64 MiB.
    pub segment_size: u64,
    /// Largest accepted payload. Default 256 MiB; at most `u32::MAX`.
    pub max_record_size: u64,
    /// Most appends per group (per fdatasync). Default unlimited; 1 disables
    /// group commit (one fdatasync per append), for baselines.
    pub max_group_records: usize,
    /// Longest the writer waits for a group to fill up to the size of the
    /// previous group (an adaptive `commit_delay`; it also never waits more
    /// than half the previous group's write+sync time, and never with a
    /// single appender). Default 200 µs; zero disables it.
    pub max_group_wait: std::time::Duration,
    /// When written records are made durable. Default: every group.
    pub durability: Durability,
    /// One I/O step of the writer (a group's write and fdatasync, a
    /// segment's creation, a segment's deletion with its directory sync)
    /// that has not returned after this long fails the log with
    /// [`WalError::Stalled`] (a hung disk: nothing can cancel a syscall
    /// blocked in the kernel, and until it returns nobody is answered).
    /// Default `None`: wait for the disk however long it takes.
    pub stall_timeout: Option<std::time::Duration>,
}

/// When the writer makes written records durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// One `fdatasync` per group, before anyone in it is acknowledged.
    #[default]
    EveryGroup,
    /// Appends wait in the queue, unwritten, for a round that writes and
    /// syncs them all: as soon as someone calls [`Wal::wait_durable`], when
    /// a truncate, a purge, a restart or close is queued, when 4096 ops
    /// are queued, and at the latest `max_delay` after the first append of
    /// the round. Tickets resolve at that sync (awaiting one does not hurry
    /// it). So a crash of the process, not only of the machine, loses the
    /// appends of the round. For a log that is a copy of what another
    /// durable log holds, where an fdatasync per group would only take
    /// flushes from the durable one: a raft node's versions log. Segments
    /// are synced before a roll, so recovery is unchanged.
    Deferred { max_delay: std::time::Duration },
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            backend: Backend::Auto,
            segment_size: 64 << 20,
            max_record_size: 256 << 20,
            max_group_records: usize::MAX,
            max_group_wait: std::time::Duration::from_micros(200),
            durability: Durability::EveryGroup,
            stall_timeout: None,
        }
    }
}
