//! Fault injection with the `fail` crate. Needs the `failpoints` feature:
//!
//! ```text
//! cargo test -p tashkent-wal --features failpoints --test faults
//! ```
//!
//! Failpoints are process-global, so every test holds a `FailScenario`
//! (which serializes them and clears all failpoints on teardown).

#[macro_use]
mod common;

use common::*;
use fail::FailScenario;
use tashkent_wal::{Backend, Durability, Wal, WalError, WalOptions};

async fn fsync_failure_poisons_forever(b: Backend) {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    for i in 1..=3 {
        wal.append(payload(i, 10)).await.unwrap();
    }
    fail::cfg("wal::fsync", "return").unwrap();
    let err = wal.append(payload(4, 10)).await.unwrap_err();
    assert!(matches!(err, WalError::Io { .. }), "{err}");
    fail::remove("wal::fsync");
    // Never acknowledged again, even though fsync would work now.
    let err = wal.append(payload(5, 10)).await.unwrap_err();
    assert!(err.is_poisoned(), "{err}");
    assert!(wal.submit(payload(6, 10)).unwrap_err().is_poisoned());
    assert!(wal
        .submit_then(payload(6, 10), |_| panic!("called back"))
        .unwrap_err()
        .is_poisoned());
    assert!(wal.truncate_after(2).await.unwrap_err().is_poisoned());
    assert_eq!(wal.durable_lsn(), 3);
    assert!(wal.close().await.unwrap_err().is_poisoned());
    // Reopening recovers (record 4 was written, so it may be there).
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    assert!((3..=4).contains(&wal.last_lsn()));
    for (lsn, p) in read_all(&wal, 1).into_iter().take(3) {
        assert_eq!(p, payload(lsn, 10));
    }
    scenario.teardown();
}

/// `Durability::Deferred`: a failed deferred fdatasync fails every record
/// written since the last one, and the log is poisoned as with the default.
async fn deferred_sync_failure_fails_the_unsynced_and_poisons(b: Backend) {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let o = WalOptions {
        durability: Durability::Deferred {
            max_delay: std::time::Duration::from_secs(3600),
        },
        ..opts(b)
    };
    let wal = Wal::open(dir.path(), o).unwrap();
    let _first = wal.submit(payload(1, 10)).unwrap();
    wal.wait_durable(1).await.unwrap();
    let tickets: Vec<_> = (2..=4)
        .map(|i| wal.submit(payload(i, 10)).unwrap())
        .collect();
    fail::cfg("wal::fsync", "return").unwrap();
    let err = wal.wait_durable(4).await.unwrap_err();
    fail::remove("wal::fsync");
    assert!(
        err.is_poisoned() || matches!(err, WalError::Io { .. }),
        "{err}"
    );
    for t in tickets {
        let err = t.await.unwrap_err();
        assert!(
            err.is_poisoned() || matches!(err, WalError::Io { .. }),
            "{err}"
        );
    }
    assert_eq!(wal.durable_lsn(), 1);
    assert!(wal.submit(payload(5, 10)).unwrap_err().is_poisoned());
    scenario.teardown();
}

/// How an append was answered, and whether its callback saw the log
/// failed.
#[derive(Debug, PartialEq)]
enum Answer {
    Ok,
    Failed,
    Poisoned,
}

impl Answer {
    fn of(r: &Result<u64, WalError>) -> Answer {
        match r {
            Ok(_) => Answer::Ok,
            Err(e) if e.is_poisoned() => Answer::Poisoned,
            Err(_) => Answer::Failed,
        }
    }
}

/// Makes the writer wait at its `held` passes (1-based) through
/// failpoint `name`: the returned receiver hears when it is at one, and
/// each send on the sender lets it go on.
fn hold_at(
    name: &str,
    held: &'static [usize],
) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Mutex};
    let (there_tx, there_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (there_tx, go_rx) = (Mutex::new(there_tx), Mutex::new(go_rx));
    let passes = AtomicUsize::new(0);
    fail::cfg_callback(name, move || {
        if held.contains(&(passes.fetch_add(1, Ordering::SeqCst) + 1)) {
            let _ = there_tx.lock().unwrap().send(());
            let _ = go_rx
                .lock()
                .unwrap()
                .recv_timeout(std::time::Duration::from_secs(10));
        }
    })
    .unwrap();
    (there_rx, go_tx)
}

