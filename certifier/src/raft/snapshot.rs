//! The bytes of a raft snapshot: the certifier's replicated state at one
//! applied log id, self-contained (its own metadata inside) so the same
//! bytes are what is sent to a follower and what `<dir>/snapshot` holds.
//! Written and read as a stream ([`write()`], [`read()`]): the parts of the
//! writesets arriving in chunks, which may add up to a gigabyte, pass
//! through one at a time, never all in memory.
//!
//! ```text
//! offset size
//!   0     8   magic "TKRSNAP\0"
//!   8     4   format version, little-endian (3; 2 when no chunked
//!             writeset is pending, 1 when nothing is, which readers of
//!             the earlier formats also read)
//!  12     …   fields, little-endian; `bytes` = u32 length + content:
//!             bytes   openraft SnapshotMeta, JSON (last applied log id,
//!                     membership, snapshot id)
//!             u64     latest version, u64 horizon
//!             u8      horizon cause: 0 start, 1 restart, 2 reports,
//!                     3 memory limit (+ u64 max_entries, u64 max_versions)
//!             u64     dedupe floor
//!             u64 n,  n × (u64 version, bytes txn id)      dedupe commits
//!             u64 n,  n × (bytes txn id, i32 code, bytes reason,
//!                          u64 conflict version)           dedupe aborts
//!             u64 n,  n × (u32 replica, u64 applied, u64 oldest snapshot)
//!             u64 n,  n × (u64 version, bytes record)      the writesets of
//!                     the versions in the window, certifier records
//!             u64 n,  n × (u64 tag, u64 newest index, u64 m,
//!                          m × bytes piece)        records arriving in
//!                     parts (`parts.rs`); format version 2 on, absent in 1
//!             u64 n,  n × (u64 tag, u64 newest index, bytes header,
//!                          u64 m, m × bytes part)  writesets arriving in
//!                     chunks (`chunks.rs`): the header's protobuf
//!                     encoding, then the spooled items and statements;
//!                     format version 3 on
//! end-4   4   CRC32 (crc32fast) of everything before
//! ```
//!
//! The window travels as writesets, not fingerprints: the receiver
//! recomputes them (`rule.rs`), so a snapshot does not depend on how a
//! build fingerprints keys.

use std::io::{Read, Seek, SeekFrom, Write};

use bytes::Bytes;

use super::parts::{Assembly, Pending};
use super::types::NodeId;
use crate::certifier::CertifierImage;
use crate::error::CertifierError;
use crate::proto::AbortCode;
use crate::rule::Abort;
use crate::window::{HorizonCause, WindowLimits};
use crate::Version;

const MAGIC: &[u8; 8] = b"TKRSNAP\0";
const FORMAT_VERSION: u32 = 3;

/// openraft's snapshot metadata for our types.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;

/// What a snapshot holds in memory: everything but the writesets arriving
/// in chunks, whose parts are streamed ([`ChunkedOut`], [`ChunkedIn`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotState {
    pub meta: SnapshotMeta,
    pub image: CertifierImage,
    /// (version, certifier record) for every version in the window.
    pub window: Vec<(Version, Bytes)>,
    /// Records arriving in parts, not complete yet.
    pub pending: Pending,
}

/// The parts of a writeset arriving in chunks, as a snapshot reads them
/// (from the spool): one at a time, so a snapshot never holds them.
pub type PartsIter<'a> = Box<dyn Iterator<Item = Result<Bytes, CertifierError>> + 'a>;

/// One writeset arriving in chunks, as [`write()`] copies it: its header's
/// encoding, then `parts` spool records' contents (items and statements,
/// `before_item` counted over the whole writeset) that `read` yields.
pub struct ChunkedOut<'a> {
    pub tag: u64,
    pub newest: u64,
    pub header: Bytes,
    pub parts: u64,
    pub read: PartsIter<'a>,
}

/// What takes the writesets arriving in chunks that [`read()`] finds, one
/// piece at a time: a header starts an assembly, its parts follow.
pub trait ChunkedIn {
    fn header(&mut self, tag: u64, newest: u64, header: Bytes) -> Result<(), CertifierError>;
    fn part(&mut self, tag: u64, newest: u64, part: Bytes) -> Result<(), CertifierError>;
}

