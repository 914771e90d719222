//! The writeset: validation, and splitting into / merging from the chunks
//! of the client-streaming Certify call.
//!
//! The message types themselves are generated from `proto/certifier.proto`
//! ([`crate::proto`]); this module holds the rules the type system cannot
//! express (see the field comments in the .proto).

use bytes::Bytes;
use prost::Message;

use crate::error::CertifierError;
use crate::proto::{Ddl, Item, Op, Writeset};

/// The writeset format this release writes (3: `OP_LOCK` items).
pub const WRITESET_FORMAT_VERSION: u32 = 3;
/// The oldest format this release reads: a format 2 writeset is a format
/// 3 one without lock items.
pub const OLDEST_FORMAT_VERSION: u32 = 2;

/// Whether this release reads writesets of `format`.
pub fn readable_format(format: u32) -> bool {
    (OLDEST_FORMAT_VERSION..=WRITESET_FORMAT_VERSION).contains(&format)
}
/// Longest accepted transaction id.
pub const MAX_TXN_ID_LEN: usize = 64;

/// Checks everything the certifier relies on; the error says what is wrong
/// (it becomes `InvalidArgument` at the service edge).
pub fn validate(ws: &Writeset) -> Result<(), CertifierError> {
    validate_header(ws)?;
    if ws.spool.is_some() {
        return Err(CertifierError::InvalidArgument(
            "the spool field is the certifier's own".into(),
        ));
    }
    if ws.items.is_empty() && ws.ddl.is_empty() {
        return Err(CertifierError::InvalidArgument(
            "empty writeset: read-only transactions are not certified".into(),
        ));
    }
    validate_part(ws)
}

/// Whether `txn_id` is one a client may send: `1..=MAX_TXN_ID_LEN` bytes.
pub fn txn_id_fits(txn_id: &[u8]) -> bool {
    (1..=MAX_TXN_ID_LEN).contains(&txn_id.len())
}

/// The header fields of `ws` (format version, transaction id, origin,
/// snapshot, session, losses) without its items, with the id copied: a
/// decoded id is a slice of the whole message it came in, which a header
/// kept for a stream's life must not hold.
pub fn header_of(ws: &Writeset) -> Writeset {
    Writeset {
        format_version: ws.format_version,
        txn_id: Bytes::copy_from_slice(&ws.txn_id),
        origin: ws.origin,
        snapshot: ws.snapshot,
        session: ws.session,
        losses: ws.losses,
        ..Writeset::default()
    }
}

/// Checks that a later chunk of a Certify stream repeats the header of
/// `first` or leaves it out.
pub fn check_later_chunk(first: &Writeset, chunk: &Writeset) -> Result<(), CertifierError> {
    let header_ok = (chunk.format_version == 0 || chunk.format_version == first.format_version)
        && (chunk.txn_id.is_empty() || chunk.txn_id == first.txn_id)
        && (chunk.origin == 0 || chunk.origin == first.origin)
        && (chunk.snapshot == 0 || chunk.snapshot == first.snapshot);
    if !header_ok || chunk.spool.is_some() {
        return Err(CertifierError::InvalidArgument(
            "a later Certify chunk has a header different from the first chunk's".into(),
        ));
    }
    Ok(())
}

/// Checks the header fields (format version, transaction id).
pub fn validate_header(ws: &Writeset) -> Result<(), CertifierError> {
    let bad = |m: String| Err(CertifierError::InvalidArgument(m));
    if !readable_format(ws.format_version) {
        return bad(format!(
            "writeset format_version {} is not supported (expected \
             {OLDEST_FORMAT_VERSION}..={WRITESET_FORMAT_VERSION})",
            ws.format_version
        ));
    }
    if !txn_id_fits(&ws.txn_id) {
        return bad(format!(
            "txn_id must be 1..={MAX_TXN_ID_LEN} bytes, got {}",
            ws.txn_id.len()
        ));
    }
    Ok(())
}

