//! The raft log's small durable state beside the WAL: the vote, the
//! committed log id and the last purged log id.
//!
//! Kept in one file, `raft-meta`, rewritten whole and atomically (written
//! to `raft-meta.tmp`, fsynced, renamed over, directory fsynced), not in WAL
//! records: the WAL's LSNs *are* the raft indexes (`entry.rs`), so nothing
//! else may take an LSN, and the vote must be readable before the log.
//! These change rarely (the vote per election, the purge pointer per
//! snapshot); `committed` changes with every commit and is only written
//! along with them (see `LogStore::save_committed`), so it may lag.
//!
//! ```text
//! offset size
//!   0     8   magic "TKRMETA\0"
//!   8     4   format version, little-endian (1)
//!  12     4   body length n, little-endian
//!  16     n   body: JSON {"vote", "committed", "purged"} (openraft's serde)
//! 16+n    4   CRC32 (crc32fast) of bytes 0..16+n
//! ```

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::types::{LogId, NodeId};
use crate::error::CertifierError;

pub const META_FILE: &str = "raft-meta";
const MAGIC: &[u8; 8] = b"TKRMETA\0";
const FORMAT_VERSION: u32 = 1;

/// What `raft-meta` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub vote: Option<openraft::Vote<NodeId>>,
    pub committed: Option<LogId>,
    /// Every entry up to this one is purged (or covered by a snapshot);
    /// the WAL may still hold some of them physically.
    pub purged: Option<LogId>,
}

fn bad(path: &Path, reason: impl Into<String>) -> CertifierError {
    CertifierError::RaftStorage {
        what: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Reads `path`; an absent file is the empty state (a new node).
pub fn load(path: &Path) -> Result<Meta, CertifierError> {
    let buf = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Meta::default()),
        Err(e) => return Err(bad(path, format!("cannot read: {e}"))),
    };
    if buf.len() < 20 || &buf[..8] != MAGIC {
        return Err(bad(path, "not a raft meta file (bad magic or too short)"));
    }
    let version = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    if version != FORMAT_VERSION {
        return Err(bad(path, format!("unsupported format version {version}")));
    }
    let n = u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]) as usize;
    if buf.len() != 16 + n + 4 {
        return Err(bad(
            path,
            format!("length {} does not match body length {n}", buf.len()),
        ));
    }
    let crc = u32::from_le_bytes([buf[16 + n], buf[17 + n], buf[18 + n], buf[19 + n]]);
    if crc32fast::hash(&buf[..16 + n]) != crc {
        return Err(bad(path, "checksum mismatch"));
    }
    serde_json::from_slice(&buf[16..16 + n]).map_err(|e| bad(path, format!("bad body: {e}")))
}

/// Writes `meta` to `path` durably and atomically.
pub fn store(path: &Path, meta: &Meta) -> Result<(), CertifierError> {
    write_atomically(path, &encode(path, meta)?)
        .map_err(|e| bad(path, format!("cannot write: {e}")))
}

/// `meta` as [`store`] writes it to `path`.
pub fn encode(path: &Path, meta: &Meta) -> Result<Vec<u8>, CertifierError> {
    let body = serde_json::to_vec(meta).map_err(|e| bad(path, format!("not encodable: {e}")))?;
    let mut buf = Vec::with_capacity(body.len() + 20);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// Replaces `path` with `data` so that a crash leaves the old or the new
/// content, never a mix: temporary file (`<path>.tmp`), fsync, rename,
/// directory fsync. The I/O error is kept as it is, so that a full disk
/// can be told apart.
pub fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp_name);
    let mut f = File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    File::open(dir).and_then(|d| d.sync_all())
}

#[cfg(test)]
mod tests {
    use super::super::entry::log_id;
    use super::*;

    #[test]
    fn absent_is_empty_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(META_FILE);
        assert_eq!(load(&path).unwrap(), Meta::default());
        let m = Meta {
            vote: Some(openraft::Vote::new_committed(4, 2)),
            committed: Some(log_id(4, 2, 17)),
            purged: Some(log_id(3, 1, 9)),
        };
        store(&path, &m).unwrap();
        assert_eq!(load(&path).unwrap(), m);
        assert!(!dir.path().join("raft-meta.tmp").exists());
    }

    #[test]
    fn damage_is_refused_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(META_FILE);
        let m = Meta {
            vote: Some(openraft::Vote::new(1, 1)),
            ..Meta::default()
        };
        store(&path, &m).unwrap();
        let good = fs::read(&path).unwrap();
        for at in [0, 8, 13, 20, good.len() - 1] {
            let mut b = good.clone();
            b[at] ^= 0x01;
            fs::write(&path, &b).unwrap();
            assert!(load(&path).is_err(), "flip at {at} accepted");
        }
        fs::write(&path, &good[..good.len() - 2]).unwrap();
        assert!(load(&path).is_err(), "truncated file accepted");
    }
}