/// Writes `s` and the assemblies `chunked` to `w`, the checksum last. The
/// oldest format that holds what is pending, so that nodes of earlier
/// releases still read it while nothing is in chunks (a cluster upgrades
/// one node at a time; its first writeset over 1 MiB must wait until
/// every node runs a build that reads `Chunk` entries).
pub fn write(
    w: impl Write,
    s: &SnapshotState,
    chunked: Vec<ChunkedOut<'_>>,
) -> Result<(), CertifierError> {
    let meta = serde_json::to_vec(&s.meta).map_err(|e| bad(format!("meta not encodable: {e}")))?;
    let img = &s.image;
    let mut out = Out {
        w,
        crc: crc32fast::Hasher::new(),
    };
    out.raw(MAGIC)?;
    let format = if !chunked.is_empty() {
        FORMAT_VERSION
    } else if !s.pending.is_empty() {
        2
    } else {
        1
    };
    out.u32(format)?;
    out.bytes(&meta)?;
    out.u64(img.latest)?;
    out.u64(img.horizon)?;
    match img.cause {
        HorizonCause::Start => out.u8(0)?,
        HorizonCause::Restart => out.u8(1)?,
        HorizonCause::Reports => out.u8(2)?,
        HorizonCause::MemoryLimit(l) => {
            out.u8(3)?;
            out.u64(l.max_entries as u64)?;
            out.u64(l.max_versions as u64)?;
        }
    }
    out.u64(img.dedupe_floor)?;
    out.u64(img.committed.len() as u64)?;
    for (v, id) in &img.committed {
        out.u64(*v)?;
        out.bytes(id)?;
    }
    out.u64(img.aborted.len() as u64)?;
    for (id, a) in &img.aborted {
        out.bytes(id)?;
        out.u32(a.code as i32 as u32)?;
        out.bytes(a.reason.as_bytes())?;
        out.u64(a.conflict_version)?;
    }
    out.u64(img.replicas.len() as u64)?;
    for (r, applied, oldest) in &img.replicas {
        out.u32(*r)?;
        out.u64(*applied)?;
        out.u64(*oldest)?;
    }
    out.u64(s.window.len() as u64)?;
    for (v, rec) in &s.window {
        out.u64(*v)?;
        out.unstamped(rec)?;
    }
    if format >= 2 {
        out.u64(s.pending.assemblies().count() as u64)?;
        for (tag, a) in s.pending.assemblies() {
            out.u64(tag)?;
            out.u64(a.newest)?;
            out.u64(a.pieces.len() as u64)?;
            for p in &a.pieces {
                out.bytes(p)?;
            }
        }
    }
    if format >= 3 {
        out.u64(chunked.len() as u64)?;
        for a in chunked {
            out.u64(a.tag)?;
            out.u64(a.newest)?;
            out.bytes(&a.header)?;
            out.u64(a.parts)?;
            let mut n = 0;
            for p in a.read {
                n += 1;
                if n > a.parts {
                    break;
                }
                out.bytes(&p?)?;
            }
            if n != a.parts {
                return Err(bad(format!(
                    "the chunks of {:#x}: {n} parts read where {} were counted",
                    a.tag, a.parts
                )));
            }
        }
    }
    let crc = out.crc.clone().finalize();
    out.w.write_all(&crc.to_le_bytes()).map_err(io)?;
    out.w.flush().map_err(io)
}

fn bad(reason: String) -> CertifierError {
    CertifierError::RaftStorage {
        what: "snapshot".into(),
        reason,
    }
}

fn io(e: std::io::Error) -> CertifierError {
    bad(format!("cannot read or write: {e}"))
}

