//! Checkpoints: consistent dumps of a replica at a known version, taken
//! while it keeps serving (DESIGN.md, "Recovery").
//!
//! Taking one ([`take`]): a `REPEATABLE READ READ ONLY` transaction on the
//! replica reads `max(version)` of `tashkent.applied` and exports its
//! snapshot in the same statement, so the version is exactly the version of
//! the exported snapshot (every commit inserts its version in the same
//! transaction, I2). `pg_dump --snapshot=<id> -Fd -j <jobs>` then dumps that
//! snapshot while the transaction stays open. The dump goes into a
//! directory named `.partial-…`; once complete, its files are checksummed,
//! the [`Manifest`] is written beside the dump atomically (temporary file,
//! fsync, rename, fsync of the directory), and the directory is renamed to
//! its final name (and the parent directory synced). A checkpoint is valid
//! only if its manifest reads back and every file it lists has the recorded
//! size and CRC-32 ([`verify`]); anything else is refused with the reason.
//!
//! Layout of a checkpoint directory:
//!
//! ```text
//! <dir>/checkpoint-<version, 20 digits>-r<replica>-<unix ms>/
//!     manifest.json     the Manifest (format version 1)
//!     dump/             pg_dump's directory format: toc.dat, <n>.dat.gz
//! <dir>/.partial-…/     a checkpoint being written (or abandoned by a crash)
//! ```
//!
//! [`retire`] keeps the newest `keep` valid checkpoints and deletes older
//! ones, damaged ones older than the newest kept, and abandoned partial
//! directories. After retiring, the version of the *oldest* kept checkpoint
//! is reported to the certifier (ReportCheckpoint), which may then purge its
//! log below it: every kept checkpoint stays usable for recovery.
//! [`CheckpointConfig`] (TOML section `[checkpoint]`) sets the directory,
//! how many to keep and the period of automatic checkpoints.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ops::pg::{connect, PgBinaries};

/// The manifest's file name inside a checkpoint directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The dump's directory inside a checkpoint directory.
pub const DUMP_DIR: &str = "dump";
/// The manifest format this code writes and reads.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;
/// Name prefix of complete checkpoint directories.
const PREFIX: &str = "checkpoint-";
/// Name prefix of checkpoint directories being written.
const PARTIAL_PREFIX: &str = ".partial-";

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

/// Checkpoint settings: TOML section `[checkpoint]` of the cluster file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Where checkpoints are kept (relative: under the cluster's state
    /// directory).
    pub dir: PathBuf,
    /// How many valid checkpoints to keep (at least 1).
    pub keep: usize,
    /// Seconds between automatic checkpoints (0: only on demand).
    pub interval_secs: u64,
    /// The replica automatic checkpoints are taken from (1-based).
    pub replica: u32,
    /// Parallel `pg_dump` / `pg_restore` jobs.
    pub jobs: u32,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            dir: PathBuf::from("checkpoints"),
            keep: 2,
            interval_secs: 0,
            replica: 1,
            jobs: 2,
        }
    }
}

