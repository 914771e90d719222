//! `Durability::Deferred`: appends wait in the queue for a round that
//! writes and syncs them all, which runs when someone waits for one, when a
//! log operation or close is queued, when the queue is long, and at the
//! latest `max_delay` after the first; segments are synced before a roll.
//! Run against both backends.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use tashkent_wal::{Backend, Durability, Wal, WalOptions};

fn deferred(b: Backend, max_delay: Duration) -> WalOptions {
    WalOptions {
        durability: Durability::Deferred { max_delay },
        ..opts(b)
    }
}

/// Long enough that nothing in a test is synced by the clock.
const NEVER: Duration = Duration::from_secs(3600);

/// Waits (a few seconds at most) until `cond` holds.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn synced_when_waited_for(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), deferred(b, NEVER)).unwrap();
    let tickets: Vec<_> = (1..=20u64)
        .map(|i| wal.submit(payload(i, 100)).unwrap())
        .collect();
    // Not synced: nobody asked and the delay is far off.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(wal.durable_lsn(), 0);
    assert_eq!(wal.stats().groups, 0, "no fdatasync yet");
    // Asking for one record syncs everything written.
    tokio::time::timeout(Duration::from_secs(10), wal.wait_durable(5))
        .await
        .expect("wait_durable hurries the sync")
        .unwrap();
    assert_eq!(wal.durable_lsn(), 20);
    for (i, t) in tickets.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), i as u64 + 1);
    }
    // The durable records are readable.
    let all = read_all(&wal, 1);
    assert_eq!(all.len(), 20);
    for (lsn, p) in all {
        assert_eq!(p, payload(lsn, 100));
    }
}

async fn synced_after_the_delay_unasked(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), deferred(b, Duration::from_millis(20))).unwrap();
    let ticket = wal.submit(payload(1, 10)).unwrap();
    let lsn = tokio::time::timeout(Duration::from_secs(10), ticket)
        .await
        .expect("a deferred record is synced within its delay")
        .unwrap();
    assert_eq!(lsn, 1);
    assert_eq!(wal.durable_lsn(), 1);
}

async fn rolls_truncates_and_closes_synced(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let o = WalOptions {
        segment_size: 4096,
        ..deferred(b, NEVER)
    };
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    for i in 1..=200u64 {
        drop(wal.submit(payload(i, 100)).unwrap());
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(wal.durable_lsn(), 0);
    // A truncate runs at once, after a round that writes and syncs what
    // was queued before it (rolling segments on the way).
    wal.truncate_after(150).await.unwrap();
    assert!(segment_files(dir.path()).len() > 3);
    assert_eq!(wal.durable_lsn(), 150);
    assert_eq!(wal.submit(payload(1151, 100)).unwrap().lsn, 151);
    wal.close().await.unwrap();
    // Close synced the rest: all of it is there after reopening.
    let wal = Wal::open(dir.path(), o).unwrap();
    let all = read_all(&wal, 1);
    assert_eq!(all.len(), 151);
    for (lsn, p) in all {
        let key = if lsn == 151 { 1151 } else { lsn };
        assert_eq!(p, payload(key, 100));
    }
}

async fn a_long_queue_starts_a_round(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), deferred(b, NEVER)).unwrap();
    // More appends than a round lets wait: memory between rounds is
    // bounded even when nobody waits and the delay is far off.
    for i in 1..=5000u64 {
        drop(wal.submit(payload(i, 10)).unwrap());
    }
    eventually("a round ran", || wal.durable_lsn() >= 4096).await;
}

async fn every_group_is_unchanged(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    // The default syncs each group before acknowledging it: the append is
    // durable when it resolves, without anyone waiting for it.
    assert_eq!(wal.append(payload(1, 10)).await.unwrap(), 1);
    assert_eq!(wal.durable_lsn(), 1);
    assert_eq!(wal.stats().groups, 1);
}

both_backends!(
    synced_when_waited_for,
    synced_after_the_delay_unasked,
    rolls_truncates_and_closes_synced,
    a_long_queue_starts_a_round,
    every_group_is_unchanged,
);
