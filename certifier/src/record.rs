//! The WAL record of one committed version.
//!
//! Mapping: **one WAL record per committed version, and version == LSN.**
//! The certifier is the WAL's only writer and submits records in version
//! order under its lock, so the dense LSNs of the WAL are the dense versions
//! (checked on every submit and on every read).
//!
//! ```text
//! offset size
//!   0     4   magic "TKCW" (tashkent certifier writeset)
//!   4     2   record format version, little-endian (1)
//!   6     2   flags: bit 0 = spooled (the writeset's items and statements
//!             are in the spool log, the body holds its header and `spool`,
//!             see `spool`); other bits 0
//!   8     8   version, little-endian (== the record's LSN)
//!  16     n   protobuf encoding of the `Writeset` (which carries its own
//!             format_version), fields in execution order (see
//!             `writeset::encode_in_order`), byte for byte what Subscribe
//!             streams
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::error::CertifierError;
use crate::proto::Writeset;
use crate::Version;

pub const MAGIC: &[u8; 4] = b"TKCW";
pub const RECORD_FORMAT_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 16;
/// Flag: the record's writeset is spooled.
pub const FLAG_SPOOLED: u16 = 1;

/// Encodes `ws` with version 0; [`set_version`] fills it in once known (so
/// the encoding happens outside the certifier's lock).
pub fn encode(ws: &Writeset) -> BytesMut {
    let mut buf = header(0, ws.encoded_len());
    crate::writeset::encode_in_order(ws, &mut buf);
    buf
}

/// The header of a (not spooled) record of `version`, with room for a body
/// of `body_len` bytes: append the writeset's encoding (what Subscribe
/// streams) to complete it.
pub fn header(version: Version, body_len: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + body_len);
    buf.put_slice(MAGIC);
    buf.put_u16_le(RECORD_FORMAT_VERSION);
    buf.put_u16_le(0);
    buf.put_u64_le(version);
    buf
}

/// Encodes the record of a spooled writeset: `ws` holds the header fields
/// and `spool`, no items or statements.
pub fn encode_spooled(ws: &Writeset) -> BytesMut {
    let mut buf = encode(ws);
    buf[6..8].copy_from_slice(&FLAG_SPOOLED.to_le_bytes());
    buf
}

/// True when the record (checked by [`body`]) is spooled.
pub fn is_spooled(record: &[u8]) -> bool {
    record.len() >= 8 && u16::from_le_bytes([record[6], record[7]]) & FLAG_SPOOLED != 0
}

pub fn set_version(buf: &mut BytesMut, version: Version) {
    buf[8..16].copy_from_slice(&version.to_le_bytes());
}

/// A copy of `record` stamped with `version` (a record too short for a
/// header, which no check lets through, is copied as it is).
pub fn stamped(record: &[u8], version: Version) -> Bytes {
    let mut b = BytesMut::from(record);
    if b.len() >= HEADER_LEN {
        set_version(&mut b, version);
    }
    b.freeze()
}

/// The version field of `record`'s header, if it has one.
pub fn version_field(record: &[u8]) -> Option<Version> {
    let field: [u8; 8] = record.get(8..HEADER_LEN)?.try_into().ok()?;
    Some(u64::from_le_bytes(field))
}

/// Decodes the record a raft node keeps for `version` in its conflict
/// window: stamped with `version`, or with version field 0 (as a raft
/// entry carries it, or an earlier build kept it).
pub fn decode_kept(version: Version, record: &Bytes) -> Result<Writeset, CertifierError> {
    match version_field(record) {
        Some(0) => decode(0, record),
        _ => decode(version, record),
    }
}

/// Checks the header of the record at `lsn` and returns the writeset bytes.
pub fn body(lsn: u64, record: &Bytes) -> Result<Bytes, CertifierError> {
    let bad = |reason: String| CertifierError::CorruptRecord {
        version: lsn,
        reason,
    };
    if record.len() < HEADER_LEN || &record[..4] != MAGIC {
        return Err(bad("not a certifier record (bad magic)".into()));
    }
    let format = u16::from_le_bytes([record[4], record[5]]);
    if format != RECORD_FORMAT_VERSION {
        return Err(bad(format!("unsupported record format version {format}")));
    }
    let flags = u16::from_le_bytes([record[6], record[7]]);
    if flags & !FLAG_SPOOLED != 0 {
        return Err(bad(format!("unknown record flags {flags:#06x}")));
    }
    let mut v = [0u8; 8];
    v.copy_from_slice(&record[8..16]);
    let version = u64::from_le_bytes(v);
    if version != lsn {
        return Err(bad(format!("record says version {version}, LSN is {lsn}")));
    }
    Ok(record.slice(HEADER_LEN..))
}

/// Decodes the record at `lsn` completely.
pub fn decode(lsn: u64, record: &Bytes) -> Result<Writeset, CertifierError> {
    let body = body(lsn, record)?;
    Writeset::decode(body).map_err(|e| CertifierError::CorruptRecord {
        version: lsn,
        reason: format!("undecodable writeset: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_record_is_read_stamped_or_not() {
        let ws = Writeset {
            format_version: 1,
            txn_id: Bytes::from_static(b"x"),
            ..Writeset::default()
        };
        let unstamped = encode(&ws).freeze();
        assert_eq!(version_field(&unstamped), Some(0));
        let kept = stamped(&unstamped, 9);
        assert_eq!(version_field(&kept), Some(9));
        assert_eq!(decode_kept(9, &kept).unwrap(), ws);
        assert_eq!(decode_kept(9, &unstamped).unwrap(), ws);
        assert!(
            decode_kept(8, &kept).is_err(),
            "stamped with another version"
        );
        assert_eq!(version_field(b"TKCW"), None);
        assert_eq!(stamped(b"TKCW", 9), Bytes::from_static(b"TKCW"));
    }

    #[test]
    fn round_trip_and_checks() {
        let ws = Writeset {
            format_version: 1,
            txn_id: Bytes::from_static(b"x"),
            snapshot: 4,
            ..Writeset::default()
        };
        let mut buf = encode(&ws);
        set_version(&mut buf, 7);
        let rec = buf.freeze();
        assert_eq!(decode(7, &rec).unwrap(), ws);
        assert!(decode(8, &rec).is_err(), "version must equal the LSN");
        let mut bad = rec.to_vec();
        bad[0] = b'X';
        assert!(decode(7, &Bytes::from(bad)).is_err());
        let mut bad = rec.to_vec();
        bad[4] = 2;
        assert!(decode(7, &Bytes::from(bad)).is_err());
    }
}
