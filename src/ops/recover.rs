//! Recovery of a replica (ARCHITECTURE.md, "Recovery").
//!
//! - **Disk intact** (PostgreSQL or the proxy restarted, the data directory
//!   is trusted): nothing to do here. The proxy reads the applied version
//!   from the database and its applier subscribes from the next version,
//!   applying whatever was certified meanwhile, including the replica's own
//!   transactions that were certified but not committed when it crashed
//!   ("crash mid-commit").
//! - **Disk lost or untrusted** (a host crash with `fsync = off`, a new
//!   replica): [`rebuild`] gives the replica a new data directory (harness
//!   `initdb`) and [`restore`]s the newest usable checkpoint into it with
//!   `pg_restore -j`: the checkpoint is verified against its manifest first
//!   and a damaged one is refused (the next older one is tried), as is one
//!   older than the certifier's log (its versions were purged). The dump
//!   carries another replica's place, so the replica is configured again
//!   (`configure_replica`: id and sequence striping). Its proxy, started
//!   afterwards, replays the log from the checkpoint's version + 1 and the
//!   replica rejoins.
//!
//! `tashkent recover` runs [`recover_offline`]: the replica's server must
//! not be running; it is rebuilt, restored and stopped again, ready for its
//! proxy (or `tashkent up`) to start.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::ops::certifier::CertifierTarget;
use crate::ops::checkpoint::{self, Checkpoint, Source};
use crate::ops::pg::{connect, Durability, PgConfig, PgServer};
use crate::proxy::capture;

/// Drops every generated capture function (`tashkent.capture_<oid>_*`)
/// and, by CASCADE, the triggers that call them; DDL capture stays off
/// meanwhile (`tashkent.internal`).
const DROP_RESTORED_CAPTURE_SQL: &str = r"BEGIN;
SET LOCAL tashkent.internal = 'on';
SET LOCAL client_min_messages = warning;
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure AS sig FROM pg_proc p
        WHERE p.pronamespace = 'tashkent'::regnamespace
          AND p.proname LIKE 'capture\_%'
    LOOP
        EXECUTE format('DROP FUNCTION %s CASCADE', f.sig);
    END LOOP;
END
$$;
COMMIT";