/// Checks the items and statements of a writeset or of one chunk of it
/// (whose `before_item` counts from its own first item).
pub fn validate_part(ws: &Writeset) -> Result<(), CertifierError> {
    let bad = |m: String| Err(CertifierError::InvalidArgument(m));
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
        Op::Lock
            if item.old_key.is_some()
                || !item.old_unique_keys.is_empty()
                || !item.references.is_empty()
                || !item.row.is_empty() =>
        {
            return Err("a LOCK item carries keys only".into())
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
    complete: bool,
}

impl Assembler {
    pub fn new(max_bytes: u64) -> Assembler {
        Assembler {
            ws: None,
            bytes: 0,
            max_bytes,
            complete: false,
        }
    }

    /// Adds one chunk. The first chunk fixes the header; later chunks must
    /// leave the header fields at their defaults or repeat them exactly.
    pub fn push(&mut self, chunk: Writeset) -> Result<(), CertifierError> {
        if self.complete {
            return Err(CertifierError::InvalidArgument(
                "a Certify chunk after the one marked last_chunk".into(),
            ));
        }
        self.complete = chunk.last_chunk;
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

    /// The whole writeset (not yet validated); refused unless the last
    /// chunk said so (the client may have given up half way).
    pub fn finish(self) -> Result<Writeset, CertifierError> {
        if !self.complete {
            return Err(CertifierError::InvalidArgument(
                "Certify stream ended without a chunk marked last_chunk: not certified".into(),
            ));
        }
        let mut ws = self
            .ws
            .ok_or_else(|| CertifierError::InvalidArgument("Certify stream had no chunk".into()))?;
        ws.last_chunk = false;
        Ok(ws)
    }
}

/// Splits a writeset into chunks whose encodings each stay below
/// `max_chunk_bytes` (a single item larger than that still gets a chunk of its
/// own, which the server will refuse with a clear error). The inverse of
/// [`Assembler`].
pub fn split(ws: Writeset, max_chunk_bytes: usize) -> Vec<Writeset> {
    let mut chunks = split_unmarked(ws, max_chunk_bytes);
    if let Some(last) = chunks.last_mut() {
        last.last_chunk = true;
    }
    chunks
}

fn split_unmarked(ws: Writeset, max_chunk_bytes: usize) -> Vec<Writeset> {
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
        last_chunk: _,
        spool: _,
        session,
        losses,
    } = ws;
    let header = Writeset {
        format_version,
        txn_id,
        origin,
        snapshot,
        session,
        losses,
        ..Writeset::default()
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

/// The header of an encoded writeset (as [`encode_in_order`] writes it:
/// fields 1 to 4 first): its length in bytes and the txn_id, read without
/// decoding the items. None when `body` does not start that way.
pub fn header_prefix(body: &[u8]) -> Option<(usize, &[u8])> {
    use prost::encoding::{decode_key, decode_varint, WireType};
    let mut rest = body;
    let mut txn_id: &[u8] = &[];
    while !rest.is_empty() {
        let before = rest.len();
        let mut peek = rest;
        let (field, wire) = decode_key(&mut peek).ok()?;
        if field > 4 {
            break;
        }
        match wire {
            WireType::Varint => {
                decode_varint(&mut peek).ok()?;
            }
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut peek).ok()?).ok()?;
                if len > peek.len() {
                    return None;
                }
                if field == 2 {
                    txn_id = &peek[..len];
                }
                peek = &peek[len..];
            }
            _ => return None,
        }
        rest = peek;
        debug_assert!(rest.len() < before);
    }
    Some((body.len() - rest.len(), txn_id))
}

