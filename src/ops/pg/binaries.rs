//! Locating the PostgreSQL server binaries.
//!
//! Search order: `PG_BIN`, then `pg_config --bindir`, then the newest
//! `/usr/lib/postgresql/<major>/bin`. An explicit `PG_BIN` that does not hold
//! a server is an error rather than a silent fallback: whoever set it meant
//! that installation.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// Binaries every server needs; the other tools are checked when used.
const REQUIRED: [&str; 2] = ["postgres", "initdb"];

/// The directory of an installed PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    dir: PathBuf,
}

/// Where to look for the binaries; [`SearchPath::from_env`] is the default.
#[derive(Debug, Clone)]
pub struct SearchPath {
    /// The `PG_BIN` value, if set.
    pub pg_bin: Option<OsString>,
    /// The `pg_config` program to ask for `--bindir`.
    pub pg_config: PathBuf,
    /// Directories whose `<major>/bin` subdirectories hold installations.
    pub roots: Vec<PathBuf>,
}

impl SearchPath {
    /// The standard search: `PG_BIN`, `pg_config` on `PATH`, `/usr/lib/postgresql`.
    pub fn from_env() -> SearchPath {
        SearchPath {
            pg_bin: std::env::var_os("PG_BIN").filter(|v| !v.is_empty()),
            pg_config: PathBuf::from("pg_config"),
            roots: vec![PathBuf::from("/usr/lib/postgresql")],
        }
    }
}

impl PgBinaries {
    /// Finds the binaries with the standard search.
    pub fn locate() -> Result<PgBinaries> {
        Self::search(&SearchPath::from_env())
    }

    /// Finds the binaries along `path`.
    pub fn search(path: &SearchPath) -> Result<PgBinaries> {
        if let Some(dir) = &path.pg_bin {
            let dir = PathBuf::from(dir);
            return Self::from_dir(&dir).map_err(|_| Error::PgNotInstalled {
                searched: format!("PG_BIN={} holds no `postgres` and `initdb`", dir.display()),
            });
        }
        let mut searched = vec!["PG_BIN (unset)".to_string()];
        match Command::new(&path.pg_config).arg("--bindir").output() {
            Ok(out) if out.status.success() => {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if let Ok(found) = Self::from_dir(&dir) {
                    return Ok(found);
                }
                searched.push(format!("`pg_config --bindir` = {}", dir.display()));
            }
            _ => searched.push(format!(
                "`{} --bindir` (not runnable)",
                path.pg_config.display()
            )),
        }
        for root in &path.roots {
            for dir in versioned_bin_dirs(root) {
                if let Ok(found) = Self::from_dir(&dir) {
                    return Ok(found);
                }
            }
            searched.push(format!("{}/<major>/bin", root.display()));
        }
        Err(Error::PgNotInstalled {
            searched: format!("looked at {}", searched.join(", ")),
        })
    }

    /// Uses `dir` if it holds a server installation.
    pub fn from_dir(dir: &Path) -> Result<PgBinaries> {
        for tool in REQUIRED {
            if !is_executable(&dir.join(tool)) {
                return Err(Error::PgToolMissing {
                    tool: tool.to_string(),
                    dir: dir.to_path_buf(),
                });
            }
        }
        Ok(PgBinaries {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory holding the binaries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of `tool` (`pg_dump`, `pgbench`, …), if it is installed.
    pub fn tool(&self, tool: &str) -> Result<PathBuf> {
        let path = self.dir.join(tool);
        if is_executable(&path) {
            Ok(path)
        } else {
            Err(Error::PgToolMissing {
                tool: tool.to_string(),
                dir: self.dir.clone(),
            })
        }
    }

    /// The server's major version, read from `postgres --version`.
    pub fn major_version(&self) -> Result<u32> {
        let out = Command::new(self.dir.join("postgres"))
            .arg("--version")
            .output()
            .map_err(Error::io("running postgres --version"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        text.split_whitespace()
            .nth(2)
            .and_then(|v| v.split('.').next())
            .and_then(|major| major.parse().ok())
            .ok_or_else(|| Error::Io {
                context: format!("parsing `postgres --version` output {text:?}"),
                source: std::io::Error::from(std::io::ErrorKind::InvalidData),
            })
    }
}

/// `<root>/<major>/bin` for every numeric `<major>`, newest first.
fn versioned_bin_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut majors: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, e.path().join("bin")))
        })
        .collect();
    majors.sort_by_key(|m| std::cmp::Reverse(m.0));
    majors.into_iter().map(|(_, dir)| dir).collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_major_first() {
        let root = std::env::temp_dir().join(format!("tashkent-bins-{}", std::process::id()));
        for major in ["9", "15", "13", "notaversion"] {
            std::fs::create_dir_all(root.join(major).join("bin")).unwrap();
        }
        let dirs = versioned_bin_dirs(&root);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            dirs,
            vec![root.join("15/bin"), root.join("13/bin"), root.join("9/bin")]
        );
    }

    #[test]
    fn nothing_found_names_the_install_command() {
        let err = PgBinaries::search(&SearchPath {
            pg_bin: None,
            pg_config: PathBuf::from("/nonexistent/pg_config"),
            roots: vec![PathBuf::from("/nonexistent/postgresql")],
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::PgNotInstalled { .. }), "{msg}");
        assert!(msg.contains("apt-get install -y postgresql"), "{msg}");
        assert!(msg.contains("/nonexistent/postgresql/<major>/bin"), "{msg}");
    }

    #[test]
    fn explicit_pg_bin_without_server_is_an_error() {
        let err = PgBinaries::search(&SearchPath {
            pg_bin: Some("/nonexistent/bin".into()),
            pg_config: PathBuf::from("pg_config"),
            roots: vec![PathBuf::from("/usr/lib/postgresql")],
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("PG_BIN=/nonexistent/bin"), "{msg}");
        assert!(msg.contains("apt-get install -y postgresql"), "{msg}");
    }
}
