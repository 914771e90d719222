//! The manifest: what a checkpoint holds, its on-disk format, and how a
//! checkpoint directory is checked and written crash-safely.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The manifest's file name inside a checkpoint directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The dump's directory inside a checkpoint directory.
pub const DUMP_DIR: &str = "dump";
/// The manifest format this code writes and reads.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;
/// Name prefix of complete checkpoint directories.
pub(super) const PREFIX: &str = "checkpoint-";
/// Name prefix of checkpoint directories being written.
pub(super) const PARTIAL_PREFIX: &str = ".partial-";

/// What a checkpoint holds, written as `manifest.json` beside the dump.
///
/// On-disk format, version 1 (`format_version = 1`), a JSON object:
///
/// | field | type | meaning |
/// |---|---|---|
/// | `format_version` | integer | 1; readers refuse any other value |
/// | `replica_id` | integer | the replica the dump was taken from |
/// | `version` | integer | the replica's applied version in the dumped snapshot: the dump holds exactly the versions `<= version` |
/// | `database` | string | the dumped (replicated) database |
/// | `created_unix_ms` | integer | when the snapshot was taken, milliseconds since the Unix epoch (UTC) |
/// | `pg_major` | integer | major version of the server that was dumped |
/// | `dump_seconds` | number | how long `pg_dump` ran |
/// | `files` | array | every file of `dump/`: `path` (relative to `dump/`, `/`-separated), `bytes` (size), `crc32` (CRC-32/ISO-HDLC of the contents, as crc32fast computes it) |
///
/// Later format versions may add fields; a reader of version 1 ignores
/// fields it does not know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub replica_id: u32,
    pub version: u64,
    pub database: String,
    pub created_unix_ms: u64,
    pub pg_major: u32,
    pub dump_seconds: f64,
    pub files: Vec<ManifestFile>,
}

/// One file of a checkpoint's dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub path: String,
    pub bytes: u64,
    pub crc32: u32,
}

impl Manifest {
    /// Total size of the dump in bytes.
    pub fn dump_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// A verified checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The checkpoint directory.
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Checkpoint {
    /// The dump directory (what `pg_restore` reads).
    pub fn dump_dir(&self) -> PathBuf {
        self.dir.join(DUMP_DIR)
    }
}

/// Reads and checks the checkpoint in `dir`: the manifest must parse and
/// have the known format version, and every file it lists must exist with
/// its recorded size and CRC-32 (and the dump must hold no other file).
/// The error says what is wrong.
pub fn verify(dir: &Path) -> Result<Checkpoint> {
    let bad = |reason: String| Error::CheckpointInvalid {
        path: dir.to_path_buf(),
        reason,
    };
    let path = dir.join(MANIFEST_FILE);
    let bytes =
        std::fs::read(&path).map_err(|e| bad(format!("cannot read {MANIFEST_FILE}: {e}")))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("{MANIFEST_FILE} is not a valid manifest: {e}")))?;
    if manifest.format_version != MANIFEST_FORMAT_VERSION {
        return Err(bad(format!(
            "manifest format version {} is not supported (this build reads {MANIFEST_FORMAT_VERSION})",
            manifest.format_version
        )));
    }
    if manifest.files.is_empty() {
        return Err(bad("the manifest lists no dump files".into()));
    }
    let dump = dir.join(DUMP_DIR);
    let actual = checksum_tree(&dump).map_err(|e| bad(format!("reading the dump: {e}")))?;
    for f in &manifest.files {
        let Some(a) = actual.iter().find(|a| a.path == f.path) else {
            return Err(bad(format!("dump file {} is missing", f.path)));
        };
        if a.bytes != f.bytes {
            return Err(bad(format!(
                "dump file {} has {} bytes, the manifest says {}",
                f.path, a.bytes, f.bytes
            )));
        }
        if a.crc32 != f.crc32 {
            return Err(bad(format!(
                "dump file {} has CRC-32 {:08x}, the manifest says {:08x}",
                f.path, a.crc32, f.crc32
            )));
        }
    }
    if let Some(extra) = actual
        .iter()
        .find(|a| !manifest.files.iter().any(|f| f.path == a.path))
    {
        return Err(bad(format!(
            "dump file {} is not in the manifest",
            extra.path
        )));
    }
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        manifest,
    })
}

pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Size and CRC-32 of every regular file under `root`, sorted by path.
pub(super) fn checksum_tree(root: &Path) -> Result<Vec<ManifestFile>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(Error::io(format!("listing {}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(Error::io(format!("listing {}", dir.display())))?;
            let path = entry.path();
            let ty = entry
                .file_type()
                .map_err(Error::io(format!("reading {}", path.display())))?;
            if ty.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let (bytes, crc32) = checksum_file(&path)?;
            out.push(ManifestFile {
                path: rel,
                bytes,
                crc32,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn checksum_file(path: &Path) -> Result<(u64, u32)> {
    let mut f =
        std::fs::File::open(path).map_err(Error::io(format!("opening {}", path.display())))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, h.finalize()))
}

pub(super) use crate::ops::sync_dir;
pub(super) use crate::ops::write_atomically;
