//! A certification too large for one raft entry, replicated chunk by chunk
//! and spooled on every node: no node holds its rows in memory.
//!
//! The leader proposes a large writeset as `Command::Chunk` entries, each
//! a protobuf `Writeset` of at most about [`super::parts::PART_BYTES`]: the
//! first carries the header (format version, txn id, origin, snapshot) and
//! its items, the later ones only items and statements (`before_item`
//! counted from the chunk's first item, as a Certify stream's chunks are).
//! Applying a chunk, a node appends its items and statements to its spool
//! (`server::spool`, the single certifier's format) and keeps only what
//! certification needs: the conflict keys and table names, and the
//! writeset without its rows (what the conflict window and snapshots keep
//! of a large version). The chunk with `last` set certifies the writeset;
//! a commit's record in the versions log references the spool records, so
//! Subscribe streams the rows from the spool as the single certifier does.
//!
//! Until its last chunk is applied, an assembly is part of the replicated
//! state ([`Chunked`]); a snapshot carries its chunks, read back from the
//! spool one by one as the snapshot is written (`Chunked::snapshot`, the
//! spool keeps them meanwhile), and a node restoring the snapshot spools
//! them again. Abandoned assemblies (the leader failed between two
//! chunks; the client retries under a new tag) are dropped by the rules of
//! `parts` ([`PENDING_MAX_AGE`] entries after their newest chunk, oldest
//! first past [`PENDING_MAX_BYTES`]), which depend on the log alone, so
//! every node keeps and drops the same assemblies and answers a last chunk
//! the same way. A chunk that does not decode or validate drops its
//! assembly (the leader validated it, so only a bug sends one): the last
//! chunk then answers "lost", and the retry gets the leader's error.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use prost::Message;

use super::parts::{self, PENDING_MAX_AGE, PENDING_MAX_BYTES};
use super::snapshot::{ChunkedIn, ChunkedOut, PartsIter};
use crate::error::CertifierError;
use crate::proto::{SpoolRef, Writeset};
use crate::rule::{ConflictSet, PartNames};
use crate::server::spool::{Spool, SpoolHold};
use crate::{record, writeset};

/// Largest chunk a node spools: the largest message between nodes. A raft
/// node's spool takes records this large whatever its configuration
/// (`server::node`), so that a committed chunk is never refused by one
/// node's log and not by another's.
pub const SPOOL_PART_MAX: usize = super::MAX_MESSAGE_BYTES;

/// The assemblies of chunked writesets not complete yet, by tag.
#[derive(Debug, Default)]
pub struct Chunked {
    assemblies: BTreeMap<u64, Assembly>,
    /// Bytes spooled for the assemblies in progress.
    bytes: usize,
}

/// One writeset arriving in chunks.
#[derive(Debug)]
struct Assembly {
    /// Log index of its newest chunk.
    newest: u64,
    /// The header fields, no items.
    header: Writeset,
    /// Its items without their rows, and its statements, in execution
    /// order (`writeset::encode_parts`).
    keys: BytesMut,
    cs: ConflictSet,
    names: PartNames,
    items: usize,
    ddls: usize,
    /// Bytes of its items and statements spooled.
    bytes: usize,
    /// Its records in the spool (`first` 0: none yet).
    spool: SpoolRef,
    /// How many there are (its tag's records in `spool.first..=last`).
    records: u64,
}

/// A writeset whose last chunk was applied: what certifying it needs.
#[derive(Debug)]
pub struct Complete {
    pub header: Writeset,
    pub cs: ConflictSet,
    pub names: PartNames,
    /// The record the window keeps: the writeset without its rows.
    pub keys_record: Bytes,
    /// Where its items and statements are in the spool.
    pub spool: SpoolRef,
}

impl Complete {
    /// Its versions-log record: the header and the spool reference.
    pub fn spooled_record(&self) -> Bytes {
        record::encode_spooled(&Writeset {
            spool: Some(self.spool),
            ..self.header.clone()
        })
        .freeze()
    }
}

/// Why a chunk got no certification.
#[derive(Debug)]
pub enum ChunkError {
    /// The assembly's earlier chunks were dropped (or one was invalid):
    /// nothing is certified, the client retries.
    Lost(String),
    /// The last chunk itself is invalid.
    Invalid(String),
    /// The spool failed: this node cannot go on.
    Spool(CertifierError),
}