impl CheckpointConfig {
    pub fn validate(&self) -> Result<()> {
        if self.keep == 0 {
            return Err(Error::Config("checkpoint.keep must be at least 1".into()));
        }
        if self.jobs == 0 {
            return Err(Error::Config("checkpoint.jobs must be at least 1".into()));
        }
        if self.replica == 0 {
            return Err(Error::Config(
                "checkpoint.replica is 1-based and must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The replica a checkpoint is taken from.
#[derive(Debug, Clone)]
pub struct Source {
    pub host: String,
    pub port: u16,
    /// A superuser (pg_dump must read the capture machinery too).
    pub user: String,
    pub database: String,
    /// Recorded in the manifest.
    pub replica_id: u32,
    /// Where `pg_dump` / `pg_restore` come from.
    pub binaries: PgBinaries,
}

impl Source {
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user={} dbname={} application_name=tashkent-checkpoint",
            self.host, self.port, self.user, self.database
        )
    }
}

/// Takes a checkpoint of `src` into `dir` (created if needed) with `jobs`
/// parallel dump jobs; the replica keeps serving meanwhile.
pub async fn take(src: &Source, dir: &Path, jobs: u32) -> Result<Checkpoint> {
    std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    let pg_dump = src.binaries.tool("pg_dump")?;
    let pg_major = src.binaries.major_version()?;
    let client = connect(&src.conninfo()).await?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(Error::sql("starting the checkpoint transaction"))?;
    // One statement: the version and the exported snapshot are the same
    // snapshot (taken at the transaction's first statement).
    let row = client
        .query_one(
            "SELECT (SELECT max(version) FROM tashkent.applied), pg_export_snapshot()",
            &[],
        )
        .await
        .map_err(Error::sql(
            "reading the applied version and exporting the snapshot (is capture installed?)",
        ))?;
    let version: Option<i64> = row.get(0);
    let snapshot: String = row.get(1);
    let version = version
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| Error::Capture {
            reason: "tashkent.applied is empty: capture is not installed on the replica".into(),
        })?;
    let created_unix_ms = unix_ms();
    let name = format!(
        "{PREFIX}{version:020}-r{}-{created_unix_ms}",
        src.replica_id
    );
    let partial = dir.join(format!("{PARTIAL_PREFIX}{name}"));
    let target = dir.join(&name);
    std::fs::create_dir_all(&partial)
        .map_err(Error::io(format!("creating {}", partial.display())))?;
    let dump_dir = partial.join(DUMP_DIR);
    let started = Instant::now();
    let out = tokio::process::Command::new(&pg_dump)
        .args([
            "-h",
            &src.host,
            "-p",
            &src.port.to_string(),
            "-U",
            &src.user,
        ])
        .args(["-d", &src.database])
        .arg(format!("--snapshot={snapshot}"))
        .args(["-Fd", "-j", &jobs.max(1).to_string(), "-f"])
        .arg(&dump_dir)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(Error::io(format!("running {}", pg_dump.display())));
    let dump_seconds = started.elapsed().as_secs_f64();
    // The snapshot was needed until pg_dump's workers had imported it.
    let _ = client.batch_execute("COMMIT").await;
    drop(client);
    let fail = |e: Error| {
        let _ = std::fs::remove_dir_all(&partial);
        e
    };
    let out = out.map_err(fail)?;
    if !out.status.success() {
        return Err(fail(Error::ToolFailed {
            tool: "pg_dump".into(),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        }));
    }
    let manifest = (|| -> Result<Manifest> {
        let files = checksum_tree(&dump_dir)?;
        let manifest = Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            replica_id: src.replica_id,
            version,
            database: src.database.clone(),
            created_unix_ms,
            pg_major,
            dump_seconds,
            files,
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
        write_atomically(&partial.join(MANIFEST_FILE), &json)?;
        std::fs::rename(&partial, &target).map_err(Error::io(format!(
            "renaming {} to {}",
            partial.display(),
            target.display()
        )))?;
        sync_dir(dir)?;
        Ok(manifest)
    })()
    .map_err(fail)?;
    tracing::info!(
        version,
        replica = src.replica_id,
        dir = %target.display(),
        bytes = manifest.dump_bytes(),
        seconds = dump_seconds,
        "checkpoint taken"
    );
    Ok(Checkpoint {
        dir: target,
        manifest,
    })
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

/// A complete checkpoint directory, verified or not.
#[derive(Debug)]
pub struct Listed {
    pub dir: PathBuf,
    /// The version its name carries (what ordering uses).
    pub version: u64,
    pub checked: Result<Checkpoint>,
}

/// Every complete checkpoint in `dir`, newest (highest version, then
/// latest) first, each verified.
pub fn list(dir: &Path) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()))(e)),
    };
    for entry in entries {
        let entry = entry.map_err(Error::io(format!("listing {}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(version) = rest.split('-').next().and_then(|v| v.parse().ok()) else {
            continue;
        };
        let path = entry.path();
        out.push(Listed {
            checked: verify(&path),
            dir: path,
            version,
        });
    }
    out.sort_by(|a, b| b.version.cmp(&a.version).then(b.dir.cmp(&a.dir)));
    Ok(out)
}

/// What choosing a checkpoint found: the one to use and the newer ones
/// refused, with their reasons.
#[derive(Debug)]
pub struct Choice {
    pub checkpoint: Checkpoint,
    pub refused: Vec<(PathBuf, String)>,
}

/// The newest valid checkpoint in `dir` whose version is at least
/// `min_version` - 1 (it can be replayed from a log that starts at
/// `min_version`). Damaged or too old ones are skipped with a warning; if
/// none qualifies, the error lists every refusal for the operator.
pub fn newest_usable(dir: &Path, min_version: u64) -> Result<Choice> {
    let mut refused = Vec::new();
    for l in list(dir)? {
        match l.checked {
            Err(e) => {
                tracing::warn!("refusing checkpoint: {e}");
                refused.push((l.dir, e.to_string()));
            }
            Ok(c) if c.manifest.version + 1 < min_version => {
                let why = format!(
                    "checkpoint {} is at version {}, but the certifier's log starts at {min_version}: \
                     versions {}..{min_version} are purged and cannot be replayed",
                    l.dir.display(),
                    c.manifest.version,
                    c.manifest.version + 1
                );
                tracing::warn!("refusing checkpoint: {why}");
                refused.push((l.dir, why));
            }
            Ok(c) => {
                return Ok(Choice {
                    checkpoint: c,
                    refused,
                })
            }
        }
    }
    let details = if refused.is_empty() {
        "there is no checkpoint; take one from a live replica (`tashkent checkpoint`)".to_string()
    } else {
        let mut d: Vec<String> = refused.into_iter().map(|(_, why)| why).collect();
        d.push(
            "take a new checkpoint from a live replica (`tashkent checkpoint`) and recover from it"
                .into(),
        );
        d.join("; ")
    };
    Err(Error::NoCheckpoint {
        dir: dir.to_path_buf(),
        details,
    })
}

/// Keeps the newest `keep` valid checkpoints of `dir` and deletes older
/// ones and damaged ones older than the newest valid one (a damaged one
/// newer than every valid one is left for the operator to look at).
/// Returns the kept checkpoints, newest first.
pub fn retire(dir: &Path, keep: usize) -> Result<Vec<Checkpoint>> {
    let mut kept: Vec<Checkpoint> = Vec::new();
    let mut newest_valid: Option<u64> = None;
    for l in list(dir)? {
        let remove = match &l.checked {
            Ok(_) if kept.len() < keep.max(1) => false,
            Ok(_) => true,
            Err(_) => newest_valid.is_some(),
        };
        if remove {
            tracing::info!(dir = %l.dir.display(), "retiring checkpoint");
            std::fs::remove_dir_all(&l.dir)
                .map_err(Error::io(format!("removing {}", l.dir.display())))?;
        } else if let Ok(c) = l.checked {
            newest_valid.get_or_insert(c.manifest.version);
            kept.push(c);
        }
    }
    Ok(kept)
}

/// Removes partial checkpoint directories left by an interrupted
/// [`take`] (call when no checkpoint is being taken into `dir`).
pub fn remove_partial(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(PARTIAL_PREFIX)
        {
            std::fs::remove_dir_all(entry.path())
                .map_err(Error::io(format!("removing {}", entry.path().display())))?;
        }
    }
    Ok(())
}

