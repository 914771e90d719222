//! What certification needs of a record, read in place from its bytes.
//!
//! Every raft node certifies every committed writeset
//! (`raft::state_machine`), and decoding each record whole — an `Item`
//! with a `String` and a `Bytes` per field, dropped right after — was a
//! tenth of three nodes' CPU in `cargo bench --bench certify`.
//! [`RecordView::parse`] reads the transaction id, the snapshot and the
//! conflict keys straight from the protobuf encoding, for the common shape
//! only: items with a table, an op, a key, a row and unique keys, and no
//! statements. Anything else — an old key, old unique keys, references,
//! DDL, the spool field, a field it does not know, a record the full path
//! would refuse — is `None`, and the caller decodes the record whole, so
//! what is refused, and why, stays the full path's. A view that is `Some`
//! holds exactly what decoding, validating and `ConflictSet::of` give
//! (property-tested below): every node decides alike whichever path it
//! took.
//!
//! Protobuf semantics the parser keeps: a scalar or bytes field seen twice
//! keeps its last value, a repeated one appends, an integer is truncated to
//! its field's width as prost does (`op` to `i32`, `format_version` to
//! `u32`), and every occurrence of a string must be UTF-8, not only the
//! last.

use bytes::Bytes;

use crate::rule::{ConflictSet, ItemKeys, Names};
use crate::writeset::{readable_format, txn_id_fits};
use crate::{record, Version};

/// A record's certification inputs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RecordView {
    pub txn_id: Bytes,
    pub snapshot: Version,
    pub cs: ConflictSet,
}

/// One field of a message: its number and its value.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// The fields of a message, in order; `Err` for what prost would not
/// decode (or might decode differently: groups, fixed-width values).
struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        Some(self.field())
    }
}

impl<'a> Fields<'a> {
    fn field(&mut self) -> Result<(u32, Value<'a>), ()> {
        let key = self.varint()?;
        // prost refuses keys beyond u32 and field number 0.
        if key > u64::from(u32::MAX) || key >> 3 == 0 {
            return Err(());
        }
        let number = (key >> 3) as u32;
        match key & 7 {
            0 => Ok((number, Value::Varint(self.varint()?))),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| ())?;
                if len > self.buf.len() {
                    return Err(());
                }
                let (value, rest) = self.buf.split_at(len);
                self.buf = rest;
                Ok((number, Value::Bytes(value)))
            }
            _ => Err(()),
        }
    }

    /// A varint of at most ten bytes whose value fits 64 bits.
    fn varint(&mut self) -> Result<u64, ()> {
        // Tags, lengths and small values: one byte.
        if let Some((&b, rest)) = self.buf.split_first() {
            if b < 0x80 {
                self.buf = rest;
                return Ok(u64::from(b));
            }
        }
        let mut value = 0u64;
        for (i, &b) in self.buf.iter().enumerate().take(10) {
            if i == 9 && b > 1 {
                return Err(());
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        Err(())
    }
}

/// One item of the common shape, validated as `writeset::validate` does.
struct ItemView<'a> {
    table: &'a str,
    op: i32,
    key: &'a [u8],
    /// The item's encoding, which the unique keys are read from again
    /// (empty when it has none).
    uniques: &'a [u8],
}

impl<'a> ItemView<'a> {
    fn parse(encoded: &'a [u8]) -> Result<ItemView<'a>, ()> {
        let (mut table, mut op, mut key, mut row_empty) = ("", 0i32, &[][..], true);
        let mut uniques = &[][..];
        for field in (Fields { buf: encoded }) {
            match field? {
                // prost checks every occurrence of a string, not only
                // the last, which wins.
                (1, Value::Bytes(b)) => table = std::str::from_utf8(b).map_err(|_| ())?,
                (2, Value::Varint(v)) => op = v as i32,
                (3, Value::Bytes(b)) => key = b,
                (5, Value::Bytes(b)) => row_empty = b.is_empty(),
                (6, Value::Bytes(b)) if !b.is_empty() => uniques = encoded,
                _ => return Err(()),
            }
        }
        let op_ok = match crate::proto::Op::try_from(op) {
            Ok(crate::proto::Op::Unspecified) | Err(_) => false,
            Ok(crate::proto::Op::Lock) => row_empty,
            Ok(_) => true,
        };
        if table.is_empty() || key.is_empty() || !op_ok {
            return Err(());
        }
        Ok(ItemView {
            table,
            op,
            key,
            uniques,
        })
    }
}

impl<'a> ItemKeys<'a> for ItemView<'a> {
    fn table(&self) -> &'a str {
        self.table
    }
    fn op(&self) -> i32 {
        self.op
    }
    fn key(&self) -> &'a [u8] {
        self.key
    }
    fn old_key(&self) -> Option<&'a [u8]> {
        None
    }
    fn unique_keys(&self) -> impl Iterator<Item = &'a [u8]> {
        (Fields { buf: self.uniques }).filter_map(|f| match f {
            Ok((6, Value::Bytes(b))) => Some(b),
            _ => None,
        })
    }
    fn old_unique_keys(&self) -> impl Iterator<Item = &'a [u8]> {
        std::iter::empty()
    }
    fn references(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        std::iter::empty()
    }
}

