//! Unit tests of the certification rule through the pure `Certifier`:
//! the GSI cases of ARCHITECTURE.md ("Conflict keys", "DDL") and the horizon.

use std::time::Instant;

use bytes::Bytes;
use tashkent_certifier::proto::ParentRef;
use tashkent_certifier::writeset::{ddl, item};
use tashkent_certifier::{
    AbortCode, Certifier, CertifierError, Decision, Item, Limits, Op, WindowLimits, Writeset,
    WRITESET_FORMAT_VERSION,
};

fn txn(id: &str, snapshot: u64, items: Vec<Item>) -> Writeset {
    Writeset {
        format_version: WRITESET_FORMAT_VERSION,
        txn_id: Bytes::copy_from_slice(id.as_bytes()),
        origin: 1,
        snapshot,
        items,
        ddl: vec![],
        last_chunk: false,
        spool: None,
        session: 0,
        losses: 0,
    }
}

fn upd(table: &str, key: &str) -> Item {
    item(table, Op::Update, key.as_bytes().to_vec())
}

fn commits(c: &mut Certifier, ws: &Writeset) -> u64 {
    match c.certify(ws).unwrap() {
        Decision::Commit(v) => v,
        Decision::Abort(a) => panic!("{:?} should commit, aborted: {}", ws.txn_id, a.reason),
    }
}

fn aborts(c: &mut Certifier, ws: &Writeset) -> String {
    match c.certify(ws).unwrap() {
        Decision::Commit(v) => panic!("{:?} should abort, committed at {v}", ws.txn_id),
        Decision::Abort(a) => {
            assert_eq!(a.code, AbortCode::Conflict, "{}", a.reason);
            a.reason
        }
    }
}

fn child(key: &str, parent: &str) -> Item {
    Item {
        references: vec![ParentRef {
            table: "parent".into(),
            key: Bytes::copy_from_slice(parent.as_bytes()),
        }],
        ..item("child", Op::Insert, key.as_bytes().to_vec())
    }
}

#[test]
fn lost_update_is_prevented_first_committer_wins() {
    let mut c = Certifier::new(Limits::default());
    // Both read account 1 at snapshot 0 and write it.
    assert_eq!(commits(&mut c, &txn("a", 0, vec![upd("acct", "1")])), 1);
    let reason = aborts(&mut c, &txn("b", 0, vec![upd("acct", "1")]));
    assert!(
        reason.contains("version 1") && reason.contains("acct"),
        "{reason}"
    );
    // A transaction that saw version 1 may write it again.
    assert_eq!(commits(&mut c, &txn("c", 1, vec![upd("acct", "1")])), 2);
}

#[test]
fn versions_are_dense_and_only_commits_consume_them() {
    let mut c = Certifier::new(Limits::default());
    for i in 0..10u64 {
        let key = format!("k{}", i % 3);
        let _ = c
            .certify(&txn(&format!("t{i}"), 0, vec![upd("t", &key)]))
            .unwrap();
    }
    // k0, k1, k2 committed once each at snapshot 0; the rest aborted.
    assert_eq!(c.latest(), 3);
    assert_eq!(commits(&mut c, &txn("next", 3, vec![upd("t", "k0")])), 4);
}

fn lock(table: &str, key: &str) -> Item {
    item(table, Op::Lock, key.as_bytes().to_vec())
}