/// Encodes `ws` as protobuf with its fields in execution order: the header
/// first, then each `Ddl` right before the item it precedes (stable by
/// `before_item`), then the items after the last one. Any protobuf reader
/// decodes it as `ws`; a streaming reader meets every statement before
/// the rows that follow it. Same length as `ws.encoded_len()` but for the
/// fair-turn fields (`session`, `losses`), which are never logged.
pub fn encode_in_order(ws: &Writeset, buf: &mut impl bytes::BufMut) {
    use prost::encoding;
    if ws.format_version != 0 {
        encoding::uint32::encode(1, &ws.format_version, buf);
    }
    if !ws.txn_id.is_empty() {
        encoding::bytes::encode(2, &ws.txn_id, buf);
    }
    if ws.origin != 0 {
        encoding::uint32::encode(3, &ws.origin, buf);
    }
    if ws.snapshot != 0 {
        encoding::uint64::encode(4, &ws.snapshot, buf);
    }
    encode_parts(&ws.items, &ws.ddl, 0, buf);
    if ws.last_chunk {
        encoding::bool::encode(7, &ws.last_chunk, buf);
    }
    if let Some(spool) = &ws.spool {
        encoding::message::encode(8, spool, buf);
    }
}

/// Encodes items (numbered from `base`) and statements (`before_item`
/// counted in the same numbering) in execution order: a part of
/// [`encode_in_order`], for chunks.
pub fn encode_parts(items: &[Item], ddl: &[Ddl], base: u64, buf: &mut impl bytes::BufMut) {
    use prost::encoding;
    let mut ddl: Vec<&Ddl> = ddl.iter().collect();
    ddl.sort_by_key(|d| d.before_item);
    let mut ddl = ddl.into_iter().peekable();
    for (i, item) in items.iter().enumerate() {
        while let Some(d) = ddl.next_if(|d| d.before_item <= base + i as u64) {
            encoding::message::encode(6, d, buf);
        }
        encoding::message::encode(5, item, buf);
    }
    for d in ddl {
        encoding::message::encode(6, d, buf);
    }
}

/// The header fields of a writeset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    pub format_version: u32,
    pub txn_id: bytes::Bytes,
    pub origin: u32,
    pub snapshot: u64,
}

/// A piece of a writeset, as [`StreamDecoder`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// Always first (before any item or statement).
    Header(Header),
    Ddl(Ddl),
    Item(Item),
}

/// Decodes a writeset's encoding as it arrives in slices (Subscribe
/// frames), handing out its header, statements and items one by one, in
/// the order they appear: a writeset of any size is read holding at most
/// one item in memory. Records are encoded in execution order (see
/// [`encode_in_order`]), so parts come in the order they are applied.
#[derive(Default)]
pub struct StreamDecoder {
    buf: bytes::BytesMut,
    header: Header,
    header_sent: bool,
    /// Largest single field accepted (an item or statement).
    max_field: usize,
}

impl StreamDecoder {
    pub fn new(max_field: usize) -> StreamDecoder {
        StreamDecoder {
            max_field,
            ..StreamDecoder::default()
        }
    }