impl RecordView {
    /// The view of `rec`, a certifier record of version 0, when it has the
    /// common shape and would validate; `None` otherwise.
    pub fn parse(rec: &Bytes) -> Option<RecordView> {
        if record::is_spooled(rec) {
            return None;
        }
        let body = record::body(0, rec).ok()?;
        let (mut format, mut txn_id, mut snapshot) = (0u32, &[][..], 0);
        let mut items = Vec::with_capacity(8);
        for field in (Fields { buf: &body }) {
            match field.ok()? {
                (1, Value::Varint(v)) => format = v as u32,
                (2, Value::Bytes(b)) => txn_id = b,
                (3 | 7 | 9 | 10, Value::Varint(_)) => {}
                (4, Value::Varint(v)) => snapshot = v,
                (5, Value::Bytes(b)) => items.push(ItemView::parse(b).ok()?),
                _ => return None,
            }
        }
        if !readable_format(format) || !txn_id_fits(txn_id) || items.is_empty() {
            return None;
        }
        let mut cs = ConflictSet {
            write: Vec::with_capacity(items.len()),
            ..ConflictSet::default()
        };
        cs.add_items(items.into_iter(), 0);
        Some(RecordView {
            txn_id: body.slice_ref(txn_id),
            snapshot,
            cs,
        })
    }
}

/// The table names of a record's writeset, decoded only when an abort
/// reason asks for one.
pub(crate) struct RecordNames<'a>(pub &'a Bytes);

impl RecordNames<'_> {
    fn decoded(&self) -> Option<crate::proto::Writeset> {
        record::decode(0, self.0).ok()
    }
}