/// Appends `ids` with `submit_then`, each callback sending its id, how it
/// was answered and whether the log was failed by then.
fn submit_each(
    wal: &std::sync::Arc<Wal>,
    ids: impl IntoIterator<Item = u64>,
    tx: &tokio::sync::mpsc::UnboundedSender<(u64, Answer, bool)>,
) {
    for i in ids {
        let (tx, w) = (tx.clone(), wal.clone());
        wal.submit_then(payload(i, 10), move |r| {
            let poisoned = w.poison_cause().is_some();
            tx.send((i, Answer::of(&r), poisoned)).unwrap();
        })
        .unwrap();
    }
}

async fn every_answer(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(u64, Answer, bool)>,
) -> Vec<(u64, Answer, bool)> {
    let mut answered = Vec::new();
    while let Ok(Some(a)) =
        tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await
    {
        answered.push(a);
    }
    answered
}

/// The appends queued behind a failed group are answered with the poison
/// outside the WAL's state lock: a `submit_then` callback may call the
/// log (here `poison_cause`, which takes that lock) without deadlocking
/// the writer. And in LSN order: record 3 was taken from the queue with
/// the failing group (2), record 4 still waited in it when the log failed
/// (CI once saw 4 answered before 3, when the poison answered the queue
/// at once). The writer is held at its writes while the test queues, so
/// the interleaving does not depend on timing.
async fn callbacks_of_a_poisoned_batch_run_outside_the_lock(b: Backend) {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let o = WalOptions {
        max_group_records: 1,
        ..opts(b)
    };
    let wal = std::sync::Arc::new(Wal::open(dir.path(), o).unwrap());
    let (in_write, go) = hold_at("wal::write", &[1, 2]);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let held = std::time::Duration::from_secs(10);
    submit_each(&wal, [1], &tx);
    // Group 1 is in its write: 2 and 3 queue behind it, and the writer
    // takes them together once it is done.
    in_write.recv_timeout(held).unwrap();
    submit_each(&wal, [2, 3], &tx);
    go.send(()).unwrap();
    // Group 2 is in its write (3 taken with it): 4 queues, then group
    // 2's fsync fails.
    in_write.recv_timeout(held).unwrap();
    fail::cfg("wal::before_fsync", "return").unwrap();
    submit_each(&wal, [4], &tx);
    go.send(()).unwrap();
    drop(tx);
    let answered = every_answer(rx).await;
    fail::remove("wal::before_fsync");
    fail::remove("wal::write");
    assert_eq!(
        answered,
        [
            (1, Answer::Ok, false),
            (2, Answer::Failed, true),
            (3, Answer::Poisoned, true),
            (4, Answer::Poisoned, true),
        ],
        "every callback, once, in LSN order, the failing group's with its own error"
    );
    scenario.teardown();
}

/// With deferred durability a record written but not synced yet is
/// answered before a later group whose write fails.
async fn a_failed_group_behind_unsynced_records_is_answered_after_them(b: Backend) {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let o = WalOptions {
        max_group_records: 1,
        durability: Durability::Deferred {
            max_delay: std::time::Duration::from_secs(5),
        },
        ..opts(b)
    };
    let wal = std::sync::Arc::new(Wal::open(dir.path(), o).unwrap());
    fail::cfg("wal::write", "1*off->return").unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    submit_each(&wal, [1, 2, 3], &tx);
    drop(tx);
    assert!(wal.wait_durable(3).await.unwrap_err().is_poisoned());
    let answered = every_answer(rx).await;
    fail::remove("wal::write");
    assert_eq!(
        answered,
        [
            (1, Answer::Poisoned, true),
            (2, Answer::Failed, true),
            (3, Answer::Poisoned, true),
        ],
        "in LSN order: the unsynced record, the failing group, the rest"
    );
    scenario.teardown();
}