    /// Adds the next slice and returns the parts it completes.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Part>, CertifierError> {
        let bad = |m: String| CertifierError::Protocol(format!("writeset stream: {m}"));
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            let mut view: &[u8] = &self.buf;
            let Some(key) = try_varint(&mut view).map_err(|e| bad(e.into()))? else {
                break;
            };
            let (field, wire) = (key >> 3, key & 7);
            let value_start = self.buf.len() - view.len();
            let (consumed, payload) = match wire {
                0 => match try_varint(&mut view).map_err(|e| bad(e.into()))? {
                    None => break,
                    Some(v) => (self.buf.len() - view.len(), Value::Varint(v)),
                },
                2 => {
                    let Some(len) = try_varint(&mut view).map_err(|e| bad(e.into()))? else {
                        break;
                    };
                    let len = usize::try_from(len).map_err(|_| bad("field too long".into()))?;
                    if len > self.max_field.max(1 << 20) {
                        return Err(bad(format!("a field of {len} bytes")));
                    }
                    if view.len() < len {
                        break;
                    }
                    let start = self.buf.len() - view.len();
                    (start + len, Value::Len(start))
                }
                1 => {
                    if view.len() < 8 {
                        break;
                    }
                    (value_start + 8, Value::Fixed)
                }
                5 => {
                    if view.len() < 4 {
                        break;
                    }
                    (value_start + 4, Value::Fixed)
                }
                w => return Err(bad(format!("unsupported wire type {w}"))),
            };
            let field_bytes = self.buf.split_to(consumed).freeze();
            let body = |start: usize| field_bytes.slice(start..);
            match (field, payload) {
                (1, Value::Varint(v)) => self.header.format_version = v as u32,
                (2, Value::Len(start)) => self.header.txn_id = body(start),
                (3, Value::Varint(v)) => self.header.origin = v as u32,
                (4, Value::Varint(v)) => self.header.snapshot = v,
                (5 | 6, Value::Len(start)) => {
                    if !self.header_sent {
                        self.header_sent = true;
                        out.push(Part::Header(self.header.clone()));
                    }
                    let b = body(start);
                    out.push(if field == 5 {
                        Part::Item(Item::decode(b).map_err(|e| bad(format!("item: {e}")))?)
                    } else {
                        Part::Ddl(Ddl::decode(b).map_err(|e| bad(format!("ddl: {e}")))?)
                    });
                }
                (1..=6, _) => return Err(bad(format!("field {field} has the wrong wire type"))),
                // Unknown (newer) fields and last_chunk: skipped.
                _ => {}
            }
        }
        Ok(out)
    }

    /// Ends the writeset: nothing may be left over. Returns the header if
    /// no part carried it yet (a writeset with neither items nor ddl).
    pub fn finish(&mut self) -> Result<Option<Header>, CertifierError> {
        if !self.buf.is_empty() {
            return Err(CertifierError::Protocol(format!(
                "writeset stream: {} bytes of an unfinished field at the end",
                self.buf.len()
            )));
        }
        let header = (!self.header_sent).then(|| self.header.clone());
        *self = StreamDecoder::new(self.max_field);
        Ok(header)
    }
}

enum Value {
    Varint(u64),
    Len(usize),
    Fixed,
}

