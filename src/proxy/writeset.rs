//! From captured entries (`capture::entry`) to the certifier's `Writeset`.
//!
//! Consecutive row changes of one table and one operation become one
//! certifier item (a *run*): its `row` bytes carry the changes in the
//! packed form of `capture::change`, its keys are the rows' conflict keys.
//! A run ends at another table or operation, at a row whose primary key
//! the run already touches (so the applier may delete a run's old keys
//! before writing its rows, and never upserts one row twice in one
//! statement), and at [`RUN_ROWS`] rows or [`RUN_BYTES`] bytes. TRUNCATE
//! and DDL entries become `Ddl` entries at their position.
//!
//! Rows locked `FOR UPDATE` / `FOR NO KEY UPDATE` (lock entries) become
//! `OP_LOCK` items, keys only, which the certifier treats as written keys
//! and appliers skip: they wait in `Locks` (at most [`RUN_ROWS`] keys) so
//! that a row the transaction locks and then updates or deletes is not
//! keyed twice, and go out as one item per table when that fills up or at
//! the end. A transaction whose lock conflicts are off
//! (`tashkent.lock_conflicts`) drops them: one that only locked rows is
//! then read-only again.
//!
//! [`Builder`] takes the entries of a transaction one by one and hands
//! out chunks of at most about [`CHUNK_BYTES`] as they fill up, so a
//! transaction of any size is certified in bounded memory; it refuses one
//! whose writeset exceeds the cluster's `max_writeset_bytes` before it is
//! certified.

use std::collections::HashSet;

use bytes::{Bytes, BytesMut};
use prost::Message;
use tashkent_certifier::{Ddl, Item, Op, ParentRef, Version, Writeset, WRITESET_FORMAT_VERSION};

use crate::error::{Error, Result};
use crate::proxy::capture::change::{self, Kind};
use crate::proxy::capture::entry::{Entry, RowChange};

/// Most rows in one item.
pub const RUN_ROWS: usize = 1000;
/// Most payload bytes in one item (a single larger row still gets one).
pub const RUN_BYTES: usize = 1 << 20;
/// A chunk is handed out once its items reach this many encoded bytes.
pub const CHUNK_BYTES: usize = 4 << 20;

/// The run being filled.
struct Run {
    table: String,
    op: Op,
    payload: BytesMut,
    rows: usize,
    /// Primary keys the run touches (new and old).
    pks: HashSet<Bytes>,
    write: Vec<Bytes>,
    removed: Vec<Bytes>,
    refs: Vec<ParentRef>,
    ref_set: HashSet<(String, Bytes)>,
}

impl Run {
    fn new(table: &str, op: Op) -> Run {
        Run {
            table: table.to_owned(),
            op,
            payload: BytesMut::new(),
            rows: 0,
            pks: HashSet::new(),
            write: Vec::new(),
            removed: Vec::new(),
            refs: Vec::new(),
            ref_set: HashSet::new(),
        }
    }

    fn admits(&self, table: &str, op: Op, r: &RowChange) -> bool {
        self.table == table
            && self.op == op
            && self.rows < RUN_ROWS
            && self.payload.len() < RUN_BYTES
            && (r.pk.is_empty() || !self.pks.contains(&r.pk))
            && (r.old_pk.is_empty() || !self.pks.contains(&r.old_pk))
    }

    fn add(&mut self, op: Op, r: RowChange) {
        let kind = match op {
            Op::Delete => Kind::Delete,
            _ if !r.old_pk.is_empty() => Kind::Rekey,
            _ => Kind::Write,
        };
        let old = (kind == Kind::Rekey).then_some((&r.old_pk[..], &r.old_row[..]));
        change::push(&mut self.payload, kind, &r.pk, &r.row, old);
        self.rows += 1;
        if !r.pk.is_empty() {
            self.pks.insert(r.pk.clone());
            self.write.push(r.pk);
        }
        self.write.extend(r.uniques);
        if !r.old_pk.is_empty() {
            self.pks.insert(r.old_pk.clone());
            self.removed.push(r.old_pk);
        }
        self.removed.extend(r.gone);
        for (table, key) in r.refs {
            if self.ref_set.insert((table.clone(), key.clone())) {
                self.refs.push(ParentRef { table, key });
            }
        }
    }

