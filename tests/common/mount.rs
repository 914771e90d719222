//! Mounts that live as long as a guard: a small tmpfs that fills up (a real
//! ENOSPC under a process's log, for the disk-full tests), a bind mount
//! that puts part of such a directory back on a roomy disk, and an ext4
//! image on a loop device that can be frozen (a real hung disk: every
//! write and fdatasync on it blocks in the kernel until it is thawed).

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

    /// An ext4 file system of `bytes` in the image file `image` (created,
    /// sparse), mounted through a loop device on `dir`: one that
    /// [`Frozen`] can freeze, which tmpfs cannot.
    pub fn ext4(image: &Path, bytes: u64, dir: &Path) -> Mount {
        let f = std::fs::File::create(image).unwrap();
        f.set_len(bytes).unwrap();
        succeeds(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image));
        Mount::run(dir, &["-o", "loop", image.to_str().unwrap()])
    }

    fn run(dir: &Path, args: &[&str]) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        succeeds(Command::new("mount").args(args).arg(dir));
        Mount(dir.to_path_buf())
    }
}

/// Runs `cmd` (these need root), failing the test with its stderr if it
/// fails.
fn succeeds(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} (the test needs root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The file system mounted on a directory, frozen (`fsfreeze`) for as
/// long as this guard lives: a process that writes or syncs a file on it
/// blocks, uninterruptibly, as on a disk that stopped answering. Thawed on
/// drop, which must come before whatever waits for such a process to end
/// (declare it after the cluster: locals drop in reverse order, on a
/// panic too).
pub struct Frozen(PathBuf);

impl Frozen {
    pub fn freeze(dir: &Path) -> Frozen {
        succeeds(Command::new("fsfreeze").arg("-f").arg(dir));
        Frozen(dir.to_path_buf())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.0).status();
    }
}
