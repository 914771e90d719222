//! One conformance suite, run against both I/O backends (the macro at the
//! bottom instantiates every test once per backend).

#[macro_use]
mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::*;
use tashkent_wal::{Backend, Wal, WalError, WalOptions};

async fn append_read_reopen(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    assert_eq!(wal.stats().backend, b);
    assert_eq!(
        (wal.first_lsn(), wal.last_lsn(), wal.durable_lsn()),
        (1, 0, 0)
    );
    assert!(wal.read_from(1).unwrap().next().is_none());
    for i in 1..=100u64 {
        let lsn = wal
            .append(payload(i, (i as usize * 37) % 300))
            .await
            .unwrap();
        assert_eq!(lsn, i);
        assert!(wal.durable_lsn() >= i && wal.written_lsn() >= i);
    }
    let check = |wal: &Wal| {
        let all = read_all(wal, 1);
        assert_eq!(all.len(), 100);
        for (i, (lsn, p)) in all.iter().enumerate() {
            assert_eq!(*lsn, i as u64 + 1);
            assert_eq!(*p, payload(*lsn, (*lsn as usize * 37) % 300));
        }
        let tail = read_all(wal, 60);
        assert_eq!(tail.first().map(|r| r.0), Some(60));
        assert_eq!(tail.len(), 41);
    };
    check(&wal);
    wal.close().await.unwrap();

    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    assert_eq!(
        (
            wal.first_lsn(),
            wal.last_lsn(),
            wal.durable_lsn(),
            wal.written_lsn()
        ),
        (1, 100, 100, 100)
    );
    check(&wal);
    assert_eq!(wal.append(&b"more"[..]).await.unwrap(), 101);
    drop(wal); // Drop (not close) also flushes and stops the writer
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    assert_eq!(wal.last_lsn(), 101);
    assert_eq!(read_all(&wal, 101), vec![(101, b"more".to_vec())]);
}

async fn zero_byte_records(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    for i in 1..=10 {
        assert_eq!(wal.append(Vec::new()).await.unwrap(), i);
    }
    wal.close().await.unwrap();
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    assert_eq!(wal.last_lsn(), 10);
    let all = read_all(&wal, 1);
    assert_eq!(all.len(), 10);
    assert!(all.iter().all(|(_, p)| p.is_empty()));
}