/// A dump's table of contents (`pg_restore -l`) without the capture
/// library's functions and triggers.
fn restore_list(toc: &str) -> String {
    const FUNCTIONS: [&str; 7] = [
        "capture_row(",
        "capture_truncate(",
        "ws_append_ddl(",
        "ws_read(",
        "ws_size(",
        "capture_version(",
        "in_extension_script(",
    ];
    toc.lines()
        .filter(|line| {
            let library_function = line
                .split_once(" FUNCTION tashkent ")
                .is_some_and(|(_, f)| FUNCTIONS.iter().any(|n| f.starts_with(n)));
            let tokens: Vec<&str> = line.split_whitespace().collect();
            let capture_trigger = line.contains(" TRIGGER ")
                && tokens.len() >= 2
                && matches!(
                    tokens[tokens.len() - 2],
                    "tashkent_capture" | "tashkent_capture_t"
                );
            !library_function && !capture_trigger
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

/// What [`restore`] did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub checkpoint: Checkpoint,
    /// Newer checkpoints refused, with the reason.
    pub refused: Vec<(PathBuf, String)>,
    /// The replica's applied version after the restore (the checkpoint's).
    pub version: u64,
    /// Time spent in `pg_restore` and reconfiguring.
    pub seconds: f64,
}

/// Restores the newest usable checkpoint of `dir` into `target`'s database,
/// which must be freshly initialised (no `tashkent` schema), and configures
/// the result as replica `target.replica_id` of `replicas`. `first_version`
/// is the first version the certifier's log still holds (1 when nothing
/// was purged): an older checkpoint cannot be replayed to the present.
pub async fn restore(
    target: &Source,
    replicas: u32,
    dir: &Path,
    first_version: u64,
    jobs: u32,
) -> Result<Restored> {
    let choice = checkpoint::newest_usable(dir, first_version)?;
    let started = Instant::now();
    let version = restore_checkpoint(target, replicas, &choice.checkpoint, jobs).await?;
    Ok(Restored {
        checkpoint: choice.checkpoint,
        refused: choice.refused,
        version,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Restores one checkpoint (verified again first) into `target`'s fresh
/// database and configures the replica; returns its applied version.
pub async fn restore_checkpoint(
    target: &Source,
    replicas: u32,
    ckpt: &Checkpoint,
    jobs: u32,
) -> Result<u64> {
    // The files may have changed since they were listed.
    let ckpt = checkpoint::verify(&ckpt.dir)?;
    let client = connect(&target.conninfo()).await?;
    let existing: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'tashkent')",
            &[],
        )
        .await
        .map_err(Error::sql("inspecting the target database"))?
        .get(0);
    if existing {
        return Err(Error::Recovery(format!(
            "database {} on {}:{} already holds a tashkent replica; a checkpoint is only \
             restored into a new data directory",
            target.database, target.host, target.port
        )));
    }
    let pg_restore = target.binaries.tool("pg_restore")?;
    // The capture library's functions cannot be created before the
    // library is in the new data directory (PostgreSQL loads a C function's
    // library when it is created), and the dump names the build that took
    // it: leave them and their triggers out; the install below makes them.
    let toc = tokio::process::Command::new(&pg_restore)
        .arg("-l")
        .arg(ckpt.dump_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(Error::io(format!("running {} -l", pg_restore.display())))?;
    if !toc.status.success() {
        return Err(Error::ToolFailed {
            tool: "pg_restore -l".into(),
            status: toc.status.to_string(),
            output: String::from_utf8_lossy(&toc.stderr).into_owned(),
        });
    }
    let list_dir = tempfile::tempdir().map_err(Error::io("creating a temporary directory"))?;
    let list = list_dir.path().join("restore.list");
    std::fs::write(&list, restore_list(&String::from_utf8_lossy(&toc.stdout)))
        .map_err(Error::io(format!("writing {}", list.display())))?;
    let out = tokio::process::Command::new(&pg_restore)
        .args([
            "-h",
            &target.host,
            "-p",
            &target.port.to_string(),
            "-U",
            &target.user,
        ])
        .args(["-d", &target.database, "--exit-on-error"])
        .args(["-j", &jobs.max(1).to_string()])
        .arg("-L")
        .arg(&list)
        .arg(ckpt.dump_dir())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(Error::io(format!("running {}", pg_restore.display())))?;
    if !out.status.success() {
        return Err(Error::ToolFailed {
            tool: "pg_restore".into(),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let applied = capture::applied_version(&client).await?;
    if applied != ckpt.manifest.version {
        return Err(Error::CheckpointInvalid {
            path: ckpt.dir.clone(),
            reason: format!(
                "the restored database is at version {applied}, the manifest says {}",
                ckpt.manifest.version
            ),
        });
    }
    // A checkpoint from before the capture library holds generated capture
    // functions named after their table's oid, which the restore changed:
    // drop them (and with them their triggers); the install makes the
    // triggers anew.
    client
        .batch_execute(DROP_RESTORED_CAPTURE_SQL)
        .await
        .map_err(Error::sql("dropping the restored capture triggers"))?;
    capture::install(&client, capture::DEFAULT_MAX_WRITESET_BYTES).await?;
    capture::configure_replica(&client, target.replica_id, replicas).await?;
    // The sequences are the checkpoint's (maybe another replica's): move
    // them past every value this replica handed out before the checkpoint.
    client
        .batch_execute(&capture::advance_sequences_sql(None))
        .await
        .map_err(Error::sql("advancing the restored sequences"))?;
    // Fresh statistics for the replay that follows.
    client
        .batch_execute("ANALYZE")
        .await
        .map_err(Error::sql("analysing the restored database"))?;
    tracing::info!(
        version = applied,
        checkpoint = %ckpt.dir.display(),
        replica = target.replica_id,
        "checkpoint restored"
    );
    Ok(applied)
}

/// Gives the harness server in `base` a new, empty data directory (the old
/// one is deleted) and starts it. Refuses while a server runs on it.
pub fn rebuild(
    base: &Path,
    port: Option<u16>,
    durability: Durability,
    settings: Vec<(String, String)>,
) -> Result<PgServer> {
    let data = base.join("data");
    if let Some(pid) = running_postmaster(&data) {
        return Err(Error::Recovery(format!(
            "PostgreSQL (pid {pid}) is still running on {}; stop it first",
            data.display()
        )));
    }
    if data.exists() {
        tracing::warn!(data = %data.display(), "deleting the untrusted data directory");
        std::fs::remove_dir_all(&data)
            .map_err(Error::io(format!("removing {}", data.display())))?;
    }
    PgServer::start(PgConfig {
        base_dir: Some(base.to_path_buf()),
        port,
        durability,
        settings,
        ..PgConfig::default()
    })
}

/// The pid in `data/postmaster.pid` if that process is alive.
pub(crate) fn running_postmaster(data: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// What `tashkent recover` needs.
#[derive(Debug, Clone)]
pub struct OfflineRecovery {
    /// The replica's harness base directory (`<state>/replica-<i>` for a
    /// local cluster).
    pub base_dir: PathBuf,
    pub checkpoint_dir: PathBuf,
    pub replica_id: u32,
    pub replicas: u32,
    pub database: String,
    /// The certifier, to refuse checkpoints older than its log (optional).
    pub certifier: Option<CertifierTarget>,
    pub jobs: u32,
}

/// Rebuilds the replica in `r.base_dir` from the newest usable checkpoint
/// and stops its server again: its proxy replays the log when it starts.
pub async fn recover_offline(r: &OfflineRecovery) -> Result<Restored> {
    let first_version = match &r.certifier {
        Some(target) => {
            let c = target.connect().await?;
            c.status()
                .await
                .map_err(|source| Error::Certifier {
                    context: "reading the certifier's status".into(),
                    source,
                })?
                .first_version
        }
        None => 1,
    };
    // Choose before destroying anything: no usable checkpoint, no rebuild.
    let choice = checkpoint::newest_usable(&r.checkpoint_dir, first_version)?;
    let base = r.base_dir.clone();
    let mut server =
        tokio::task::spawn_blocking(move || rebuild(&base, None, Durability::Off, Vec::new()))
            .await
            .map_err(|e| Error::Recovery(format!("rebuilding the data directory: {e}")))??;
    let target = Source {
        host: server.host().to_string(),
        port: server.port(),
        user: server.user().to_string(),
        database: r.database.clone(),
        replica_id: r.replica_id,
        binaries: server.binaries().clone(),
    };
    let started = Instant::now();
    let restored = restore_checkpoint(&target, r.replicas, &choice.checkpoint, r.jobs).await;
    let seconds = started.elapsed().as_secs_f64();
    let stopped = tokio::task::spawn_blocking(move || {
        let r = server.stop();
        // Restored with fsync off: flush before a server with fsync on
        // (Base mode) trusts these files.
        nix::unistd::sync();
        r
    })
    .await
    .map_err(|e| Error::Recovery(format!("stopping the server: {e}")))?;
    let version = restored?;
    stopped?;
    Ok(Restored {
        checkpoint: choice.checkpoint,
        refused: choice.refused,
        version,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::restore_list;

    #[test]
    fn restore_list_leaves_out_the_capture_library() {
        let toc = "\
;
; Archive created at 2026-11-30 11:00:00 UTC
215; 1255 16387 FUNCTION tashkent capture_row() postgres
216; 1255 16388 FUNCTION tashkent capture_version() postgres
217; 1255 16389 FUNCTION tashkent configure_replica(integer, integer) postgres
218; 1255 16390 FUNCTION tashkent ws_append_ddl(text) postgres
220; 1255 16392 FUNCTION tashkent in_extension_script() postgres
219; 1255 16391 FUNCTION public ws_read() postgres
3210; 2620 16420 TRIGGER public parent tashkent_capture postgres
3211; 2620 16421 TRIGGER public \"my table\" tashkent_capture_t postgres
3212; 2620 16422 TRIGGER public parent audit postgres
3300; 0 16400 TABLE DATA public parent postgres
";
        let kept = restore_list(toc);
        assert!(kept.contains("configure_replica"));
        assert!(
            kept.contains("FUNCTION public ws_read()"),
            "other schemas are kept"
        );
        assert!(kept.contains("TRIGGER public parent audit"));
        assert!(kept.contains("TABLE DATA public parent"));
        for gone in [
            "capture_row",
            "capture_version",
            "ws_append_ddl",
            "in_extension_script",
            "tashkent_capture",
        ] {
            assert!(!kept.contains(gone), "{gone} kept:\n{kept}");
        }
    }
}