/// What failed `wal`, within 5 s while its writer is held.
async fn stall_seen(wal: &Wal) -> std::sync::Arc<WalError> {
    use std::time::{Duration, Instant};
    let held = Instant::now();
    loop {
        if let Some(cause) = wal.poison_cause() {
            return cause;
        }
        assert!(held.elapsed() < Duration::from_secs(5), "no stall seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A hung disk (here the writer held at its fdatasync): once the stall
/// timeout passes, the log is failed with `Stalled`, new appends are
/// refused at once, durability waiters are answered and closing does not
/// wait for the writer; when the disk returns, the held group and what
/// queued behind it get the poison, in LSN order, although the fdatasync
/// succeeded. An idle log is never taken for a stalled one.
async fn a_stalled_fsync_fails_the_log_and_acknowledges_nothing_after(b: Backend) {
    use std::time::Duration;
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let timeout = Duration::from_secs(1);
    let o = WalOptions {
        max_group_records: 1,
        stall_timeout: Some(timeout),
        ..opts(b)
    };
    let wal = std::sync::Arc::new(Wal::open(dir.path(), o).unwrap());
    wal.append(payload(1, 10)).await.unwrap();
    tokio::time::sleep(timeout * 3 / 2).await;
    wal.append(payload(2, 10)).await.unwrap();
    assert!(wal.poison_cause().is_none(), "idle is not stalled");

    let (at_fsync, go) = hold_at("wal::before_fsync", &[1]);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    submit_each(&wal, [3], &tx);
    at_fsync.recv_timeout(Duration::from_secs(10)).unwrap();
    submit_each(&wal, [4], &tx);
    let waiter = {
        let wal = wal.clone();
        tokio::spawn(async move { wal.wait_durable(4).await })
    };
    let cause = stall_seen(&wal).await;
    assert!(matches!(*cause, WalError::Stalled { .. }), "{cause}");
    assert!(cause.to_string().contains("has not returned"), "{cause}");
    let refused = wal.submit(payload(5, 10)).unwrap_err();
    assert!(refused.is_poisoned(), "{refused}");
    let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("a durability waiter is answered while the disk hangs")
        .unwrap();
    assert!(waited.unwrap_err().is_poisoned());
    let closed = tokio::time::timeout(Duration::from_secs(5), Wal::clone(&wal).close())
        .await
        .expect("close does not wait for a writer stuck on the disk");
    assert!(closed.unwrap_err().is_poisoned());

    go.send(()).unwrap();
    drop(tx);
    let answered = every_answer(rx).await;
    fail::remove("wal::before_fsync");
    assert_eq!(
        answered,
        [(3, Answer::Poisoned, true), (4, Answer::Poisoned, true)],
        "the held group and the one behind it, with the poison, in order"
    );
    assert_eq!(wal.durable_lsn(), 2);
    scenario.teardown();
}

/// With deferred durability, a stall in the middle of a round: the
/// records written before the held one, the held one and the one taken
/// with them are answered with the poison in LSN order (the watchdog
/// fails the log from its own thread, so the writer finds it failed
/// while records it wrote are still unsynced).
async fn a_stall_in_a_deferred_round_answers_in_lsn_order(b: Backend) {
    use std::time::Duration;
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let o = WalOptions {
        max_group_records: 1,
        durability: Durability::Deferred {
            max_delay: Duration::from_secs(3600),
        },
        stall_timeout: Some(Duration::from_secs(1)),
        ..opts(b)
    };
    let wal = std::sync::Arc::new(Wal::open(dir.path(), o).unwrap());
    let (at_write, go) = hold_at("wal::write", &[2]);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    submit_each(&wal, [1, 2, 3], &tx);
    // The three go in one round, which this starts.
    let waiter = {
        let wal = wal.clone();
        tokio::spawn(async move { wal.wait_durable(3).await })
    };
    at_write.recv_timeout(Duration::from_secs(10)).unwrap();
    stall_seen(&wal).await;
    assert!(waiter.await.unwrap().unwrap_err().is_poisoned());
    go.send(()).unwrap();
    drop(tx);
    let answered = every_answer(rx).await;
    fail::remove("wal::write");
    assert_eq!(
        answered,
        [
            (1, Answer::Poisoned, true),
            (2, Answer::Poisoned, true),
            (3, Answer::Poisoned, true),
        ],
        "in LSN order"
    );
    scenario.teardown();
}

/// `close` called while the writer hangs, before the stall timeout has
/// passed, returns once the watchdog fails the log, not when the disk
/// returns.
async fn close_during_a_hang_returns_at_the_stall(b: Backend) {
    use std::time::{Duration, Instant};
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let o = WalOptions {
        stall_timeout: Some(Duration::from_secs(1)),
        ..opts(b)
    };
    let wal = Wal::open(dir.path(), o).unwrap();
    let (at_fsync, go) = hold_at("wal::before_fsync", &[1]);
    let ticket = wal.submit(payload(1, 10)).unwrap();
    at_fsync.recv_timeout(Duration::from_secs(10)).unwrap();
    let closing = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), wal.close())
        .await
        .expect("close returns at the stall, while the writer still hangs");
    assert!(closed.unwrap_err().is_poisoned());
    assert!(
        closing.elapsed() >= Duration::from_millis(500),
        "{closing:?}"
    );
    go.send(()).unwrap();
    assert!(ticket.await.unwrap_err().is_poisoned());
    fail::remove("wal::before_fsync");
    scenario.teardown();
}

async fn failed_group_and_everything_queued_get_errors_never_acks(b: Backend) {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    wal.append(&b"ok"[..]).await.unwrap();
    // The next group stalls between write and fsync while more appends
    // queue up; then its fsync fails.
    fail::cfg("wal::before_fsync", "sleep(200)").unwrap();
    fail::cfg("wal::fsync", "return").unwrap();
    let first = wal.submit(&b"doomed"[..]).unwrap();
    while wal.written_lsn() < 2 {
        tokio::task::yield_now().await;
    }
    let queued: Vec<_> = (0..50)
        .map(|i| wal.submit(payload(i, 20)).unwrap())
        .collect();
    let waiter = {
        let wal = wal.clone();
        tokio::spawn(async move { wal.wait_durable(30).await })
    };
    assert!(matches!(first.await, Err(WalError::Io { .. })));
    for t in queued {
        let e = t.await.unwrap_err();
        assert!(e.is_poisoned(), "{e}");
    }
    assert!(waiter.await.unwrap().unwrap_err().is_poisoned());
    assert_eq!(wal.durable_lsn(), 1);
    scenario.teardown();
}

async fn disk_full_fails_the_whole_group(b: Backend) {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    // First group: stalls (so a big second group forms), then succeeds.
    // Second group: ENOSPC.
    fail::cfg("wal::write", "1*sleep(200)->return(enospc)").unwrap();
    let first = wal.submit(&b"first"[..]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let group: Vec<_> = (0..20)
        .map(|i| wal.submit(payload(i, 20)).unwrap())
        .collect();
    assert_eq!(first.await.unwrap(), 1);
    for t in group {
        let e = t.await.unwrap_err();
        assert!(matches!(e, WalError::DiskFull { .. }), "{e}");
    }
    fail::remove("wal::write");
    match wal.append(&b"later"[..]).await.unwrap_err() {
        WalError::Poisoned { cause } => assert!(matches!(*cause, WalError::DiskFull { .. })),
        e => panic!("{e}"),
    }
    assert_eq!(wal.durable_lsn(), 1);
    drop(wal);
    // Space "freed": reopen and continue after the last durable record.
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    assert_eq!(wal.last_lsn(), 1);
    assert_eq!(wal.append(&b"again"[..]).await.unwrap(), 2);
    scenario.teardown();
}

async fn short_writes_are_completed(b: Backend) {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let o = small_segments(b, 8192);
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    fail::cfg("wal::short_write", "return").unwrap();
    let tickets: Vec<_> = (1..=200u64)
        .map(|i| wal.submit(payload(i, (i * 31 % 500) as usize)).unwrap())
        .collect();
    for t in tickets {
        t.await.unwrap();
    }
    fail::remove("wal::short_write");
    wal.close().await.unwrap();
    let wal = Wal::open(dir.path(), o).unwrap();
    let all = read_all(&wal, 1);
    assert_eq!(all.len(), 200);
    for (lsn, p) in all {
        assert_eq!(p, payload(lsn, (lsn * 31 % 500) as usize));
    }
    scenario.teardown();
}

/// Appends `payload(lsn, len)` after record `last`, at most `limit` of
/// them, until one fails: the last LSN appended, and the failure (`None`:
/// none failed).
async fn append_until_error(
    wal: &Wal,
    mut last: u64,
    len: usize,
    limit: u64,
) -> (u64, Option<WalError>) {
    let stop = last + limit;
    while last < stop {
        match wal.append(payload(last + 1, len)).await {
            Ok(_) => last += 1,
            Err(e) => return (last, Some(e)),
        }
    }
    (last, None)
}

async fn failed_segment_roll_poisons_and_log_reopens(b: Backend) {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let o = small_segments(b, 4096);
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    fail::cfg("wal::segment_roll", "return").unwrap();
    let (ok, err) = append_until_error(&wal, 0, 100, 10_000).await;
    let err = err.expect("a segment roll within 10,000 records");
    assert!(matches!(err, WalError::Io { .. }), "{err}");
    assert!(ok > 10, "the first segment holds many records");
    fail::remove("wal::segment_roll");
    assert!(wal.append(&b"x"[..]).await.unwrap_err().is_poisoned());
    drop(wal);
    // The half-created segment (.tmp) is cleaned up; nothing acked is lost.
    let wal = Wal::open(dir.path(), o).unwrap();
    assert_eq!(wal.last_lsn(), ok);
    assert_eq!(read_all(&wal, 1).len() as u64, ok);
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));
    assert_eq!(wal.append(&b"y"[..]).await.unwrap(), ok + 1);
    scenario.teardown();
}