/// What a snapshot copies of one assembly: its header's encoding, then
/// its spool records' contents (items and statements, `before_item`
/// counted over the whole writeset), read when the snapshot is written.
/// The spool keeps those records while this lives.
pub struct SnapshotAssembly {
    pub tag: u64,
    pub newest: u64,
    pub header: Bytes,
    pub records: u64,
    pub spool: SpoolRef,
    _hold: Option<SpoolHold>,
}

impl SnapshotAssembly {
    /// The assembly as the snapshot writes it, its records read from
    /// `spool` as the writer goes (blocking).
    pub fn copy<'a>(&self, spool: &'a Spool) -> Result<ChunkedOut<'a>, CertifierError> {
        let read: PartsIter<'a> = if self.records == 0 {
            Box::new(std::iter::empty())
        } else {
            Box::new(spool.chunks(&self.spool)?)
        };
        Ok(ChunkedOut {
            tag: self.tag,
            newest: self.newest,
            header: self.header.clone(),
            parts: self.records,
            read,
        })
    }
}

/// The assemblies a snapshot holds, spooled again as [`super::snapshot::read`]
/// finds them. Into a [`Chunked`] of their own: the state machine takes it
/// once the whole snapshot has been read ([`Restoring::done`]), and one
/// dropped unfinished gives its records back to the spool.
pub struct Restoring<'a> {
    spool: &'a Spool,
    chunked: Chunked,
}

impl Chunked {
    /// Applies chunk `piece` of writeset `tag` at log index `index`; the
    /// writeset once `last` completes it.
    pub fn apply(
        &mut self,
        spool: &Spool,
        index: u64,
        tag: u64,
        piece: &Bytes,
        last: bool,
    ) -> Result<Option<Complete>, ChunkError> {
        let added = Writeset::decode(piece.clone())
            .map_err(|e| CertifierError::InvalidArgument(format!("undecodable chunk: {e}")))
            .and_then(|chunk| self.add(spool, index, tag, chunk, false));
        match added {
            Ok(true) => {}
            Ok(false) => {
                return if last {
                    Err(ChunkError::Lost(lost(tag)))
                } else {
                    Ok(None)
                };
            }
            Err(CertifierError::Wal(e)) => return Err(ChunkError::Spool(e.into())),
            Err(e) => {
                self.drop_assembly(spool, tag, &e.to_string());
                return if last {
                    Err(ChunkError::Invalid(e.to_string()))
                } else {
                    Ok(None)
                };
            }
        }
        self.shed(spool, PENDING_MAX_BYTES);
        if !last {
            return Ok(None);
        }
        let Some(a) = self.assemblies.remove(&tag) else {
            return Err(ChunkError::Lost(lost(tag)));
        };
        self.bytes -= a.bytes;
        if a.items == 0 && a.ddls == 0 {
            spool.finished(tag, None);
            return Err(ChunkError::Invalid(
                "empty writeset: read-only transactions are not certified".into(),
            ));
        }
        let mut keys_record = record::encode(&a.header);
        keys_record.extend_from_slice(&a.keys);
        Ok(Some(Complete {
            header: a.header,
            cs: a.cs,
            names: a.names,
            keys_record: keys_record.freeze(),
            spool: a.spool,
        }))
    }

