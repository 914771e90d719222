//! The state machine alone: what applied records, chunked writesets in
//! progress and installed snapshots keep alive.

use super::*;
use openraft::RaftSnapshotBuilder;

use crate::raft::entry::log_id;
use crate::writeset::item;
use crate::{Op, WRITESET_FORMAT_VERSION};

fn chunk(index: u64, piece: &Bytes, last: bool) -> Entry {
    Entry {
        log_id: log_id(1, 0, index),
        payload: EntryPayload::Normal(Command::Chunk {
            tag: 7,
            piece: piece.clone(),
            last,
        }),
    }
}

/// A writeset `txn_id` inserting `rows` rows of `row_bytes` bytes each
/// (row `i` all `i`, key `[i]`), to be proposed in chunks.
fn rows_writeset(txn_id: &'static [u8], rows: u8, row_bytes: usize) -> crate::Writeset {
    crate::Writeset {
        format_version: WRITESET_FORMAT_VERSION,
        txn_id: Bytes::from_static(txn_id),
        origin: 1,
        items: (0..rows)
            .map(|i| crate::Item {
                row: Bytes::from(vec![i; row_bytes]),
                ..item("t", Op::Insert, vec![i])
            })
            .collect(),
        ..crate::Writeset::default()
    }
}

/// `bytes` as they arrive on a follower: at the front of a message
/// 4 MiB larger; the message, and the slice of it that is `bytes`.
fn inside_a_larger_message(bytes: &[u8]) -> (Bytes, Bytes) {
    let mut message = bytes::BytesMut::from(bytes);
    message.resize(bytes.len() + (4 << 20), 0);
    let message = message.freeze();
    let slice = message.slice(..bytes.len());
    (message, slice)
}

/// A follower's records are slices of the message they came in (which
/// may carry a chunk's megabyte of rows): what the state machine keeps
/// after applying them — the window's records for snapshots, the
/// dedupe table's ids — must hold none of it.
#[tokio::test]
async fn applied_records_keep_no_message_alive() {
    let d = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(d.path(), Limits::default()).unwrap();
    let records = (0..3u8)
        .map(|i| {
            let ws = crate::Writeset {
                format_version: WRITESET_FORMAT_VERSION,
                txn_id: Bytes::copy_from_slice(&[b't', i]),
                origin: 1,
                items: vec![item("t", Op::Update, vec![i])],
                ..crate::Writeset::default()
            };
            record::encode(&ws).freeze()
        })
        .collect();
    let entry = Entry {
        log_id: log_id(1, 0, 1),
        payload: EntryPayload::Normal(Command::CertifyBatch { records }),
    };
    // The entry as a follower decodes it: out of a larger message.
    let (message, encoded) = inside_a_larger_message(&super::super::entry::encode(&entry).unwrap());
    let received = super::super::entry::decode_unplaced(&encoded).unwrap();
    drop(encoded);
    let received = Entry {
        log_id: entry.log_id,
        ..received
    };
    let answers = sm.apply([received]).await.unwrap();
    let versions: Vec<Response> = (1..=3)
        .map(|version| Response::Committed { version })
        .collect();
    assert_eq!(answers, [Response::Batch(versions)]);
    assert!(
        message.is_unique(),
        "the state machine still holds a slice of the message"
    );
}

/// The same for a writeset arriving in chunks: while it is assembled,
/// the first chunk's message stays alive for none of its header.
#[tokio::test]
async fn a_chunked_writeset_in_progress_keeps_no_message_alive() {
    let d = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(d.path(), Limits::default()).unwrap();
    let pieces = super::super::chunks::pieces(rows_writeset(b"chunked", 3, 1 << 10), 1 << 10);
    assert!(pieces.len() > 1);
    let (message, piece) = inside_a_larger_message(&pieces[0]);
    let first = chunk(1, &piece, false);
    drop(piece);
    assert_eq!(sm.apply([first]).await.unwrap(), [Response::Applied]);
    assert!(
        message.is_unique(),
        "the assembly holds a slice of the first chunk's message"
    );
    let n = pieces.len();
    for (i, p) in pieces.iter().enumerate().skip(1) {
        let done = sm
            .apply([chunk(i as u64 + 1, p, i == n - 1)])
            .await
            .unwrap();
        let want = if i == n - 1 {
            Response::Committed { version: 1 }
        } else {
            Response::Applied
        };
        assert_eq!(done, [want]);
    }
}

/// A follower that applied part of a stream installs a snapshot that
/// holds the same writeset's chunks: the spool keeps what it spools
/// again through a purge, and a snapshot of it can still be written
/// (the spool keeps one registration per tag; releasing the ones held
/// before after restoring the snapshot's took that one away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_installed_mid_stream_keeps_its_chunks_through_a_purge() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut leader = StateMachine::open(d1.path(), Limits::default()).unwrap();
    let mut follower = StateMachine::open(d2.path(), Limits::default()).unwrap();
    let pieces = super::super::chunks::pieces(rows_writeset(b"big", 12, 1 << 20), 1 << 20);
    let n = pieces.len();
    for (i, p) in pieces[..n - 1].iter().enumerate() {
        leader.apply([chunk(i as u64 + 1, p, false)]).await.unwrap();
        if i < 3 {
            follower
                .apply([chunk(i as u64 + 1, p, false)])
                .await
                .unwrap();
        }
    }
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    follower
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    let wal = follower.spool.wal();
    wal.wait_durable(wal.last_lsn()).await.unwrap();
    let first = wal.first_lsn();
    follower.spool.purge(1).await.unwrap();
    assert!(
        follower.spool.wal().first_lsn() > first,
        "the purge took nothing: the test shows nothing"
    );
    follower
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("the restored chunks were purged");
    let done = follower
        .apply([chunk(n as u64, &pieces[n - 1], true)])
        .await
        .unwrap();
    assert_eq!(done, [Response::Committed { version: 1 }]);
}
