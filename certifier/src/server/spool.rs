//! Writesets certified in chunks: spooled to a log of their own while they
//! stream in, so the certifier never holds a large transaction in memory.
//!
//! The spool is a second [`Wal`] in `<wal_dir>/spool`. Each chunk of a
//! Certify stream becomes one spool record as it arrives:
//!
//! ```text
//! spool record := tag:u64 (little-endian)  items and statements of the chunk,
//!                 protobuf Writeset fields 5/6 in execution order
//!                 (`writeset::encode_parts`), `before_item` counted over
//!                 the whole writeset
//! ```
//!
//! `tag` is random per Certify call; chunks of concurrent calls interleave.
//! Once the last chunk is durable (the spool's own group commit), the
//! writeset is certified like any other, and its WAL record (flagged
//! spooled, see `record`) holds the header and a `SpoolRef`: the spool
//! records `first..=last` with that tag. The header's encoding followed by
//! those chunks, concatenated, is the writeset's encoding, which is what
//! Subscribe streams.
//!
//! On a raft node the state machine writes the spool instead, as it
//! applies each chunk of a writeset the group replicates in chunks
//! (`raft::chunks`; `tag` is the chunks' tag), and the versions log holds
//! the spooled records.
//!
//! Spool records of calls that were aborted, refused or never finished are
//! never referenced; the spool is purged below the oldest record that a
//! retained version or a call in progress still needs (in memory; rebuilt
//! at start from the WAL, or the versions log, whose every record is read
//! for it, and on a raft node from the assemblies its snapshot holds).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tashkent_wal::{AppendTicket, Lsn, Wal, WalError, WalOptions};

use crate::error::CertifierError;
use crate::proto::SpoolRef;
use crate::Version;

/// Bytes appended ahead of the spool's writer before [`Spool::keep_up`]
/// waits for it.
pub const SPOOL_AHEAD: usize = 16 << 20;

/// The spool log and what is still needed of it.
pub struct Spool {
    wal: Wal,
    needed: Arc<Mutex<Needed>>,
    /// Bytes appended since [`Spool::keep_up`] last waited.
    ahead: AtomicUsize,
}

/// Keeps the spool's records from one LSN on while it lives (a snapshot
/// being written reads them after the state machine moved on).
pub struct SpoolHold {
    needed: Arc<Mutex<Needed>>,
    id: u64,
}

impl Drop for SpoolHold {
    fn drop(&mut self) {
        self.needed.lock().holds.remove(&self.id);
    }
}

#[derive(Default)]
struct Needed {
    /// First spool record of each retained spooled version.
    versions: BTreeMap<Version, Lsn>,
    /// First spool record of each call in progress, by tag.
    calls: HashMap<u64, Lsn>,
    /// First spool record each [`SpoolHold`] keeps, by hold.
    holds: HashMap<u64, Lsn>,
    next_hold: u64,
}

