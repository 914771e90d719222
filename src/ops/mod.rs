//! Operating tashkent: everything around the proxy that starts, stops,
//! checks and rebuilds a cluster.
//!
//! - [`pg`]: the PostgreSQL harness (binaries, initdb, start/stop/kill);
//! - [`config`]: the cluster file, every section read once;
//! - [`certifier`]: how tools reach a certifier (address, TLS);
//! - [`state_dir`]: the layout of a local cluster's state directory;
//! - [`cluster`]: a whole local cluster (`tashkent up`, the bench, tests),
//!   its parts in this process or as child processes ([`process`]);
//! - [`checkpoint`], [`recover`]: consistent dumps and rebuilding a replica;
//! - [`tls`]: the self-signed certificate of a local cluster's proxies
//!   (and of its certifier, with `[cluster] certifier_tls`);
//! - [`verify`]: are the replicas identical?
//! - [`status`]: one look at a running cluster (`tashkent status`);
//! - [`targets`]: each replica of a cluster, for tools that talk to each;
//! - [`roles`]: roles created alike on every replica (`tashkent admin`).

pub mod certifier;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod pg;
pub mod process;
pub mod recover;
pub mod roles;
pub mod state_dir;
pub mod status;
pub mod targets;
pub mod tls;
pub mod verify;

use std::path::Path;

use crate::error::{Error, Result};

/// Makes what was created, renamed or removed in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(format!("syncing directory {}", dir.display())))
}

/// Writes `path` so that it is either absent or complete after a crash:
/// a temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
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