    /// Adds `chunk` to assembly `tag`, starting it
    /// when the chunk has a header; false when there is no assembly to add
    /// to (its earlier chunks were dropped). `absolute`: `before_item`
    /// already counts over the whole writeset (a snapshot's copy).
    fn add(
        &mut self,
        spool: &Spool,
        index: u64,
        tag: u64,
        mut chunk: Writeset,
        absolute: bool,
    ) -> Result<bool, CertifierError> {
        if !chunk.txn_id.is_empty() {
            let header = Writeset {
                format_version: chunk.format_version,
                // A copy: the decoded id is a slice of the whole entry
                // (on a follower, of the whole AppendEntries message).
                txn_id: Bytes::copy_from_slice(&chunk.txn_id),
                origin: chunk.origin,
                snapshot: chunk.snapshot,
                ..Writeset::default()
            };
            writeset::validate_header(&header)?;
            if let Some(old) = self.assemblies.remove(&tag) {
                // A tag is random per call: only a bug reuses one.
                self.bytes -= old.bytes;
                spool.finished(tag, None);
            }
            self.assemblies.insert(
                tag,
                Assembly {
                    newest: index,
                    header,
                    keys: BytesMut::new(),
                    cs: ConflictSet::default(),
                    names: PartNames::default(),
                    items: 0,
                    ddls: 0,
                    bytes: 0,
                    spool: SpoolRef {
                        tag,
                        ..SpoolRef::default()
                    },
                    records: 0,
                },
            );
        } else if chunk.format_version != 0 || chunk.origin != 0 || chunk.snapshot != 0 {
            return Err(CertifierError::InvalidArgument(
                "a later chunk carries header fields".into(),
            ));
        }
        let Some(a) = self.assemblies.get_mut(&tag) else {
            return Ok(false);
        };
        if chunk.spool.is_some() {
            return Err(CertifierError::InvalidArgument(
                "the spool field is the certifier's own".into(),
            ));
        }
        a.newest = index;
        if chunk.items.is_empty() && chunk.ddl.is_empty() {
            return Ok(true);
        }
        if !absolute {
            writeset::validate_part(&chunk)?;
            for d in &mut chunk.ddl {
                d.before_item += a.items as u64;
            }
        }
        // In execution order, as the spool and a snapshot's copy hold
        // them: the conflict keys' order (which names the first conflict)
        // is then the same on a node that restored the assembly.
        chunk.ddl.sort_by_key(|d| d.before_item);
        a.cs.add(&chunk.items, &chunk.ddl, a.items, a.ddls);
        a.names.add(&chunk.items, &chunk.ddl, a.items);
        let base = a.items as u64;
        let mut parts = Vec::with_capacity(chunk.encoded_len());
        writeset::encode_parts(&chunk.items, &chunk.ddl, base, &mut parts);
        if parts.len() > SPOOL_PART_MAX {
            // Refused alike on every node, before the spool could refuse it
            // as a failure of this node's log.
            return Err(CertifierError::InvalidArgument(format!(
                "a chunk of {} bytes: at most {SPOOL_PART_MAX} are spooled",
                parts.len()
            )));
        }
        // Waited for at the last chunk, before the writeset is certified.
        let _written_later = spool.append(&mut a.spool, &parts)?;
        a.records += 1;
        // Counted as spooled, so a node that restored the assembly from a
        // snapshot counts it as the others do.
        a.bytes += parts.len();
        self.bytes += parts.len();
        a.items += chunk.items.len();
        a.ddls += chunk.ddl.len();
        for item in &mut chunk.items {
            item.row = Bytes::new();
        }
        writeset::encode_parts(&chunk.items, &chunk.ddl, base, &mut a.keys);
        Ok(true)
    }

    /// Drops the assemblies whose newest chunk is more than
    /// [`PENDING_MAX_AGE`] entries before `index`.
    pub fn expire(&mut self, spool: &Spool, index: u64) {
        for tag in parts::expired(self.assemblies.iter().map(|(t, a)| (*t, a.newest)), index) {
            self.drop_assembly(spool, tag, "no new chunk for too long");
        }
    }

    /// Drops the oldest assemblies while more than `max_bytes` are held.
    fn shed(&mut self, spool: &Spool, max_bytes: usize) {
        while self.bytes > max_bytes {
            let newest = self.assemblies.iter().map(|(t, a)| (*t, a.newest));
            let Some(oldest) = parts::oldest(newest) else {
                break;
            };
            self.drop_assembly(spool, oldest, "too many bytes of chunks in progress");
        }
    }

    fn drop_assembly(&mut self, spool: &Spool, tag: u64, why: &str) {
        if let Some(a) = self.assemblies.remove(&tag) {
            self.bytes -= a.bytes;
            spool.finished(tag, None);
            tracing::warn!(
                tag,
                items = a.items,
                bytes = a.bytes,
                "dropped the chunks of a large certification: {why}"
            );
        }
    }

