//! Capture format 3: the entries `tashkent_capture.c` appends to a
//! transaction's buffer, one per changed row (or TRUNCATE, or DDL
//! statement, or row locked FOR [NO KEY] UPDATE), as `tashkent.ws_read()`
//! hands them out in chunks.
//!
//! The format is documented on the C side (`tashkent_capture.c`, header
//! comment); this module reads it. Entries may span chunk boundaries:
//! [`EntryReader`] carries the unfinished tail of one chunk into the next,
//! so a transaction of any size is read in bounded memory.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{Error, Result};

/// The format the library must report (`tashkent.capture_version()`).
pub const CAPTURE_FORMAT: i32 = 3;

/// One captured change. Byte fields are slices of the chunk they came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Insert(RowChange),
    Update(RowChange),
    Delete(RowChange),
    /// TRUNCATE of one table (a TRUNCATE of several gives one entry each).
    Truncate {
        table: String,
    },
    /// A DDL statement: the JSON object the event trigger built (see
    /// `sql/50_ddl.sql`, `on_ddl_end`; `FORMAT.md`).
    Ddl {
        json: String,
    },
    /// A row locked `FOR UPDATE` or `FOR NO KEY UPDATE` (format 3):
    /// `pk` is its primary-key conflict key, empty when the table has no
    /// primary key (`tashkent_locks.c`).
    Lock {
        table: String,
        pk: Bytes,
    },
}

/// The row of an INSERT, UPDATE or DELETE and its conflict keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowChange {
    /// Schema-qualified, quoted table name.
    pub table: String,
    /// Primary-key conflict key (after the change; of the removed row for
    /// DELETE); empty when the table has no primary key.
    pub pk: Bytes,
    /// Record text: the new row (INSERT, UPDATE) or the removed one (DELETE).
    pub row: Bytes,
    /// UPDATE that changed the primary key: the old key and the old row.
    pub old_pk: Bytes,
    pub old_row: Bytes,
    /// Other unique keys of the row (after the change; of the removed row).
    pub uniques: Vec<Bytes>,
    /// UPDATE: unique keys the old row had and the new one has not.
    pub gone: Vec<Bytes>,
    /// Parent rows referenced (foreign keys set or changed): table, key.
    pub refs: Vec<(String, Bytes)>,
}

/// Reads entries from the chunks of `tashkent.ws_read()`, in order.
#[derive(Default)]
pub struct EntryReader {
    buf: BytesMut,
}

impl EntryReader {
    pub fn new() -> EntryReader {
        EntryReader::default()
    }

    /// Adds the next chunk and returns the entries it completes.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Entry>> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            if self.buf.len() < 5 {
                break;
            }
            let len = u32::from_le_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
            let total = 5 + len as usize;
            if self.buf.len() < total {
                break;
            }
            let entry = self.buf.split_to(total).freeze();
            out.push(parse_entry(entry)?);
        }
        Ok(out)
    }

    /// Checks that nothing unfinished is left (call after the last chunk).
    pub fn finish(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(bad(format!(
                "{} bytes of an unfinished entry at the end",
                self.buf.len()
            )))
        }
    }
}

/// Parses a whole buffer (all chunks concatenated).
pub fn parse_all(bytes: &[u8]) -> Result<Vec<Entry>> {
    let mut r = EntryReader::new();
    let entries = r.push(bytes)?;
    r.finish()?;
    Ok(entries)
}

fn bad(reason: String) -> Error {
    Error::Capture {
        reason: format!("unreadable captured entry: {reason}"),
    }
}

struct Fields {
    body: Bytes,
}

impl Fields {
    fn u32(&mut self) -> Result<u32> {
        if self.body.remaining() < 4 {
            return Err(bad("truncated length".into()));
        }
        Ok(self.body.get_u32_le())
    }

    fn bytes(&mut self) -> Result<Bytes> {
        let len = self.u32()? as usize;
        if self.body.remaining() < len {
            return Err(bad(format!(
                "field of {len} bytes with {} left",
                self.body.remaining()
            )));
        }
        Ok(self.body.split_to(len))
    }

    fn string(&mut self) -> Result<String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| bad("a name is not UTF-8".into()))
    }

    fn list(&mut self) -> Result<Vec<Bytes>> {
        let n = self.u32()? as usize;
        // Each element takes at least its 4-byte length.
        if n > self.body.remaining() / 4 {
            return Err(bad(format!("list of {n} elements does not fit")));
        }
        (0..n).map(|_| self.bytes()).collect()
    }

    fn refs(&mut self) -> Result<Vec<(String, Bytes)>> {
        let n = self.u32()? as usize;
        if n > self.body.remaining() / 8 {
            return Err(bad(format!("list of {n} references does not fit")));
        }
        (0..n)
            .map(|_| Ok((self.string()?, self.bytes()?)))
            .collect()
    }

    fn done(self) -> Result<()> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(bad(format!("{} trailing bytes", self.body.len())))
        }
    }
}

