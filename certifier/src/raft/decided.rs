//! Decisions taken at proposal: what a `Command::Decided` entry carries.
//!
//! The leader certifies each writeset as it proposes it, against its
//! proposal table (`decider.rs`): the applied state plus its own entries
//! in flight. The entry carries the decisions, and every node (the leader
//! too) applies them without a conflict table: a commit's version, record
//! and the window's horizon after it, an abort's reason (remembered for a
//! retry), or the answer an earlier decision of the same transaction id
//! gives. So each writeset is checked once, not once per node.
//!
//! Why it is sound: a decision depends only on the log before its entry,
//! and raft's log matching makes that log the same on every node holding
//! the entry. The leader of term `t` is the only node appending entries of
//! term `t`, in the order it proposed them; its table is built from the
//! state applied through a base entry it proposed and awaited
//! (`decider.rs`), and every entry of its after the base was decided with
//! that table, in order. An entry decided in term `t` but appended in a
//! later term (the node led again, with entries of `t` possibly truncated)
//! is refused at apply on every node alike (`Command::Decided` says the
//! term it was decided in), and so is one whose decisions do not fit the
//! applied state (a version that is not the next one): every node finds
//! the same, so a leader's mistake costs its clients a retry, not the
//! group its log.
//!
//! Body of a decided entry (`entry.rs` kind 8), little-endian:
//!
//! ```text
//!   term u64, latest version before the entry u64, count u32, then
//!   count items, each a tag byte and:
//!   0 commit:          version u64, horizon u64, horizon cause u8,
//!                      txn id (u16 length, bytes), record (u32 length,
//!                      bytes: the certifier record, version field 0)
//!   1 abort:           code i32, conflict version u64, txn id (u16
//!                      length, bytes), reason (u32 length, UTF-8)
//!   2 committed before: version u64
//!   3 aborted before:  code i32, conflict version u64, reason (u32
//!                      length, UTF-8)
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::types::Response;
use crate::Version;

const TAG_COMMIT: u8 = 0;
const TAG_ABORT: u8 = 1;
const TAG_COMMITTED_BEFORE: u8 = 2;
const TAG_ABORTED_BEFORE: u8 = 3;
/// Term, latest version, count.
const HEAD_LEN: usize = 8 + 8 + 4;

/// One certification's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Item {
    /// A new version: `record` (a certifier record, version field 0) of
    /// transaction `txn_id` committed as `version`, after which the
    /// window's horizon was `horizon` (the memory bound may move it) for
    /// `cause` (`HorizonCause::code`).
    Commit {
        version: Version,
        horizon: Version,
        cause: u8,
        txn_id: Bytes,
        record: Bytes,
    },
    /// Transaction `txn_id` aborted, for the first time.
    Abort {
        txn_id: Bytes,
        code: i32,
        conflict_version: Version,
        reason: String,
    },
    /// A transaction id that committed before as `version`.
    CommittedBefore { version: Version },
    /// A transaction id that aborted before, so.
    AbortedBefore {
        code: i32,
        conflict_version: Version,
        reason: String,
    },
}

impl Item {
    /// What applying the item answers.
    pub fn response(&self) -> Response {
        match self {
            Item::Commit { version, .. } | Item::CommittedBefore { version } => {
                Response::Committed { version: *version }
            }
            Item::Abort {
                code,
                conflict_version,
                reason,
                ..
            }
            | Item::AbortedBefore {
                code,
                conflict_version,
                reason,
            } => Response::Aborted {
                code: *code,
                reason: reason.clone(),
                conflict_version: *conflict_version,
            },
        }
    }
}

/// The body of a decided entry.
pub fn encode(term: u64, latest: Version, items: &[Item]) -> Bytes {
    let len = HEAD_LEN + items.iter().map(encoded_len).sum::<usize>();
    let mut b = BytesMut::with_capacity(len);
    b.put_u64_le(term);
    b.put_u64_le(latest);
    b.put_u32_le(items.len() as u32);
    for item in items {
        match item {
            Item::Commit {
                version,
                horizon,
                cause,
                txn_id,
                record,
            } => {
                b.put_u8(TAG_COMMIT);
                b.put_u64_le(*version);
                b.put_u64_le(*horizon);
                b.put_u8(*cause);
                b.put_u16_le(txn_id.len() as u16);
                b.put_slice(txn_id);
                b.put_u32_le(record.len() as u32);
                b.put_slice(record);
            }
            Item::Abort {
                txn_id,
                code,
                conflict_version,
                reason,
            } => {
                b.put_u8(TAG_ABORT);
                b.put_i32_le(*code);
                b.put_u64_le(*conflict_version);
                b.put_u16_le(txn_id.len() as u16);
                b.put_slice(txn_id);
                b.put_u32_le(reason.len() as u32);
                b.put_slice(reason.as_bytes());
            }
            Item::CommittedBefore { version } => {
                b.put_u8(TAG_COMMITTED_BEFORE);
                b.put_u64_le(*version);
            }
            Item::AbortedBefore {
                code,
                conflict_version,
                reason,
            } => {
                b.put_u8(TAG_ABORTED_BEFORE);
                b.put_i32_le(*code);
                b.put_u64_le(*conflict_version);
                b.put_u32_le(reason.len() as u32);
                b.put_slice(reason.as_bytes());
            }
        }
    }
    b.freeze()
}