    /// Every assembly as a snapshot holds it: what to read back from
    /// `spool`, which keeps it until the snapshot is written.
    pub fn snapshot(&self, spool: &Spool) -> Vec<SnapshotAssembly> {
        self.assemblies
            .iter()
            .map(|(tag, a)| {
                let mut header = Vec::with_capacity(a.header.encoded_len());
                writeset::encode_in_order(&a.header, &mut header);
                SnapshotAssembly {
                    tag: *tag,
                    newest: a.newest,
                    header: header.into(),
                    records: a.records,
                    spool: a.spool,
                    _hold: (a.records > 0).then(|| spool.hold(a.spool.first)),
                }
            })
            .collect()
    }

    /// Drops every assembly, giving its records back to `spool`.
    pub fn release(self, spool: &Spool) {
        for tag in self.assemblies.into_keys() {
            spool.finished(tag, None);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.assemblies.is_empty()
    }
}

impl<'a> Restoring<'a> {
    pub fn new(spool: &'a Spool) -> Restoring<'a> {
        Restoring {
            spool,
            chunked: Chunked::default(),
        }
    }

    /// The assemblies restored: the whole snapshot was read.
    pub fn done(mut self) -> Chunked {
        std::mem::take(&mut self.chunked)
    }
}

impl Drop for Restoring<'_> {
    fn drop(&mut self) {
        std::mem::take(&mut self.chunked).release(self.spool);
    }
}

impl ChunkedIn for Restoring<'_> {
    fn header(&mut self, tag: u64, newest: u64, header: Bytes) -> Result<(), CertifierError> {
        let header = Writeset::decode(header).map_err(|e| {
            CertifierError::InvalidArgument(format!("snapshot: undecodable header: {e}"))
        })?;
        if header.txn_id.is_empty() {
            return Err(CertifierError::InvalidArgument(format!(
                "snapshot: the chunks of {tag:#x} have no header"
            )));
        }
        self.chunked.add(self.spool, newest, tag, header, true)?;
        Ok(())
    }

    fn part(&mut self, tag: u64, newest: u64, part: Bytes) -> Result<(), CertifierError> {
        let chunk = Writeset::decode(part).map_err(|e| {
            CertifierError::InvalidArgument(format!("snapshot: undecodable chunk: {e}"))
        })?;
        if chunk.txn_id.is_empty() && self.chunked.add(self.spool, newest, tag, chunk, true)? {
            // Blocking: a restore runs on a blocking thread, or at start.
            return futures::executor::block_on(self.spool.keep_up());
        }
        Err(CertifierError::InvalidArgument(format!(
            "snapshot: a part of {tag:#x} out of place"
        )))
    }
}

/// `chunk` (a writeset, or one chunk of a Certify stream: `before_item`
/// counted from its first item) cut into pieces of at most `max` encoded
/// bytes (a single larger item or statement gets a piece of its own),
/// encoded for `Command::Chunk`: the header fields (if any) on the first,
/// items and statements in execution order, each statement in the piece
/// where it runs, its `before_item` counted from the items before that
/// piece.
pub fn pieces(chunk: Writeset, max: usize) -> Vec<Bytes> {
    let Writeset {
        format_version,
        txn_id,
        origin,
        snapshot,
        items,
        mut ddl,
        ..
    } = chunk;
    ddl.sort_by_key(|d| d.before_item);
    let mut ddl = ddl.into_iter().peekable();
    let mut cut = Cutter {
        out: vec![(0, Writeset::default())],
        len: 0,
        max,
    };
    let mut seen = 0u64;
    for item in items {
        while let Some(mut d) = ddl.next_if(|d| d.before_item <= seen) {
            let (start, p) = cut.piece(d.encoded_len(), seen);
            d.before_item = d.before_item.saturating_sub(*start);
            p.ddl.push(d);
        }
        let (_, p) = cut.piece(item.encoded_len(), seen);
        p.items.push(item);
        seen += 1;
    }
    for mut d in ddl {
        let (start, p) = cut.piece(d.encoded_len(), seen);
        d.before_item = d.before_item.saturating_sub(*start);
        p.ddl.push(d);
    }
    let out = cut.out;
    out.into_iter()
        .enumerate()
        .map(|(i, (_, mut piece))| {
            if i == 0 {
                piece.format_version = format_version;
                piece.txn_id = txn_id.clone();
                piece.origin = origin;
                piece.snapshot = snapshot;
            }
            let mut buf = Vec::with_capacity(piece.encoded_len());
            writeset::encode_in_order(&piece, &mut buf);
            Bytes::from(buf)
        })
        .collect()
}