async fn concurrent_appenders(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    const TASKS: u64 = 64;
    const EACH: u64 = 40;
    let mut handles = vec![];
    for t in 0..TASKS {
        let wal = wal.clone();
        handles.push(tokio::spawn(async move {
            let mut got = vec![];
            for i in 0..EACH {
                let key = t * 1000 + i;
                let lsn = wal
                    .append(payload(key, 64 + (key % 200) as usize))
                    .await
                    .unwrap();
                // An ack means durable.
                assert!(wal.durable_lsn() >= lsn);
                got.push((lsn, key));
            }
            got
        }));
    }
    let mut by_lsn = std::collections::BTreeMap::new();
    for h in handles {
        for (lsn, key) in h.await.unwrap() {
            assert!(
                by_lsn.insert(lsn, key).is_none(),
                "LSN {lsn} acknowledged twice"
            );
        }
    }
    let n = TASKS * EACH;
    assert_eq!(
        by_lsn.keys().copied().collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    let stats = wal.stats();
    assert_eq!(stats.appends, n);
    assert!(
        stats.groups < n / 2,
        "group commit should need far fewer fdatasyncs than appends: {stats:?}"
    );
    for (lsn, p) in read_all(&wal, 1) {
        let key = by_lsn[&lsn];
        assert_eq!(p, payload(key, 64 + (key % 200) as usize), "LSN {lsn}");
    }
}

async fn submit_pipelines_and_assigns_in_order(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    let tickets: Vec<_> = (0..500)
        .map(|i| wal.submit(payload(i, 10)).unwrap())
        .collect();
    // LSNs are assigned synchronously in submission order.
    assert_eq!(
        tickets.iter().map(|t| t.lsn).collect::<Vec<_>>(),
        (1..=500).collect::<Vec<_>>()
    );
    assert_eq!(wal.last_lsn(), 500);
    wal.wait_durable(500).await.unwrap();
    assert_eq!(wal.durable_lsn(), 500);
    assert_eq!(wal.written_lsn(), 500);
    for t in tickets {
        let lsn = t.lsn;
        assert_eq!(t.await.unwrap(), lsn);
    }
    wal.wait_durable(0).await.unwrap();
    assert!(matches!(
        wal.wait_durable(501).await,
        Err(WalError::InvalidLsn { .. })
    ));
}

/// `submit_many` queues its records in order after what `submit` queued,
/// across segment rolls, and a batch with one record too large queues
/// none of them.
async fn submit_many_queues_in_order_or_not_at_all(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small_segments(b, 4096)).unwrap();
    let first = wal.submit(payload(1, 10)).unwrap();
    let batch = |from: u64, n: u64| -> Vec<bytes::Bytes> {
        (from..from + n)
            .map(|k| payload(k, 40 + (k % 90) as usize).into())
            .collect()
    };
    assert_eq!(wal.submit_many(batch(2, 200)).unwrap(), 2);
    assert_eq!(wal.submit_many(Vec::new()).unwrap(), 202);
    assert_eq!(wal.last_lsn(), 201);
    let mut too_big = batch(202, 3);
    too_big[1] = vec![0u8; (256 << 20) + 1].into();
    assert!(matches!(
        wal.submit_many(too_big),
        Err(WalError::RecordTooLarge { .. })
    ));
    assert_eq!(wal.last_lsn(), 201);
    assert_eq!(wal.submit_many(batch(202, 5)).unwrap(), 202);
    wal.wait_durable(206).await.unwrap();
    assert_eq!(first.await.unwrap(), 1);
    assert!(segment_files(dir.path()).len() > 1, "the batches rolled");
    wal.close().await.unwrap();
    let wal = Wal::open(dir.path(), small_segments(b, 4096)).unwrap();
    let all = read_all(&wal, 1);
    assert_eq!(all.len(), 206);
    assert_eq!(all[0], (1, payload(1, 10)));
    for (lsn, p) in &all[1..] {
        assert_eq!(*p, payload(*lsn, 40 + (*lsn % 90) as usize), "LSN {lsn}");
    }
}

async fn large_records(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    // Default segment size (64 MiB): the 64 MiB record needs a segment of
    // its own, sized to fit it.
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    let sizes = [1usize << 20, 64 << 20, 100, 5 << 20];
    for (i, &len) in sizes.iter().enumerate() {
        assert_eq!(
            wal.append(payload(i as u64, len)).await.unwrap(),
            i as u64 + 1
        );
    }
    let too_big = vec![0u8; (256 << 20) + 1];
    assert!(matches!(
        wal.submit(too_big),
        Err(WalError::RecordTooLarge { .. })
    ));
    wal.close().await.unwrap();
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    assert_eq!(wal.last_lsn(), 4);
    for (lsn, p) in read_all(&wal, 1) {
        let i = (lsn - 1) as usize;
        assert!(p == payload(i as u64, sizes[i]), "record {lsn} differs");
    }
    assert!(segment_files(dir.path()).len() >= 2);
}

async fn segment_roll(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let o = small_segments(b, 4096);
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    // A mix of concurrent groups and a record bigger than a segment.
    let mut tickets = vec![];
    for i in 1..=300u64 {
        let len = if i == 150 { 10_000 } else { 100 };
        tickets.push(wal.submit(payload(i, len)).unwrap());
        if i % 7 == 0 {
            for t in tickets.drain(..) {
                t.await.unwrap();
            }
        }
    }
    for t in tickets {
        t.await.unwrap();
    }
    let files = segment_files(dir.path());
    assert!(
        files.len() > 5,
        "expected several segments, got {}",
        files.len()
    );
    assert_eq!(files[0].file_name().unwrap(), "00000000000000000001.wal");
    let check = |wal: &Wal| {
        let all = read_all(wal, 1);
        assert_eq!(all.len(), 300);
        for (lsn, p) in all {
            assert_eq!(p, payload(lsn, if lsn == 150 { 10_000 } else { 100 }));
        }
    };
    check(&wal);
    wal.close().await.unwrap();
    let wal = Wal::open(dir.path(), o).unwrap();
    check(&wal);
    assert_eq!(wal.append(&b"x"[..]).await.unwrap(), 301);
}