    /// The item; `n` numbers it within the transaction (for the key of a
    /// run without any key).
    fn into_item(self, txn_id: &[u8], n: u64) -> Item {
        let mut write = self.write.into_iter();
        // Rows of a table without a primary key or unique index (INSERT
        // only) have no conflict key; a key unique to this item keeps the
        // certifier's "every item has a key" rule without conflicts.
        let key = write.next().unwrap_or_else(|| {
            let mut k = b"\0row ".to_vec();
            k.extend_from_slice(txn_id);
            k.extend_from_slice(format!(" {n}").as_bytes());
            Bytes::from(k)
        });
        Item {
            table: self.table,
            op: self.op as i32,
            key,
            old_key: None,
            row: self.payload.freeze(),
            unique_keys: write.collect(),
            old_unique_keys: self.removed,
            references: self.refs,
        }
    }
}

/// The key of a locked row of a table without a primary key: the whole
/// table (two lockers of any of its rows conflict; its inserts, keyed
/// per row, do not).
pub const TABLE_LOCK_KEY: &[u8] = b"\0table lock";

/// Locked rows not yet made into items, in the order they were locked.
#[derive(Default)]
struct Locks {
    order: Vec<(String, Bytes)>,
    /// Those still to be keyed (a later write of the row takes them out).
    pending: HashSet<(String, Bytes)>,
}

impl Locks {
    fn add(&mut self, table: String, pk: Bytes) {
        let pk = if pk.is_empty() {
            Bytes::from_static(TABLE_LOCK_KEY)
        } else {
            pk
        };
        if self.pending.insert((table.clone(), pk.clone())) {
            self.order.push((table, pk));
        }
    }

    /// A row change: its keys are written keys now.
    fn written(&mut self, r: &RowChange) {
        if self.pending.is_empty() {
            return;
        }
        for pk in [&r.pk, &r.old_pk] {
            if !pk.is_empty() {
                self.pending.remove(&(r.table.clone(), pk.clone()));
            }
        }
    }

    fn full(&self) -> bool {
        self.order.len() >= RUN_ROWS
    }

    /// One item per run of one table, of the keys still pending.
    fn take_items(&mut self) -> Vec<Item> {
        let mut items: Vec<Item> = Vec::new();
        for (table, pk) in std::mem::take(&mut self.order) {
            if !self.pending.remove(&(table.clone(), pk.clone())) {
                continue;
            }
            match items.last_mut() {
                Some(item) if item.table == table => item.unique_keys.push(pk),
                _ => items.push(Item {
                    table,
                    op: Op::Lock as i32,
                    key: pk,
                    ..Item::default()
                }),
            }
        }
        self.pending.clear();
        items
    }
}

/// Builds one transaction's writeset from its entries, in chunks.
pub struct Builder {
    txn_id: Bytes,
    origin: u32,
    snapshot: Version,
    max_bytes: u64,
    run: Option<Run>,
    items: Vec<Item>,
    ddl: Vec<Ddl>,
    /// Items already handed out in chunks.
    emitted: u64,
    chunks: usize,
    pending_bytes: usize,
    total_bytes: u64,
    /// Whether locked rows are conflict keys (else lock entries are dropped).
    lock_conflicts: bool,
    locks: Locks,
    /// The client session and its losses in a row (the certifier's fair
    /// turns; 0: none).
    session: u64,
    losses: u32,
}

impl Builder {
    pub fn new(txn_id: Bytes, origin: u32, snapshot: Version, max_bytes: u64) -> Builder {
        Builder {
            txn_id,
            origin,
            snapshot,
            max_bytes,
            run: None,
            items: Vec::new(),
            ddl: Vec::new(),
            emitted: 0,
            chunks: 0,
            pending_bytes: 0,
            total_bytes: 0,
            lock_conflicts: true,
            locks: Locks::default(),
            session: 0,
            losses: 0,
        }
    }

    /// The client session the transaction runs in and how many of its
    /// transactions lost in a row before it (see the certifier's `turns`).
    pub fn fair_turn(mut self, session: u64, losses: u32) -> Builder {
        self.session = session;
        self.losses = losses;
        self
    }

    /// Whether rows locked `FOR [NO KEY] UPDATE` become conflict keys (on
    /// by default).
    pub fn lock_conflicts(mut self, on: bool) -> Builder {
        self.lock_conflicts = on;
        self
    }

    pub fn txn_id(&self) -> &Bytes {
        &self.txn_id
    }