/// The pieces [`pieces`] cuts, each with the number of items before it.
struct Cutter {
    out: Vec<(u64, Writeset)>,
    /// Encoded bytes of the last piece.
    len: usize,
    max: usize,
}

impl Cutter {
    /// The piece an element of `n` bytes goes in, `seen` items in: a new
    /// one when the last would grow past `max`.
    fn piece(&mut self, n: usize, seen: u64) -> &mut (u64, Writeset) {
        // Field tag + length prefix of an embedded message: at most 1 + 10.
        let n = n + 11;
        let cur = &self.out.last().expect("one piece at least").1;
        if self.len + n > self.max && !(cur.items.is_empty() && cur.ddl.is_empty()) {
            self.out.push((seen, Writeset::default()));
            self.len = 0;
        }
        self.len += n;
        self.out.last_mut().expect("one piece at least")
    }
}

fn lost(tag: u64) -> String {
    format!(
        "the earlier chunks of this transaction (tag {tag:#x}) were dropped ({PENDING_MAX_AGE} \
         entries without a new chunk, more than {PENDING_MAX_BYTES} bytes of chunks in \
         progress, or an invalid chunk): it was not certified"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writeset::{ddl, item};
    use crate::{Op, WRITESET_FORMAT_VERSION};

    fn sample() -> Writeset {
        Writeset {
            format_version: WRITESET_FORMAT_VERSION,
            txn_id: Bytes::from_static(b"big"),
            origin: 2,
            snapshot: 9,
            items: (0..10u8)
                .map(|i| crate::Item {
                    row: Bytes::from(vec![i; 100]),
                    ..item("t", Op::Insert, vec![i])
                })
                .collect(),
            ddl: [0, 3, 4, 7, 10]
                .iter()
                .map(|&at| ddl(&format!("-- before {at}"), &["t"], at))
                .collect(),
            ..Writeset::default()
        }
    }

    #[test]
    fn pieces_keep_every_statement_before_its_item_and_the_header_first() {
        let ws = sample();
        let mut whole = Vec::new();
        writeset::encode_parts(&ws.items, &ws.ddl, 0, &mut whole);
        for max in [1, 150, 300, 1 << 20] {
            let pieces = pieces(ws.clone(), max);
            if max < 300 {
                assert!(pieces.len() > 3, "{max}: {} pieces", pieces.len());
            }
            if max >= 150 {
                // Statements count too: no piece grows past `max`.
                for p in &pieces[1..] {
                    assert!(p.len() <= max, "{max}: a piece of {}", p.len());
                }
            }
            // As a node spools them: each piece's statements counted from
            // the items before it.
            let (mut stream, mut base) = (Vec::new(), 0u64);
            for (i, p) in pieces.iter().enumerate() {
                let mut c = Writeset::decode(p.clone()).unwrap();
                assert_eq!(
                    c.txn_id.is_empty(),
                    i > 0,
                    "{max}: the header on the first only"
                );
                for d in &mut c.ddl {
                    d.before_item += base;
                }
                writeset::encode_parts(&c.items, &c.ddl, base, &mut stream);
                base += c.items.len() as u64;
            }
            assert_eq!(stream, whole, "{max}: the same execution order");
        }
    }

    #[test]
    fn chunks_spool_their_rows_and_keep_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), tashkent_wal::WalOptions::default()).unwrap();
        let ws = sample();
        let pieces = pieces(ws.clone(), 300);
        let n = pieces.len();
        let mut c = Chunked::default();
        let mut done = None;
        for (i, p) in pieces.iter().enumerate() {
            done = c.apply(&spool, i as u64, 5, p, i + 1 == n).unwrap();
            // Another writeset's later chunk, whose start was never seen.
            assert!(c
                .apply(&spool, 99, 6, &pieces[n - 1], false)
                .unwrap()
                .is_none());
        }
        let done = done.expect("complete at the last chunk");
        assert!(c.is_empty());
        let (got, want): (Vec<u64>, Vec<u64>) = (
            done.cs.window_entries().collect(),
            crate::rule::ConflictSet::of(&ws).window_entries().collect(),
        );
        assert_eq!(got, want);
        let keys = record::decode(0, &done.keys_record).unwrap();
        assert_eq!((keys.txn_id.clone(), keys.snapshot), (ws.txn_id.clone(), 9));
        assert_eq!(keys.items.len(), 10);
        assert!(keys.items.iter().all(|i| i.row.is_empty()));
        assert_eq!(keys.ddl, ws.ddl);
        // The spooled chunks after the header are the writeset's encoding.
        let block = tokio::runtime::Runtime::new().unwrap();
        block
            .block_on(spool.wal().wait_durable(done.spool.last))
            .unwrap();
        let mut body = Vec::new();
        writeset::encode_in_order(&done.header, &mut body);
        for chunk in spool.chunks(&done.spool).unwrap() {
            body.extend_from_slice(&chunk.unwrap());
        }
        let mut want = Vec::new();
        writeset::encode_in_order(&ws, &mut want);
        assert_eq!(body, want);
        // A last chunk whose start was never seen: lost.
        assert!(matches!(
            c.apply(&spool, 100, 6, &pieces[n - 1], true),
            Err(ChunkError::Lost(_))
        ));
    }

    /// A snapshot reads an assembly's chunks after the state machine moved
    /// on: the spool keeps them until the snapshot is written, even when
    /// the assembly is dropped and the spool purged meanwhile, and a node
    /// restoring the copy certifies the writeset as the others do.
    #[test]
    fn a_snapshot_keeps_the_chunks_it_copies_until_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let opts = tashkent_wal::WalOptions {
            segment_size: 4096,
            ..tashkent_wal::WalOptions::default()
        };
        let spool = Spool::open(dir.path(), opts.clone()).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut ws = sample();
        // Rows that fill several of the spool's segments.
        for (i, item) in ws.items.iter_mut().enumerate() {
            item.row = Bytes::from(vec![i as u8; 1500]);
        }
        let pieces = pieces(ws.clone(), 150);
        let n = pieces.len();
        let mut c = Chunked::default();
        for (i, p) in pieces[..n - 1].iter().enumerate() {
            assert!(c.apply(&spool, i as u64, 5, p, false).unwrap().is_none());
        }
        rt.block_on(spool.wal().wait_durable(spool.wal().last_lsn()))
            .unwrap();
        let snap = c.snapshot(&spool);
        let read = |a: &SnapshotAssembly| {
            let copy = a.copy(&spool).unwrap();
            assert_eq!(copy.tag, 5);
            let parts: Vec<Bytes> = copy.read.map(Result::unwrap).collect();
            assert_eq!(parts.len() as u64, copy.parts);
            (copy.header, parts)
        };
        let before = read(&snap[0]);
        assert!(before.1.len() > 2, "{} parts", before.1.len());
        // Its client went away: dropped, and the spool purged behind it.
        c.expire(&spool, (n as u64) + PENDING_MAX_AGE + 1);
        assert!(c.is_empty());
        let first = spool.wal().first_lsn();
        rt.block_on(spool.purge(1)).unwrap();
        assert_eq!(spool.wal().first_lsn(), first, "purged under a snapshot");
        assert_eq!(read(&snap[0]), before);
        // A node restoring the copy, then applying the last chunk.
        let other_dir = tempfile::tempdir().unwrap();
        let other = Spool::open(other_dir.path(), opts).unwrap();
        let mut restoring = Restoring::new(&other);
        restoring.header(5, n as u64, before.0.clone()).unwrap();
        for p in &before.1 {
            restoring.part(5, n as u64, p.clone()).unwrap();
        }
        let mut restored = restoring.done();
        let done = restored
            .apply(&other, n as u64, 5, &pieces[n - 1], true)
            .unwrap()
            .expect("complete at the last chunk");
        let (got, want): (Vec<u64>, Vec<u64>) = (
            done.cs.window_entries().collect(),
            crate::rule::ConflictSet::of(&ws).window_entries().collect(),
        );
        assert_eq!(got, want);
        // Once written, the records go with the next purge.
        drop(snap);
        rt.block_on(spool.purge(1)).unwrap();
        assert!(spool.wal().first_lsn() > first, "kept after the snapshot");
    }
}
