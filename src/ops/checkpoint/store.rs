//! The checkpoints of a directory: listing, choosing one to restore,
//! retiring old and damaged ones.

use std::path::{Path, PathBuf};

use super::manifest::{verify, Checkpoint, PARTIAL_PREFIX, PREFIX};
use crate::error::{Error, Result};

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
/// [`take`](super::take) (call when no checkpoint is being taken into `dir`).
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
