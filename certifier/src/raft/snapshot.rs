//! The bytes of a raft snapshot: the certifier's replicated state at one
//! applied log id, self-contained (its own metadata inside) so the same
//! bytes are what is sent to a follower and what `<dir>/snapshot` holds.
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

use bytes::{Buf, BufMut, Bytes};

use super::chunks::SnapshotAssembly;
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

/// Everything a snapshot holds, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotState {
    pub meta: SnapshotMeta,
    pub image: CertifierImage,
    /// (version, certifier record) for every version in the window.
    pub window: Vec<(Version, Bytes)>,
    /// Records arriving in parts, not complete yet.
    pub pending: Pending,
    /// Writesets arriving in chunks, not complete yet.
    pub chunked: Vec<SnapshotAssembly>,
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.put_u32_le(b.len() as u32);
    out.put_slice(b);
}

/// Encodes `s`.
pub fn encode(s: &SnapshotState) -> Result<Vec<u8>, CertifierError> {
    let meta = serde_json::to_vec(&s.meta).map_err(|e| bad(format!("meta not encodable: {e}")))?;
    let img = &s.image;
    let mut out = Vec::new();
    out.put_slice(MAGIC);
    // The oldest format that holds what is pending, so that nodes of
    // earlier releases still read it while nothing is in chunks (a
    // cluster upgrades one node at a time; its first writeset over 1 MiB
    // must wait until every node runs a build that reads `Chunk`
    // entries).
    let format = if !s.chunked.is_empty() {
        FORMAT_VERSION
    } else if !s.pending.is_empty() {
        2
    } else {
        1
    };
    out.put_u32_le(format);
    put_bytes(&mut out, &meta);
    out.put_u64_le(img.latest);
    out.put_u64_le(img.horizon);
    match img.cause {
        HorizonCause::Start => out.put_u8(0),
        HorizonCause::Restart => out.put_u8(1),
        HorizonCause::Reports => out.put_u8(2),
        HorizonCause::MemoryLimit(l) => {
            out.put_u8(3);
            out.put_u64_le(l.max_entries as u64);
            out.put_u64_le(l.max_versions as u64);
        }
    }
    out.put_u64_le(img.dedupe_floor);
    out.put_u64_le(img.committed.len() as u64);
    for (v, id) in &img.committed {
        out.put_u64_le(*v);
        put_bytes(&mut out, id);
    }
    out.put_u64_le(img.aborted.len() as u64);
    for (id, a) in &img.aborted {
        put_bytes(&mut out, id);
        out.put_i32_le(a.code as i32);
        put_bytes(&mut out, a.reason.as_bytes());
        out.put_u64_le(a.conflict_version);
    }
    out.put_u64_le(img.replicas.len() as u64);
    for (r, applied, oldest) in &img.replicas {
        out.put_u32_le(*r);
        out.put_u64_le(*applied);
        out.put_u64_le(*oldest);
    }
    out.put_u64_le(s.window.len() as u64);
    for (v, rec) in &s.window {
        out.put_u64_le(*v);
        put_bytes(&mut out, rec);
    }
    if format >= 2 {
        out.put_u64_le(s.pending.assemblies().count() as u64);
        for (tag, a) in s.pending.assemblies() {
            out.put_u64_le(tag);
            out.put_u64_le(a.newest);
            out.put_u64_le(a.pieces.len() as u64);
            for p in &a.pieces {
                put_bytes(&mut out, p);
            }
        }
    }
    if format >= 3 {
        out.put_u64_le(s.chunked.len() as u64);
        for a in &s.chunked {
            out.put_u64_le(a.tag);
            out.put_u64_le(a.newest);
            put_bytes(&mut out, &a.header);
            out.put_u64_le(a.parts.len() as u64);
            for p in &a.parts {
                put_bytes(&mut out, p);
            }
        }
    }
    let crc = crc32fast::hash(&out);
    out.put_u32_le(crc);
    Ok(out)
}

