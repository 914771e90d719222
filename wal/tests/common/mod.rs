//! Helpers shared by the integration tests. The on-disk layout is restated
//! here on purpose (from the crate docs) so the tests pin the documented
//! format instead of reusing the implementation's own encoder.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use tashkent_wal::{Backend, Lsn, Wal, WalOptions};

/// Runs each named `async fn(Backend)` as a test against both backends.
#[allow(unused_macros)] // not every test target uses it
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod portable {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(tashkent_wal::Backend::Portable).await
                }
            )*
        }
        mod io_uring {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(tashkent_wal::Backend::IoUring).await
                }
            )*
        }
    };
}

pub const SEGMENT_HEADER_LEN: u64 = 32;
pub const FRAME_HEADER_LEN: u64 = 24;

pub fn frame_len(payload_len: usize) -> u64 {
    (FRAME_HEADER_LEN + payload_len as u64).div_ceil(8) * 8
}

/// Deterministic payload for a record, derived from a key.
pub fn payload(key: u64, len: usize) -> Vec<u8> {
    let mut x = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn opts(backend: Backend) -> WalOptions {
    WalOptions {
        backend,
        ..WalOptions::default()
    }
}

pub fn small_segments(backend: Backend, segment_size: u64) -> WalOptions {
    WalOptions {
        backend,
        segment_size,
        ..WalOptions::default()
    }
}

/// Segment files in `dir`, oldest first.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

/// Reads every durable record from `from`.
pub fn read_all(wal: &Wal, from: Lsn) -> Vec<(Lsn, Vec<u8>)> {
    wal.read_from(from)
        .unwrap()
        .map(|r| {
            let (l, b) = r.unwrap();
            (l, b.to_vec())
        })
        .collect()
}

/// Copies a log directory (the LOCK file too; it is not held by a closed log).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
