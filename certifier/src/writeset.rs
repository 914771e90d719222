//! The writeset: validation, and splitting into / merging from the chunks
//! of the client-streaming Certify call.
//!
//! The message types themselves are generated from `proto/certifier.proto`
//! ([`crate::proto`]); this module holds the rules the type system cannot
//! express (see the field comments in the .proto).

use prost::Message;

use crate::error::CertifierError;
use crate::proto::{Ddl, Item, Op, Writeset};

/// The only writeset format this release reads and writes.
pub const WRITESET_FORMAT_VERSION: u32 = 1;
/// Longest accepted transaction id.
pub const MAX_TXN_ID_LEN: usize = 64;

/// Checks everything the certifier relies on; the error says what is wrong
/// (it becomes `InvalidArgument` at the service edge).
pub fn validate(ws: &Writeset) -> Result<(), CertifierError> {
    let bad = |m: String| Err(CertifierError::InvalidArgument(m));
    if ws.format_version != WRITESET_FORMAT_VERSION {
        return bad(format!(
            "writeset format_version {} is not supported (expected {WRITESET_FORMAT_VERSION})",
            ws.format_version
        ));
    }
    if ws.txn_id.is_empty() || ws.txn_id.len() > MAX_TXN_ID_LEN {
        return bad(format!(
            "txn_id must be 1..={MAX_TXN_ID_LEN} bytes, got {}",
            ws.txn_id.len()
        ));
    }
    if ws.items.is_empty() && ws.ddl.is_empty() {
        return bad("empty writeset: read-only transactions are not certified".into());
    }
    for (i, item) in ws.items.iter().enumerate() {
        validate_item(item).or_else(|m| bad(format!("item {i}: {m}")))?;
    }
    for (i, d) in ws.ddl.iter().enumerate() {
        if d.sql.is_empty() {
            return bad(format!("ddl {i}: empty sql"));
        }
        if d.tables.is_empty() || d.tables.iter().any(|t| t.is_empty()) {
            return bad(format!("ddl {i}: must name at least one non-empty table"));
        }
        if d.before_item > ws.items.len() as u64 {
            return bad(format!(
                "ddl {i}: before_item {} is past the {} items",
                d.before_item,
                ws.items.len()
            ));
        }
    }
    Ok(())
}

fn validate_item(item: &Item) -> Result<(), String> {
    if item.table.is_empty() {
        return Err("empty table name".into());
    }
    if item.key.is_empty() {
        return Err("empty primary key".into());
    }
    let op = Op::try_from(item.op).map_err(|_| format!("unknown op {}", item.op))?;
    match op {
        Op::Unspecified => return Err("op not set".into()),
        Op::Insert | Op::Delete if item.old_key.is_some() => {
            return Err("old_key is only allowed on UPDATE".into())
        }
        Op::Insert if !item.old_unique_keys.is_empty() => {
            return Err("old_unique_keys is not allowed on INSERT".into())
        }
        _ => {}
    }
    if item.unique_keys.iter().any(|k| k.is_empty())
        || item.old_unique_keys.iter().any(|k| k.is_empty())
    {
        return Err("empty unique key".into());
    }
    for r in &item.references {
        if r.table.is_empty() || r.key.is_empty() {
            return Err("reference with empty table or key".into());
        }
    }
    Ok(())
}

/// Reassembles a writeset from the chunks of one Certify call, refusing to
/// hold more than `max_bytes` (the sum of the chunks' encoded sizes).
pub struct Assembler {
    ws: Option<Writeset>,
    bytes: u64,
    max_bytes: u64,
}

impl Assembler {
    pub fn new(max_bytes: u64) -> Assembler {
        Assembler {
            ws: None,
            bytes: 0,
            max_bytes,
        }
    }

    /// Adds one chunk. The first chunk fixes the header; later chunks must
    /// leave the header fields at their defaults or repeat them exactly.
    pub fn push(&mut self, chunk: Writeset) -> Result<(), CertifierError> {
        self.bytes = self.bytes.saturating_add(chunk.encoded_len() as u64);
        if self.bytes > self.max_bytes {
            return Err(CertifierError::WritesetTooLarge {
                max: self.max_bytes,
            });
        }
        let Some(ws) = self.ws.as_mut() else {
            self.ws = Some(chunk);
            return Ok(());
        };
        let header_ok = (chunk.format_version == 0 || chunk.format_version == ws.format_version)
            && (chunk.txn_id.is_empty() || chunk.txn_id == ws.txn_id)
            && (chunk.origin == 0 || chunk.origin == ws.origin)
            && (chunk.snapshot == 0 || chunk.snapshot == ws.snapshot);
        if !header_ok {
            return Err(CertifierError::InvalidArgument(
                "a later Certify chunk has a header different from the first chunk's".into(),
            ));
        }
        let base = ws.items.len() as u64;
        ws.items.extend(chunk.items);
        // `before_item` in a later chunk counts from that chunk's first item.
        ws.ddl.extend(chunk.ddl.into_iter().map(|mut d| {
            d.before_item = d.before_item.saturating_add(base);
            d
        }));
        Ok(())
    }

