//! Log purge: how far the WAL may be cut from below.
//!
//! Two kinds of readers need old versions of the log (ARCHITECTURE.md,
//! "Recovery"): a live replica catching up needs every version above its
//! applied version, and a replica rebuilt from a checkpoint at version `c`
//! needs every version above `c`. The checkpoint module reports the version
//! of the *oldest* checkpoint it keeps (so every kept checkpoint stays
//! usable); replicas report their applied version every half second. The
//! purge point is therefore
//!
//! ```text
//! min(checkpoint + 1, min over live replicas of (applied + 1))
//! ```
//!
//! where a replica is live if it reported within `replica_timeout`. A
//! replica that stopped reporting for longer is not waited for: when it
//! comes back and its versions are gone, Subscribe answers
//! FAILED_PRECONDITION and it is rebuilt from a checkpoint, the same path
//! as a replica that lost its disk. Within `replica_timeout` of the
//! certifier's own start nothing is purged, since replicas have not had
//! the time to report yet. No checkpoint reported: nothing is purged.
//!
//! `Wal::purge_below` deletes whole segments only, so the log's first
//! version after a purge is at most the purge point.
//!
//! The checkpoint version is kept in `checkpoint-version` in the WAL
//! directory (decimal text, replaced atomically), so that a restarted
//! certifier goes on purging without waiting for the next checkpoint. A
//! missing or unreadable file means "no checkpoint": that only delays
//! purging, it never purges too much.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::certifier::ReplicaProgress;
use crate::Version;

/// The purge point (versions below it are not needed by anyone the
/// certifier knows of); 0 or 1 means nothing may be purged.
pub fn purge_point(
    checkpoint: Version,
    replicas: &BTreeMap<u32, ReplicaProgress>,
    started: Instant,
    now: Instant,
    replica_timeout: Duration,
) -> Version {
    if checkpoint == 0 || now.saturating_duration_since(started) < replica_timeout {
        return 0;
    }
    replicas
        .values()
        .filter(|p| now.saturating_duration_since(p.reported_at) <= replica_timeout)
        .map(|p| p.applied + 1)
        .fold(checkpoint + 1, Version::min)
}

const CHECKPOINT_FILE: &str = "checkpoint-version";

/// The checkpoint version stored in the WAL directory `dir`; 0 when there
/// is none (or it is unreadable, or beyond `latest`, which is reported).
pub fn load_checkpoint(dir: &Path, latest: Version) -> Version {
    let path = dir.join(CHECKPOINT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => {
            tracing::warn!(
                "{}: {e}; no purge until the next checkpoint",
                path.display()
            );
            return 0;
        }
    };
    match text.trim().parse::<Version>() {
        Ok(v) if v <= latest => v,
        _ => {
            tracing::warn!(
                "{}: {:?} is no checkpoint version at or below {latest}; no purge until the \
                 next checkpoint",
                path.display(),
                text.trim()
            );
            0
        }
    }
}

/// Stores `version` as the checkpoint version in `dir` (write, fsync,
/// rename, fsync the directory).
pub fn store_checkpoint(dir: &Path, version: Version) -> std::io::Result<()> {
    let tmp = dir.join(format!("{CHECKPOINT_FILE}.new"));
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{version}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(CHECKPOINT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(applied: Version, reported_at: Instant) -> ReplicaProgress {
        ReplicaProgress {
            applied,
            oldest_snapshot: applied,
            reported_at,
        }
    }

    #[test]
    fn checkpoint_and_live_replicas_bound_the_purge() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        let now = t0 + Duration::from_secs(60);
        let mut r = BTreeMap::new();
        // No checkpoint: nothing.
        assert_eq!(purge_point(0, &r, t0, now, timeout), 0);
        // Checkpoint only.
        assert_eq!(purge_point(100, &r, t0, now, timeout), 101);
        // A live replica behind the checkpoint holds the log back.
        r.insert(1, progress(40, now - Duration::from_secs(1)));
        assert_eq!(purge_point(100, &r, t0, now, timeout), 41);
        // One ahead of it does not.
        r.insert(1, progress(400, now));
        assert_eq!(purge_point(100, &r, t0, now, timeout), 101);
        // A silent replica is not waited for.
        r.insert(2, progress(5, now - Duration::from_secs(11)));
        assert_eq!(purge_point(100, &r, t0, now, timeout), 101);
        // Right after the certifier started, nothing.
        assert_eq!(
            purge_point(100, &r, t0, t0 + Duration::from_secs(3), timeout),
            0
        );
    }
}
