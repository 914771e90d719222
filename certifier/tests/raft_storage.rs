//! The WAL-backed raft storage (`tashkent_certifier::raft`) against
//! openraft's own storage test suite, plus what the suite cannot check:
//! reopening from disk, and applying real certifier entries.

mod raft_common;

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tashkent_certifier::raft::{LogStore, StateMachine, TypeConfig};
use tashkent_certifier::Limits;
use tashkent_wal::WalOptions;
use tempfile::TempDir;

/// Small segments, so purge and truncate cross segment boundaries.
fn wal_opts() -> WalOptions {
    WalOptions {
        segment_size: 8192,
        ..WalOptions::default()
    }
}

/// A log store and a state machine in a fresh temporary directory, which
/// lives as long as the guard.
struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = LogStore::open(&dir.path().join("log"), wal_opts()).expect("open log store");
        let sm = StateMachine::open(&dir.path().join("sm"), Limits::default()).expect("open sm");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

mod on_disk {
    //! Reopening: what openraft's suite (which never reopens) cannot see.

    use bytes::Bytes;
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
    use openraft::{EntryPayload, RaftLogReader, RaftSnapshotBuilder, Vote};
    use tashkent_certifier::raft::types::Entry;
    use tashkent_certifier::raft::types::LogId;
    use tashkent_certifier::raft::{Command, LogStore, Response, StateMachine};
    use tashkent_certifier::Limits;

    use super::wal_opts;

    /// A log id proposed by node 0 (the suite's node).
    fn log_id(term: u64, index: u64) -> LogId {
        tashkent_certifier::raft::entry::log_id(term, 0, index)
    }

