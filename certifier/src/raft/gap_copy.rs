//! One version a node copies from a peer's Subscribe frames to fill a
//! snapshot's gap (`gap.rs`), in bounded memory.
//!
//! The frames of a version are slices of its writeset's protobuf encoding.
//! A version up to [`HOLD_MAX`] is held and logged whole, as its record.
//! Past that (a large transaction, spooled on the peer) the copy parses
//! the encoding field by field as the frames arrive: items and statements
//! (fields 5 and 6) go to the node's spool in records of about
//! [`PART_BYTES`], in the order they come (execution order, as the peer's
//! spool holds them), and the other fields make the header. Its record in
//! the versions log is then a spooled one, the header and a `SpoolRef`,
//! as a chunked commit's is, so Subscribe streams the same bytes from
//! this node as from the peer (the same writeset, fields in another
//! order, if the peer's record was not spooled: an earlier build's). Only
//! one field (one item) is ever held whole.

use bytes::{Bytes, BytesMut};
use prost::Message;

use crate::error::CertifierError;
use crate::proto::{SpoolRef, Writeset};
use crate::server::spool::Spool;
use crate::{record, Version};

/// Largest version held whole while copied. Above every record that is
/// not spooled on its node (at most one raft entry, 1 MiB, and its
/// framing), so those are logged as they were.
pub(crate) const HOLD_MAX: usize = 2 << 20;
/// Spool records of at most this size (a larger item gets its own).
const PART_BYTES: usize = 1 << 20;
/// Largest field copied, key and length included: the largest spool
/// record.
const FIELD_MAX: usize = super::chunks::SPOOL_PART_MAX;

/// Protobuf field numbers of a writeset's items and statements.
const ITEMS: u64 = 5;
const DDL: u64 = 6;

fn bad(version: Version, reason: String) -> CertifierError {
    CertifierError::RaftStorage {
        what: format!("copying version {version} from a peer"),
        reason,
    }
}

/// A version being copied, frame by frame.
pub(crate) struct VersionCopy<'a> {
    spool: &'a Spool,
    version: Version,
    /// The bytes not parsed yet: all of them while the version is held
    /// whole, else the start of a field whose rest has not arrived.
    held: BytesMut,
    spooling: Option<Spooling>,
}

/// A large version's copy into the spool.
struct Spooling {
    /// Every field but items and statements, encoded.
    header: BytesMut,
    /// Items and statements not spooled yet.
    part: BytesMut,
    /// The records spooled (`first` 0: none yet).
    spooled: SpoolRef,
    /// Whether its record was handed to the caller to log.
    logged: bool,
}

/// What a copied version becomes: its versions-log record (stamped), and
/// for a spooled one, what the spool must keep once it is logged.
pub(crate) struct Copied {
    pub record: Bytes,
    pub spooled: Option<SpoolRef>,
}

impl<'a> VersionCopy<'a> {
    pub(crate) fn new(spool: &'a Spool, version: Version) -> VersionCopy<'a> {
        VersionCopy {
            spool,
            version,
            held: BytesMut::new(),
            spooling: None,
        }
    }

    /// The next slice of the version's encoding.
    pub(crate) fn push(&mut self, data: &[u8]) -> Result<(), CertifierError> {
        self.held.extend_from_slice(data);
        if self.spooling.is_none() && self.held.len() > HOLD_MAX {
            self.spooling = Some(Spooling {
                header: BytesMut::new(),
                part: BytesMut::new(),
                spooled: SpoolRef {
                    tag: rand::random(),
                    ..SpoolRef::default()
                },
                logged: false,
            });
        }
        self.take_fields()
    }

    /// Moves the whole fields held into the header or the spool.
    fn take_fields(&mut self) -> Result<(), CertifierError> {
        let Some(s) = &mut self.spooling else {
            return Ok(());
        };
        while let Some((number, len)) = next_field(&self.held).map_err(|e| bad(self.version, e))? {
            let field = self.held.split_to(len);
            if number == ITEMS || number == DDL {
                if !s.part.is_empty() && s.part.len() + field.len() > PART_BYTES {
                    s.spool_part(self.spool)?;
                }
                s.part.extend_from_slice(&field);
                if s.part.len() >= PART_BYTES {
                    s.spool_part(self.spool)?;
                }
            } else {
                s.header.extend_from_slice(&field);
            }
        }
        Ok(())
    }

    /// The version's last frame came: its record, its spooled rows durable.
    pub(crate) async fn finish(mut self) -> Result<Copied, CertifierError> {
        let version = self.version;
        let Some(s) = &mut self.spooling else {
            let mut rec = record::header(version, self.held.len());
            rec.extend_from_slice(&self.held);
            return Ok(Copied {
                record: rec.freeze(),
                spooled: None,
            });
        };
        if !self.held.is_empty() {
            return Err(bad(
                version,
                format!(
                    "its encoding ends inside a field ({} bytes)",
                    self.held.len()
                ),
            ));
        }
        if !s.part.is_empty() {
            s.spool_part(self.spool)?;
        }
        if s.spooled.first == 0 {
            return Err(bad(version, "a large version without items".into()));
        }
        let mut header = Writeset::decode(s.header.clone().freeze())
            .map_err(|e| bad(version, format!("undecodable header: {e}")))?;
        header.spool = Some(s.spooled);
        self.spool.wal().wait_durable(s.spooled.last).await?;
        // The caller logs it, then tells the spool (`logged`); until then
        // the spool keeps the records as a call's in progress.
        s.logged = true;
        let mut rec = record::encode_spooled(&header);
        record::set_version(&mut rec, version);
        Ok(Copied {
            record: rec.freeze(),
            spooled: Some(s.spooled),
        })
    }

    /// The copied version was logged as `version` (the spool keeps its
    /// records while the version is retained), or could not be (`None`).
    pub(crate) fn logged(spool: &Spool, version: Option<Version>, spooled: SpoolRef) {
        spool.finished(spooled.tag, version.map(|v| (v, spooled.first)));
    }
}

impl Drop for VersionCopy<'_> {
    fn drop(&mut self) {
        // A copy that ended before its record: nothing references its
        // records, which the next purge may take.
        if let Some(s) = self.spooling.as_ref().filter(|s| !s.logged) {
            self.spool.finished(s.spooled.tag, None);
        }
    }
}

