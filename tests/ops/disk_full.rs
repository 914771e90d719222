//! The certifier's log disk fills up: a real ENOSPC from a small tmpfs
//! mounted under the certifier's log. Clients are told `53100` naming the
//! certifier's log (the transaction in flight at the moment of failure
//! `08007`: its record may or may not have reached the disk), never the
//! misleading "certifier could not be reached"; `tashkent status` shows the
//! certifier poisoned with the cause; every acknowledged row is durable.

use crate::common;

use common::cluster::{blocking, tashkent, Cluster};
use common::mount::Mount;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_certifier_log_disk_gives_53100_and_status_shows_it() {
    let mut mounted = None;
    let mut cluster = Cluster::start_file(2, |f| {
        // Small segments, so that the first ones fit and a later one does not.
        f.certifier.wal_segment_bytes = 1 << 20;
        let wal = f.cluster.state_dir.join("certifier-wal");
        mounted = Some(Mount::tmpfs(&wal, "4m"));
    })
    .await;
    // Unmounted once the certifier is gone, before the state directory is.
    cluster.hold(mounted);
    let c = cluster.client(0).await;
    c.batch_execute("CREATE TABLE blobs (id int PRIMARY KEY, b text)")
        .await
        .unwrap();

    let (acknowledged, errors) = fill_the_log(&c, 200).await;
    // At most one transaction can have been in flight from this one client.
    let unknown = errors.iter().filter(|(code, _)| code == "08007").count();
    assert!(unknown <= 1, "{errors:?}");
    // Another proxy's clients are told the same.
    proxy_gets_53100(&cluster, 1).await;

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
    assert_on_replica(&cluster, 0, &acknowledged).await;
}

/// Inserts 256 KiB rows into `blobs (id int, b text)` through `c`, at most
/// `limit`, until the certifier's log is full; the ids acknowledged and the
/// errors (SQLSTATE, message). Some rows fit, then clients get `53100`
/// naming the certifier's log, or `08007` for a transaction in flight when
/// the log failed; no other error.
pub(crate) async fn fill_the_log(
    c: &tokio_postgres::Client,
    limit: i32,
) -> (Vec<i32>, Vec<(String, String)>) {
    let row = "x".repeat(256 << 10);
    let mut acknowledged = Vec::new();
    let mut errors = Vec::new();
    for id in 0..limit {
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
    let full = errors.iter().filter(|(code, _)| code == "53100").count();
    assert!(full > 0, "no 53100 after {limit} inserts: {errors:?}");
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
    (acknowledged, errors)
}

/// A client of proxy `i` gets `53100` for an insert into `blobs`.
pub(crate) async fn proxy_gets_53100(cluster: &Cluster, i: usize) {
    gets_53100(&cluster.client(i).await).await;
}

/// A commit through `client` (connected to a proxy) fails with 53100.
pub(crate) async fn gets_53100(client: &tokio_postgres::Client) {
    let e = client
        .execute("INSERT INTO blobs VALUES (-1, 'x')", &[])
        .await
        .unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("53100"),
        "{e:?}"
    );
}

/// Every row of `ids` is in `blobs` on replica `i`.
pub(crate) async fn assert_on_replica(cluster: &Cluster, i: usize, ids: &[i32]) {
    let present: Vec<i32> = cluster
        .replica(i)
        .await
        .query("SELECT id FROM blobs ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for id in ids {
        assert!(present.contains(id), "{id} missing: {present:?}");
    }
}