impl Spool {
    /// Opens (or creates) the spool log in `<wal_dir>/spool`.
    pub fn open(wal_dir: &Path, opts: WalOptions) -> Result<Spool, CertifierError> {
        Ok(Spool {
            wal: Wal::open(wal_dir.join("spool"), opts)?,
            needed: Arc::new(Mutex::new(Needed::default())),
            ahead: AtomicUsize::new(0),
        })
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Appends one chunk of the call `r` names (its tag; its records so
    /// far, none while `first` is 0) and counts it in `r`; returns the
    /// record's ticket.
    pub fn append(&self, r: &mut SpoolRef, parts: &[u8]) -> Result<AppendTicket, CertifierError> {
        let mut rec = BytesMut::with_capacity(8 + parts.len());
        rec.put_u64_le(r.tag);
        rec.put_slice(parts);
        let ticket = {
            // Registered under the lock purges take: a purge never removes
            // a record of a call in progress.
            let mut needed = self.needed.lock();
            let ticket = self.wal.submit(rec.freeze())?;
            if r.first == 0 {
                needed.calls.insert(r.tag, ticket.lsn);
                r.first = ticket.lsn;
            }
            ticket
        };
        r.last = ticket.lsn;
        r.bytes += parts.len() as u64;
        self.ahead.fetch_add(parts.len(), Ordering::Relaxed);
        Ok(ticket)
    }

    /// Waits for the spool's writer once [`SPOOL_AHEAD`] bytes were
    /// appended since the last wait: the spool queues in memory what it
    /// has not written, and a replay, a restore or a copy appends faster
    /// than a disk writes.
    pub async fn keep_up(&self) -> Result<(), CertifierError> {
        if self.ahead.load(Ordering::Relaxed) >= SPOOL_AHEAD {
            self.ahead.store(0, Ordering::Relaxed);
            self.wal.wait_durable(self.wal.last_lsn()).await?;
        }
        Ok(())
    }

    /// The call `tag` ended: committed as `version` (its records are
    /// needed while the version is retained), or not (`None`).
    pub fn finished(&self, tag: u64, version: Option<(Version, Lsn)>) {
        let mut needed = self.needed.lock();
        needed.calls.remove(&tag);
        if let Some((v, first)) = version {
            needed.versions.insert(v, first);
        }
    }

    /// Keeps the records from `first` on until the hold is dropped.
    pub fn hold(&self, first: Lsn) -> SpoolHold {
        let mut needed = self.needed.lock();
        needed.next_hold += 1;
        let id = needed.next_hold;
        needed.holds.insert(id, first);
        SpoolHold {
            needed: self.needed.clone(),
            id,
        }
    }

    /// A retained spooled version found in the WAL at start.
    pub fn retained(&self, version: Version, first: Lsn) {
        self.needed.lock().versions.insert(version, first);
    }

    /// Registers the spooled versions of `wal` (the certifier's WAL, or a
    /// raft node's versions log) below `until` as retained: read at start.
    pub fn retain_spooled(&self, wal: &Wal, until: Lsn) -> Result<(), CertifierError> {
        if wal.first_lsn() >= until {
            return Ok(());
        }
        for r in wal.read_from(wal.first_lsn())? {
            let (lsn, rec) = r?;
            if lsn >= until {
                break;
            }
            if crate::record::is_spooled(&rec) {
                if let Some(s) = crate::record::decode(lsn, &rec)?.spool {
                    self.retained(lsn, s.first);
                }
            }
        }
        Ok(())
    }

    /// Versions below `first_version` were purged from the WAL: purges the
    /// spool records nothing needs any more.
    pub async fn purge(&self, first_version: Version) -> Result<(), CertifierError> {
        let point = {
            let mut needed = self.needed.lock();
            needed.versions = needed.versions.split_off(&first_version);
            let oldest = needed
                .versions
                .values()
                .chain(needed.calls.values())
                .chain(needed.holds.values())
                .min()
                .copied();
            oldest.unwrap_or(self.wal.last_lsn() + 1)
        };
        if point > self.wal.first_lsn() {
            self.wal.purge_below(point).await?;
        }
        Ok(())
    }

    /// The chunks of a spooled writeset, in order (blocking: reads the
    /// log). Checks that they add up to the size the reference names.
    pub fn chunks(&self, r: &SpoolRef) -> Result<SpoolChunks, CertifierError> {
        Ok(SpoolChunks {
            reader: self.wal.read_from(r.first)?,
            r: *r,
            seen: 0,
            done: false,
        })
    }

    /// Flushes and closes the spool log, which unlocks its directory;
    /// whoever still holds this spool finds it closed.
    pub async fn close(&self) -> Result<(), WalError> {
        self.wal.clone().close().await
    }
}

/// Iterator over the chunks of one spooled writeset.
pub struct SpoolChunks {
    reader: tashkent_wal::WalReader,
    r: SpoolRef,
    seen: u64,
    done: bool,
}

impl Iterator for SpoolChunks {
    type Item = Result<Bytes, CertifierError>;

    fn next(&mut self) -> Option<Self::Item> {
        let bad = |reason: String| CertifierError::CorruptRecord {
            version: 0,
            reason: format!("spool: {reason}"),
        };
        while !self.done {
            let (lsn, mut rec) = match self.reader.next() {
                Some(Ok(r)) => r,
                Some(Err(e)) => return Some(Err(e.into())),
                None => {
                    self.done = true;
                    return Some(Err(bad(format!(
                        "records {}..={} end early",
                        self.r.first, self.r.last
                    ))));
                }
            };
            if lsn >= self.r.last {
                self.done = true;
            }
            if rec.len() < 8 {
                return Some(Err(bad(format!("record {lsn} has no tag"))));
            }
            if rec.get_u64_le() != self.r.tag {
                continue;
            }
            self.seen += rec.len() as u64;
            if self.done && self.seen != self.r.bytes {
                return Some(Err(bad(format!(
                    "{} bytes of chunks where {} were certified",
                    self.seen, self.r.bytes
                ))));
            }
            return Some(Ok(rec));
        }
        None
    }
}