async fn truncate_after(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let o = small_segments(b, 4096);
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    for i in 1..=200u64 {
        wal.append(payload(i, 100)).await.unwrap();
    }
    let segs_before = segment_files(dir.path()).len();
    // Cut across several segments.
    wal.truncate_after(37).await.unwrap();
    assert_eq!(
        (wal.last_lsn(), wal.durable_lsn(), wal.written_lsn()),
        (37, 37, 37)
    );
    assert!(segment_files(dir.path()).len() < segs_before);
    assert_eq!(read_all(&wal, 1).len(), 37);
    assert_eq!(wal.append(&b"new 38"[..]).await.unwrap(), 38);
    assert_eq!(read_all(&wal, 38), vec![(38, b"new 38".to_vec())]);
    assert!(matches!(
        wal.truncate_after(39).await,
        Err(WalError::InvalidLsn { .. })
    ));
    wal.close().await.unwrap();

    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    assert_eq!(wal.last_lsn(), 38);
    let all = read_all(&wal, 1);
    assert_eq!(all[36], (37, payload(37, 100)));
    assert_eq!(all[37], (38, b"new 38".to_vec()));
    // Truncating everything: the log continues from 1.
    wal.truncate_after(0).await.unwrap();
    assert_eq!(wal.last_lsn(), 0);
    assert_eq!(wal.append(&b"again"[..]).await.unwrap(), 1);
    wal.close().await.unwrap();
    let wal = Wal::open(dir.path(), o).unwrap();
    assert_eq!(read_all(&wal, 1), vec![(1, b"again".to_vec())]);
}

async fn truncate_with_appends_in_flight(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    let before: Vec<_> = (1..=20u64)
        .map(|i| wal.submit(payload(i, 30)).unwrap())
        .collect();
    // Runs after the 20 queued appends; LSNs continue from 11 at once.
    let trunc = {
        let wal = wal.clone();
        tokio::spawn(async move { wal.truncate_after(10).await })
    };
    while wal.last_lsn() != 10 {
        tokio::task::yield_now().await;
    }
    let after = wal.submit(&b"eleven"[..]).unwrap();
    assert_eq!(after.lsn, 11);
    trunc.await.unwrap().unwrap();
    for t in before {
        t.await.unwrap();
    }
    after.await.unwrap();
    let all = read_all(&wal, 1);
    assert_eq!(all.len(), 11);
    assert_eq!(all[10], (11, b"eleven".to_vec()));
}

async fn purge(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let o = small_segments(b, 4096);
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    for i in 1..=300u64 {
        wal.append(payload(i, 100)).await.unwrap();
    }
    let before = segment_files(dir.path()).len();
    let reader_before = wal.read_from(1).unwrap();
    wal.purge_below(150).await.unwrap();
    let first = wal.first_lsn();
    assert!(first > 1 && first <= 150, "first_lsn {first}");
    assert!(segment_files(dir.path()).len() < before);
    assert!(matches!(
        wal.read_from(1),
        Err(WalError::Purged { lsn: 1, .. })
    ));
    // A reader created before the purge fails cleanly when it needs a
    // deleted segment (never returns wrong data).
    let mut n = 0;
    for r in reader_before {
        match r {
            Ok((lsn, p)) => {
                assert_eq!(p, payload(lsn, 100));
                n += 1;
            }
            Err(e) => {
                assert!(matches!(e, WalError::Purged { .. }), "{e}");
                break;
            }
        }
    }
    assert!(n < 300);
    let all = read_all(&wal, first);
    assert_eq!(all.len() as u64, 300 - first + 1);
    // Purging everything keeps the active segment.
    wal.purge_below(u64::MAX).await.unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
    let first2 = wal.first_lsn();
    wal.close().await.unwrap();

    let wal = Wal::open(dir.path(), o).unwrap();
    assert_eq!(wal.first_lsn(), first2);
    assert_eq!(wal.last_lsn(), 300);
    assert_eq!(read_all(&wal, first2).last().map(|r| r.0), Some(300));
    assert_eq!(wal.append(&b"x"[..]).await.unwrap(), 301);
    // Cannot truncate into what was purged.
    assert!(matches!(
        wal.truncate_after(first2 - 2).await,
        Err(WalError::InvalidLsn { .. })
    ));
}