fn bad(reason: String) -> CertifierError {
    CertifierError::RaftStorage {
        what: "snapshot".into(),
        reason,
    }
}

/// A bounds-checked reader over the snapshot's fields.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn need(&self, n: usize) -> Result<(), CertifierError> {
        if self.0.remaining() < n {
            return Err(bad("truncated".into()));
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, CertifierError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u32(&mut self) -> Result<u32, CertifierError> {
        self.need(4)?;
        Ok(self.0.get_u32_le())
    }
    fn u64(&mut self) -> Result<u64, CertifierError> {
        self.need(8)?;
        Ok(self.0.get_u64_le())
    }
    fn bytes(&mut self) -> Result<Bytes, CertifierError> {
        let n = self.u32()? as usize;
        self.need(n)?;
        let b = Bytes::copy_from_slice(&self.0[..n]);
        self.0.advance(n);
        Ok(b)
    }
    /// A count of items of at least `min_len` bytes each, checked against
    /// what is left (a damaged count must not allocate wildly).
    fn count(&mut self, min_len: usize) -> Result<usize, CertifierError> {
        let n = self.u64()?;
        if n > (self.0.remaining() / min_len) as u64 {
            return Err(bad(format!("count {n} exceeds the data")));
        }
        Ok(n as usize)
    }
}

/// Decodes and checks a snapshot.
pub fn decode(buf: &[u8]) -> Result<SnapshotState, CertifierError> {
    if buf.len() < 16 || &buf[..8] != MAGIC {
        return Err(bad(
            "not a certifier snapshot (bad magic or too short)".into()
        ));
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(bad("checksum mismatch".into()));
    }
    let mut f = Fields(&body[8..]);
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
    let mut chunked = Vec::new();
    if version >= 3 {
        let n = f.count(28)?;
        for _ in 0..n {
            let (tag, newest, header) = (f.u64()?, f.u64()?, f.bytes()?);
            let m = f.count(4)?;
            let mut parts = Vec::with_capacity(m);
            for _ in 0..m {
                parts.push(f.bytes()?);
            }
            chunked.push(SnapshotAssembly {
                tag,
                newest,
                header,
                parts,
            });
        }
    }
    if !f.0.is_empty() {
        return Err(bad(format!("{} trailing bytes", f.0.len())));
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
        chunked,
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
            chunked: vec![SnapshotAssembly {
                tag: 5,
                newest: 41,
                header: Bytes::from_static(b"header"),
                parts: vec![Bytes::from_static(b"items"), Bytes::new()],
            }],
        }
    }

    #[test]
    fn round_trip_and_every_flip_detected() {
        let s = sample();
        let b = encode(&s).unwrap();
        assert_eq!(decode(&b).unwrap(), s);
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x04;
            assert!(decode(&d).is_err(), "flip at {i} accepted");
        }
        for cut in [0, 8, 15, b.len() / 2, b.len() - 1] {
            assert!(decode(&b[..cut]).is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn a_snapshot_has_the_oldest_format_that_holds_what_is_pending() {
        let mut s = sample();
        assert_eq!(encode(&s).unwrap()[8..12], 3u32.to_le_bytes());
        s.chunked.clear();
        let v2 = encode(&s).unwrap();
        assert_eq!(v2[8..12], 2u32.to_le_bytes());
        s.pending = Pending::default();
        let v1 = encode(&s).unwrap();
        // Format 1 is format 2 without the list of parts.
        assert_eq!(v1[8..12], 1u32.to_le_bytes());
        assert_eq!(decode(&v1).unwrap(), s);
        let mut as_v2 = v1[..v1.len() - 4].to_vec();
        as_v2[8..12].copy_from_slice(&2u32.to_le_bytes());
        as_v2.extend_from_slice(&0u64.to_le_bytes());
        let crc = crc32fast::hash(&as_v2);
        as_v2.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&as_v2).unwrap(), s);
    }
}