/// Reads a varint from the front of `buf`; `None` if it is not complete.
fn try_varint(buf: &mut &[u8]) -> Result<Option<u64>, &'static str> {
    let mut v = 0u64;
    for i in 0..10 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Ok(Some(v));
        }
    }
    Err("invalid varint")
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
            ..Writeset::default()
        }
    }

    #[test]
    fn the_header_prefix_is_the_header_alone() {
        let full = ws(3);
        let mut buf = Vec::new();
        encode_in_order(&full, &mut buf);
        let (len, txn_id) = header_prefix(&buf).unwrap();
        assert_eq!(txn_id, b"t1");
        let header = Writeset::decode(&buf[..len]).unwrap();
        assert_eq!(
            header,
            Writeset {
                items: vec![],
                ddl: vec![],
                ..full
            }
        );
        assert_eq!(header_prefix(&[]), Some((0, &[][..])));
        // A length running past the end is no header.
        assert_eq!(header_prefix(&[0x12, 0x05, b'a']), None);
    }

    #[test]
    fn split_then_assemble_is_identity() {
        let orig = ws(1000);
        let chunks = split(orig.clone(), 4096);
        assert!(chunks.len() > 20, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|c| c.encoded_len() <= 4096));
        assert!(chunks.last().unwrap().last_chunk);
        let mut a = Assembler::new(u64::MAX);
        for c in chunks {
            a.push(c).unwrap();
        }
        assert_eq!(a.finish().unwrap(), orig);
    }

    #[test]
    fn a_stream_without_its_last_chunk_is_refused() {
        let mut chunks = split(ws(1000), 4096);
        chunks.pop();
        let mut a = Assembler::new(u64::MAX);
        for c in chunks {
            a.push(c).unwrap();
        }
        assert!(
            matches!(a.finish(), Err(CertifierError::InvalidArgument(m)) if m.contains("last_chunk"))
        );
        let mut a = Assembler::new(u64::MAX);
        let mut one = ws(1);
        one.last_chunk = true;
        a.push(one.clone()).unwrap();
        assert!(a.push(one).is_err(), "nothing after the last chunk");
    }

    #[test]
    fn ordered_encoding_puts_statements_before_their_rows() {
        let mut w = ws(3);
        w.ddl = vec![
            ddl("late", &["t"], 3),
            ddl("first", &["t"], 0),
            ddl("middle", &["t"], 2),
            ddl("first-2", &["t"], 0),
        ];
        let mut buf = Vec::new();
        encode_in_order(&w, &mut buf);
        assert_eq!(buf.len(), w.encoded_len());
        let back = Writeset::decode(&buf[..]).unwrap();
        assert_eq!(back.items, w.items);
        let sqls: Vec<&str> = back.ddl.iter().map(|d| d.sql.as_str()).collect();
        assert_eq!(sqls, ["first", "first-2", "middle", "late"]);
        let text = String::from_utf8_lossy(&buf);
        let pos = |s: &str| text.find(s).unwrap();
        assert!(
            pos("first-2") < pos("k0") && pos("k1") < pos("middle") && pos("middle") < pos("k2")
        );
        assert!(pos("k2") < pos("late"));
    }

    #[test]
    fn stream_decoder_reads_any_slicing_in_execution_order() {
        let mut w = ws(20);
        w.ddl = vec![ddl("first", &["t"], 0), ddl("mid", &["t"], 10)];
        let mut buf = Vec::new();
        encode_in_order(&w, &mut buf);
        for step in [1, 3, 7, 64, buf.len()] {
            let mut d = StreamDecoder::new(1 << 20);
            let mut parts = Vec::new();
            for piece in buf.chunks(step) {
                parts.extend(d.push(piece).unwrap());
            }
            assert_eq!(d.finish().unwrap(), None);
            assert_eq!(parts.len(), 23, "step {step}");
            let Part::Header(h) = &parts[0] else {
                panic!("header first")
            };
            assert_eq!(
                (h.format_version, h.origin, h.snapshot),
                (WRITESET_FORMAT_VERSION, 3, 7)
            );
            assert_eq!(&h.txn_id[..], b"t1");
            assert!(matches!(&parts[1], Part::Ddl(d) if d.sql == "first"));
            assert!(matches!(&parts[12], Part::Ddl(d) if d.sql == "mid"));
            assert!(matches!(&parts[22], Part::Item(i) if i.key == b"k19"[..]));
        }
        // Damage is an error, never a panic; a cut shows at finish.
        let mut d = StreamDecoder::new(1 << 20);
        d.push(&buf[..buf.len() - 3]).unwrap();
        assert!(d.finish().is_err());
        let mut d = StreamDecoder::new(1 << 20);
        assert!(d.push(&[0xff; 12]).is_err());
        // A header-only writeset.
        let h = Writeset {
            format_version: 2,
            origin: 5,
            ..Writeset::default()
        };
        let mut d = StreamDecoder::new(1 << 20);
        assert!(d.push(&h.encode_to_vec()).unwrap().is_empty());
        assert_eq!(d.finish().unwrap().unwrap().origin, 5);
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
        // Format 2 (no lock items) is still read; a keys-only lock is valid.
        let mut older = ws(2);
        older.format_version = OLDEST_FORMAT_VERSION;
        assert!(validate(&older).is_ok());
        let mut lock = ws(2);
        lock.items[0].op = Op::Lock as i32;
        lock.items[0].row = Default::default();
        assert!(validate(&lock).is_ok(), "{:?}", validate(&lock));
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
            (Box::new(|w| w.format_version = 1), "format_version 1"),
            (
                Box::new(|w| {
                    w.items[0].op = Op::Lock as i32;
                    w.items[0].row = b"(1)".to_vec().into();
                }),
                "item 0: a LOCK item carries keys only",
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
