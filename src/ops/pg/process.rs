//! Process plumbing for the harness: which account a server runs as, and
//! which processes of a server's process group are still alive.
//!
//! Every process of a server writes its stderr to that server's log file,
//! so a crash can take down the postmaster and all its backends, and
//! "nothing left running" can be checked by scanning `/proc` — without ever
//! signalling a process by name or one that is not ours.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::unistd::{Gid, Uid, User};

use crate::error::{Error, Result};

/// The account PostgreSQL processes run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// Account name, for messages.
    pub name: String,
    uid: u32,
    gid: u32,
    /// True when the caller must switch to this account (it is root).
    switch: bool,
}

impl RunAs {
    /// The current user, or — when that is root — `TASHKENT_PG_USER`
    /// (default `postgres`).
    pub fn for_current_process() -> Result<RunAs> {
        if !Uid::effective().is_root() {
            let uid = Uid::effective();
            let name = User::from_uid(uid)
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| uid.to_string());
            return Ok(RunAs {
                name,
                uid: uid.as_raw(),
                gid: Gid::effective().as_raw(),
                switch: false,
            });
        }
        let name = std::env::var("TASHKENT_PG_USER")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "postgres".to_string());
        let user = User::from_name(&name)
            .ok()
            .flatten()
            .filter(|u| !u.uid.is_root())
            .ok_or_else(|| Error::PgUserMissing { user: name.clone() })?;
        Ok(RunAs {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            switch: true,
        })
    }

    /// Makes `cmd` run as this account.
    pub fn apply(&self, cmd: &mut Command) {
        if self.switch {
            // std drops supplementary groups when switching uid as root.
            cmd.uid(self.uid).gid(self.gid);
        }
    }

    /// Gives `path` to this account, so the server may write there.
    pub fn own(&self, path: &Path) -> Result<()> {
        if self.switch {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).map_err(Error::io(
                format!("chown {} to {}", path.display(), self.name),
            ))?;
        }
        Ok(())
    }

    /// Fails unless every ancestor of `path` lets this account through.
    pub(crate) fn check_reachable(&self, path: &Path) -> Result<()> {
        if !self.switch {
            return Ok(());
        }
        for dir in path.ancestors().skip(1) {
            let Ok(meta) = dir.metadata() else { continue };
            let mode = meta.mode();
            let through = if meta.uid() == self.uid {
                mode & 0o100 != 0
            } else if meta.gid() == self.gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !through {
                return Err(Error::DirNotReachable {
                    path: path.to_path_buf(),
                    user: self.name.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Identifies the processes of one server: the file their stderr is.
///
/// Postmaster children call `setsid()` (so the process group does not find
/// them), lose their parent link when a killed postmaster's children are
/// reparented, and overwrite their environment with the process title; what
/// they all keep is the stderr they inherited — the server's own log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerIdentity {
    dev: u64,
    ino: u64,
}

impl ServerIdentity {
    /// The identity of the processes writing their stderr to `log`.
    pub fn of_log(log: &Path) -> std::io::Result<ServerIdentity> {
        let meta = std::fs::metadata(log)?;
        Ok(ServerIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// The live processes whose stderr is the file `identity` names.
///
/// Zombies have no open files and are skipped: reaping a killed
/// postmaster's orphans is not ours to do, and they hold nothing a restart
/// could trip over.
pub fn server_processes(identity: ServerIdentity) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/fd/2"))
                .map(|m| m.dev() == identity.dev && m.ino() == identity.ino)
                .unwrap_or(false)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_processes_writing_to_a_log_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        let other = dir.path().join("b.log");
        std::fs::write(&other, "").unwrap();
        let mut child = Command::new("sleep")
            .arg("30")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let identity = ServerIdentity::of_log(&log).unwrap();
        let found = server_processes(identity);
        let none = server_processes(ServerIdentity::of_log(&other).unwrap());
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, vec![child.id() as i32]);
        assert!(none.is_empty());
        assert!(server_processes(identity).is_empty());
    }
}