#[test]
fn a_locked_row_conflicts_like_a_written_one_both_ways() {
    let mut c = Certifier::new(Limits::default());
    // Two lockers of one row at one snapshot: the first committer wins.
    assert_eq!(commits(&mut c, &txn("a", 0, vec![lock("jobs", "1")])), 1);
    let reason = aborts(&mut c, &txn("b", 0, vec![lock("jobs", "1")]));
    assert!(
        reason.contains("locked") && reason.contains("jobs"),
        "{reason}"
    );
    // The lock was registered as written at its version: a writer with an
    // older snapshot loses to it, one that saw it does not.
    aborts(&mut c, &txn("w", 0, vec![upd("jobs", "1")]));
    assert_eq!(commits(&mut c, &txn("w2", 1, vec![upd("jobs", "1")])), 2);
    // And a locker loses to a concurrent writer.
    aborts(&mut c, &txn("l", 1, vec![lock("jobs", "1")]));
    // Other rows, and the same key of another table, are free.
    commits(
        &mut c,
        &txn("o", 0, vec![lock("jobs", "2"), lock("other", "1")]),
    );
}

#[test]
fn a_lock_conflicts_with_ddl_on_its_table() {
    let mut c = Certifier::new(Limits::default());
    let mut alter = txn("ddl", 0, vec![]);
    alter.ddl = vec![ddl("ALTER TABLE jobs ADD c int", &["jobs"], 0)];
    commits(&mut c, &alter);
    aborts(&mut c, &txn("l", 0, vec![lock("jobs", "1")]));
}

#[test]
fn write_skew_is_allowed_gsi_is_not_serializable() {
    // Classic on-call doctors: both read {x, y} at snapshot 0, each updates a
    // different row. Serializable would abort one; GSI commits both.
    let mut c = Certifier::new(Limits::default());
    assert_eq!(commits(&mut c, &txn("a", 0, vec![upd("doctors", "x")])), 1);
    assert_eq!(commits(&mut c, &txn("b", 0, vec![upd("doctors", "y")])), 2);
}

#[test]
fn same_key_in_different_tables_does_not_conflict() {
    let mut c = Certifier::new(Limits::default());
    commits(&mut c, &txn("a", 0, vec![upd("t1", "1")]));
    commits(&mut c, &txn("b", 0, vec![upd("t2", "1")]));
}

#[test]
fn unique_key_conflicts_across_different_primary_keys() {
    let mut c = Certifier::new(Limits::default());
    let with_email = |pk: &str, email: &str| Item {
        unique_keys: vec![Bytes::copy_from_slice(email.as_bytes())],
        ..item("users", Op::Insert, pk.as_bytes().to_vec())
    };
    commits(&mut c, &txn("a", 0, vec![with_email("1", "u1:a@x")]));
    let r = aborts(&mut c, &txn("b", 0, vec![with_email("2", "u1:a@x")]));
    assert!(r.contains("users"), "{r}");
    commits(&mut c, &txn("c", 0, vec![with_email("3", "u1:b@x")]));
    // Freeing a unique value (UPDATE that changes it) conflicts with a
    // concurrent insert that takes the old value.
    let change = Item {
        unique_keys: vec![Bytes::from_static(b"u1:c@x")],
        old_unique_keys: vec![Bytes::from_static(b"u1:b@x")],
        ..item("users", Op::Update, b"3".to_vec())
    };
    commits(&mut c, &txn("d", 2, vec![change]));
    aborts(&mut c, &txn("e", 2, vec![with_email("4", "u1:b@x")]));
}

#[test]
fn rekey_conflicts_on_old_and_new_key() {
    let mut c = Certifier::new(Limits::default());
    let rekey = Item {
        old_key: Some(Bytes::from_static(b"1")),
        ..upd("t", "2")
    };
    commits(&mut c, &txn("a", 0, vec![rekey]));
    aborts(&mut c, &txn("b", 0, vec![upd("t", "1")]));
    aborts(
        &mut c,
        &txn("c", 0, vec![item("t", Op::Insert, b"2".to_vec())]),
    );
}

#[test]
fn child_insert_then_parent_delete_conflicts() {
    let mut c = Certifier::new(Limits::default());
    commits(&mut c, &txn("child", 0, vec![child("c1", "p1")]));
    let r = aborts(
        &mut c,
        &txn("del", 0, vec![item("parent", Op::Delete, b"p1".to_vec())]),
    );
    assert!(r.contains("removed here that it references"), "{r}");
}

