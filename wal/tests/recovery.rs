//! Recovery: torn tails at every byte offset, bit flips, zero-filled
//! ranges, garbage, damaged or missing segments, and the torn-group versus
//! corruption rule. Damage is applied to closed logs with plain file I/O.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use tashkent_wal::{Backend, Lsn, Wal, WalError};

const SEG: u64 = 4096;

fn o() -> tashkent_wal::WalOptions {
    small_segments(Backend::Portable, SEG)
}

/// Payload length of record `lsn` in `build_log`.
fn len_of(lsn: Lsn) -> usize {
    if lsn == 5 {
        100
    } else {
        (lsn as usize * 13) % 40
    }
}

/// A closed log with 5 records, each appended (and synced) on its own;
/// returns its segment file and the byte offset of every record.
fn build_log(dir: &Path) -> (PathBuf, Vec<u64>) {
    let rt = runtime();
    let wal = Wal::open(dir, o()).unwrap();
    rt.block_on(async {
        for lsn in 1..=5 {
            assert_eq!(wal.append(payload(lsn, len_of(lsn))).await.unwrap(), lsn);
        }
    });
    rt.block_on(wal.close()).unwrap();
    let mut offsets = vec![];
    let mut off = SEGMENT_HEADER_LEN;
    for lsn in 1..=5 {
        offsets.push(off);
        off += frame_len(len_of(lsn));
    }
    offsets.push(off); // end
    (segment_files(dir).remove(0), offsets)
}

fn expect_records(wal: &Wal, n: Lsn) {
    let all = read_all(wal, 1);
    assert_eq!(all.len() as u64, n);
    for (lsn, p) in all {
        assert_eq!(p, payload(lsn, len_of(lsn)), "record {lsn}");
    }
}

fn open_err(dir: &Path) -> (PathBuf, u64, String) {
    match Wal::open(dir, o()) {
        Err(WalError::Corruption {
            file,
            offset,
            reason,
        }) => (file, offset, reason),
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(w) => panic!("expected corruption, opened with last LSN {}", w.last_lsn()),
    }
}

/// After recovery dropped record 5: 1..4 intact, appends continue at 5, and
/// that survives another reopen.
fn check_tail_dropped(dir: &Path, what: &str) {
    let rt = runtime();
    let wal = Wal::open(dir, o()).unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    assert_eq!(wal.last_lsn(), 4, "{what}");
    expect_records(&wal, 4);
    assert_eq!(rt.block_on(wal.append(&b"five"[..])).unwrap(), 5, "{what}");
    rt.block_on(wal.close()).unwrap();
    let wal = Wal::open(dir, o()).unwrap_or_else(|e| panic!("{what}: second open failed: {e}"));
    assert_eq!(read_all(&wal, 5), vec![(5, b"five".to_vec())], "{what}");
}

fn damage(path: &Path, at: u64, f: impl FnOnce(&mut Vec<u8>)) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut buf = vec![0u8; 256];
    let n = file.read_at(&mut buf, at).unwrap();
    buf.truncate(n);
    f(&mut buf);
    file.write_all_at(&buf, at).unwrap();
}

#[test]
fn torn_tail_at_every_byte_offset_of_the_last_record() {
    let pristine = tempfile::tempdir().unwrap();
    let (seg, offs) = build_log(pristine.path());
    let name = seg.file_name().unwrap().to_owned();
    let rec_end = offs[4] + FRAME_HEADER_LEN + 100; // without padding
    for cut in offs[4]..rec_end {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), dir.path());
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(&name))
            .unwrap();
        f.set_len(cut).unwrap();
        drop(f);
        check_tail_dropped(dir.path(), &format!("file cut at {cut}"));
    }
    // Cut just after the payload (padding missing): the record is complete.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(pristine.path(), dir.path());
    let f = OpenOptions::new()
        .write(true)
        .open(dir.path().join(&name))
        .unwrap();
    f.set_len(rec_end).unwrap();
    let wal = Wal::open(dir.path(), o()).unwrap();
    expect_records(&wal, 5);
}

#[test]
fn zero_filled_tail_from_every_byte_offset_of_the_last_record() {
    let pristine = tempfile::tempdir().unwrap();
    let (seg, offs) = build_log(pristine.path());
    let name = seg.file_name().unwrap().to_owned();
    for from in offs[4]..offs[5] - 4 {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), dir.path());
        let zeros = vec![0u8; (offs[5] - from) as usize];
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(&name))
            .unwrap();
        f.write_all_at(&zeros, from).unwrap();
        drop(f);
        check_tail_dropped(dir.path(), &format!("zeroed from {from}"));
    }
}