impl Names for RecordNames<'_> {
    fn item_table(&self, i: usize) -> String {
        self.decoded()
            .map(|ws| ws.item_table(i))
            .unwrap_or_default()
    }

    fn ddl_tables(&self, i: usize) -> String {
        self.decoded()
            .map(|ws| ws.ddl_tables(i))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Ddl, Item, Op, ParentRef, Writeset};
    use proptest::prelude::*;

    /// What the full path makes of `rec`: decode, validate, conflict keys.
    fn full(rec: &Bytes) -> Option<RecordView> {
        let ws = record::decode(0, rec).ok()?;
        crate::writeset::validate(&ws).ok()?;
        Some(RecordView {
            txn_id: ws.txn_id.clone(),
            snapshot: ws.snapshot,
            cs: ConflictSet::of(&ws),
        })
    }

    fn bytes_of(max: usize) -> impl Strategy<Value = Bytes> {
        // Few distinct values, so keys repeat and empty ones occur.
        prop::collection::vec(0u8..3, 0..max).prop_map(Bytes::from)
    }

    /// Mostly non-empty: most writesets should validate.
    fn key_bytes(max: usize) -> impl Strategy<Value = Bytes> {
        prop_oneof![9 => prop::collection::vec(0u8..3, 1..max), 1 => Just(vec![])]
            .prop_map(Bytes::from)
    }

    fn item() -> impl Strategy<Value = Item> {
        (
            prop::sample::select(vec!["a", "accounts", "b\u{e9}", "a", "accounts", ""]),
            prop_oneof![8 => 1i32..=4, 1 => -1i32..6],
            key_bytes(4),
            prop::option::weighted(0.1, bytes_of(3)),
            bytes_of(6),
            prop::collection::vec(key_bytes(3), 0..3),
            prop::collection::vec(key_bytes(3), 0..2),
            prop::collection::vec((prop::sample::select(vec!["", "p"]), bytes_of(3)), 0..2),
            prop::bool::weighted(0.8),
        )
            .prop_map(
                |(table, op, key, old_key, row, uk, ouk, refs, plain)| Item {
                    table: table.into(),
                    op,
                    key,
                    old_key: if plain { None } else { old_key },
                    row,
                    unique_keys: uk,
                    old_unique_keys: if plain { vec![] } else { ouk },
                    references: if plain {
                        vec![]
                    } else {
                        refs.into_iter()
                            .map(|(t, key)| ParentRef {
                                table: t.into(),
                                key,
                            })
                            .collect()
                    },
                },
            )
    }

    fn writeset() -> impl Strategy<Value = Writeset> {
        (
            prop_oneof![8 => 2u32..=3, 1 => 0u32..5],
            prop_oneof![8 => key_bytes(20), 1 => bytes_of(70)],
            any::<u64>(),
            prop_oneof![9 => prop::collection::vec(item(), 1..4), 1 => Just(vec![])],
            prop::bool::weighted(0.1),
            any::<u64>(),
        )
            .prop_map(
                |(format_version, txn_id, snapshot, items, ddl, session)| Writeset {
                    format_version,
                    txn_id,
                    origin: 2,
                    snapshot,
                    items,
                    ddl: if ddl {
                        vec![Ddl {
                            sql: "TRUNCATE a".into(),
                            tables: vec!["a".into()],
                            ..Ddl::default()
                        }]
                    } else {
                        vec![]
                    },
                    session,
                    ..Writeset::default()
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        /// A view, when there is one, is what the full path gives; a
        /// writeset of the common shape that validates always has one.
        #[test]
        fn a_view_is_what_decoding_gives(ws in writeset()) {
            let rec = record::encode(&ws).freeze();
            let view = RecordView::parse(&rec);
            let full = full(&rec);
            if let Some(v) = &view {
                prop_assert_eq!(Some(v), full.as_ref());
            }
            let common = ws.ddl.is_empty()
                && ws.items.iter().all(|i| {
                    i.old_key.is_none() && i.old_unique_keys.is_empty() && i.references.is_empty()
                });
            if common && full.is_some() {
                prop_assert!(view.is_some(), "the common shape took the slow path");
            }
        }

        /// Damaged or odd encodings: a view is never something the full
        /// path would refuse or read differently.
        #[test]
        fn a_damaged_record_never_gets_another_answer(
            ws in writeset(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in prop::option::of(any::<prop::sample::Index>()),
        ) {
            let mut rec = record::encode(&ws).to_vec();
            for (at, b) in edits {
                // The header is checked the same on both paths.
                let at = record::HEADER_LEN + at.index(rec.len() - record::HEADER_LEN + 1);
                if at < rec.len() {
                    rec[at] = b;
                }
            }
            if let Some(cut) = cut {
                rec.truncate(record::HEADER_LEN + cut.index(rec.len() - record::HEADER_LEN + 1));
            }
            let rec = Bytes::from(rec);
            if let Some(v) = RecordView::parse(&rec) {
                prop_assert_eq!(Some(v), full(&rec));
            }
        }
    }

    /// A table name that is not UTF-8, followed by one that is: prost
    /// refuses the record, so the view must not read it (a review found
    /// the view checking only the last occurrence).
    #[test]
    fn every_occurrence_of_a_table_name_must_be_utf8() {
        let body = [
            0x08, 0x03, 0x12, 0x01, b't', 0x2a, 0x0b, 0x0a, 0x01, 0xff, 0x0a, 0x01, b'a', 0x10,
            0x01, 0x1a, 0x01, b'k',
        ];
        let mut rec = record::header(0, body.len()).to_vec();
        rec.extend_from_slice(&body);
        let rec = Bytes::from(rec);
        assert!(
            full(&rec).is_none(),
            "prost reads it: the test shows nothing"
        );
        assert_eq!(RecordView::parse(&rec), None);
        // The same with a UTF-8 first name is read alike on both paths.
        let mut ok = rec.to_vec();
        ok[record::HEADER_LEN + 9] = b'x';
        let ok = Bytes::from(ok);
        assert_eq!(RecordView::parse(&ok), full(&ok));
        assert!(RecordView::parse(&ok).is_some());
    }

    /// Repeated fields and values wider than their field, as another
    /// encoder could write them: the last value wins, integers truncate.
    #[test]
    fn repeated_fields_and_wide_integers_read_as_prost_reads_them() {
        fn varint(out: &mut Vec<u8>, mut v: u64) {
            while v >= 0x80 {
                out.push(v as u8 | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        fn field(out: &mut Vec<u8>, n: u64, bytes: &[u8]) {
            varint(out, n << 3 | 2);
            varint(out, bytes.len() as u64);
            out.extend_from_slice(bytes);
        }
        let mut it = Vec::new();
        field(&mut it, 1, b"x");
        field(&mut it, 1, b"accounts");
        varint(&mut it, 2 << 3);
        varint(&mut it, (1 << 32) | Op::Update as u64);
        field(&mut it, 3, b"k1");
        field(&mut it, 3, b"k2");
        field(&mut it, 6, b"u");
        let mut body = Vec::new();
        varint(&mut body, 1 << 3);
        varint(&mut body, (7 << 32) | 3);
        field(&mut body, 2, b"first");
        field(&mut body, 2, b"second");
        varint(&mut body, 4 << 3);
        varint(&mut body, 9);
        field(&mut body, 5, &it);
        let mut rec = record::header(0, body.len()).to_vec();
        rec.extend_from_slice(&body);
        let rec = Bytes::from(rec);
        let view = RecordView::parse(&rec).expect("the common shape");
        assert_eq!(Some(&view), full(&rec).as_ref());
        assert_eq!(&view.txn_id[..], b"second");
    }
}