/// The writer's side: fields, little-endian, checksummed as written.
struct Out<W> {
    w: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Out<W> {
    fn raw(&mut self, b: &[u8]) -> Result<(), CertifierError> {
        self.crc.update(b);
        self.w.write_all(b).map_err(io)
    }
    fn u8(&mut self, v: u8) -> Result<(), CertifierError> {
        self.raw(&[v])
    }
    fn u32(&mut self, v: u32) -> Result<(), CertifierError> {
        self.raw(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> Result<(), CertifierError> {
        self.raw(&v.to_le_bytes())
    }
    fn bytes(&mut self, b: &[u8]) -> Result<(), CertifierError> {
        let n = u32::try_from(b.len()).map_err(|_| bad(format!("a field of {} bytes", b.len())))?;
        self.u32(n)?;
        self.raw(b)
    }

    /// A window's certifier record with its version field 0, as every
    /// build's snapshot holds it (a node keeps it stamped).
    fn unstamped(&mut self, rec: &[u8]) -> Result<(), CertifierError> {
        if rec.len() < crate::record::HEADER_LEN || !rec.starts_with(crate::record::MAGIC) {
            return self.bytes(rec);
        }
        let n =
            u32::try_from(rec.len()).map_err(|_| bad(format!("a field of {} bytes", rec.len())))?;
        self.u32(n)?;
        self.raw(&rec[..8])?;
        self.raw(&[0; 8])?;
        self.raw(&rec[crate::record::HEADER_LEN..])
    }
}

/// A bounds-checked reader over the snapshot's fields: `left` is what the
/// body still holds, so a damaged length never allocates past the file.
struct Fields<R> {
    r: R,
    left: u64,
}

impl<R: Read> Fields<R> {
    fn exact(&mut self, n: usize) -> Result<Vec<u8>, CertifierError> {
        if n as u64 > self.left {
            return Err(bad("truncated".into()));
        }
        let mut buf = vec![0; n];
        self.r.read_exact(&mut buf).map_err(io)?;
        self.left -= n as u64;
        Ok(buf)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CertifierError> {
        let b = self.exact(N)?;
        let mut a = [0; N];
        a.copy_from_slice(&b);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, CertifierError> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, CertifierError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, CertifierError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn bytes(&mut self) -> Result<Bytes, CertifierError> {
        let n = self.u32()? as usize;
        Ok(self.exact(n)?.into())
    }
    /// A count of items of at least `min_len` bytes each, checked against
    /// what is left (a damaged count must not allocate wildly).
    fn count(&mut self, min_len: u64) -> Result<usize, CertifierError> {
        let n = self.u64()?;
        if n > self.left / min_len {
            return Err(bad(format!("count {n} exceeds the data")));
        }
        Ok(n as usize)
    }
}

/// Checks the snapshot in `r` (its magic and checksum, reading it through
/// once) and reads it, handing the writesets arriving in chunks to `sink`
/// piece by piece. Nothing reaches `sink` unless the checksum holds.
pub fn read(
    mut r: impl Read + Seek,
    sink: &mut dyn ChunkedIn,
) -> Result<SnapshotState, CertifierError> {
    let len = r.seek(SeekFrom::End(0)).map_err(io)?;
    r.seek(SeekFrom::Start(0)).map_err(io)?;
    if len < 16 {
        return Err(bad("not a certifier snapshot (too short)".into()));
    }
    let body = len - 4;
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0; 256 << 10];
    let mut at = 0;
    let mut magic = [0; 8];
    while at < body {
        let n = buf.len().min((body - at) as usize);
        r.read_exact(&mut buf[..n]).map_err(io)?;
        if at == 0 {
            magic.copy_from_slice(&buf[..8]);
        }
        crc.update(&buf[..n]);
        at += n as u64;
    }
    if &magic != MAGIC {
        return Err(bad("not a certifier snapshot (bad magic)".into()));
    }
    let mut stored = [0; 4];
    r.read_exact(&mut stored).map_err(io)?;
    if crc.finalize() != u32::from_le_bytes(stored) {
        return Err(bad("checksum mismatch".into()));
    }
    r.seek(SeekFrom::Start(8)).map_err(io)?;
    let mut f = Fields {
        r: std::io::BufReader::with_capacity(256 << 10, r),
        left: body - 8,
    };
    let s = read_fields(&mut f, sink)?;
    if f.left != 0 {
        return Err(bad(format!("{} trailing bytes", f.left)));
    }
    Ok(s)
}

fn read_fields<R: Read>(
    f: &mut Fields<R>,
    sink: &mut dyn ChunkedIn,
) -> Result<SnapshotState, CertifierError> {
    let version = f.u32()?;
    if !(1..=FORMAT_VERSION).contains(&version) {
        return Err(bad(format!("unsupported format version {version}")));
    }
    let meta: SnapshotMeta =
        serde_json::from_slice(&f.bytes()?).map_err(|e| bad(format!("undecodable meta: {e}")))?;
    let latest = f.u64()?;
    let horizon = f.u64()?;
    let cause = match f.u8()? {
        0 => HorizonCause::Start,
        1 => HorizonCause::Restart,
        2 => HorizonCause::Reports,
        3 => HorizonCause::MemoryLimit(WindowLimits {
            max_entries: f.u64()? as usize,
            max_versions: f.u64()? as usize,
        }),
        c => return Err(bad(format!("unknown horizon cause {c}"))),
    };
    let dedupe_floor = f.u64()?;
    let n = f.count(12)?;
    let mut committed = Vec::with_capacity(n);
    for _ in 0..n {
        committed.push((f.u64()?, f.bytes()?));
    }
    let n = f.count(20)?;
    let mut aborted = Vec::with_capacity(n);
    for _ in 0..n {
        let id = f.bytes()?;
        let code =
            AbortCode::try_from(f.u32()? as i32).map_err(|_| bad("unknown abort code".into()))?;
        let reason = String::from_utf8(f.bytes()?.to_vec())
            .map_err(|_| bad("abort reason is not UTF-8".into()))?;
        let conflict_version = f.u64()?;
        aborted.push((
            id,
            Abort {
                code,
                reason,
                conflict_version,
            },
        ));
    }
    let n = f.count(20)?;
    let mut replicas = Vec::with_capacity(n);
    for _ in 0..n {
        replicas.push((f.u32()?, f.u64()?, f.u64()?));
    }
    let n = f.count(12)?;
    let mut window = Vec::with_capacity(n);
    for _ in 0..n {
        window.push((f.u64()?, f.bytes()?));
    }
    let mut assemblies = Vec::new();
    if version >= 2 {
        let n = f.count(24)?;
        for _ in 0..n {
            let (tag, newest) = (f.u64()?, f.u64()?);
            let m = f.count(4)?;
            let mut pieces = Vec::with_capacity(m);
            for _ in 0..m {
                pieces.push(f.bytes()?);
            }
            assemblies.push((tag, Assembly { newest, pieces }));
        }
    }
    if version >= 3 {
        let n = f.count(28)?;
        for _ in 0..n {
            let (tag, newest, header) = (f.u64()?, f.u64()?, f.bytes()?);
            sink.header(tag, newest, header)?;
            let m = f.count(4)?;
            for _ in 0..m {
                sink.part(tag, newest, f.bytes()?)?;
            }
        }
    }
    Ok(SnapshotState {
        meta,
        image: CertifierImage {
            latest,
            horizon,
            cause,
            dedupe_floor,
            committed,
            aborted,
            replicas,
        },
        window,
        pending: Pending::from_assemblies(assemblies),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::entry::log_id;

    fn sample() -> SnapshotState {
        SnapshotState {
            meta: SnapshotMeta {
                last_log_id: Some(log_id(3, 2, 41)),
                last_membership: Default::default(),
                snapshot_id: "3-41-1".into(),
            },
            image: CertifierImage {
                latest: 12,
                horizon: 10,
                cause: HorizonCause::MemoryLimit(WindowLimits {
                    max_entries: 5,
                    max_versions: 9,
                }),
                dedupe_floor: 8,
                committed: vec![
                    (8, Bytes::from_static(b"t8")),
                    (12, Bytes::from_static(b"t12")),
                ],
                aborted: vec![(
                    Bytes::from_static(b"ta"),
                    Abort {
                        code: AbortCode::Conflict,
                        reason: "row k".into(),
                        conflict_version: 11,
                    },
                )],
                replicas: vec![(1, 12, 10)],
            },
            window: vec![
                (11, Bytes::from_static(b"r11")),
                (12, Bytes::from_static(b"r12")),
            ],
            pending: Pending::from_assemblies([
                (
                    7,
                    Assembly {
                        newest: 40,
                        pieces: vec![Bytes::from_static(b"p1"), Bytes::from_static(b"p2")],
                    },
                ),
                (
                    9,
                    Assembly {
                        newest: 38,
                        pieces: vec![Bytes::new()],
                    },
                ),
            ]),
        }
    }

    /// An assembly in chunks: tag, newest index, header, parts.
    type Held = (u64, u64, Bytes, Vec<Bytes>);

    fn held() -> Vec<Held> {
        vec![(
            5,
            41,
            Bytes::from_static(b"header"),
            vec![Bytes::from_static(b"items"), Bytes::new()],
        )]
    }

    impl ChunkedIn for Vec<Held> {
        fn header(&mut self, tag: u64, newest: u64, header: Bytes) -> Result<(), CertifierError> {
            self.push((tag, newest, header, Vec::new()));
            Ok(())
        }
        fn part(&mut self, tag: u64, _: u64, part: Bytes) -> Result<(), CertifierError> {
            let last = self
                .last_mut()
                .filter(|h| h.0 == tag)
                .expect("a header first");
            last.3.push(part);
            Ok(())
        }
    }

    fn encode(s: &SnapshotState, chunked: &[Held]) -> Vec<u8> {
        let out = chunked
            .iter()
            .map(|(tag, newest, header, parts)| ChunkedOut {
                tag: *tag,
                newest: *newest,
                header: header.clone(),
                parts: parts.len() as u64,
                read: Box::new(parts.iter().cloned().map(Ok)),
            })
            .collect();
        let mut b = Vec::new();
        write(&mut b, s, out).unwrap();
        b
    }

    fn decode(b: &[u8]) -> Result<(SnapshotState, Vec<Held>), CertifierError> {
        let mut got = Vec::new();
        let s = read(std::io::Cursor::new(b), &mut got)?;
        Ok((s, got))
    }

    #[test]
    fn round_trip_and_every_flip_detected() {
        let s = sample();
        let b = encode(&s, &held());
        assert_eq!(decode(&b).unwrap(), (s, held()));
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x04;
            assert!(decode(&d).is_err(), "flip at {i} accepted");
        }
        for cut in [0, 8, 15, b.len() / 2, b.len() - 1] {
            assert!(decode(&b[..cut]).is_err(), "cut at {cut} accepted");
        }
    }

    /// A node keeps its window's records stamped with their versions; a
    /// snapshot holds them with version field 0, as every build reads it.
    #[test]
    fn window_records_go_into_a_snapshot_unstamped() {
        let ws = crate::Writeset {
            txn_id: Bytes::from_static(b"t12"),
            ..crate::Writeset::default()
        };
        let unstamped = crate::record::encode(&ws).freeze();
        let mut stamped = bytes::BytesMut::from(&unstamped[..]);
        crate::record::set_version(&mut stamped, 12);
        let mut s = sample();
        s.window = vec![(11, Bytes::from_static(b"r11")), (12, stamped.freeze())];
        let (got, _) = decode(&encode(&s, &[])).unwrap();
        assert_eq!(got.window[1], (12, unstamped.clone()));
        assert_eq!(crate::record::decode(0, &got.window[1].1).unwrap(), ws);
        assert_eq!(
            got.window[0],
            (11, Bytes::from_static(b"r11")),
            "too short to stamp"
        );
    }

    #[test]
    fn a_snapshot_has_the_oldest_format_that_holds_what_is_pending() {
        let mut s = sample();
        assert_eq!(encode(&s, &held())[8..12], 3u32.to_le_bytes());
        let v2 = encode(&s, &[]);
        assert_eq!(v2[8..12], 2u32.to_le_bytes());
        s.pending = Pending::default();
        let v1 = encode(&s, &[]);
        // Format 1 is format 2 without the list of parts.
        assert_eq!(v1[8..12], 1u32.to_le_bytes());
        assert_eq!(decode(&v1).unwrap().0, s);
        let mut as_v2 = v1[..v1.len() - 4].to_vec();
        as_v2[8..12].copy_from_slice(&2u32.to_le_bytes());
        as_v2.extend_from_slice(&0u64.to_le_bytes());
        let crc = crc32fast::hash(&as_v2);
        as_v2.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&as_v2).unwrap().0, s);
    }

    #[test]
    fn parts_that_do_not_add_up_to_their_count_are_an_error() {
        let s = sample();
        for parts in [1, 3] {
            let out = vec![ChunkedOut {
                tag: 5,
                newest: 41,
                header: Bytes::from_static(b"header"),
                parts,
                read: Box::new(
                    [Bytes::from_static(b"a"), Bytes::from_static(b"b")]
                        .into_iter()
                        .map(Ok),
                ),
            }];
            let e = write(&mut Vec::new(), &s, out).unwrap_err();
            assert!(e.to_string().contains("parts read"), "{e}");
        }
    }
}