async fn failed_zeroes_ahead_poison_and_lose_nothing(b: Backend) {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    // The first group zeroes a MiB ahead; the failure comes at a group
    // past it.
    assert_eq!(wal.append(payload(1, 16 << 10)).await.unwrap(), 1);
    fail::cfg("wal::zero_ahead", "return(enospc)").unwrap();
    let (ok, err) = append_until_error(&wal, 1, 16 << 10, 200).await;
    let Some(err) = err else {
        eprintln!("skipped: zeroes ahead do not pay on this filesystem (not ext4 or XFS)");
        scenario.teardown();
        return;
    };
    assert!(matches!(err, WalError::DiskFull { .. }), "{err}");
    assert!(ok > 50, "the first MiB holds many records: {ok}");
    fail::remove("wal::zero_ahead");
    assert!(wal.append(&b"x"[..]).await.unwrap_err().is_poisoned());
    drop(wal);
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    assert_eq!(wal.last_lsn(), ok);
    for (lsn, p) in read_all(&wal, 1) {
        assert_eq!(p, payload(lsn, 16 << 10));
    }
    assert_eq!(wal.append(&b"y"[..]).await.unwrap(), ok + 1);
    scenario.teardown();
}

/// A log of records 1..=300 (payloads of 100 bytes) in 4 KiB segments.
async fn three_hundred_records(b: Backend) -> (tempfile::TempDir, WalOptions, Wal) {
    let dir = tempfile::tempdir().unwrap();
    let o = small_segments(b, 4096);
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    for i in 1..=300u64 {
        wal.append(payload(i, 100)).await.unwrap();
    }
    (dir, o, wal)
}