    /// The whole writeset (not yet validated).
    pub fn finish(self) -> Result<Writeset, CertifierError> {
        self.ws
            .ok_or_else(|| CertifierError::InvalidArgument("Certify stream had no chunk".into()))
    }
}

/// Splits a writeset into chunks whose encodings each stay below
/// `max_chunk_bytes` (a single item larger than that still gets a chunk of its
/// own, which the server will refuse with a clear error). The inverse of
/// [`Assembler`].
pub fn split(ws: Writeset, max_chunk_bytes: usize) -> Vec<Writeset> {
    if ws.encoded_len() <= max_chunk_bytes {
        return vec![ws];
    }
    let Writeset {
        format_version,
        txn_id,
        origin,
        snapshot,
        items,
        ddl,
    } = ws;
    let header = Writeset {
        format_version,
        txn_id,
        origin,
        snapshot,
        items: Vec::new(),
        ddl: Vec::new(),
    };
    // DDL goes with the first chunk; `before_item` is then already absolute.
    let mut cur = Writeset {
        ddl,
        ..header.clone()
    };
    let mut cur_len = cur.encoded_len();
    let mut out = Vec::new();
    for item in items {
        // Field tag + length prefix of an embedded message: at most 1 + 10.
        let len = item.encoded_len() + 11;
        if cur_len + len > max_chunk_bytes && !cur.items.is_empty() {
            out.push(std::mem::take(&mut cur));
            cur_len = 0;
        }
        cur_len += len;
        cur.items.push(item);
    }
    out.push(cur);
    out
}

/// An item; a convenience for proxies and tests.
pub fn item(table: &str, op: Op, key: impl Into<bytes::Bytes>) -> Item {
    Item {
        table: table.to_owned(),
        op: op as i32,
        key: key.into(),
        ..Item::default()
    }
}

/// A DDL statement on `tables`, run before item `before_item`.
pub fn ddl(sql: &str, tables: &[&str], before_item: u64) -> Ddl {
    Ddl {
        sql: sql.to_owned(),
        tables: tables.iter().map(|t| (*t).to_owned()).collect(),
        before_item,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(n: usize) -> Writeset {
        Writeset {
            format_version: WRITESET_FORMAT_VERSION,
            txn_id: bytes::Bytes::from_static(b"t1"),
            origin: 3,
            snapshot: 7,
            items: (0..n)
                .map(|i| Item {
                    row: vec![7u8; 100].into(),
                    ..item("t", Op::Insert, format!("k{i}").into_bytes())
                })
                .collect(),
            ddl: vec![ddl("CREATE TABLE t (k int primary key)", &["t"], 0)],
        }
    }

    #[test]
    fn split_then_assemble_is_identity() {
        let orig = ws(1000);
        let chunks = split(orig.clone(), 4096);
        assert!(chunks.len() > 20, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|c| c.encoded_len() <= 4096));
        let mut a = Assembler::new(u64::MAX);
        for c in chunks {
            a.push(c).unwrap();
        }
        assert_eq!(a.finish().unwrap(), orig);
    }

    #[test]
    fn assembler_enforces_the_size_limit() {
        let mut a = Assembler::new(10_000);
        let err = split(ws(1000), 4096)
            .into_iter()
            .map(|c| a.push(c))
            .find_map(Result::err);
        assert!(matches!(
            err,
            Some(CertifierError::WritesetTooLarge { max: 10_000 })
        ));
    }

    #[test]
    fn assembler_rejects_a_changed_header() {
        let mut a = Assembler::new(u64::MAX);
        a.push(ws(1)).unwrap();
        let mut second = ws(1);
        second.snapshot = 8;
        assert!(matches!(
            a.push(second),
            Err(CertifierError::InvalidArgument(_))
        ));
    }

    #[test]
    fn validation_reasons() {
        assert!(validate(&ws(2)).is_ok());
        type Mutation = Box<dyn Fn(&mut Writeset)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|w| w.format_version = 9), "format_version 9"),
            (Box::new(|w| w.txn_id = Default::default()), "txn_id"),
            (Box::new(|w| w.items[0].op = 0), "op not set"),
            (Box::new(|w| w.items[0].op = 42), "unknown op 42"),
            (
                Box::new(|w| w.items[1].key = Default::default()),
                "item 1: empty primary key",
            ),
            (
                Box::new(|w| w.items[0].old_key = Some(b"x".to_vec().into())),
                "old_key",
            ),
            (Box::new(|w| w.ddl[0].tables.clear()), "ddl 0"),
            (Box::new(|w| w.ddl[0].before_item = 3), "before_item"),
            (
                Box::new(|w| {
                    w.items.clear();
                    w.ddl.clear()
                }),
                "empty writeset",
            ),
        ];
        for (mutate, want) in cases {
            let mut w = ws(2);
            mutate(&mut w);
            match validate(&w) {
                Err(CertifierError::InvalidArgument(m)) => {
                    assert!(m.contains(want), "{m} !~ {want}")
                }
                other => panic!("expected InvalidArgument({want}), got {other:?}"),
            }
        }
    }
}
