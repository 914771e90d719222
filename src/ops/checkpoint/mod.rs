//! Checkpoints: consistent dumps of a replica at a known version, taken
//! while it keeps serving (ARCHITECTURE.md, "Recovery").
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

mod manifest;
mod schedule;
mod store;
mod take;

#[cfg(test)]
use manifest::{checksum_tree, write_atomically, PREFIX};
pub use manifest::{
    verify, Checkpoint, Manifest, ManifestFile, DUMP_DIR, MANIFEST_FILE, MANIFEST_FORMAT_VERSION,
};
pub use schedule::{checkpoint_and_purge, periodic, CheckpointConfig, Periodic};
pub use store::{list, newest_usable, remove_partial, retire, Choice, Listed};
pub use take::{take, Source};

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

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