#[test]
fn bit_flips_in_the_last_record_are_a_torn_tail() {
    let pristine = tempfile::tempdir().unwrap();
    let (seg, offs) = build_log(pristine.path());
    let name = seg.file_name().unwrap().to_owned();
    for at in (offs[4]..offs[4] + FRAME_HEADER_LEN + 100).step_by(7) {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), dir.path());
        damage(&dir.path().join(&name), at, |b| b[0] ^= 0x40);
        check_tail_dropped(dir.path(), &format!("bit flip at {at}"));
    }
}

#[test]
fn bit_flip_followed_by_valid_records_is_refused_with_file_and_offset() {
    let pristine = tempfile::tempdir().unwrap();
    let (seg, offs) = build_log(pristine.path());
    let name = seg.file_name().unwrap().to_owned();
    // Every byte of record 3 (header and payload), one bit each.
    let rec3_used = FRAME_HEADER_LEN + len_of(3) as u64;
    for at in offs[2]..offs[2] + rec3_used {
        for bit in [0u8, 3, 7] {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(pristine.path(), dir.path());
            damage(&dir.path().join(&name), at, |b| b[0] ^= 1 << bit);
            let (file, offset, reason) = open_err(dir.path());
            assert_eq!(file, dir.path().join(&name), "flip at {at}");
            assert_eq!(offset, offs[2], "flip at {at} bit {bit}: {reason}");
        }
    }
}

#[test]
fn zero_filled_range_followed_by_valid_records_is_refused() {
    let pristine = tempfile::tempdir().unwrap();
    let (seg, offs) = build_log(pristine.path());
    let name = seg.file_name().unwrap().to_owned();
    for (from, to, expect_off) in [
        (offs[2], offs[3], offs[2]),          // all of record 3
        (offs[1] + 10, offs[2] + 5, offs[1]), // end of 2, start of 3
        (offs[0], offs[4], offs[0]),          // records 1..4
    ] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), dir.path());
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(&name))
            .unwrap();
        f.write_all_at(&vec![0u8; (to - from) as usize], from)
            .unwrap();
        let (file, offset, _) = open_err(dir.path());
        assert_eq!((file, offset), (dir.path().join(&name), expect_off));
    }
}

#[test]
fn garbage_after_the_last_record_is_discarded() {
    use rand::{Rng, SeedableRng};
    let pristine = tempfile::tempdir().unwrap();
    let (seg, offs) = build_log(pristine.path());
    let name = seg.file_name().unwrap().to_owned();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for len in [1usize, 8, 23, 24, 500, 3000] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), dir.path());
        let garbage: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(&name))
            .unwrap();
        f.write_all_at(&garbage, offs[5]).unwrap();
        drop(f);
        let rt = runtime();
        let wal = Wal::open(dir.path(), o()).unwrap();
        expect_records(&wal, 5);
        assert_eq!(rt.block_on(wal.append(&b"six"[..])).unwrap(), 6);
        rt.block_on(wal.close()).unwrap();
        let wal = Wal::open(dir.path(), o()).unwrap();
        assert_eq!(read_all(&wal, 6), vec![(6, b"six".to_vec())]);
    }
    // A stale copy of an old, valid frame after the end is garbage too.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(pristine.path(), dir.path());
    let path = dir.path().join(&name);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut frame2 = vec![0u8; (offs[2] - offs[1]) as usize];
    f.read_exact_at(&mut frame2, offs[1]).unwrap();
    f.write_all_at(&frame2, offs[5] + 64).unwrap();
    let wal = Wal::open(dir.path(), o()).unwrap();
    expect_records(&wal, 5);
}

/// Writes a frame by hand, per the documented format.
fn write_frame(path: &Path, at: u64, lsn: Lsn, synced: Lsn, payload: &[u8]) {
    let mut f = vec![0u8; FRAME_HEADER_LEN as usize];
    f[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    f[8..16].copy_from_slice(&lsn.to_le_bytes());
    f[16..24].copy_from_slice(&synced.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&f[4..24]);
    h.update(payload);
    f[0..4].copy_from_slice(&h.finalize().to_le_bytes());
    f.extend_from_slice(payload);
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&f, at).unwrap();
}

