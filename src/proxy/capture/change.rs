//! The apply payload of a certifier `Item`: the row changes of one run of
//! one table, packed into the item's `row` bytes (opaque to the certifier).
//!
//! ```text
//! payload := change*
//! change  := kind:u8  pk:str  row:str  [old_pk:str  old_row:str]   (only for 'R')
//! str     := len:u32 (little-endian)  bytes
//! kind    := 'W'  write `row`: upsert by primary key (plain insert when the
//!                 table has none)
//!            'D'  delete the row whose primary key `row` (the old row) has
//!            'R'  re-key: delete `old_row`'s primary key, then write `row`
//! ```
//!
//! Rows are record text (see `entry`), applied with the table's row type
//! as their input function: byte for byte what the origin wrote. `pk` is
//! the row's primary-key conflict key (empty without a primary key): the
//! applier uses it to tell which changes touch the same row.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Write,
    Delete,
    Rekey,
}

/// One row change of a payload (slices of the payload bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: Kind,
    pub pk: Bytes,
    pub row: Bytes,
    /// For [`Kind::Rekey`]: the old primary key and row.
    pub old_pk: Bytes,
    pub old_row: Bytes,
}

/// Appends one change to a payload being built.
pub fn push(out: &mut BytesMut, kind: Kind, pk: &[u8], row: &[u8], old: Option<(&[u8], &[u8])>) {
    out.put_u8(match kind {
        Kind::Write => b'W',
        Kind::Delete => b'D',
        Kind::Rekey => b'R',
    });
    put(out, pk);
    put(out, row);
    if kind == Kind::Rekey {
        let (old_pk, old_row) = old.unwrap_or((&[], &[]));
        put(out, old_pk);
        put(out, old_row);
    }
}

fn put(out: &mut BytesMut, b: &[u8]) {
    out.put_u32_le(b.len() as u32);
    out.put_slice(b);
}

/// The bytes one change takes.
pub fn encoded_len(pk: &[u8], row: &[u8], old: Option<(&[u8], &[u8])>) -> usize {
    1 + 8 + pk.len() + row.len() + old.map_or(0, |(k, r)| 8 + k.len() + r.len())
}

fn bad(reason: &str) -> Error {
    Error::Capture {
        reason: format!("unreadable row-change payload: {reason}"),
    }
}

fn take(p: &mut Bytes) -> Result<Bytes> {
    if p.remaining() < 4 {
        return Err(bad("truncated length"));
    }
    let len = p.get_u32_le() as usize;
    if p.remaining() < len {
        return Err(bad("field past the end"));
    }
    Ok(p.split_to(len))
}

/// The changes of a payload, in order.
pub fn decode(mut p: Bytes) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    while p.has_remaining() {
        let kind = match p.get_u8() {
            b'W' => Kind::Write,
            b'D' => Kind::Delete,
            b'R' => Kind::Rekey,
            _ => return Err(bad("unknown change kind")),
        };
        let pk = take(&mut p)?;
        let row = take(&mut p)?;
        let (old_pk, old_row) = if kind == Kind::Rekey {
            (take(&mut p)?, take(&mut p)?)
        } else {
            (Bytes::new(), Bytes::new())
        };
        out.push(Change {
            kind,
            pk,
            row,
            old_pk,
            old_row,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_and_damage_is_an_error() {
        let mut b = BytesMut::new();
        push(&mut b, Kind::Write, b"k1", b"(1,a)", None);
        push(
            &mut b,
            Kind::Rekey,
            b"k3",
            b"(3,a)",
            Some((b"k2", b"(2,a)")),
        );
        push(&mut b, Kind::Delete, b"k4", b"(4,)", None);
        let len = encoded_len(b"k1", b"(1,a)", None)
            + encoded_len(b"k3", b"(3,a)", Some((b"k2", b"(2,a)")))
            + encoded_len(b"k4", b"(4,)", None);
        assert_eq!(b.len(), len);
        let bytes = b.freeze();
        let changes = decode(bytes.clone()).unwrap();
        assert_eq!(changes.len(), 3);
        assert_eq!(changes[1].kind, Kind::Rekey);
        assert_eq!(&changes[1].old_row[..], b"(2,a)");
        assert_eq!(&changes[2].row[..], b"(4,)");
        let first = encoded_len(b"k1", b"(1,a)", None);
        let boundaries = [
            first,
            first + encoded_len(b"k3", b"(3,a)", Some((b"k2", b"(2,a)"))),
        ];
        for cut in 1..bytes.len() {
            let r = decode(bytes.slice(..cut));
            assert_eq!(r.is_ok(), boundaries.contains(&cut), "cut at {cut}");
        }
    }
}