    fn blank(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(entries: &[Entry]) -> Vec<(u64, u64)> {
        entries
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn log_vote_truncate_and_purge_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = LogStore::open(dir.path(), wal_opts()).unwrap();
            log.save_vote(&Vote::new(3, 2)).await.unwrap();
            log.blocking_append((0..300).map(|i| blank(1 + i / 100, i)))
                .await
                .unwrap();
            // A new leader overwrites the tail from 250 on.
            log.truncate(log_id(3, 250)).await.unwrap();
            log.blocking_append((250..260).map(|i| blank(4, i)))
                .await
                .unwrap();
            // The committed id is written with the next purge or vote.
            log.save_committed(Some(log_id(4, 255))).await.unwrap();
            log.purge(log_id(2, 199)).await.unwrap();
            log.save_committed(Some(log_id(4, 259))).await.unwrap();
        }
        let mut log = LogStore::open(dir.path(), wal_opts()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(4, 255)));
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(2, 199)));
        assert_eq!(st.last_log_id, Some(log_id(4, 259)));
        let all = log.try_get_log_entries(0..).await.unwrap();
        assert_eq!(all.len(), 60, "200..260 after the purge");
        assert_eq!(indexes(&all)[0], (3, 200));
        assert_eq!(indexes(&all)[49], (3, 249));
        assert_eq!(indexes(&all)[50], (4, 250));
        // The physical purge removed whole segments below the pointer
        // (about 170 blank entries fit in one 8 KiB segment).
        let first = log.wal().first_lsn();
        assert!(first > 1 && first <= 200, "first LSN {first}");
    }

    /// A vote whose write hangs (a hung disk) fails the raft log after the
    /// WAL's stall timeout, as a WAL write would: the vote is refused (so
    /// openraft stops the node's raft core), the failure is recorded for
    /// `log_watch`, no later meta write runs beside the hung one, and the
    /// log is not opened again until the hung write has returned.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_vote_whose_write_hangs_fails_the_raft_log_after_the_stall_timeout() {
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let first = Vote::new(1, 2);
        LogStore::open(dir.path(), wal_opts())
            .unwrap()
            .save_vote(&first)
            .await
            .unwrap();
        let limit = Duration::from_secs(1);
        let opts = || tashkent_wal::WalOptions {
            stall_timeout: Some(limit),
            ..wal_opts()
        };
        let mut log = LogStore::open(dir.path(), opts()).unwrap();
        let failure = log.failure();
        assert!(failure.get().is_none());
        // The meta file is written through a temporary file beside it.
        // Made a FIFO, opening it to write blocks until someone reads it,
        // as a write to a frozen disk does (`HungMetaWrite`).
        let hung = crate::raft_common::HungMetaWrite::under(dir.path());
        let started = Instant::now();
        let e = log.save_vote(&Vote::new(2, 2)).await.unwrap_err();
        let waited = started.elapsed();
        assert!(
            waited >= limit && waited < limit * 10,
            "refused after {waited:?}"
        );
        assert!(e.to_string().contains("raft-meta"), "{e}");
        assert!(
            matches!(
                failure.get().as_deref(),
                Some(tashkent_wal::WalError::Stalled { .. })
            ),
            "{:?}",
            failure.get()
        );
        // Refused at once from now on, without a write.
        let started = Instant::now();
        let again = log.save_vote(&Vote::new(3, 2)).await.unwrap_err();
        assert!(started.elapsed() < limit, "{again}");
        assert!(again.to_string().contains("raft-meta"), "{again}");
        // Not opened again while the hung write may still land (the
        // failure's handle holds the WAL too).
        drop((log, failure));
        let refused = LogStore::open(dir.path(), opts()).err().expect("opened");
        assert!(
            refused.to_string().contains("has not returned"),
            "{refused}"
        );
        // Let the hung write go on: it opens the FIFO, writes into it and
        // fails to sync it, so the meta file is never replaced.
        drop(hung);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut log = loop {
            match LogStore::open(dir.path(), opts()) {
                Ok(log) => break log,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("not opened once the write returned: {e}"),
            }
        };
        assert_eq!(log.read_vote().await.unwrap(), Some(first));
    }

    /// A leader's committed id can be written (with a vote or a purge)
    /// before its own flush of those entries returns, so a crash can leave
    /// the log ending before it: the store then says the log's end is
    /// committed, not an id past it (openraft would refuse to start).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_committed_id_past_the_log_is_its_end_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = LogStore::open(dir.path(), wal_opts()).unwrap();
            log.blocking_append((0..10).map(|i| blank(1, i)))
                .await
                .unwrap();
            // Committed through 14 by the followers; 10..15 never reached
            // this disk before the crash.
            log.save_committed(Some(log_id(1, 14))).await.unwrap();
            log.save_vote(&Vote::new_committed(1, 0)).await.unwrap();
        }
        let mut log = LogStore::open(dir.path(), wal_opts()).unwrap();
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 9)));
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id, Some(log_id(1, 9)));

        // Nothing in the log, nothing purged: no committed id.
        let empty = tempfile::tempdir().unwrap();
        {
            let mut log = LogStore::open(empty.path(), wal_opts()).unwrap();
            log.save_committed(Some(log_id(1, 3))).await.unwrap();
            log.save_vote(&Vote::new_committed(1, 0)).await.unwrap();
        }
        let mut log = LogStore::open(empty.path(), wal_opts()).unwrap();
        assert_eq!(log.read_committed().await.unwrap(), None);
    }

    /// A leader of a group of several voters restarts as a follower: its
    /// own committed vote reads back uncommitted, in the same term, so the
    /// next leader is elected in a new term (`LogStore::start_as_follower`);
    /// another node's committed vote is left as it is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_restarts_as_a_follower_of_its_term() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = LogStore::open(dir.path(), wal_opts()).unwrap();
            log.save_vote(&Vote::new_committed(4, 2)).await.unwrap();
        }
        let mut log = LogStore::open(dir.path(), wal_opts()).unwrap();
        log.start_as_follower(3);
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(Vote::new_committed(4, 2)),
            "another node's leadership"
        );
        log.start_as_follower(2);
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 2)));
        drop(log);
        let mut log = LogStore::open(dir.path(), wal_opts()).unwrap();
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(Vote::new_committed(4, 2)),
            "only in memory"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn purge_past_the_end_then_append_restarts_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = LogStore::open(dir.path(), wal_opts()).unwrap();
            log.blocking_append((0..10).map(|i| blank(1, i)))
                .await
                .unwrap();
            // A snapshot up to 1000 arrived: everything is purged.
            log.purge(log_id(2, 1000)).await.unwrap();
            let st = log.get_log_state().await.unwrap();
            assert_eq!(st.last_log_id, Some(log_id(2, 1000)));
            assert!(log.try_get_log_entries(0..).await.unwrap().is_empty());
            // Appending 1002 would leave a hole: refused.
            assert!(log.blocking_append([blank(2, 1002)]).await.is_err());
            log.blocking_append((1001..1005).map(|i| blank(2, i)))
                .await
                .unwrap();
            assert_eq!(log.wal().first_lsn(), 1002);
        }
        let mut log = LogStore::open(dir.path(), wal_opts()).unwrap();
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(2, 1000)));
        assert_eq!(st.last_log_id, Some(log_id(2, 1004)));
        let got = log.try_get_log_entries(1000..).await.unwrap();
        assert_eq!(
            indexes(&got),
            vec![(2, 1001), (2, 1002), (2, 1003), (2, 1004)]
        );
        log.blocking_append([blank(3, 1005)]).await.unwrap();
    }

    fn certify(term: u64, index: u64, id: &str, snapshot: u64, key: &str) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(super::raft_common::certify(id, snapshot, key)),
        }
    }

    fn report(index: u64, oldest_snapshot: u64, applied: u64) -> Entry {
        Entry {
            log_id: log_id(1, index),
            payload: EntryPayload::Normal(Command::Report {
                replica: 1,
                applied,
                oldest_snapshot,
            }),
        }
    }

    /// A snapshot of `sm` now.
    async fn snapshot_of(
        sm: &mut StateMachine,
    ) -> openraft::storage::Snapshot<tashkent_certifier::raft::TypeConfig> {
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    }

    /// A new state machine in `dir` that installed a snapshot of `sm`.
    async fn snapshot_into(sm: &mut StateMachine, dir: &std::path::Path) -> StateMachine {
        install_into(snapshot_of(sm).await, dir).await
    }

    /// A new state machine in `dir` that installed `snap`.
    async fn install_into(
        snap: openraft::storage::Snapshot<tashkent_certifier::raft::TypeConfig>,
        dir: &std::path::Path,
    ) -> StateMachine {
        let mut other = StateMachine::open(dir, Limits::default()).unwrap();
        other
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        other
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn applying_certifies_and_a_snapshot_carries_the_certifier() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut sm = StateMachine::open(d1.path(), Limits::default()).unwrap();
        let r = sm
            .apply([
                blank(1, 0),
                certify(1, 1, "a", 0, "k1"),
                certify(1, 2, "b", 0, "k2"),
                // Concurrent with "a" on k1: first committer wins.
                certify(1, 3, "c", 0, "k1"),
                // A retry of "a" (say, to a new leader): same version, none new.
                certify(2, 4, "a", 0, "k1"),
                certify(2, 5, "d", 2, "k3"),
                report(6, 1, 2),
            ])
            .await
            .unwrap();
        assert_eq!(r[0], Response::Applied);
        assert_eq!(r[1], Response::Committed { version: 1 });
        assert_eq!(r[2], Response::Committed { version: 2 });
        assert!(
            matches!(
                &r[3],
                Response::Aborted {
                    conflict_version: 1,
                    ..
                }
            ),
            "{:?}",
            r[3]
        );
        assert_eq!(r[4], Response::Committed { version: 1 });
        assert_eq!(r[5], Response::Committed { version: 3 });
        assert_eq!(r[6], Response::Horizon { horizon: 1 });
        assert_eq!(sm.certifier().latest(), 3);

        // Install on a new node, then feed both the same entries: same answers.
        let mut other = snapshot_into(&mut sm, d2.path()).await;
        assert_eq!(other.last_applied(), Some(log_id(1, 6)));
        assert_eq!(other.certifier().image(), sm.certifier().image());
        let next = || {
            [
                // Conflicts with version 2 (k2), snapshot 1 is in the window.
                certify(3, 7, "e", 1, "k2"),
                // Below the horizon (1): too old.
                certify(3, 8, "f", 0, "k9"),
                certify(3, 9, "g", 3, "k2"),
                // Retry of "d": its first answer.
                certify(3, 10, "d", 2, "k3"),
            ]
        };
        let a = sm.apply(next()).await.unwrap();
        let b = other.apply(next()).await.unwrap();
        assert_eq!(a, b);
        assert!(matches!(
            &a[0],
            Response::Aborted {
                conflict_version: 2,
                ..
            }
        ));
        assert!(matches!(
            &a[1],
            Response::Aborted {
                conflict_version: 0,
                ..
            }
        ));
        assert_eq!(a[2], Response::Committed { version: 4 });
        assert_eq!(a[3], Response::Committed { version: 3 });

        // The installed snapshot is on disk: a restart starts from it.
        drop(other);
        let mut reopened = StateMachine::open(d2.path(), Limits::default()).unwrap();
        let (applied, _) = reopened.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 6)));
        assert_eq!(reopened.certifier().latest(), 3);
        let again = reopened.apply(next()).await.unwrap();
        assert_eq!(again, a, "replaying the log after the snapshot");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_is_certified_in_its_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path(), Limits::default()).unwrap();
        let rec = super::raft_common::record;
        let batch = Entry {
            log_id: log_id(1, 0),
            payload: EntryPayload::Normal(Command::CertifyBatch {
                records: vec![
                    rec("a", 0, "k1"),
                    // Same row, same snapshot: the first in the batch wins.
                    rec("b", 0, "k1"),
                    rec("c", 0, "k2"),
                    // A retry inside the same batch: the first answer.
                    rec("a", 0, "k1"),
                    Bytes::from_static(b"garbage"),
                ],
            }),
        };
        let r = sm.apply([batch]).await.unwrap();
        let [Response::Batch(answers)] = &r[..] else {
            panic!("{r:?}")
        };
        assert_eq!(answers[0], Response::Committed { version: 1 });
        assert!(
            matches!(
                answers[1],
                Response::Aborted {
                    conflict_version: 1,
                    ..
                }
            ),
            "{:?}",
            answers[1]
        );
        assert_eq!(answers[2], Response::Committed { version: 2 });
        assert_eq!(answers[3], Response::Committed { version: 1 });
        assert!(matches!(answers[4], Response::Rejected { .. }));
        assert_eq!(sm.certifier().latest(), 2);
    }

    fn part(index: u64, tag: u64, piece: Bytes, last: bool) -> Entry {
        Entry {
            log_id: log_id(1, index),
            payload: EntryPayload::Normal(Command::Part { tag, piece, last }),
        }
    }

    /// A record in parts: certified when its last piece is applied, also
    /// by a node that got the earlier pieces in a snapshot, or after a
    /// restart from one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_in_parts_certifies_at_its_last_piece_across_a_snapshot() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut sm = StateMachine::open(d1.path(), Limits::default()).unwrap();
        let rec = super::raft_common::record("big", 0, "kb");
        let (a, b, c) = (rec.slice(..5), rec.slice(5..9), rec.slice(9..));
        let r = sm
            .apply([
                part(0, 7, a, false),
                // Another record's pieces and a whole record in between.
                part(1, 8, Bytes::from_static(b"abandoned"), false),
                certify(1, 2, "x", 0, "kx"),
                part(3, 7, b, false),
            ])
            .await
            .unwrap();
        assert_eq!(r[0], Response::Applied);
        assert_eq!(r[2], Response::Committed { version: 1 });
        let mut other = snapshot_into(&mut sm, d2.path()).await;
        let last = || [part(4, 7, c.clone(), true), part(5, 9, Bytes::new(), true)];
        let x = sm.apply(last()).await.unwrap();
        let y = other.apply(last()).await.unwrap();
        assert_eq!(x, y);
        assert_eq!(x[0], Response::Committed { version: 2 });
        // A last piece without its earlier ones: lost (the client
        // retries), on every node.
        assert!(matches!(x[1], Response::Lost { .. }), "{:?}", x[1]);
        drop(other);
        let mut reopened = StateMachine::open(d2.path(), Limits::default()).unwrap();
        assert_eq!(reopened.apply(last()).await.unwrap(), x, "after a restart");
    }

    fn chunk(index: u64, tag: u64, piece: Bytes, last: bool) -> Entry {
        Entry {
            log_id: log_id(1, index),
            payload: EntryPayload::Normal(Command::Chunk { tag, piece, last }),
        }
    }

    /// A writeset in chunks: certified when its last chunk is applied,
    /// also by a node that got the earlier chunks in a snapshot, or after
    /// a restart from one, and kept in the window by its keys.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writeset_in_chunks_certifies_at_its_last_chunk_across_a_snapshot() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut sm = StateMachine::open(d1.path(), Limits::default()).unwrap();
        let mut ws =
            tashkent_certifier::record::decode(0, &super::raft_common::record("big", 0, "kb"))
                .unwrap();
        ws.items = (0..30u32)
            .map(|i| tashkent_certifier::Item {
                row: Bytes::from(vec![i as u8; 1000]),
                ..tashkent_certifier::writeset::item(
                    "accounts",
                    tashkent_certifier::Op::Update,
                    format!("k{i}").into_bytes(),
                )
            })
            .collect();
        let pieces = tashkent_certifier::raft::chunks::pieces(ws, 4000);
        assert!(pieces.len() >= 4, "{} pieces", pieces.len());
        let n = pieces.len() as u64;
        let early: Vec<Entry> = pieces[..pieces.len() - 1]
            .iter()
            .enumerate()
            .map(|(i, p)| chunk(2 + i as u64, 7, p.clone(), false))
            .collect();
        let mut entries = vec![
            // Another writeset's first chunk, and a whole one in between.
            chunk(0, 8, pieces[0].clone(), false),
            certify(1, 1, "x", 0, "kx"),
        ];
        entries.extend(early);
        let r = sm.apply(entries).await.unwrap();
        assert_eq!(r[1], Response::Committed { version: 1 });
        for (i, answer) in r.iter().enumerate().filter(|(i, _)| *i != 1) {
            assert_eq!(*answer, Response::Applied, "chunk {i}");
        }
        let mut other = snapshot_into(&mut sm, d2.path()).await;
        let last = || {
            [
                chunk(n + 1, 7, pieces[pieces.len() - 1].clone(), true),
                // A last chunk whose earlier ones were never applied.
                chunk(n + 2, 9, pieces[pieces.len() - 1].clone(), true),
                // Writes k5 after the big one's snapshot: a conflict.
                certify(1, n + 3, "late", 1, "k5"),
            ]
        };
        let x = sm.apply(last()).await.unwrap();
        let y = other.apply(last()).await.unwrap();
        assert_eq!(x, y);
        assert_eq!(x[0], Response::Committed { version: 2 });
        assert!(matches!(x[1], Response::Lost { .. }), "{:?}", x[1]);
        assert!(
            matches!(
                x[2],
                Response::Aborted {
                    conflict_version: 2,
                    ..
                }
            ),
            "{:?}",
            x[2]
        );
        drop(other);
        let mut reopened = StateMachine::open(d2.path(), Limits::default()).unwrap();
        assert_eq!(reopened.apply(last()).await.unwrap(), x, "after a restart");
    }

    /// A large version stays in the window (and in snapshots) by its keys
    /// only: a node that installed the snapshot still finds the conflict.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_version_is_kept_in_the_window_by_its_keys() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut sm = StateMachine::open(d1.path(), Limits::default()).unwrap();
        let mut ws =
            tashkent_certifier::record::decode(0, &super::raft_common::record("large", 0, "k0"))
                .unwrap();
        let row = Bytes::from(vec![7u8; 600 << 10]);
        ws.items = ["k1", "k2"]
            .map(|k| tashkent_certifier::Item {
                row: row.clone(),
                ..tashkent_certifier::writeset::item(
                    "accounts",
                    tashkent_certifier::Op::Update,
                    k.as_bytes().to_vec(),
                )
            })
            .to_vec();
        let big = tashkent_certifier::record::encode(&ws).freeze();
        assert!(big.len() > tashkent_certifier::raft::parts::PART_BYTES);
        let r = sm
            .apply([Entry {
                log_id: log_id(1, 0),
                payload: EntryPayload::Normal(Command::Certify { record: big }),
            }])
            .await
            .unwrap();
        assert_eq!(r[0], Response::Committed { version: 1 });
        let snap = snapshot_of(&mut sm).await;
        let size = snap.snapshot.len().await.unwrap();
        assert!(size < 64 << 10, "the snapshot holds the rows: {size} bytes");
        let mut other = install_into(snap, d2.path()).await;
        let late = || [certify(1, 1, "late", 0, "k2")];
        let (a, b) = (
            sm.apply(late()).await.unwrap(),
            other.apply(late()).await.unwrap(),
        );
        assert_eq!(a, b);
        assert!(
            matches!(
                a[0],
                Response::Aborted {
                    conflict_version: 1,
                    ..
                }
            ),
            "{:?}",
            a[0]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_entries_are_rejected_answers_not_storage_failures() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path(), Limits::default()).unwrap();
        let garbage = Entry {
            log_id: log_id(1, 0),
            payload: EntryPayload::Normal(Command::Certify {
                record: Bytes::from_static(b"not a record"),
            }),
        };
        let r = sm
            .apply([garbage, certify(1, 1, "x", 5, "k"), report(2, 0, 9)])
            .await
            .unwrap();
        assert!(
            r.iter().all(|r| matches!(r, Response::Rejected { .. })),
            "{r:?}"
        );
        assert_eq!(sm.certifier().latest(), 0);
        assert_eq!(sm.last_applied(), Some(log_id(1, 2)));
    }

    /// A build that started before an install and ends after it does not
    /// replace the installed (newer) snapshot on disk: the raft log may
    /// already be purged through that one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_older_build_does_not_replace_an_installed_snapshot() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut leader = StateMachine::open(d1.path(), Limits::default()).unwrap();
        let mut node = StateMachine::open(d2.path(), Limits::default()).unwrap();
        let first = [blank(1, 0), certify(1, 1, "a", 0, "k1")];
        leader.apply(first.clone()).await.unwrap();
        node.apply(first).await.unwrap();
        // The node starts a build at index 1 ...
        let mut build = node.get_snapshot_builder().await;
        // ... and installs the leader's snapshot at 3 before it ends.
        leader
            .apply([certify(1, 2, "b", 1, "k2"), certify(1, 3, "c", 2, "k3")])
            .await
            .unwrap();
        let snap = snapshot_of(&mut leader).await;
        node.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        let built = build.build_snapshot().await.unwrap();
        assert_eq!(built.meta.last_log_id, Some(log_id(1, 3)), "the newer one");
        drop(node);
        let mut reopened = StateMachine::open(d2.path(), Limits::default()).unwrap();
        let (applied, _) = reopened.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 3)));
        assert_eq!(reopened.certifier().latest(), 3);
    }

    /// A purge through a snapshot waits until that snapshot is on disk
    /// (openraft purges through one it installs as soon as it hands it to
    /// the state machine).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_waits_for_the_snapshot_it_follows_to_be_kept() {
        let (d1, d2, d3) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let mut leader = StateMachine::open(d1.path(), Limits::default()).unwrap();
        leader
            .apply([blank(1, 0), certify(1, 1, "a", 0, "k1")])
            .await
            .unwrap();
        let snap = snapshot_of(&mut leader).await;
        let mut node = StateMachine::open(d2.path(), Limits::default()).unwrap();
        let mut log = LogStore::open(d3.path(), wal_opts()).unwrap();
        log.purge_behind(node.snapshot_writes().kept());
        let mut purge = tokio::spawn(async move {
            log.purge(log_id(1, 1)).await.unwrap();
            log
        });
        let waited = tokio::time::timeout(std::time::Duration::from_millis(300), &mut purge).await;
        assert!(waited.is_err(), "purged before the snapshot was kept");
        node.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        let mut log = tokio::time::timeout(std::time::Duration::from_secs(10), purge)
            .await
            .expect("the purge goes on once the snapshot is kept")
            .unwrap();
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 1)));
    }

    /// A purge of `log` through `index`, started and still waiting after
    /// a while: what it answered, and the log, once it ends.
    async fn waiting_purge(
        mut log: LogStore,
        index: u64,
    ) -> tokio::task::JoinHandle<(Result<(), openraft::StorageError<u64>>, LogStore)> {
        let mut purge = tokio::spawn(async move {
            let r = log.purge(log_id(1, index)).await;
            (r, log)
        });
        let waited = tokio::time::timeout(std::time::Duration::from_millis(300), &mut purge).await;
        assert!(waited.is_err(), "purged past the snapshot on disk");
        purge
    }

    /// The purge `purge` refused, once `why` (what the test did) ended it;
    /// the log it left.
    async fn refused(
        purge: tokio::task::JoinHandle<(Result<(), openraft::StorageError<u64>>, LogStore)>,
        why: &str,
    ) -> LogStore {
        let (purged, log) = tokio::time::timeout(std::time::Duration::from_secs(10), purge)
            .await
            .unwrap_or_else(|_| panic!("{why} did not end the wait"))
            .unwrap();
        purged.expect_err("nothing purged past the snapshot on disk");
        log
    }

    /// A log of blank entries 0..n in a fresh directory (kept by the
    /// guard) whose purges wait behind `sm`'s snapshots.
    async fn log_behind(sm: &StateMachine, n: u64) -> (LogStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(dir.path(), wal_opts()).unwrap();
        log.blocking_append((0..n).map(|i| blank(1, i)))
            .await
            .unwrap();
        log.purge_behind(sm.snapshot_writes().kept());
        (log, dir)
    }

    /// A purge waiting for a snapshot being installed is refused, the log
    /// left whole, when the install fails (the node stops: its log must
    /// still reach back to the snapshot it restarts from), however long
    /// the wait had been.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_behind_a_failed_install_is_refused() {
        use tokio::io::AsyncWriteExt;

        let d1 = tempfile::tempdir().unwrap();
        let mut node = StateMachine::open(d1.path(), Limits::default()).unwrap();
        let (log, _d2) = log_behind(&node, 3).await;
        let purge = waiting_purge(log, 1).await;

        let mut garbage =
            tashkent_certifier::raft::snapshot_file::SnapshotFile::receiving(d1.path()).unwrap();
        garbage.write_all(b"not a snapshot").await.unwrap();
        garbage.flush().await.unwrap();
        let meta = openraft::SnapshotMeta {
            last_log_id: Some(log_id(1, 1)),
            last_membership: Default::default(),
            snapshot_id: "garbage".into(),
        };
        node.install_snapshot(&meta, Box::new(garbage))
            .await
            .expect_err("a snapshot that does not parse is not installed");
        let mut log = refused(purge, "the failed install").await;
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, None);
        let entries = log.try_get_log_entries(0..3).await.unwrap();
        assert_eq!(indexes(&entries), vec![(1, 0), (1, 1), (1, 2)]);
    }

    /// A node stopping ends a purge waiting for a snapshot still being
    /// installed (the raft core waits in it, and its shutdown with it),
    /// without purging; a purge the snapshot on disk covers goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopping_ends_a_purge_waiting_for_a_snapshot() {
        let d1 = tempfile::tempdir().unwrap();
        let mut leader = StateMachine::open(d1.path(), Limits::default()).unwrap();
        leader
            .apply([blank(1, 0), certify(1, 1, "a", 0, "k1")])
            .await
            .unwrap();
        snapshot_of(&mut leader).await;
        let (mut log, _d2) = log_behind(&leader, 4).await;
        log.purge(log_id(1, 1))
            .await
            .expect("the snapshot on disk reaches index 1");
        let purge = waiting_purge(log, 3).await;
        leader.snapshot_writes().no_more_kept();
        let mut log = refused(purge, "stopping").await;
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 1)));
    }

    /// openraft's state machine worker drops the state machine when a
    /// command fails, and the install queued behind it with it: a purge
    /// waiting for that install ends, refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_state_machine_ends_a_purge_waiting_for_its_install() {
        let d1 = tempfile::tempdir().unwrap();
        let node = StateMachine::open(d1.path(), Limits::default()).unwrap();
        let (log, _d2) = log_behind(&node, 3).await;
        let purge = waiting_purge(log, 1).await;
        // The served node keeps its snapshot writes beyond the state
        // machine (to stop them), so the watch outlives the drop.
        let _held = node.snapshot_writes();
        drop(node);
        let mut log = refused(purge, "dropping the state machine").await;
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, None);
    }
}