#[test]
fn damage_inside_an_unsynced_group_is_a_torn_tail_but_not_after_a_sync() {
    // Record 6 is missing (as if a power cut lost its page) and record 7 of
    // the same group survived.
    for (synced, torn) in [(5u64, true), (6, false), (7, false)] {
        let dir = tempfile::tempdir().unwrap();
        let (seg, offs) = build_log(dir.path());
        let rec7_at = offs[5] + frame_len(10);
        write_frame(&seg, rec7_at, 7, synced, b"seventh");
        if torn {
            // Frame 7 was written before 6 was durable: never acknowledged.
            let wal = Wal::open(dir.path(), o()).unwrap();
            expect_records(&wal, 5);
        } else {
            let (file, offset, reason) = open_err(dir.path());
            assert_eq!((file, offset), (seg.clone(), offs[5]), "{reason}");
        }
    }
}

#[test]
fn a_valid_record_with_the_wrong_lsn_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, offs) = build_log(dir.path());
    write_frame(&seg, offs[5], 9, 5, b"skips ahead");
    let (file, offset, reason) = open_err(dir.path());
    assert_eq!((file, offset), (seg, offs[5]));
    assert!(reason.contains("expected LSN 6"), "{reason}");
}

/// A log spread over many small segments.
fn build_multi(dir: &Path) -> Vec<PathBuf> {
    let rt = runtime();
    let wal = Wal::open(dir, o()).unwrap();
    rt.block_on(async {
        for lsn in 1..=200u64 {
            wal.append(payload(lsn, 100)).await.unwrap();
        }
    });
    rt.block_on(wal.close()).unwrap();
    let segs = segment_files(dir);
    assert!(segs.len() >= 5);
    segs
}

#[test]
fn damage_in_an_earlier_segment_is_refused() {
    // Middle record of segment 1, and its last record (detected through the
    // LSN gap to segment 2).
    let per_seg = (SEG - SEGMENT_HEADER_LEN) / frame_len(100);
    for rec in [per_seg / 2, per_seg - 1] {
        let dir = tempfile::tempdir().unwrap();
        let segs = build_multi(dir.path());
        let at = SEGMENT_HEADER_LEN + rec * frame_len(100);
        damage(&segs[1], at + 30, |b| b[0] ^= 1);
        let (file, offset, reason) = open_err(dir.path());
        assert_eq!((file, offset), (segs[1].clone(), at), "{reason}");
    }
}

#[test]
fn missing_segments_prefix_is_fine_hole_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let segs = build_multi(dir.path());
    // Prefix: what an interrupted purge leaves.
    std::fs::remove_file(&segs[0]).unwrap();
    std::fs::remove_file(&segs[1]).unwrap();
    let wal = Wal::open(dir.path(), o()).unwrap();
    let first = wal.first_lsn();
    assert!(first > 1);
    assert_eq!(read_all(&wal, first).len() as u64, 200 - first + 1);
    drop(wal);
    // Hole in the middle.
    std::fs::remove_file(&segs[3]).unwrap();
    let (file, _, reason) = open_err(dir.path());
    assert_eq!(file, segs[2], "{reason}");
    assert!(reason.contains("missing"), "{reason}");
}

#[test]
fn bad_segment_headers_are_refused() {
    for (which, at) in [(0usize, 0u64), (0, 9), (usize::MAX, 3), (usize::MAX, 17)] {
        let dir = tempfile::tempdir().unwrap();
        let segs = build_multi(dir.path());
        let seg = if which == usize::MAX {
            segs.last().unwrap()
        } else {
            &segs[which]
        };
        damage(seg, at, |b| b[0] ^= 0xff);
        let (file, offset, _) = open_err(dir.path());
        assert_eq!((&file, offset), (seg, 0));
    }
    // Header LSN that does not match the file name.
    let dir = tempfile::tempdir().unwrap();
    let segs = build_multi(dir.path());
    let last = segs.last().unwrap();
    std::fs::rename(last, dir.path().join("00000000000000009999.wal")).unwrap();
    let (file, offset, _) = open_err(dir.path());
    assert_eq!(
        (file, offset),
        (dir.path().join("00000000000000009999.wal"), 16)
    );
}

#[test]
fn leftover_temp_segment_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    build_log(dir.path());
    let tmp = dir.path().join("00000000000000000006.wal.tmp");
    std::fs::write(&tmp, b"half-created segment").unwrap();
    let wal = Wal::open(dir.path(), o()).unwrap();
    expect_records(&wal, 5);
    assert!(!tmp.exists());
}
