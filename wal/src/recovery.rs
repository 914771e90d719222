//! Recovery scan at open: validates every segment and record, truncates a
//! torn tail of the last segment, and refuses to open (with the file and
//! byte offset) on anything else.
//!
//! Torn tail versus corruption. After the last valid record `E-1` of the
//! last segment, the rest of that segment is scanned (at every aligned
//! offset) for a frame with a valid checksum and an LSN `>= E`. Every frame
//! records `synced_lsn`, the durable LSN when it was written. A valid later
//! frame with `synced_lsn >= E` proves that record `E` had been made durable
//! (and so possibly acknowledged) before that frame was written: the damage
//! at `E` is corruption and open fails. A later frame with
//! `synced_lsn < E` belongs to the same unsynced group as `E` (a power cut
//! may persist a group's pages out of order), so nothing after `E` was ever
//! acknowledged and the whole tail is discarded. Earlier segments must end
//! exactly where the next one begins; a missing *prefix* of segments is fine
//! (that is what purge leaves), a hole is not.

use std::fs::OpenOptions;
use std::path::Path;

use crate::error::IoContext;
use crate::format::{self, FRAME_ALIGN, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::segment::{self, ActiveSegment, SegmentInfo};
use crate::{Lsn, WalError};

/// What the scan found: the segments in order and the open last segment.
pub(crate) struct Recovered {
    pub segments: Vec<SegmentInfo>,
    pub active: ActiveSegment,
    /// LSN the next append gets.
    pub next_lsn: Lsn,
}

/// Scans `dir` (which must exist and be locked by the caller). An empty
/// directory gets its first segment, starting at LSN 1.
pub(crate) fn recover(dir: &Path, segment_size: u64) -> Result<Recovered, WalError> {
    let segments = segment::list_segments(dir)?;
    if segments.is_empty() {
        let active = segment::create_segment(dir, 1, segment_size)?;
        return Ok(Recovered {
            segments: vec![SegmentInfo {
                first_lsn: 1,
                path: active.path.clone(),
            }],
            active,
            next_lsn: 1,
        });
    }

    // `prev_end` is (file, offset) where the previous segment's records end,
    // used to name the place of a gap.
    let mut expected: Lsn = segments[0].first_lsn;
    let mut prev_end: Option<(&Path, u64)> = None;
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        let file = OpenOptions::new()
            .read(true)
            .write(i == last)
            .open(&seg.path)
            .ctx(&seg.path)?;
        let map = segment::map_file(&file, &seg.path)?;
        let buf: &[u8] = map.as_deref().unwrap_or(&[]);
        let first = format::decode_segment_header(buf)
            .map_err(|why| WalError::corruption(&seg.path, 0, why))?;
        if first != seg.first_lsn {
            return Err(WalError::corruption(
                &seg.path,
                16,
                format!(
                    "header says first LSN {first}, file name says {}",
                    seg.first_lsn
                ),
            ));
        }
        if first != expected {
            return Err(gap_error(prev_end, &seg.path, expected, first));
        }

        let end = scan_chain(buf, &seg.path, &mut expected)?;
        if i != last {
            prev_end = Some((&seg.path, end as u64));
            continue;
        }

        // Last segment: classify whatever follows the chain.
        let dirty_end = check_tail(buf, &seg.path, end, expected)?;
        let capacity = buf.len() as u64;
        drop(map);
        if dirty_end > end {
            tracing::warn!(
                file = %seg.path.display(),
                offset = end,
                bytes = dirty_end - end,
                next_lsn = expected,
                "WAL recovery: discarding torn tail"
            );
            segment::zero_range_backwards(&file, &seg.path, end as u64, dirty_end as u64)?;
        }
        let active =
            ActiveSegment::new(seg.first_lsn, seg.path.clone(), file, capacity, end as u64);
        return Ok(Recovered {
            segments: segments.clone(),
            active,
            next_lsn: expected,
        });
    }
    // The loop returns at the last segment; the list was checked non-empty.
    Err(WalError::corruption(dir, 0, "no segment files"))
}

/// Follows the chain of valid frames with consecutive LSNs from the segment
/// header; returns the offset where it stops and advances `expected`.
/// A valid frame with the wrong LSN is corruption (never skipped).
pub(crate) fn scan_chain(buf: &[u8], path: &Path, expected: &mut Lsn) -> Result<usize, WalError> {
    let mut pos = SEGMENT_HEADER_LEN;
    while let Ok(frame) = format::decode_frame(buf, pos) {
        if frame.lsn != *expected {
            return Err(WalError::corruption(
                path,
                pos as u64,
                format!(
                    "expected LSN {}, found a valid record with LSN {}",
                    expected, frame.lsn
                ),
            ));
        }
        *expected += 1;
        pos = frame.next;
    }
    Ok(pos)
}

/// Looks past the end of the chain at `end` (where record `expected` would
/// be). Returns the end of the non-zero bytes there (to be zeroed), or
/// `Corruption` if a frame written after `expected` was durable exists.
fn check_tail(buf: &[u8], path: &Path, end: usize, expected: Lsn) -> Result<usize, WalError> {
    let mut dirty_end = end;
    let mut off = end;
    while off + FRAME_ALIGN <= buf.len() {
        let word = &buf[off..off + FRAME_ALIGN];
        if word.iter().any(|&b| b != 0) {
            dirty_end = off + FRAME_ALIGN;
        }
        // Cheap filter before the CRC: a candidate needs lsn >= expected.
        if off > end && off + FRAME_HEADER_LEN <= buf.len() {
            let lsn = u64::from_le_bytes(buf[off + 8..off + 16].try_into().unwrap_or([0; 8]));
            if lsn >= expected {
                if let Ok(frame) = format::decode_frame(buf, off) {
                    if frame.synced_lsn >= expected {
                        return Err(WalError::corruption(
                            path,
                            end as u64,
                            format!(
                                "record LSN {expected} is missing or damaged, but a valid record \
                                 (LSN {} at offset {off}) written after LSN {} was durable follows it",
                                frame.lsn, frame.synced_lsn
                            ),
                        ));
                    }
                }
            }
        }
        off += FRAME_ALIGN;
    }
    // A file cut at a non-aligned length: count the ragged end as dirty.
    if off < buf.len() && buf[off..].iter().any(|&b| b != 0) {
        dirty_end = buf.len();
    }
    Ok(dirty_end)
}

fn gap_error(prev_end: Option<(&Path, u64)>, this: &Path, expected: Lsn, first: Lsn) -> WalError {
    match prev_end {
        Some((prev, off)) if first > expected => WalError::corruption(
            prev,
            off,
            format!(
                "records {expected}..{} are missing: this segment ends before LSN {expected} \
                 but the next segment ({}) starts at LSN {first}",
                first - 1,
                this.display()
            ),
        ),
        _ => WalError::corruption(
            this,
            0,
            format!(
                "segment starts at LSN {first}, but the log before it ends at LSN {}",
                expected - 1
            ),
        ),
    }
}