async fn restart_at(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let o = small_segments(b, 4096);
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    for i in 1..=100u64 {
        wal.append(payload(i, 100)).await.unwrap();
    }
    assert!(segment_files(dir.path()).len() > 1);
    // Forward, past the end: the old records are gone, the next is 1000.
    wal.restart_at(1000).await.unwrap();
    assert_eq!(
        (wal.first_lsn(), wal.last_lsn(), wal.durable_lsn()),
        (1000, 999, 999)
    );
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert!(matches!(
        wal.read_from(1),
        Err(WalError::InvalidLsn { .. }) | Err(WalError::Purged { .. })
    ));
    assert!(matches!(
        wal.truncate_after(500).await,
        Err(WalError::InvalidLsn { .. })
    ));
    assert_eq!(wal.append(&b"a"[..]).await.unwrap(), 1000);
    assert_eq!(wal.append(&b"b"[..]).await.unwrap(), 1001);
    wal.close().await.unwrap();
    let wal = Wal::open(dir.path(), o.clone()).unwrap();
    assert_eq!((wal.first_lsn(), wal.last_lsn()), (1000, 1001));
    assert_eq!(
        read_all(&wal, 1000),
        vec![(1000, b"a".to_vec()), (1001, b"b".to_vec())]
    );
    // Backwards, with appends still in flight before it: they are written
    // first (queue order), then dropped with everything else.
    let pending = wal.submit(&b"c"[..]).unwrap();
    wal.restart_at(7).await.unwrap();
    assert_eq!(pending.await.unwrap(), 1002);
    assert_eq!(wal.submit(&b"seven"[..]).unwrap().await.unwrap(), 7);
    assert!(matches!(
        wal.restart_at(0).await,
        Err(WalError::InvalidLsn { .. })
    ));
    wal.close().await.unwrap();
    let wal = Wal::open(dir.path(), o).unwrap();
    assert_eq!(read_all(&wal, 7), vec![(7, b"seven".to_vec())]);
    assert_eq!(wal.append(&b"eight"[..]).await.unwrap(), 8);
}

async fn read_while_appending(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small_segments(b, 16 << 10)).unwrap();
    const N: u64 = 3000;
    let writers: Vec<_> = (0..4u64)
        .map(|t| {
            let wal = wal.clone();
            tokio::spawn(async move {
                for i in 0..N / 4 {
                    let ticket = wal.submit(payload(0, 50)).unwrap();
                    // Mostly fire-and-forget, with a wait now and then so
                    // that groups of many sizes occur.
                    if (i + t) % 10 == 0 {
                        ticket.await.unwrap();
                    }
                }
            })
        })
        .collect();
    let reader_wal = wal.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let mut r = reader_wal.read_from(1).unwrap();
        let mut expect = 1;
        while expect <= N {
            match r.next() {
                Some(rec) => {
                    let (lsn, p) = rec.unwrap();
                    assert_eq!(lsn, expect);
                    assert!(
                        lsn <= reader_wal.durable_lsn(),
                        "reader yielded a non-durable record"
                    );
                    assert_eq!(p, payload(0, 50));
                    expect += 1;
                }
                None => std::thread::yield_now(), // re-poll for more
            }
        }
        expect
    });
    for w in writers {
        w.await.unwrap();
    }
    wal.wait_durable(N).await.unwrap();
    assert_eq!(reader.await.unwrap(), N + 1);
}