async fn purge_interrupted_between_deletions_loses_nothing(b: Backend) {
    let scenario = FailScenario::setup();
    let (dir, o, wal) = three_hundred_records(b).await;
    let before = segment_files(dir.path()).len();
    // "Crash" after the first deletion.
    fail::cfg("wal::purge_between", "return").unwrap();
    assert!(wal.purge_below(200).await.is_err());
    fail::remove("wal::purge_between");
    assert_eq!(segment_files(dir.path()).len(), before - 1);
    // A failed purge does not poison.
    assert_eq!(wal.append(payload(301, 100)).await.unwrap(), 301);
    drop(wal);
    let wal = Wal::open(dir.path(), o).unwrap();
    let first = wal.first_lsn();
    assert!(first > 1 && first < 200);
    let all = read_all(&wal, first);
    assert_eq!(all.last().map(|r| r.0), Some(301));
    for (lsn, p) in &all {
        assert_eq!(*p, payload(*lsn, 100));
    }
    // Finishing the purge later works.
    wal.purge_below(200).await.unwrap();
    assert!(wal.first_lsn() > first && wal.first_lsn() <= 200);
    scenario.teardown();
}

async fn interrupted_restart_leaves_a_suffix_and_can_be_repeated(b: Backend) {
    let scenario = FailScenario::setup();
    let (dir, o, wal) = three_hundred_records(b).await;
    // "Crash" after the first deletion: the failure poisons the log.
    fail::cfg("wal::restart_between", "return").unwrap();
    assert!(wal.restart_at(1000).await.is_err());
    fail::remove("wal::restart_between");
    assert!(wal.append(&b"x"[..]).await.unwrap_err().is_poisoned());
    drop(wal);
    // What is left is a consistent suffix of the old log, never a mix.
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    let first = wal.first_lsn();
    assert!(first > 1, "the oldest segment went first");
    assert_eq!(wal.last_lsn(), 300);
    for (lsn, p) in read_all(&wal, first) {
        assert_eq!(p, payload(lsn, 100));
    }
    // The caller repeats the restart.
    wal.restart_at(1000).await.unwrap();
    assert_eq!(wal.append(&b"y"[..]).await.unwrap(), 1000);
    drop(wal);
    let wal = Wal::open(dir.path(), o).unwrap();
    assert_eq!(read_all(&wal, 1000), vec![(1000, b"y".to_vec())]);
    scenario.teardown();
}