    /// Adds the next entry of the transaction.
    pub fn push(&mut self, e: Entry) -> Result<()> {
        match e {
            Entry::Insert(r) => self.row(Op::Insert, r),
            Entry::Update(r) => self.row(Op::Update, r),
            Entry::Delete(r) => self.row(Op::Delete, r),
            Entry::Truncate { table } => {
                let sql = serde_json::json!({"op": "T", "t": table}).to_string();
                self.statement(sql, vec![table])
            }
            Entry::Ddl { json } => {
                let tables = ddl_tables(&json)?;
                self.statement(json, tables)
            }
            Entry::Lock { table, pk } => {
                if self.lock_conflicts {
                    self.locks.add(table, pk);
                    if self.locks.full() {
                        self.end_locks()?;
                    }
                }
                Ok(())
            }
        }
    }

    /// The pending locked rows become items.
    fn end_locks(&mut self) -> Result<()> {
        self.end_run()?;
        for item in self.locks.take_items() {
            self.count(item.encoded_len())?;
            self.items.push(item);
        }
        Ok(())
    }

    fn row(&mut self, op: Op, r: RowChange) -> Result<()> {
        self.locks.written(&r);
        if !self
            .run
            .as_ref()
            .is_some_and(|run| run.admits(&r.table, op, &r))
        {
            self.end_run()?;
            self.run = Some(Run::new(&r.table, op));
        }
        if let Some(run) = self.run.as_mut() {
            run.add(op, r);
        }
        Ok(())
    }

    fn statement(&mut self, sql: String, tables: Vec<String>) -> Result<()> {
        self.end_run()?;
        let d = Ddl {
            sql,
            tables,
            before_item: self.emitted + self.items.len() as u64,
        };
        self.count(d.encoded_len())?;
        self.ddl.push(d);
        Ok(())
    }

    fn end_run(&mut self) -> Result<()> {
        if let Some(run) = self.run.take() {
            let n = self.emitted + self.items.len() as u64;
            let item = run.into_item(&self.txn_id, n);
            self.count(item.encoded_len())?;
            self.items.push(item);
        }
        Ok(())
    }

    fn count(&mut self, bytes: usize) -> Result<()> {
        self.pending_bytes += bytes + 8;
        self.total_bytes += bytes as u64 + 8;
        if self.total_bytes > self.max_bytes {
            return Err(Error::WritesetTooLarge {
                max: self.max_bytes,
            });
        }
        Ok(())
    }

    /// A chunk, once the finished items reach [`CHUNK_BYTES`].
    pub fn full_chunk(&mut self) -> Option<Writeset> {
        (self.pending_bytes >= CHUNK_BYTES).then(|| self.chunk())
    }

    /// True once a chunk was handed out: the rest must follow as chunks.
    pub fn chunked(&self) -> bool {
        self.chunks > 0
    }

    /// The rest after the last entry: the whole writeset if no chunk was
    /// handed out (`None` when nothing was captured: a read-only
    /// transaction), else the last chunk.
    pub fn finish(mut self) -> Result<Option<Writeset>> {
        self.end_locks()?;
        if self.chunks == 0 && self.items.is_empty() && self.ddl.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.chunk()))
    }

    fn chunk(&mut self) -> Writeset {
        let items = std::mem::take(&mut self.items);
        self.emitted += items.len() as u64;
        self.pending_bytes = 0;
        let first = self.chunks == 0;
        self.chunks += 1;
        Writeset {
            // Later chunks leave the header at its defaults (see the .proto).
            format_version: WRITESET_FORMAT_VERSION,
            txn_id: if first {
                self.txn_id.clone()
            } else {
                Bytes::new()
            },
            origin: if first { self.origin } else { 0 },
            snapshot: if first { self.snapshot } else { 0 },
            session: if first { self.session } else { 0 },
            losses: if first { self.losses } else { 0 },
            // Chunks after the first count before_item from their first item.
            ddl: std::mem::take(&mut self.ddl)
                .into_iter()
                .map(|mut d| {
                    d.before_item -= self.emitted - items.len() as u64;
                    d
                })
                .collect(),
            items,
            last_chunk: false,
            spool: None,
        }
    }
}

/// The tables a DDL entry names (its first affected table when it lists
/// none: `tashkent.catalog` for DDL on no table).
fn ddl_tables(json: &str) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Line {
        t: String,
        #[serde(default)]
        tables: Vec<String>,
    }
    let line: Line = serde_json::from_str(json).map_err(|e| Error::Capture {
        reason: format!("unreadable DDL entry ({e}): {json:.200}"),
    })?;
    Ok(if line.tables.is_empty() {
        vec![line.t]
    } else {
        line.tables
    })
}

