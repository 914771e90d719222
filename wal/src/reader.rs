//! Iterating the log from any LSN, concurrently with appends.
//!
//! A reader maps one segment at a time (memmap2) and walks its frames,
//! re-validating each CRC. It never yields a record above the durable LSN
//! as of the moment it reaches it; at the end it returns `None` and can be
//! polled again later to continue (tail-following). Readers hold their own
//! mapping, so a segment purged underneath them stays readable until they
//! move on; a reader that has to *enter* a purged segment gets
//! `WalError::Purged`.
//!
//! `truncate_after` may replace records a reader has already yielded (the
//! Raft semantics of log truncation); a reader positioned inside the
//! truncated range stops (`None`) until new records reach its position.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::IoContext;
use crate::format::{self, SEGMENT_HEADER_LEN};
use crate::segment::{self, SegmentInfo};
use crate::shared::Shared;
use crate::{Lsn, WalError};

/// Iterator over `(lsn, payload)` of durable records, in LSN order.
pub struct WalReader {
    shared: Arc<Shared>,
    next_lsn: Lsn,
    cur: Option<Cursor>,
    failed: bool,
}

struct Cursor {
    seg: SegmentInfo,
    map: memmap2::Mmap,
    /// Offset of the frame holding `next_lsn` (once positioned).
    pos: usize,
}

impl WalReader {
    pub(crate) fn new(shared: Arc<Shared>, from: Lsn) -> WalReader {
        WalReader {
            shared,
            next_lsn: from,
            cur: None,
            failed: false,
        }
    }

    /// LSN of the record the next successful `next()` returns.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    fn read_next(&mut self) -> Result<Option<(Lsn, Bytes)>, WalError> {
        let lsn = self.next_lsn;
        if lsn > self.shared.durable.load(Ordering::Acquire) {
            return Ok(None);
        }
        // Up to two attempts: the record may be in the current segment, or
        // we may have to move to the segment that now holds it.
        for _ in 0..2 {
            if self.cur.is_none() {
                self.cur = Some(self.enter_segment(lsn)?);
            }
            let Some(cur) = self.cur.as_mut() else {
                continue;
            };
            match format::decode_frame(&cur.map, cur.pos) {
                Ok(f) if f.lsn == lsn => {
                    let payload = Bytes::copy_from_slice(
                        &cur.map[f.payload_start..f.payload_start + f.payload_len],
                    );
                    cur.pos = f.next;
                    self.next_lsn += 1;
                    return Ok(Some((lsn, payload)));
                }
                _ => {
                    // End of this segment's chain (or something replaced
                    // underneath us): re-locate from the segment list.
                    self.cur = None;
                }
            }
        }
        if lsn > self.shared.durable.load(Ordering::Acquire) {
            // A truncate_after took it away meanwhile.
            return Ok(None);
        }
        let file = self
            .shared
            .segments
            .read()
            .iter()
            .rev()
            .find(|s| s.first_lsn <= lsn)
            .map(|s| s.path.clone())
            .unwrap_or_else(|| self.shared.dir.clone());
        Err(WalError::corruption(
            &file,
            0,
            format!("durable record LSN {lsn} not found where the log says it is"),
        ))
    }

    /// Maps the segment holding `lsn` and positions at that record.
    fn enter_segment(&self, lsn: Lsn) -> Result<Cursor, WalError> {
        let seg = {
            let segs = self.shared.segments.read();
            let first = segs.first().map_or(lsn, |s| s.first_lsn);
            if lsn < first {
                return Err(WalError::Purged { lsn, first });
            }
            match segs.iter().rev().find(|s| s.first_lsn <= lsn) {
                Some(s) => s.clone(),
                None => return Err(WalError::Purged { lsn, first }),
            }
        };
        let file = match File::open(&seg.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let first = self.shared.first.load(Ordering::Acquire);
                return Err(WalError::Purged { lsn, first });
            }
            Err(e) => return Err(e).ctx(&seg.path),
        };
        let map = segment::map_file(&file, &seg.path)?
            .ok_or_else(|| WalError::corruption(&seg.path, 0, "segment file is empty"))?;
        // Walk the frame headers to the record (payloads are skipped, only
        // checksummed; the segment is at most a few tens of MiB).
        let mut pos = SEGMENT_HEADER_LEN;
        let mut at = seg.first_lsn;
        while at < lsn {
            match format::decode_frame(&map, pos) {
                Ok(f) if f.lsn == at => {
                    pos = f.next;
                    at += 1;
                }
                _ => break,
            }
        }
        Ok(Cursor { seg, map, pos })
    }
}

impl Iterator for WalReader {
    type Item = Result<(Lsn, Bytes), WalError>;

    /// `None` means "no more durable records right now"; calling again later
    /// picks up records that became durable since. After an error the
    /// reader stays failed and returns `None`.
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.read_next() {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl std::fmt::Debug for WalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalReader")
            .field("next_lsn", &self.next_lsn)
            .field("segment", &self.cur.as_ref().map(|c| &c.seg.path))
            .finish()
    }
}