/// Interrupt truncate_after after its first step: the log must reopen with
/// records 1..=cut intact and a dense prefix of the rest (never a hole).
async fn check_interrupted_truncate(
    b: Backend,
    o: tashkent_wal::WalOptions,
    n: u64,
    len: usize,
    cut: u64,
) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    let tickets: Vec<_> = (1..=n)
        .map(|i| wal.submit(payload(i, len)).unwrap())
        .collect();
    for t in tickets {
        t.await.unwrap();
    }
    fail::cfg("wal::truncate_step", "1*off->return").unwrap();
    assert!(wal.truncate_after(cut).await.is_err());
    fail::remove("wal::truncate_step");
    // Interrupted truncation is fatal for the handle (LSNs were reassigned).
    assert!(wal.append(&b"x"[..]).await.unwrap_err().is_poisoned());
    drop(wal);
    let wal = Wal::open(dir.path(), o).unwrap_or_else(|e| panic!("{b:?}: reopen failed: {e}"));
    let last = wal.last_lsn();
    assert!(last >= cut && last < n, "{b:?}: last {last}");
    let all = read_all(&wal, 1);
    assert_eq!(all.len() as u64, last);
    for (lsn, p) in all {
        assert_eq!(p, payload(lsn, len), "{b:?}: LSN {lsn}");
    }
    // And truncating again completes the job.
    wal.truncate_after(cut).await.unwrap();
    assert_eq!(wal.append(&b"next"[..]).await.unwrap(), cut + 1);
}

async fn interrupted_truncate_leaves_a_prefix(b: Backend) {
    let scenario = FailScenario::setup();
    // Across many small segments: deleted newest-first.
    check_interrupted_truncate(b, small_segments(b, 4096), 300, 100, 20).await;
    // A tail of > 4 MiB in one segment: zeroed in chunks, last chunk first.
    check_interrupted_truncate(b, opts(b), 600, 16 << 10, 20).await;
    scenario.teardown();
}

both_backends!(
    callbacks_of_a_poisoned_batch_run_outside_the_lock,
    a_stalled_fsync_fails_the_log_and_acknowledges_nothing_after,
    a_stall_in_a_deferred_round_answers_in_lsn_order,
    close_during_a_hang_returns_at_the_stall,
    a_failed_group_behind_unsynced_records_is_answered_after_them,
    fsync_failure_poisons_forever,
    deferred_sync_failure_fails_the_unsynced_and_poisons,
    failed_group_and_everything_queued_get_errors_never_acks,
    disk_full_fails_the_whole_group,
    short_writes_are_completed,
    failed_segment_roll_poisons_and_log_reopens,
    failed_zeroes_ahead_poison_and_lose_nothing,
    purge_interrupted_between_deletions_loses_nothing,
    interrupted_restart_leaves_a_suffix_and_can_be_repeated,
    interrupted_truncate_leaves_a_prefix,
);