#[test]
fn parent_delete_then_child_insert_conflicts() {
    let mut c = Certifier::new(Limits::default());
    commits(
        &mut c,
        &txn("del", 0, vec![item("parent", Op::Delete, b"p1".to_vec())]),
    );
    let r = aborts(&mut c, &txn("child", 0, vec![child("c1", "p1")]));
    assert!(r.contains("parent row"), "{r}");
    // A child of another parent is unaffected.
    commits(&mut c, &txn("other", 0, vec![child("c2", "p2")]));
}

#[test]
fn parent_rekey_conflicts_with_child_insert() {
    let mut c = Certifier::new(Limits::default());
    let rekey = Item {
        old_key: Some(Bytes::from_static(b"p1")),
        ..item("parent", Op::Update, b"p9".to_vec())
    };
    commits(&mut c, &txn("rekey", 0, vec![rekey]));
    aborts(&mut c, &txn("child", 0, vec![child("c1", "p1")]));
}

#[test]
fn two_children_of_one_parent_do_not_conflict() {
    let mut c = Certifier::new(Limits::default());
    commits(&mut c, &txn("a", 0, vec![child("c1", "p1")]));
    commits(&mut c, &txn("b", 0, vec![child("c2", "p1")]));
}

#[test]
fn parent_non_key_update_and_child_insert_do_not_conflict() {
    let mut c = Certifier::new(Limits::default());
    commits(&mut c, &txn("upd", 0, vec![upd("parent", "p1")]));
    commits(&mut c, &txn("child", 0, vec![child("c1", "p1")]));
    commits(&mut c, &txn("upd2", 0, vec![upd("parent", "p2")]));
    commits(&mut c, &txn("child2", 0, vec![child("c2", "p2")]));
    // ...but the parent row itself is still a write-write conflict.
    aborts(&mut c, &txn("upd3", 0, vec![upd("parent", "p1")]));
}

#[test]
fn ddl_conflicts_with_concurrent_writers_and_ddl_of_its_table() {
    let mut c = Certifier::new(Limits::default());
    let alter = |id: &str, s: u64, t: &str| Writeset {
        ddl: vec![ddl(&format!("ALTER TABLE {t} ADD c int"), &[t], 0)],
        ..txn(id, s, vec![])
    };
    commits(&mut c, &txn("w", 0, vec![upd("t", "1")]));
    // DDL after a concurrent writer: aborts.
    let r = aborts(&mut c, &alter("ddl1", 0, "t"));
    assert!(r.contains("DDL changes: t"), "{r}");
    // DDL on another table: fine.
    commits(&mut c, &alter("ddl_u", 0, "u"));
    // Writer after a concurrent DDL: aborts, whatever row.
    let r = aborts(&mut c, &txn("w2", 0, vec![upd("u", "999")]));
    assert!(r.contains("DDL/TRUNCATE on table u"), "{r}");
    // Concurrent DDL on the same table: aborts.
    aborts(&mut c, &alter("ddl_u2", 1, "u"));
    // Not concurrent (snapshot saw the DDL): fine.
    commits(&mut c, &txn("w3", 2, vec![upd("u", "999")]));
    // TRUNCATE is DDL as well.
    let trunc = Writeset {
        ddl: vec![ddl("TRUNCATE t", &["t"], 0)],
        ..txn("tr", 3, vec![])
    };
    commits(&mut c, &trunc);
    aborts(&mut c, &txn("w4", 3, vec![upd("t", "2")]));
}

