//! Taking a checkpoint of a replica that keeps serving.

use std::path::Path;
use std::time::Instant;

use super::manifest::{
    checksum_tree, sync_dir, unix_ms, write_atomically, Checkpoint, Manifest, DUMP_DIR,
    MANIFEST_FILE, MANIFEST_FORMAT_VERSION, PARTIAL_PREFIX, PREFIX,
};
use crate::error::{Error, Result};
use crate::ops::pg::{connect, PgBinaries};

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
