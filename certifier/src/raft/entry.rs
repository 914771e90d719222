//! The WAL record of one raft log entry: LSN = index + 1.
//!
//! raft indexes start at 0 (openraft's `initialize` writes the first
//! membership at index 0) and WAL LSNs at 1, hence the offset; both are
//! dense, so the mapping is fixed and checked on every read. The WAL frame
//! already carries a CRC over the payload; this header adds what raft needs
//! and a format version.
//!
//! ```text
//! offset size
//!   0     4   magic "TKRE" (tashkent raft entry)
//!   4     2   entry format version, little-endian (1)
//!   6     1   kind: 0 blank, 1 certify, 2 report, 3 membership, 4 batch,
//!             5 part, 6 refuse, 7 chunk, 8 decided, 9 base
//!   7     1   reserved, 0
//!   8     8   term, little-endian
//!  16     8   node id of the leader that proposed it, little-endian
//!  24     8   index, little-endian (== LSN - 1)
//!  32     n   body:
//!               certify:    the certifier record (`record.rs`, version 0)
//!               batch:      u32 count, then count × (u32 length, record)
//!               report:     replica u32, applied u64, oldest snapshot u64
//!               part:       tag u64, last u8 (0 or 1), the piece
//!               chunk:      as part, the piece a protobuf `Writeset`
//!               refuse:     the row's last write version u64, then as
//!                           certify
//!               decided:    the decisions (`decided.rs`)
//!               base:       nothing
//!               membership: openraft's `Membership`, JSON
//!               blank:      nothing
//! ```
//!
//! A certify entry's body is byte for byte today's certifier record, so a
//! later step can serve Subscribe from the raft log (after stamping the
//! version assigned at apply).

use bytes::{BufMut, Bytes, BytesMut};
use openraft::{CommittedLeaderId, EntryPayload};

use super::types::{Command, Entry, LogId, NodeId};
use crate::error::CertifierError;

pub const MAGIC: &[u8; 4] = b"TKRE";
pub const ENTRY_FORMAT_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 32;

const KIND_BLANK: u8 = 0;
const KIND_CERTIFY: u8 = 1;
const KIND_REPORT: u8 = 2;
const KIND_MEMBERSHIP: u8 = 3;
const KIND_BATCH: u8 = 4;
const KIND_PART: u8 = 5;
const KIND_REFUSE: u8 = 6;
const KIND_CHUNK: u8 = 7;
const KIND_DECIDED: u8 = 8;
const KIND_BASE: u8 = 9;
const PART_HEADER_LEN: usize = 9;
const REPORT_LEN: usize = 4 + 8 + 8;

/// The WAL LSN of raft index `index`.
pub fn lsn_of(index: u64) -> u64 {
    index + 1
}

/// A log id from its parts. The proposer's node id is part of a committed
/// leader id in openraft's default mode: log ids that differ only in it are
/// different entries.
pub fn log_id(term: u64, node_id: NodeId, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, node_id), index)
}