/// Takes a checkpoint, retires old ones and, with a certifier, reports the
/// oldest kept checkpoint's version so that the log can be purged. Returns
/// the new checkpoint and the certifier's first retained version (if
/// reported).
pub async fn checkpoint_and_purge(
    src: &Source,
    cfg: &CheckpointConfig,
    dir: &Path,
    certifier: Option<&tashkent_certifier::CertifierClient>,
) -> Result<(Checkpoint, Option<u64>)> {
    let taken = take(src, dir, cfg.jobs).await?;
    let kept = retire(dir, cfg.keep)?;
    let mut first = None;
    if let (Some(cert), Some(oldest)) = (certifier, kept.last()) {
        let r = cert
            .report_checkpoint(oldest.manifest.version)
            .await
            .map_err(|source| Error::Certifier {
                context: "reporting the checkpoint to the certifier".into(),
                source,
            })?;
        first = Some(r.first_version);
        tracing::info!(
            checkpoint = oldest.manifest.version,
            purge_below = r.purge_below,
            first_version = r.first_version,
            "oldest kept checkpoint reported to the certifier"
        );
    }
    Ok((taken, first))
}

/// Automatic checkpoints every `cfg.interval_secs`; stops when dropped.
pub struct Periodic {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Periodic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts taking a checkpoint of `src` every `cfg.interval_secs` seconds
/// (the first one after one interval) into `dir`; failures are logged and
/// retried at the next tick.
pub fn periodic(
    src: Source,
    cfg: CheckpointConfig,
    dir: PathBuf,
    certifier: Option<String>,
) -> Periodic {
    let every = Duration::from_secs(cfg.interval_secs.max(1));
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let _ = remove_partial(&dir);
        loop {
            tick.tick().await;
            let cert = match &certifier {
                Some(addr) => match tashkent_certifier::CertifierClient::connect(addr).await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!("checkpoint: connecting to the certifier at {addr}: {e}");
                        None
                    }
                },
                None => None,
            };
            if let Err(e) = checkpoint_and_purge(&src, &cfg, &dir, cert.as_ref()).await {
                tracing::error!("automatic checkpoint failed: {e}");
            }
        }
    });
    Periodic { task }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Size and CRC-32 of every regular file under `root`, sorted by path.