fn encoded_len(item: &Item) -> usize {
    1 + match item {
        Item::Commit { txn_id, record, .. } => 8 + 8 + 1 + 2 + txn_id.len() + 4 + record.len(),
        Item::Abort { txn_id, reason, .. } => 4 + 8 + 2 + txn_id.len() + 4 + reason.len(),
        Item::CommittedBefore { .. } => 8,
        Item::AbortedBefore { reason, .. } => 4 + 8 + 4 + reason.len(),
    }
}

/// Reads a decided entry's body: its term, latest version and items,
/// every length checked against the body before anything is taken.
pub fn decode(body: &Bytes) -> Result<(u64, Version, Vec<Item>), String> {
    let mut r = Reader { body, at: 0 };
    let term = r.u64()?;
    let latest = r.u64()?;
    let count = r.u32()? as usize;
    // Each item takes at least 9 bytes.
    if count > r.left() / 9 {
        return Err(format!("{count} decisions in {} bytes", body.len()));
    }
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        items.push(match r.u8()? {
            TAG_COMMIT => Item::Commit {
                version: r.u64()?,
                horizon: r.u64()?,
                cause: r.u8()?,
                txn_id: r.short_bytes()?,
                record: r.long_bytes()?,
            },
            TAG_ABORT => Item::Abort {
                code: r.i32()?,
                conflict_version: r.u64()?,
                txn_id: r.short_bytes()?,
                reason: r.text()?,
            },
            TAG_COMMITTED_BEFORE => Item::CommittedBefore { version: r.u64()? },
            TAG_ABORTED_BEFORE => Item::AbortedBefore {
                code: r.i32()?,
                conflict_version: r.u64()?,
                reason: r.text()?,
            },
            tag => return Err(format!("unknown decision tag {tag}")),
        });
    }
    if r.left() != 0 {
        return Err(format!("{} bytes after the decisions", r.left()));
    }
    Ok((term, latest, items))
}

/// A cursor over a body; every read checks the length first.
struct Reader<'a> {
    body: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn left(&self) -> usize {
        self.body.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.left() < n {
            return Err(format!(
                "decisions truncated at byte {} ({n} more expected)",
                self.at
            ));
        }
        self.at += n;
        Ok(&self.body[self.at - n..self.at])
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i32(&mut self) -> Result<i32, String> {
        Ok(self.u32()? as i32)
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn bytes(&mut self, n: usize) -> Result<Bytes, String> {
        self.take(n)?;
        Ok(self.body.slice(self.at - n..self.at))
    }

    /// Bytes after a u16 length.
    fn short_bytes(&mut self) -> Result<Bytes, String> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
    }

    /// Bytes after a u32 length.
    fn long_bytes(&mut self) -> Result<Bytes, String> {
        let n = self.u32()?;
        self.bytes(n as usize)
    }

    fn text(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| "a reason that is not UTF-8".to_string())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn items() -> Vec<Item> {
        vec![
            Item::Commit {
                version: 7,
                horizon: 3,
                cause: 2,
                txn_id: Bytes::from_static(b"txn-1"),
                record: Bytes::from_static(b"TKCW a record"),
            },
            Item::Abort {
                txn_id: Bytes::from_static(b"txn-2"),
                code: 1,
                conflict_version: 7,
                reason: "conflicts with version 7".into(),
            },
            Item::CommittedBefore { version: 5 },
            Item::AbortedBefore {
                code: 2,
                conflict_version: 0,
                reason: String::new(),
            },
        ]
    }

    #[test]
    fn round_trip() {
        let body = encode(9, 41, &items());
        assert_eq!(
            body.len(),
            HEAD_LEN + items().iter().map(encoded_len).sum::<usize>()
        );
        assert_eq!(decode(&body).unwrap(), (9, 41, items()));
        assert_eq!(decode(&encode(1, 0, &[])).unwrap(), (1, 0, vec![]));
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        let body = encode(9, 41, &items());
        for cut in 0..body.len() {
            assert!(decode(&body.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut long = body.to_vec();
        long.push(0);
        assert!(decode(&Bytes::from(long)).is_err());
        let mut tag = body.to_vec();
        tag[HEAD_LEN] = 9;
        assert!(decode(&Bytes::from(tag)).is_err(), "unknown tag");
        let mut count = body.to_vec();
        count[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&Bytes::from(count)).is_err(), "absurd count");
    }
}