fn parse_entry(mut entry: Bytes) -> Result<Entry> {
    let op = entry[0];
    entry.advance(5);
    let mut f = Fields { body: entry };
    let e = match op {
        b'I' => {
            let table = f.string()?;
            let pk = f.bytes()?;
            let row = f.bytes()?;
            let uniques = f.list()?;
            let refs = f.refs()?;
            Entry::Insert(RowChange {
                table,
                pk,
                row,
                uniques,
                refs,
                ..RowChange::default()
            })
        }
        b'U' => Entry::Update(RowChange {
            table: f.string()?,
            pk: f.bytes()?,
            row: f.bytes()?,
            old_pk: f.bytes()?,
            old_row: f.bytes()?,
            uniques: f.list()?,
            gone: f.list()?,
            refs: f.refs()?,
        }),
        b'D' => Entry::Delete(RowChange {
            table: f.string()?,
            pk: f.bytes()?,
            row: f.bytes()?,
            uniques: f.list()?,
            ..RowChange::default()
        }),
        b'T' => Entry::Truncate { table: f.string()? },
        b'X' => Entry::Ddl { json: f.string()? },
        b'L' => Entry::Lock {
            table: f.string()?,
            pk: f.bytes()?,
        },
        other => return Err(bad(format!("unknown operation byte {other:#04x}"))),
    };
    f.done()?;
    Ok(e)
}

/// Encodes entries in capture format 3, as the C library does (for tests
/// and benchmarks that need captured bytes without a database).
pub fn encode(entries: &[Entry]) -> Vec<u8> {
    fn str_(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }
    fn list(out: &mut Vec<u8>, l: &[Bytes]) {
        out.extend_from_slice(&(l.len() as u32).to_le_bytes());
        for b in l {
            str_(out, b);
        }
    }
    let mut out = Vec::new();
    for e in entries {
        let mut body = Vec::new();
        let op = match e {
            Entry::Insert(r) => {
                str_(&mut body, r.table.as_bytes());
                str_(&mut body, &r.pk);
                str_(&mut body, &r.row);
                list(&mut body, &r.uniques);
                refs(&mut body, &r.refs);
                b'I'
            }
            Entry::Update(r) => {
                str_(&mut body, r.table.as_bytes());
                str_(&mut body, &r.pk);
                str_(&mut body, &r.row);
                str_(&mut body, &r.old_pk);
                str_(&mut body, &r.old_row);
                list(&mut body, &r.uniques);
                list(&mut body, &r.gone);
                refs(&mut body, &r.refs);
                b'U'
            }
            Entry::Delete(r) => {
                str_(&mut body, r.table.as_bytes());
                str_(&mut body, &r.pk);
                str_(&mut body, &r.row);
                list(&mut body, &r.uniques);
                b'D'
            }
            Entry::Truncate { table } => {
                str_(&mut body, table.as_bytes());
                b'T'
            }
            Entry::Ddl { json } => {
                str_(&mut body, json.as_bytes());
                b'X'
            }
            Entry::Lock { table, pk } => {
                str_(&mut body, table.as_bytes());
                str_(&mut body, pk);
                b'L'
            }
        };
        out.push(op);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
    }
    fn refs(out: &mut Vec<u8>, r: &[(String, Bytes)]) {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        for (t, k) in r {
            str_(out, t.as_bytes());
            str_(out, k);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry::Insert(RowChange {
                table: "public.a".into(),
                pk: Bytes::from_static(b"a_pkey\0\x01\0\0\0\0\0\0\0\x07"),
                row: Bytes::from_static(b"(7,\"x y\")"),
                uniques: vec![Bytes::from_static(b"a_u\0\x01xxxxxxxx")],
                refs: vec![("public.p".into(), Bytes::from_static(b"p_pkey\0k"))],
                ..RowChange::default()
            }),
            Entry::Update(RowChange {
                table: "public.a".into(),
                pk: Bytes::from_static(b"new"),
                row: Bytes::from_static(b"(8,)"),
                old_pk: Bytes::from_static(b"old"),
                old_row: Bytes::from_static(b"(7,)"),
                gone: vec![Bytes::from_static(b"g")],
                ..RowChange::default()
            }),
            Entry::Delete(RowChange {
                table: "public.a".into(),
                pk: Bytes::from_static(b"new"),
                row: Bytes::from_static(b"(8,)"),
                ..RowChange::default()
            }),
            Entry::Truncate {
                table: "public.b".into(),
            },
            Entry::Ddl {
                json: r#"{"op": "X"}"#.into(),
            },
            Entry::Lock {
                table: "public.a".into(),
                pk: Bytes::from_static(b"a_pkey\0\x01\0\0\0\0\0\0\0\x07"),
            },
            Entry::Lock {
                table: "public.nopk".into(),
                pk: Bytes::new(),
            },
        ]
    }

    #[test]
    fn entries_round_trip_across_any_chunking() {
        let entries = sample();
        let bytes = encode(&entries);
        assert_eq!(parse_all(&bytes).unwrap(), entries);
        for cut in 1..bytes.len() {
            let mut r = EntryReader::new();
            let mut got = r.push(&bytes[..cut]).unwrap();
            got.extend(r.push(&bytes[cut..]).unwrap());
            r.finish().unwrap();
            assert_eq!(got, entries, "cut at {cut}");
        }
    }

    #[test]
    fn damaged_entries_are_errors_not_panics() {
        let bytes = encode(&sample());
        for cut in 1..bytes.len() {
            // A prefix is either complete entries or an unfinished one.
            let r = parse_all(&bytes[..cut]);
            if let Ok(e) = r {
                assert!(e.len() < sample().len());
            }
        }
        let mut wrong = bytes.clone();
        wrong[0] = b'Q';
        assert!(parse_all(&wrong).is_err());
        // A length field pointing past the entry.
        let mut long = encode(&sample()[3..4]);
        long[5] = 200;
        assert!(parse_all(&long).is_err());
    }
}
