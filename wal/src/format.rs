//! Byte layout of segment headers and record frames (see the crate docs,
//! "On-disk format", for the picture). Pure functions, no I/O, so the layout
//! can be unit-tested and is the single place that knows the offsets.

use crate::Lsn;

/// First 8 bytes of every segment file.
pub const MAGIC: [u8; 8] = *b"TKNTWAL\0";
/// Bumped on any incompatible change of the layout below.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the segment header; the first record frame starts here.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Size of a record frame header (before the payload).
pub const FRAME_HEADER_LEN: usize = 24;
/// Frames start at multiples of this, so the tail scan in recovery only has
/// to look at aligned offsets to find every frame that could exist.
pub const FRAME_ALIGN: usize = 8;
/// Hard limit of the format: the length field is a `u32`.
pub const MAX_PAYLOAD: u64 = u32::MAX as u64;
/// Segment file suffix, and the suffix of a segment being created.
pub const SEGMENT_SUFFIX: &str = ".wal";
pub const TEMP_SUFFIX: &str = ".wal.tmp";

/// Bytes a record with `payload_len` bytes of payload occupies on disk.
pub fn frame_len(payload_len: usize) -> usize {
    align_up(FRAME_HEADER_LEN + payload_len)
}

pub fn align_up(n: usize) -> usize {
    (n + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// File name of the segment whose first record is `first_lsn`.
pub fn segment_file_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:020}{SEGMENT_SUFFIX}")
}

/// Whether `dir` holds segment files: a log was opened there (opening
/// creates its first segment). False for a directory that is missing,
/// unreadable or holds anything else.
pub fn holds_segments(dir: &std::path::Path) -> bool {
    !segment_first_lsns(dir).is_empty()
}

/// The first LSN of each segment file in `dir`, ascending, read from
/// the files' names alone (no lock, nothing opened): a log whose only
/// segment starts at LSN 1 may hold no record yet; any other has held
/// one. Empty for a directory that is missing, unreadable or holds none.
pub fn segment_first_lsns(dir: &std::path::Path) -> Vec<Lsn> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut firsts: Vec<Lsn> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| parse_segment_file_name(e.file_name().to_str()?))
        .collect();
    firsts.sort_unstable();
    firsts
}

/// Inverse of [`segment_file_name`]; `None` for any other file name.
pub fn parse_segment_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segment header: magic, version, first LSN, CRC of the preceding bytes.
pub fn encode_segment_header(first_lsn: Lsn) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // 12..16 reserved (zero)
    h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    // 24..28 reserved (zero)
    let crc = crc32fast::hash(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header and returns its first LSN, or why it is bad.
pub fn decode_segment_header(buf: &[u8]) -> Result<Lsn, String> {
    if buf.len() < SEGMENT_HEADER_LEN {
        return Err(format!(
            "segment header truncated: file has {} bytes, header needs {SEGMENT_HEADER_LEN}",
            buf.len()
        ));
    }
    if buf[0..8] != MAGIC {
        return Err("bad segment magic".into());
    }
    let stored_crc = read_u32(buf, 28);
    if crc32fast::hash(&buf[0..28]) != stored_crc {
        return Err("segment header checksum mismatch".into());
    }
    let version = read_u32(buf, 8);
    if version != FORMAT_VERSION {
        return Err(format!(
            "unsupported segment format version {version} (this build reads {FORMAT_VERSION})"
        ));
    }
    Ok(read_u64(buf, 16))
}

/// Writes the frame header for a record into `out[..FRAME_HEADER_LEN]`.
///
/// `synced_lsn` is the durable LSN at the time the frame is written: every
/// record up to it was covered by an `fdatasync` before this frame reached
/// the OS. Recovery uses it to tell a torn (never acknowledged) tail from
/// damage to a record that had been made durable.
pub fn encode_frame_header(out: &mut [u8], lsn: Lsn, synced_lsn: Lsn, payload: &[u8]) {
    let len = payload.len() as u32;
    out[4..8].copy_from_slice(&len.to_le_bytes());
    out[8..16].copy_from_slice(&lsn.to_le_bytes());
    out[16..24].copy_from_slice(&synced_lsn.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&out[4..FRAME_HEADER_LEN]);
    h.update(payload);
    out[0..4].copy_from_slice(&h.finalize().to_le_bytes());
}

/// Appends a complete frame (header, payload, zero padding) to `out`.
pub fn append_frame(out: &mut Vec<u8>, lsn: Lsn, synced_lsn: Lsn, payload: &[u8]) {
    let start = out.len();
    out.resize(start + FRAME_HEADER_LEN, 0);
    encode_frame_header(&mut out[start..], lsn, synced_lsn, payload);
    out.extend_from_slice(payload);
    out.resize(start + frame_len(payload.len()), 0);
}

/// A frame that passed its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub lsn: Lsn,
    pub synced_lsn: Lsn,
    /// Offset of the payload within the buffer handed to [`decode_frame`].
    pub payload_start: usize,
    pub payload_len: usize,
    /// Offset just past this frame's padding: where the next frame starts.
    pub next: usize,
}