/// Encodes `entry` as a WAL payload.
pub fn encode(entry: &Entry) -> Result<Bytes, CertifierError> {
    let (kind, body): (u8, Bytes) = match &entry.payload {
        EntryPayload::Blank => (KIND_BLANK, Bytes::new()),
        EntryPayload::Normal(Command::Certify { record }) => (KIND_CERTIFY, record.clone()),
        EntryPayload::Normal(Command::CertifyBatch { records }) => {
            let len = 4 + records.iter().map(|r| 4 + r.len()).sum::<usize>();
            let mut b = BytesMut::with_capacity(len);
            b.put_u32_le(records.len() as u32);
            for r in records {
                b.put_u32_le(r.len() as u32);
                b.put_slice(r);
            }
            (KIND_BATCH, b.freeze())
        }
        EntryPayload::Normal(Command::Part { tag, piece, last }) => {
            (KIND_PART, piece_body(*tag, piece, *last))
        }
        EntryPayload::Normal(Command::Chunk { tag, piece, last }) => {
            (KIND_CHUNK, piece_body(*tag, piece, *last))
        }
        EntryPayload::Normal(Command::Refuse { last, record }) => {
            let mut b = BytesMut::with_capacity(8 + record.len());
            b.put_u64_le(*last);
            b.put_slice(record);
            (KIND_REFUSE, b.freeze())
        }
        EntryPayload::Normal(Command::Base) => (KIND_BASE, Bytes::new()),
        EntryPayload::Normal(Command::Decided {
            term,
            latest,
            items,
        }) => (KIND_DECIDED, super::decided::encode(*term, *latest, items)),
        EntryPayload::Normal(Command::Report {
            replica,
            applied,
            oldest_snapshot,
        }) => {
            let mut b = BytesMut::with_capacity(REPORT_LEN);
            b.put_u32_le(*replica);
            b.put_u64_le(*applied);
            b.put_u64_le(*oldest_snapshot);
            (KIND_REPORT, b.freeze())
        }
        EntryPayload::Membership(m) => {
            let json = serde_json::to_vec(m).map_err(|e| CertifierError::RaftStorage {
                what: format!("entry {}", entry.log_id),
                reason: format!("membership not encodable: {e}"),
            })?;
            (KIND_MEMBERSHIP, Bytes::from(json))
        }
    };
    let mut buf = BytesMut::with_capacity(HEADER_LEN + body.len());
    buf.put_slice(MAGIC);
    buf.put_u16_le(ENTRY_FORMAT_VERSION);
    buf.put_u8(kind);
    buf.put_u8(0);
    buf.put_u64_le(entry.log_id.leader_id.term);
    buf.put_u64_le(entry.log_id.leader_id.node_id);
    buf.put_u64_le(entry.log_id.index);
    buf.put_slice(&body);
    Ok(buf.freeze())
}

/// The body of a part or chunk entry.
fn piece_body(tag: u64, piece: &Bytes, last: bool) -> Bytes {
    let mut b = BytesMut::with_capacity(PART_HEADER_LEN + piece.len());
    b.put_u64_le(tag);
    b.put_u8(u8::from(last));
    b.put_slice(piece);
    b.freeze()
}

/// Decodes the entry stored at `lsn`, checking that it is the entry of
/// index `lsn - 1`.
pub fn decode(lsn: u64, rec: &Bytes) -> Result<Entry, CertifierError> {
    decode_at(Some(lsn), rec)
}

/// Decodes an entry that is not read from a log position (the transport
/// sends entries in this encoding too).
pub fn decode_unplaced(rec: &Bytes) -> Result<Entry, CertifierError> {
    decode_at(None, rec)
}