/// Builds a whole writeset from captured bytes (tests, tools).
pub fn build(
    txn_id: Bytes,
    origin: u32,
    snapshot: Version,
    captured: &[u8],
    max_bytes: u64,
) -> Result<Option<Writeset>> {
    let mut b = Builder::new(txn_id, origin, snapshot, max_bytes);
    for e in crate::proxy::capture::entry::parse_all(captured)? {
        b.push(e)?;
    }
    let mut chunks = Vec::new();
    while let Some(c) = b.full_chunk() {
        chunks.push(c);
    }
    let Some(mut last) = b.finish()? else {
        return Ok(None);
    };
    last.last_chunk = true;
    chunks.push(last);
    let mut asm = tashkent_certifier::writeset::Assembler::new(u64::MAX);
    for c in chunks {
        asm.push(c).map_err(|e| Error::Capture {
            reason: e.to_string(),
        })?;
    }
    asm.finish().map(Some).map_err(|e| Error::Capture {
        reason: e.to_string(),
    })
}

/// The table part of a certifier key or table name, for messages.
pub fn key_table(key: &str) -> &str {
    let mut quoted = false;
    for (i, c) in key.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => return &key[..i],
            _ => {}
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::capture::change;
    use crate::proxy::capture::entry::encode;

    fn ins(table: &str, id: u32) -> Entry {
        Entry::Insert(RowChange {
            table: table.into(),
            pk: Bytes::from(format!("{table}_pkey\0{id}")),
            row: Bytes::from(format!("({id},x)")),
            uniques: vec![Bytes::from(format!("u\0{id}"))],
            refs: vec![("public.p".into(), Bytes::from_static(b"p_pkey\0\x011"))],
            ..RowChange::default()
        })
    }

    fn upd(table: &str, id: u32, old: Option<u32>) -> Entry {
        Entry::Update(RowChange {
            table: table.into(),
            pk: Bytes::from(format!("pk\0{id}")),
            row: Bytes::from(format!("({id},y)")),
            old_pk: old.map_or(Bytes::new(), |o| Bytes::from(format!("pk\0{o}"))),
            old_row: old.map_or(Bytes::new(), |o| Bytes::from(format!("({o},y)"))),
            gone: old
                .map(|o| vec![Bytes::from(format!("u\0{o}"))])
                .unwrap_or_default(),
            ..RowChange::default()
        })
    }

    fn build_all(entries: &[Entry]) -> Writeset {
        build(Bytes::from_static(b"t1"), 2, 9, &encode(entries), u64::MAX)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn runs_group_one_table_and_operation_and_break_on_a_repeated_key() {
        let ws = build_all(&[
            ins("public.a", 1),
            ins("public.a", 2),
            ins("public.a", 2),
            upd("public.a", 3, None),
            upd("public.a", 5, Some(4)),
            upd("public.a", 4, None),
            Entry::Truncate {
                table: "public.b".into(),
            },
            ins("public.c", 1),
        ]);
        assert_eq!((ws.origin, ws.snapshot), (2, 9));
        let shape: Vec<(&str, i32, usize)> = ws
            .items
            .iter()
            .map(|i| {
                (
                    i.table.as_str(),
                    i.op,
                    change::decode(i.row.clone()).unwrap().len(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ("public.a", Op::Insert as i32, 2),
                ("public.a", Op::Insert as i32, 1),
                ("public.a", Op::Update as i32, 2),
                ("public.a", Op::Update as i32, 1),
                ("public.c", Op::Insert as i32, 1),
            ]
        );
        // Keys: every pk and unique, the removed old pk and unique, one
        // reference per parent.
        assert_eq!(&ws.items[0].key[..], b"public.a_pkey\x001");
        assert_eq!(ws.items[0].unique_keys.len(), 3);
        assert_eq!(ws.items[0].references.len(), 1);
        let rekey = &ws.items[2];
        assert_eq!(
            rekey.old_unique_keys,
            vec![
                Bytes::from_static(b"pk\x004"),
                Bytes::from_static(b"u\x004")
            ]
        );
        let changes = change::decode(rekey.row.clone()).unwrap();
        assert_eq!(changes[1].kind, Kind::Rekey);
        assert_eq!(&changes[1].old_row[..], b"(4,y)");
        assert_eq!(ws.ddl.len(), 1);
        assert_eq!(ws.ddl[0].before_item, 4);
        assert_eq!(ws.ddl[0].tables, vec!["public.b"]);
        tashkent_certifier::writeset::validate(&ws).unwrap();
    }

    #[test]
    fn large_transactions_come_in_chunks_that_assemble_to_the_whole() {
        let entries: Vec<Entry> = (0..100_000).map(|i| ins("public.big", i)).collect();
        let mut b = Builder::new(Bytes::from_static(b"t"), 1, 0, u64::MAX);
        let mut chunks = Vec::new();
        for e in entries.iter().cloned() {
            b.push(e).unwrap();
            if let Some(c) = b.full_chunk() {
                chunks.push(c);
            }
        }
        assert!(b.chunked());
        chunks.push(b.finish().unwrap().unwrap());
        assert!(chunks.len() > 1);
        assert!(chunks
            .iter()
            .all(|c| c.encoded_len() < CHUNK_BYTES + RUN_BYTES + 4096));
        let whole = build_all(&entries);
        let rows: usize = whole
            .items
            .iter()
            .map(|i| change::decode(i.row.clone()).unwrap().len())
            .sum();
        assert_eq!(rows, 100_000);
        assert!(whole
            .items
            .iter()
            .all(|i| change::decode(i.row.clone()).unwrap().len() <= RUN_ROWS));
    }

    #[test]
    fn too_large_is_refused_before_certification() {
        let entries: Vec<Entry> = (0..1000).map(|i| ins("public.big", i)).collect();
        let err = build(Bytes::from_static(b"t"), 1, 0, &encode(&entries), 10_000).unwrap_err();
        assert!(
            matches!(err, Error::WritesetTooLarge { max: 10_000 }),
            "{err}"
        );
    }

    #[test]
    fn nothing_captured_is_no_writeset() {
        assert!(build(Bytes::from_static(b"t"), 1, 0, b"", u64::MAX)
            .unwrap()
            .is_none());
    }

    fn lock(table: &str, pk: &str) -> Entry {
        Entry::Lock {
            table: table.into(),
            pk: Bytes::from(pk.to_owned()),
        }
    }

    #[test]
    fn locked_rows_are_key_only_items_without_the_rows_written_anyway() {
        let ws = build_all(&[
            lock("public.jobs", "pk\x001"),
            lock("public.jobs", "pk\x002"),
            lock("public.jobs", "pk\x002"),
            lock("public.nopk", ""),
            // Locked, then updated: written, not also locked.
            upd("public.jobs", 2, None),
            ins("public.log", 1),
        ]);
        let shape: Vec<(&str, i32)> = ws.items.iter().map(|i| (i.table.as_str(), i.op)).collect();
        assert_eq!(
            shape,
            vec![
                ("public.jobs", Op::Update as i32),
                ("public.log", Op::Insert as i32),
                ("public.jobs", Op::Lock as i32),
                ("public.nopk", Op::Lock as i32),
            ]
        );
        let jobs = &ws.items[2];
        assert_eq!(&jobs.key[..], b"pk\x001");
        assert!(jobs.unique_keys.is_empty() && jobs.row.is_empty());
        assert_eq!(&ws.items[3].key[..], TABLE_LOCK_KEY);
        tashkent_certifier::writeset::validate(&ws).unwrap();

        // A transaction that only locked: certified, unless lock conflicts
        // are off.
        let only = encode(&[lock("public.jobs", "pk\x001")]);
        assert!(build(Bytes::from_static(b"t"), 1, 0, &only, u64::MAX)
            .unwrap()
            .is_some());
        let mut b = Builder::new(Bytes::from_static(b"t"), 1, 0, u64::MAX).lock_conflicts(false);
        for e in crate::proxy::capture::entry::parse_all(&only).unwrap() {
            b.push(e).unwrap();
        }
        assert!(b.finish().unwrap().is_none());
    }

    #[test]
    fn many_locked_rows_go_out_in_bounded_items() {
        let entries: Vec<Entry> = (0..2500)
            .map(|i| lock("public.jobs", &format!("pk\x00{i}")))
            .collect();
        let ws = build_all(&entries);
        let keys: usize = ws.items.iter().map(|i| 1 + i.unique_keys.len()).sum();
        assert_eq!(keys, 2500);
        assert!(ws.items.iter().all(|i| i.unique_keys.len() < RUN_ROWS));
    }

    #[test]
    fn key_table_respects_quotes() {
        assert_eq!(key_table("public.a a_pkey [1]"), "public.a");
        assert_eq!(key_table("\"s p\".\"t q\" i [1]"), "\"s p\".\"t q\"");
    }
}