/// Why there is no valid frame at an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The header or payload runs past the end of the buffer.
    Truncated,
    /// The checksum does not match (includes all-zero preallocated space).
    BadChecksum,
}

/// Decodes the frame starting at `buf[at..]`. Does not check the LSN
/// sequence; that is the caller's job.
pub fn decode_frame(buf: &[u8], at: usize) -> Result<Frame, FrameError> {
    let Some(header) = buf.get(at..at + FRAME_HEADER_LEN) else {
        return Err(FrameError::Truncated);
    };
    let len = read_u32(header, 4) as usize;
    let payload_start = at + FRAME_HEADER_LEN;
    let Some(payload) = payload_start
        .checked_add(len)
        .and_then(|end| buf.get(payload_start..end))
    else {
        // An all-zero header is not truncated, it is simply not a frame; but
        // len == 0 always fits, so only a non-zero length gets here.
        return Err(FrameError::Truncated);
    };
    let mut h = crc32fast::Hasher::new();
    h.update(&header[4..FRAME_HEADER_LEN]);
    h.update(payload);
    if h.finalize() != read_u32(header, 0) {
        return Err(FrameError::BadChecksum);
    }
    Ok(Frame {
        lsn: read_u64(header, 8),
        synced_lsn: read_u64(header, 16),
        payload_start,
        payload_len: len,
        // A frame at the very end of a file may lack its padding (the file
        // was cut there); it is complete all the same.
        next: at + frame_len(len),
    })
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_holds_segments_once_a_log_was_opened_there() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!holds_segments(&dir.path().join("missing")));
        assert!(!holds_segments(dir.path()));
        std::fs::write(dir.path().join("1.wal"), "").unwrap();
        std::fs::write(dir.path().join("LOCK"), "").unwrap();
        assert!(!holds_segments(dir.path()));
        std::fs::write(dir.path().join(segment_file_name(1)), "").unwrap();
        assert!(holds_segments(dir.path()));
    }

    #[test]
    fn a_directory_lists_its_segments_first_lsns_ascending() {
        let dir = tempfile::tempdir().unwrap();
        assert!(segment_first_lsns(&dir.path().join("missing")).is_empty());
        std::fs::write(dir.path().join("LOCK"), "").unwrap();
        assert!(segment_first_lsns(dir.path()).is_empty());
        for first in [1_000, 1, 20] {
            std::fs::write(dir.path().join(segment_file_name(first)), "").unwrap();
        }
        assert_eq!(segment_first_lsns(dir.path()), vec![1, 20, 1_000]);
    }

    #[test]
    fn names_round_trip_and_sort_numerically() {
        assert_eq!(segment_file_name(1), "00000000000000000001.wal");
        assert_eq!(parse_segment_file_name("00000000000000000001.wal"), Some(1));
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_file_name("1.wal"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000001.wal.tmp"),
            None
        );
        assert_eq!(parse_segment_file_name("0000000000000000000x.wal"), None);
        assert!(segment_file_name(9) < segment_file_name(10));
    }

    #[test]
    fn segment_header_round_trip_and_rejects_damage() {
        let h = encode_segment_header(42);
        assert_eq!(decode_segment_header(&h), Ok(42));
        for i in 0..SEGMENT_HEADER_LEN {
            let mut bad = h;
            bad[i] ^= 0x10;
            assert!(decode_segment_header(&bad).is_err(), "flip at {i} accepted");
        }
        assert!(decode_segment_header(&h[..31]).is_err());
        assert!(decode_segment_header(&[0u8; 32]).is_err());
    }

    #[test]
    fn frame_round_trip_and_alignment() {
        for len in [0usize, 1, 7, 8, 9, 100] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut buf = vec![];
            append_frame(&mut buf, 7, 5, &payload);
            assert_eq!(buf.len(), frame_len(len));
            assert_eq!(buf.len() % FRAME_ALIGN, 0);
            let f = decode_frame(&buf, 0).unwrap();
            assert_eq!(
                (f.lsn, f.synced_lsn, f.payload_len, f.next),
                (7, 5, len, buf.len())
            );
            assert_eq!(&buf[f.payload_start..f.payload_start + len], &payload[..]);
        }
    }

    #[test]
    fn every_single_bit_flip_in_a_frame_is_detected() {
        let mut buf = vec![];
        append_frame(&mut buf, 3, 2, b"hello, world");
        let used = FRAME_HEADER_LEN + 12; // padding is not covered
        for bit in 0..used * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_frame(&bad, 0).is_err(), "bit {bit} flip accepted");
        }
    }

    #[test]
    fn zeroes_and_short_buffers_are_not_frames() {
        assert_eq!(decode_frame(&[0u8; 64], 0), Err(FrameError::BadChecksum));
        let mut buf = vec![];
        append_frame(&mut buf, 1, 0, &[9u8; 40]);
        for cut in 0..FRAME_HEADER_LEN + 40 {
            assert!(decode_frame(&buf[..cut], 0).is_err(), "cut {cut} accepted");
        }
    }
}
