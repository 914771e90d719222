//! The certifier's log disk fills up: a real ENOSPC from a small tmpfs
//! mounted under the certifier's log. Clients are told `53100` naming the
//! certifier's log (the transaction in flight at the moment of failure
//! `08007`: its record may or may not have reached the disk), never the
//! misleading "certifier could not be reached"; `tashkent status` shows the
//! certifier poisoned with the cause; every acknowledged row is durable.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cluster::{blocking, tashkent, Cluster};

/// A tmpfs of `size` mounted on `dir` while it lives; unmounted (lazily,
/// so a process still holding a file cannot keep it) and removed on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs (the test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_certifier_log_disk_gives_53100_and_status_shows_it() {
    let mut mounted = None;
    // Declared before the cluster: dropped after it (processes stopped first).
    let cluster = Cluster::start_file(2, |f| {
        // Small segments, so that the first ones fit and a later one does not.
        f.certifier.wal_segment_bytes = 1 << 20;
        let wal = f.cluster.state_dir.join("certifier-wal");
        mounted = Some(Tmpfs::mount(&wal, "4m"));
    })
    .await;
    let _mounted = mounted;
    let c = cluster.client(0).await;
    c.batch_execute("CREATE TABLE blobs (id int PRIMARY KEY, b text)")
        .await
        .unwrap();

    // 256 KiB rows until the log's disk is full.
    let row = "x".repeat(256 << 10);
    let mut acknowledged = Vec::new();
    let mut errors = Vec::new();
    for id in 0..200 {
        match c
            .execute("INSERT INTO blobs VALUES ($1, $2)", &[&id, &row])
            .await
        {
            Ok(_) => acknowledged.push(id),
            Err(e) => {
                let db = e.as_db_error().unwrap_or_else(|| panic!("{e:?}"));
                errors.push((db.code().code().to_owned(), db.message().to_owned()));
                if db.code().code() == "53100" && errors.len() >= 3 {
                    break;
                }
            }
        }
    }
    assert!(
        acknowledged.len() >= 2,
        "some rows fit: {acknowledged:?} {errors:?}"
    );
    let full: Vec<_> = errors.iter().filter(|(code, _)| code == "53100").collect();
    assert!(!full.is_empty(), "no 53100 after 200 inserts: {errors:?}");
    for (code, message) in &errors {
        match code.as_str() {
            "53100" => assert!(
                message.contains("certifier's log is out of disk space"),
                "{message}"
            ),
            // The transaction the log failed under.
            "08007" => assert!(message.contains("certifier's log failed"), "{message}"),
            _ => panic!("unexpected error {code}: {message} (all: {errors:?})"),
        }
    }
    // At most one transaction can have been in flight from this one client.
    let unknown = errors.iter().filter(|(code, _)| code == "08007").count();
    assert!(unknown <= 1, "{errors:?}");
    // Another proxy's clients are told the same.
    let other = cluster.client(1).await;
    let e = other
        .execute("INSERT INTO blobs VALUES (-1, 'x')", &[])
        .await
        .unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("53100"),
        "{e:?}"
    );

    let state = cluster.state_dir().display().to_string();
    let (ok, out) = blocking(|| tashkent(&["status", "--state-dir", &state, "--json"]));
    assert!(ok, "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(json["certifier"]["state"], "poisoned", "{out}");
    let cause = json["certifier"]["error"].as_str().unwrap_or_default();
    assert!(cause.contains("disk is full"), "{out}");

    // Every acknowledged row was durable in the certifier's log before the
    // client heard of it, and is committed on its origin replica.
    let durable = json["certifier"]["durable_version"].as_u64().unwrap();
    assert!(durable > acknowledged.len() as u64, "{out}");
    let ids: Vec<i32> = cluster
        .replica(0)
        .await
        .query("SELECT id FROM blobs ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for id in &acknowledged {
        assert!(ids.contains(id), "{id} missing: {ids:?}");
    }
}