fn checksum_tree(root: &Path) -> Result<Vec<ManifestFile>> {
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

/// Writes `path` so that it is either absent or complete after a crash:
/// a temporary file, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).map_err(Error::io(format!("creating {}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(Error::io(format!("writing {}", tmp.display())))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(Error::io(format!(
        "renaming {} to {}",
        tmp.display(),
        path.display()
    )))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(format!("syncing directory {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(dir: &Path, version: u64, name_suffix: &str) -> PathBuf {
        let cdir = dir.join(format!("{PREFIX}{version:020}-r1-{name_suffix}"));
        let dump = cdir.join(DUMP_DIR);
        std::fs::create_dir_all(&dump).unwrap();
        std::fs::write(dump.join("toc.dat"), format!("toc of {version}")).unwrap();
        std::fs::write(dump.join("3001.dat.gz"), vec![7u8; 5000]).unwrap();
        let m = Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            replica_id: 1,
            version,
            database: "postgres".into(),
            created_unix_ms: 1,
            pg_major: 15,
            dump_seconds: 0.1,
            files: checksum_tree(&dump).unwrap(),
        };
        write_atomically(
            &cdir.join(MANIFEST_FILE),
            &serde_json::to_vec_pretty(&m).unwrap(),
        )
        .unwrap();
        cdir
    }

    #[test]
    fn verify_refuses_damage_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let c = fake(tmp.path(), 10, "1");
        assert_eq!(verify(&c).unwrap().manifest.version, 10);
        assert_eq!(verify(&c).unwrap().manifest.files.len(), 2);
        // Truncated dump file.
        let f = c.join(DUMP_DIR).join("3001.dat.gz");
        std::fs::write(&f, vec![7u8; 4000]).unwrap();
        let e = verify(&c).unwrap_err().to_string();
        assert!(e.contains("3001.dat.gz has 4000 bytes"), "{e}");
        // Same size, other contents.
        std::fs::write(&f, vec![8u8; 5000]).unwrap();
        let e = verify(&c).unwrap_err().to_string();
        assert!(e.contains("CRC-32"), "{e}");
        // Garbage manifest.
        let c2 = fake(tmp.path(), 11, "1");
        std::fs::write(c2.join(MANIFEST_FILE), b"{\"format_version\": 1, ").unwrap();
        let e = verify(&c2).unwrap_err().to_string();
        assert!(e.contains("not a valid manifest"), "{e}");
        // Unknown format version.
        let c3 = fake(tmp.path(), 12, "1");
        let text = std::fs::read_to_string(c3.join(MANIFEST_FILE))
            .unwrap()
            .replace("\"format_version\": 1", "\"format_version\": 9");
        std::fs::write(c3.join(MANIFEST_FILE), text).unwrap();
        let e = verify(&c3).unwrap_err().to_string();
        assert!(e.contains("format version 9"), "{e}");
        // Missing and extra files.
        let c4 = fake(tmp.path(), 13, "1");
        std::fs::remove_file(c4.join(DUMP_DIR).join("toc.dat")).unwrap();
        assert!(verify(&c4).unwrap_err().to_string().contains("missing"));
        let c5 = fake(tmp.path(), 14, "1");
        std::fs::write(c5.join(DUMP_DIR).join("9999.dat.gz"), b"x").unwrap();
        assert!(verify(&c5)
            .unwrap_err()
            .to_string()
            .contains("not in the manifest"));
    }

    #[test]
    fn newest_usable_skips_damaged_and_too_old_ones() {
        let tmp = tempfile::tempdir().unwrap();
        fake(tmp.path(), 5, "1");
        fake(tmp.path(), 20, "1");
        let newest = fake(tmp.path(), 30, "1");
        std::fs::write(newest.join(DUMP_DIR).join("toc.dat"), b"").unwrap();
        let choice = newest_usable(tmp.path(), 1).unwrap();
        assert_eq!(choice.checkpoint.manifest.version, 20);
        assert_eq!(choice.refused.len(), 1);
        assert_eq!(choice.refused[0].0, newest);
        // A log that starts at 21 still serves the checkpoint at 20.
        assert_eq!(
            newest_usable(tmp.path(), 21)
                .unwrap()
                .checkpoint
                .manifest
                .version,
            20
        );
        // From 22 on, nothing is usable: the operator is told why.
        let e = newest_usable(tmp.path(), 22).unwrap_err().to_string();
        assert!(e.contains("purged"), "{e}");
        assert!(e.contains("tashkent checkpoint"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = newest_usable(empty.path(), 1).unwrap_err().to_string();
        assert!(e.contains("there is no checkpoint"), "{e}");
    }

    #[test]
    fn retire_keeps_the_newest_valid_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let a = fake(tmp.path(), 1, "1");
        let b = fake(tmp.path(), 2, "1");
        let broken_old = fake(tmp.path(), 3, "1");
        std::fs::remove_file(broken_old.join(MANIFEST_FILE)).unwrap();
        let c = fake(tmp.path(), 4, "1");
        let d = fake(tmp.path(), 5, "1");
        let broken_new = fake(tmp.path(), 6, "1");
        std::fs::remove_file(broken_new.join(MANIFEST_FILE)).unwrap();
        let kept = retire(tmp.path(), 2).unwrap();
        let versions: Vec<u64> = kept.iter().map(|c| c.manifest.version).collect();
        assert_eq!(versions, vec![5, 4]);
        assert!(!a.exists() && !b.exists() && !broken_old.exists());
        assert!(c.exists() && d.exists() && broken_new.exists());
    }
}