#[test]
fn snapshot_older_than_the_horizon_is_aborted_with_the_reason() {
    let mut c = Certifier::new(Limits::default());
    for i in 0..5 {
        commits(
            &mut c,
            &txn(&format!("t{i}"), i, vec![upd("t", &format!("{i}"))]),
        );
    }
    let now = Instant::now();
    c.report(1, 5, 3, now).unwrap();
    assert_eq!(
        c.window().horizon(),
        3,
        "one replica reported oldest snapshot 3"
    );
    c.report(2, 4, 2, now).unwrap();
    assert_eq!(c.window().horizon(), 3, "the horizon never goes back");
    c.report(2, 5, 5, now).unwrap();
    assert_eq!(c.window().horizon(), 3, "replica 1 still holds snapshot 3");
    c.report(1, 5, 4, now).unwrap();
    assert_eq!(c.window().horizon(), 4);
    // Snapshot 3 touches a key nobody wrote since: still aborted, because the
    // window can no longer prove that.
    match c.certify(&txn("old", 3, vec![upd("t", "zzz")])).unwrap() {
        Decision::Abort(a) => {
            assert_eq!(a.code, AbortCode::SnapshotTooOld);
            assert!(
                a.reason.contains("older than") && a.reason.contains("horizon 4"),
                "{}",
                a.reason
            );
            assert!(
                a.reason.contains("oldest snapshot still in use"),
                "{}",
                a.reason
            );
        }
        d => panic!("{d:?}"),
    }
    commits(&mut c, &txn("ok", 4, vec![upd("t", "zzz")]));
    // Reports are validated.
    assert!(matches!(
        c.report(1, 99, 1, now),
        Err(CertifierError::InvalidArgument(_))
    ));
    assert!(matches!(
        c.report(1, 5, 6, now),
        Err(CertifierError::InvalidArgument(_))
    ));
}

