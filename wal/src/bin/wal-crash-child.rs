//! Test helper for `tests/crash.rs`: appends to a WAL from many concurrent
//! tasks forever and prints `"<lsn> <key> <len>"` for every acknowledged
//! (durable) append, until the parent SIGKILLs it. A purger task
//! meanwhile prints `"purge <n>"` and then calls `purge_below(n)`, so kills
//! also land in the middle of purges.
//!
//! Usage: `wal-crash-child <dir> <portable|io_uring> <run-id>`
//!
//! The payload of key `k` is `k` (8 bytes LE) followed by deterministic
//! bytes derived from `k` (see `payload`), so the parent can verify every
//! record in the log, acknowledged or not, byte for byte. Keys are
//! `run-id << 32 | task << 24 | counter`, unique across runs.

use std::io::Write;
use std::process::ExitCode;

use tashkent_wal::{Backend, Wal, WalOptions};

const TASKS: u64 = 16;

#[path = "../../tests/common/crash_payload.rs"]
mod crash_payload;
use crash_payload::payload;

fn len_for(key: u64) -> usize {
    // Mostly small, sometimes a few KiB, so groups straddle segment rolls.
    let h = key.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
    if h.is_multiple_of(16) {
        8 + (h % 9000) as usize
    } else {
        8 + (h % 300) as usize
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: wal-crash-child <dir> <portable|io_uring> <run-id>");
        return ExitCode::from(2);
    }
    let backend = match args[2].as_str() {
        "portable" => Backend::Portable,
        "io_uring" => Backend::IoUring,
        other => {
            eprintln!("unknown backend {other}");
            return ExitCode::from(2);
        }
    };
    let Ok(run) = args[3].parse::<u64>() else {
        eprintln!("bad run id");
        return ExitCode::from(2);
    };
    let opts = WalOptions {
        backend,
        segment_size: 64 << 10,
        ..WalOptions::default()
    };
    let wal = match Wal::open(&args[1], opts) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("open failed: {e}");
            return ExitCode::from(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result: Result<(), String> = rt.block_on(async move {
        println!("ready");
        let mut tasks = Vec::new();
        let purger = {
            let wal = wal.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(15)).await;
                    let n = wal.durable_lsn().saturating_sub(300);
                    if n > wal.first_lsn() {
                        {
                            // Announce first: the parent must then find every
                            // record >= n, whether or not the purge finished.
                            let mut out = std::io::stdout().lock();
                            writeln!(out, "purge {n}").map_err(|e| e.to_string())?;
                            out.flush().map_err(|e| e.to_string())?;
                        }
                        wal.purge_below(n).await.map_err(|e| e.to_string())?;
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), String>(())
            })
        };
        for t in 0..TASKS {
            let wal = wal.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let key = run << 32 | t << 24 | i;
                    let len = len_for(key);
                    let lsn = wal
                        .append(payload(key, len))
                        .await
                        .map_err(|e| e.to_string())?;
                    // One line per ack, flushed at once: the parent only
                    // counts complete lines.
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{lsn} {key} {len}").map_err(|e| e.to_string())?;
                    out.flush().map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            }));
        }
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        purger.await.map_err(|e| e.to_string())??;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("append failed: {e}");
            ExitCode::from(1)
        }
    }
}