impl Spooling {
    fn spool_part(&mut self, spool: &Spool) -> Result<(), CertifierError> {
        // Waited for in `finish`, before the version is logged.
        let _written_later = spool.append(&mut self.spooled, &self.part)?;
        self.part.clear();
        Ok(())
    }
}

/// A varint at the start of `buf`: its value and length, `None` if `buf`
/// ends inside it.
fn varint(buf: &[u8]) -> Result<Option<(u64, usize)>, String> {
    let mut v = 0u64;
    for (i, b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((v, i + 1)));
        }
    }
    if buf.len() >= 10 {
        return Err("a varint over 10 bytes".into());
    }
    Ok(None)
}

/// The field at the start of `buf`: its number and encoded length (key
/// included), `None` if `buf` ends inside it.
fn next_field(buf: &[u8]) -> Result<Option<(u64, usize)>, String> {
    let Some((key, k)) = varint(buf)? else {
        return Ok(None);
    };
    let body = match key & 7 {
        0 => match varint(&buf[k..])? {
            Some((_, n)) => n,
            None => return Ok(None),
        },
        1 => 8,
        5 => 4,
        2 => match varint(&buf[k..])? {
            // No larger field is spooled (nor sent between nodes).
            Some((len, n)) if len > (FIELD_MAX - k - n) as u64 => {
                return Err(format!("a field of {len} bytes"));
            }
            Some((len, n)) => n + len as usize,
            None => return Ok(None),
        },
        t => return Err(format!("wire type {t} in a writeset")),
    };
    let len = k + body;
    Ok((buf.len() >= len).then_some((key >> 3, len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writeset::{ddl, item};
    use crate::Op;

    fn large(rows: usize, row_bytes: usize) -> Writeset {
        Writeset {
            format_version: crate::WRITESET_FORMAT_VERSION,
            txn_id: Bytes::from_static(b"copied"),
            origin: 3,
            snapshot: 7,
            items: (0..rows)
                .map(|i| crate::Item {
                    row: Bytes::from(vec![i as u8; row_bytes]),
                    ..item("t", Op::Insert, format!("k{i}").into_bytes())
                })
                .collect(),
            ddl: vec![ddl("-- a statement", &["t"], 2)],
            ..Writeset::default()
        }
    }

    /// Copies `encoding` in frames of `frame` bytes; the record, and the
    /// encoding read back (from the spool for a spooled one).
    fn copy(spool: &Spool, encoding: &[u8], frame: usize) -> (Copied, Vec<u8>) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut c = VersionCopy::new(spool, 9);
        for f in encoding.chunks(frame) {
            c.push(f).unwrap();
        }
        let copied = rt.block_on(c.finish()).unwrap();
        let body = record::body(9, &copied.record).unwrap();
        let Some(r) = copied.spooled else {
            return (copied, body.to_vec());
        };
        let header = Writeset::decode(body).unwrap();
        assert_eq!(header.spool, Some(r));
        let mut back = Writeset {
            spool: None,
            ..header
        }
        .encode_to_vec();
        for chunk in spool.chunks(&r).unwrap() {
            back.extend_from_slice(&chunk.unwrap());
        }
        (copied, back)
    }

    #[test]
    fn a_large_version_is_spooled_as_it_comes_and_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), tashkent_wal::WalOptions::default()).unwrap();
        let ws = large(40, 100 << 10);
        let encoding = ws.encode_to_vec();
        // Frames cut anywhere: inside keys, lengths and rows.
        for frame in [1 << 20, 65_537, 777] {
            let (copied, back) = copy(&spool, &encoding, frame);
            let r = copied.spooled.expect("spooled");
            assert!(r.last > r.first, "{frame}: one record of {} bytes", r.bytes);
            assert_eq!(back, encoding, "{frame}: the same encoding");
            assert_eq!(Writeset::decode(&back[..]).unwrap(), ws);
        }
    }

    #[test]
    fn a_small_version_is_logged_whole() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), tashkent_wal::WalOptions::default()).unwrap();
        let encoding = large(3, 1000).encode_to_vec();
        let (copied, back) = copy(&spool, &encoding, 100);
        assert!(copied.spooled.is_none());
        assert_eq!(back, encoding);
        assert_eq!(spool.wal().last_lsn(), 0, "nothing spooled");
    }

    #[test]
    fn an_encoding_cut_inside_a_field_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), tashkent_wal::WalOptions::default()).unwrap();
        let encoding = large(40, 100 << 10).encode_to_vec();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut c = VersionCopy::new(&spool, 9);
        c.push(&encoding[..encoding.len() - 10]).unwrap();
        let e = rt.block_on(c.finish()).err().expect("refused");
        assert!(e.to_string().contains("inside a field"), "{e}");
        assert!(next_field(&[0x0b]).is_err(), "wire type 3");
        assert!(next_field(&[0xff; 11]).is_err(), "an endless varint");
        assert_eq!(next_field(&[0x2a, 0x80]).unwrap(), None, "a length cut");
        let mut huge = vec![0x2a];
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(next_field(&huge).is_err(), "a length past any record");
    }
}