#[test]
fn memory_limit_advances_the_horizon_and_says_so() {
    let limits = Limits {
        window: WindowLimits {
            max_entries: 1000,
            max_versions: 3,
        },
        max_dedupe: 10,
    };
    let mut c = Certifier::new(limits);
    for i in 0..5 {
        commits(
            &mut c,
            &txn(&format!("t{i}"), i, vec![upd("t", &format!("{i}"))]),
        );
    }
    assert_eq!(c.window().horizon(), 2);
    match c.certify(&txn("old", 1, vec![upd("t", "new")])).unwrap() {
        Decision::Abort(a) => {
            assert_eq!(a.code, AbortCode::SnapshotTooOld);
            assert!(
                a.reason.contains("memory limit") && a.reason.contains("max_versions=3"),
                "{}",
                a.reason
            );
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn retried_transaction_gets_its_original_answer() {
    let mut c = Certifier::new(Limits::default());
    let a = txn("a", 0, vec![upd("t", "1")]);
    let b = txn("b", 0, vec![upd("t", "1")]);
    assert_eq!(commits(&mut c, &a), 1);
    let reason = aborts(&mut c, &b);
    commits(&mut c, &txn("c", 1, vec![upd("t", "2")]));
    assert_eq!(commits(&mut c, &a), 1, "retry of a committed txn");
    assert_eq!(aborts(&mut c, &b), reason, "retry of an aborted txn");
    assert_eq!(c.latest(), 2);
}

/// A transaction id arrives as a slice of its whole request (or raft
/// entry); the answers remembered for retries must not keep that alive,
/// or a hundred thousand remembered ids would hold as many writesets.
#[test]
fn remembered_answers_keep_no_request_alive() {
    let mut c = Certifier::new(Limits::default());
    let request: Bytes = (0..1u32 << 20).map(|i| i as u8).collect();
    let id = |i: usize| request.slice(i * 8..i * 8 + 8);
    let first: Vec<Decision> = ["1", "1", "2"]
        .into_iter()
        .enumerate()
        .map(|(i, key)| {
            let mut ws = txn("", 0, vec![upd("t", key)]);
            ws.txn_id = id(i);
            c.certify(&ws).unwrap()
        })
        .collect();
    assert!(matches!(first[1], Decision::Abort(_)), "{first:?}");
    for (i, want) in first.iter().enumerate() {
        // A retry with the same id in a buffer of its own.
        let mut ws = txn("", 0, vec![upd("t", "3")]);
        ws.txn_id = Bytes::copy_from_slice(&id(i));
        assert_eq!(&c.certify(&ws).unwrap(), want, "retry of the {i}th");
    }
    assert!(
        request.is_unique(),
        "the certifier still holds a slice of the request"
    );
}

/// A certifier rebuilt from an image (what a raft snapshot carries)
/// answers retries as the original; an image whose remembered commits are
/// out of order or whose ids no client could send is refused, not
/// half-believed.
#[test]
fn an_image_rebuilds_the_answers_and_a_damaged_one_is_refused() {
    use tashkent_certifier::ConflictSet;
    let mut c = Certifier::new(Limits::default());
    let txns: Vec<Writeset> = (0..3)
        .map(|i| txn(&format!("t{i}"), 0, vec![upd("t", &i.to_string())]))
        .collect();
    for ws in &txns {
        commits(&mut c, ws);
    }
    let sets = || {
        txns.iter()
            .enumerate()
            .map(|(i, ws)| (i as u64 + 1, ConflictSet::of(ws)))
    };
    let image = c.image();
    let mut again = Certifier::from_image(Limits::default(), image.clone(), sets()).unwrap();
    for (i, ws) in txns.iter().enumerate() {
        assert_eq!(commits(&mut again, ws), i as u64 + 1, "retry of {i}");
    }
    let mut swapped = image.clone();
    swapped.committed.swap(0, 1);
    let long = {
        let mut i = image.clone();
        i.committed[1].1 = Bytes::from(vec![b'x'; 300]);
        i
    };
    let beyond = {
        let mut i = image.clone();
        i.committed[2].0 = 9;
        i
    };
    for (what, bad) in [
        ("swapped", swapped),
        ("long id", long),
        ("beyond latest", beyond),
    ] {
        assert!(
            Certifier::from_image(Limits::default(), bad, sets()).is_err(),
            "{what}: accepted"
        );
    }
}

#[test]
fn snapshot_from_the_future_is_invalid() {
    let mut c = Certifier::new(Limits::default());
    assert!(matches!(
        c.certify(&txn("f", 1, vec![upd("t", "1")])),
        Err(CertifierError::InvalidArgument(m)) if m.contains("ahead")
    ));
}

/// The fingerprints of `ws`'s conflict keys, one line.
fn fingerprints(ws: &Writeset) -> String {
    let cs = tashkent_certifier::ConflictSet::of(ws);
    let fps: Vec<String> = cs.window_entries().map(|fp| format!("{fp:016x}")).collect();
    fps.join(",")
}

/// Replicated certifier nodes each certify every committed entry, in
/// different processes, and must decide alike: a key's fingerprint cannot
/// depend on the process. This test runs itself again as a child process
/// (`TASHKENT_FP_CHILD`), which prints its fingerprints of the same
/// writeset, and compares.
#[test]
fn fingerprints_are_the_same_in_every_process() {
    const NAME: &str = "fingerprints_are_the_same_in_every_process";
    let ws = txn(
        "fp",
        0,
        vec![
            upd("accounts", "1"),
            upd("tellers", "42"),
            lock("branches", "7"),
        ],
    );
    let mine = fingerprints(&ws);
    if std::env::var_os("TASHKENT_FP_CHILD").is_some() {
        // On a line of its own: the harness prints the test's name first.
        println!("\nfingerprints={mine}");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env("TASHKENT_FP_CHILD", "1")
        .output()
        .expect("run the test binary again");
    assert!(out.status.success(), "child failed: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let theirs = stdout
        .lines()
        .find_map(|l| l.split_once("fingerprints=").map(|(_, fps)| fps.trim()))
        .unwrap_or_else(|| panic!("the child printed no fingerprints: {stdout}"));
    assert!(!mine.is_empty());
    assert_eq!(mine, theirs, "fingerprints differ between processes");
}