fn decode_at(lsn: Option<u64>, rec: &Bytes) -> Result<Entry, CertifierError> {
    let bad = |reason: String| CertifierError::RaftStorage {
        what: match lsn {
            Some(lsn) => format!("log entry at LSN {lsn}"),
            None => "log entry".into(),
        },
        reason,
    };
    if rec.len() < HEADER_LEN || &rec[..4] != MAGIC {
        return Err(bad("not a raft entry (bad magic)".into()));
    }
    let format = u16::from_le_bytes([rec[4], rec[5]]);
    if format != ENTRY_FORMAT_VERSION {
        return Err(bad(format!("unsupported entry format version {format}")));
    }
    if rec[7] != 0 {
        return Err(bad(format!("reserved byte is {:#04x}", rec[7])));
    }
    let term = u64_at(rec, 8);
    let node_id = u64_at(rec, 16);
    let index = u64_at(rec, 24);
    if let Some(lsn) = lsn.filter(|&l| l != lsn_of(index)) {
        return Err(bad(format!(
            "entry says index {index}, expected {}",
            lsn - 1
        )));
    }
    let body = rec.slice(HEADER_LEN..);
    let payload = match rec[6] {
        KIND_BLANK if body.is_empty() => EntryPayload::Blank,
        KIND_CERTIFY => EntryPayload::Normal(Command::Certify { record: body }),
        KIND_REPORT if body.len() == REPORT_LEN => EntryPayload::Normal(Command::Report {
            replica: u32::from_le_bytes([body[0], body[1], body[2], body[3]]),
            applied: u64_at(&body, 4),
            oldest_snapshot: u64_at(&body, 12),
        }),
        KIND_BATCH => EntryPayload::Normal(Command::CertifyBatch {
            records: split_batch(&body).map_err(bad)?,
        }),
        KIND_PART if body.len() >= PART_HEADER_LEN && body[8] <= 1 => {
            EntryPayload::Normal(Command::Part {
                tag: u64_at(&body, 0),
                last: body[8] == 1,
                piece: body.slice(PART_HEADER_LEN..),
            })
        }
        KIND_CHUNK if body.len() >= PART_HEADER_LEN && body[8] <= 1 => {
            EntryPayload::Normal(Command::Chunk {
                tag: u64_at(&body, 0),
                last: body[8] == 1,
                piece: body.slice(PART_HEADER_LEN..),
            })
        }
        KIND_REFUSE if body.len() >= 8 => EntryPayload::Normal(Command::Refuse {
            last: u64_at(&body, 0),
            record: body.slice(8..),
        }),
        KIND_BASE if body.is_empty() => EntryPayload::Normal(Command::Base),
        KIND_DECIDED => {
            let (term, latest, items) = super::decided::decode(&body).map_err(bad)?;
            EntryPayload::Normal(Command::Decided {
                term,
                latest,
                items: std::sync::Arc::new(items),
            })
        }
        KIND_MEMBERSHIP => EntryPayload::Membership(
            serde_json::from_slice(&body)
                .map_err(|e| bad(format!("undecodable membership: {e}")))?,
        ),
        kind => {
            return Err(bad(format!(
                "unknown kind {kind} or bad body length {}",
                body.len()
            )))
        }
    };
    Ok(Entry {
        log_id: log_id(term, node_id, index),
        payload,
    })
}

