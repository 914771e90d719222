//! Mounts that live as long as a guard: a small tmpfs that fills up (a real
//! ENOSPC under a process's log, for the disk-full tests), and a bind mount
//! that puts part of such a directory back on a roomy disk.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mount on a directory; unmounted (lazily, so a process still holding
/// a file cannot keep it) and the directory removed on drop. Needs root.
pub struct Mount(PathBuf);

impl Mount {
    /// A tmpfs of `size` (mount's syntax: `4m`) on `dir`, creating it.
    pub fn tmpfs(dir: &Path, size: &str) -> Mount {
        let opts = format!("size={size},mode=0755");
        Mount::run(dir, &["-t", "tmpfs", "-o", &opts, "tmpfs"])
    }

    /// `src` (created) bind-mounted on `dir` (created).
    pub fn bind(src: &Path, dir: &Path) -> Mount {
        std::fs::create_dir_all(src).unwrap();
        Mount::run(dir, &["--bind", src.to_str().unwrap()])
    }

    fn run(dir: &Path, args: &[&str]) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(args)
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount {args:?} {} (the test needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(dir.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