async fn errors_after_close_and_lock(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), opts(b)),
        Err(WalError::Locked { .. })
    ));
    let other = wal.clone();
    wal.append(&b"a"[..]).await.unwrap();
    wal.close().await.unwrap();
    assert!(matches!(other.submit(&b"b"[..]), Err(WalError::Closed)));
    assert!(matches!(
        other.read_from(3),
        Err(WalError::InvalidLsn { .. })
    ));
    drop(other);
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    assert_eq!(wal.last_lsn(), 1);
    assert!(matches!(
        Wal::open(
            dir.path().join("x"),
            WalOptions {
                segment_size: 10,
                ..opts(b)
            }
        ),
        Err(WalError::Config(_))
    ));
}

async fn many_clones_dropped_concurrently(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    let done = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let mut hs = vec![];
    for i in 0..16u64 {
        let w = wal.clone();
        let done = done.clone();
        hs.push(tokio::spawn(async move {
            let lsn = w.append(payload(i, 8)).await.unwrap();
            done.lock().unwrap().insert(lsn);
        }));
    }
    drop(wal);
    for h in hs {
        h.await.unwrap();
    }
    assert_eq!(done.lock().unwrap().len(), 16);
    // All clones gone: the writer stopped and released the lock.
    let wal = Wal::open(dir.path(), opts(b)).unwrap();
    assert_eq!(wal.last_lsn(), 16);
}

/// `submit_then`: each callback is called once, in LSN order, with its
/// LSN, once that record is durable; tickets and callbacks mix.
async fn submit_then_calls_back_once_durable(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path(), opts(b)).unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tickets = Vec::new();
    for i in 1..=200u64 {
        if i % 3 == 0 {
            tickets.push(wal.submit(payload(i, 50)).unwrap());
            continue;
        }
        let (tx, w) = (tx.clone(), wal.clone());
        let lsn = wal
            .submit_then(payload(i, 50), move |r| {
                // Durable before the callback runs.
                let durable = w.durable_lsn();
                tx.send((r.unwrap(), durable)).unwrap();
            })
            .unwrap();
        assert_eq!(lsn, i);
    }
    drop(tx);
    let mut called = Vec::new();
    while let Some((lsn, durable)) = rx.recv().await {
        assert!(
            durable >= lsn,
            "record {lsn} called back at durable {durable}"
        );
        called.push(lsn);
    }
    let want: Vec<u64> = (1..=200).filter(|i| i % 3 != 0).collect();
    assert_eq!(called, want, "each once, in order");
    for t in tickets {
        t.await.unwrap();
    }
    assert_eq!(read_all(&wal, 1).len(), 200);
    // A refused append calls nobody back.
    let big = vec![0u8; WalOptions::default().max_record_size as usize + 1];
    let refused = wal.submit_then(big, |_| panic!("called back"));
    assert!(refused.is_err());
}

both_backends!(
    submit_then_calls_back_once_durable,
    append_read_reopen,
    zero_byte_records,
    concurrent_appenders,
    submit_pipelines_and_assigns_in_order,
    submit_many_queues_in_order_or_not_at_all,
    large_records,
    segment_roll,
    truncate_after,
    truncate_with_appends_in_flight,
    purge,
    restart_at,
    read_while_appending,
    errors_after_close_and_lock,
    many_clones_dropped_concurrently,
);

#[test]
fn auto_picks_io_uring_when_available() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts(Backend::Auto)).unwrap();
    let expect = if tashkent_wal::io_uring_available() {
        Backend::IoUring
    } else {
        Backend::Portable
    };
    assert_eq!(wal.stats().backend, expect);
}

#[test]
fn handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Wal>();
    send_sync::<WalError>();
    send::<tashkent_wal::WalReader>();
    send::<tashkent_wal::AppendTicket>();
}