/// The records of a batch body, every length checked against the body.
fn split_batch(body: &Bytes) -> Result<Vec<Bytes>, String> {
    let u32_at = |at: usize| -> Result<usize, String> {
        body.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| format!("batch truncated at byte {at}"))
    };
    let count = u32_at(0)?;
    // Each record takes at least its 4-byte length.
    if count > (body.len() - 4) / 4 {
        return Err(format!(
            "batch count {count} exceeds its {} bytes",
            body.len()
        ));
    }
    let mut records = Vec::with_capacity(count);
    let mut at = 4;
    for _ in 0..count {
        let len = u32_at(at)?;
        at += 4;
        if body.len() - at < len {
            return Err(format!("batch record of {len} bytes runs past the end"));
        }
        records.push(body.slice(at..at + len));
        at += len;
    }
    if at != body.len() {
        return Err(format!("{} bytes after the batch", body.len() - at));
    }
    Ok(records)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::Membership;

    use super::*;

    fn entries() -> Vec<Entry> {
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        vec![
            Entry {
                log_id: log_id(0, 1, 0),
                payload: EntryPayload::Membership(Membership::new(vec![voters], None)),
            },
            Entry {
                log_id: log_id(2, 3, 1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(2, 3, 2),
                payload: EntryPayload::Normal(Command::Certify {
                    record: Bytes::from_static(b"TKCW record bytes"),
                }),
            },
            Entry {
                log_id: log_id(3, 2, 4),
                payload: EntryPayload::Normal(Command::CertifyBatch {
                    records: vec![
                        Bytes::from_static(b"one"),
                        Bytes::new(),
                        Bytes::from_static(b"three"),
                    ],
                }),
            },
            Entry {
                log_id: log_id(3, 2, 3),
                payload: EntryPayload::Normal(Command::Report {
                    replica: 7,
                    applied: 9,
                    oldest_snapshot: 4,
                }),
            },
            Entry {
                log_id: log_id(3, 2, 5),
                payload: EntryPayload::Normal(Command::Part {
                    tag: 0xfeed_0001,
                    piece: Bytes::from_static(b"piece"),
                    last: false,
                }),
            },
            Entry {
                log_id: log_id(3, 2, 6),
                payload: EntryPayload::Normal(Command::Part {
                    tag: u64::MAX,
                    piece: Bytes::new(),
                    last: true,
                }),
            },
            Entry {
                log_id: log_id(3, 2, 8),
                payload: EntryPayload::Normal(Command::Chunk {
                    tag: 0xfeed_0002,
                    piece: Bytes::from_static(b"chunk"),
                    last: true,
                }),
            },
            Entry {
                log_id: log_id(3, 2, 7),
                payload: EntryPayload::Normal(Command::Refuse {
                    last: 0x0123_4567_89ab_cdef,
                    record: Bytes::from_static(b"TKCW refused"),
                }),
            },
            Entry {
                log_id: log_id(4, 1, 9),
                payload: EntryPayload::Normal(Command::Decided {
                    term: 4,
                    latest: 6,
                    items: std::sync::Arc::new(super::super::decided::tests::items()),
                }),
            },
            Entry {
                log_id: log_id(4, 1, 10),
                payload: EntryPayload::Normal(Command::Base),
            },
        ]
    }

    #[test]
    fn round_trip_every_kind() {
        for e in entries() {
            let rec = encode(&e).unwrap();
            assert_eq!(decode(lsn_of(e.log_id.index), &rec).unwrap(), e);
            assert_eq!(
                decode_unplaced(&rec).unwrap(),
                e,
                "as the transport sends it"
            );
        }
    }

    #[test]
    fn rejects_wrong_lsn_magic_version_kind_and_length() {
        let e = &entries()[4];
        let rec = encode(e).unwrap();
        assert!(decode(5, &rec).is_err(), "index must be LSN - 1");
        let flip = |at: usize, v: u8| {
            let mut b = rec.to_vec();
            b[at] = v;
            decode(4, &Bytes::from(b))
        };
        assert!(flip(0, b'X').is_err(), "magic");
        let mut bad = rec.to_vec();
        bad[4] = 9;
        assert!(
            decode_unplaced(&Bytes::from(bad)).is_err(),
            "unplaced: version"
        );
        assert!(flip(4, 2).is_err(), "format version");
        assert!(flip(6, 9).is_err(), "kind");
        assert!(flip(7, 1).is_err(), "reserved");
        assert!(
            decode(4, &rec.slice(..rec.len() - 1)).is_err(),
            "short report"
        );
        assert!(decode(4, &rec.slice(..10)).is_err(), "short header");
        let batch = encode(&entries()[3]).unwrap();
        for cut in [HEADER_LEN + 2, HEADER_LEN + 6, batch.len() - 1] {
            assert!(
                decode(5, &batch.slice(..cut)).is_err(),
                "batch cut at {cut}"
            );
        }
        let mut long = batch.to_vec();
        long.push(7);
        assert!(
            decode(5, &Bytes::from(long)).is_err(),
            "bytes after a batch"
        );
        let mut huge = batch.to_vec();
        huge[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(5, &Bytes::from(huge)).is_err(), "absurd batch count");
        let blank = encode(&entries()[1]).unwrap();
        let mut long = blank.to_vec();
        long.push(0);
        assert!(decode(2, &Bytes::from(long)).is_err(), "blank with a body");
        let part = encode(&entries()[5]).unwrap();
        let mut two = part.to_vec();
        two[HEADER_LEN + 8] = 2;
        assert!(decode(6, &Bytes::from(two)).is_err(), "a part's last flag");
        assert!(
            decode(6, &part.slice(..HEADER_LEN + 8)).is_err(),
            "a part without its header"
        );
    }
}
