//! Crash test: a child process (`wal-crash-child`) appends from 16
//! concurrent tasks and prints every acknowledged LSN; we SIGKILL it at a
//! random moment, reopen the log and check that every acknowledged record
//! is there byte-identical, that every record present is a complete record
//! the child really submitted, and that the log opens cleanly. The child
//! also purges as it goes; no record at or above an announced purge LSN may
//! go missing. Repeated
//! many times on the same directory (so recovery after recovery is tested),
//! alternating backends.
//!
//! Seeded: the seed is printed; replay with `WAL_CRASH_SEED=<seed>`.
//! `WAL_CRASH_RUNS` overrides the number of kills (default 50).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tashkent_wal::{Backend, Wal, WalOptions};

#[path = "common/crash_payload.rs"]
mod crash_payload;
use crash_payload::payload;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_record() {
    let seed = env_u64("WAL_CRASH_SEED").unwrap_or_else(rand::random);
    let runs = env_u64("WAL_CRASH_RUNS").unwrap_or(50);
    eprintln!("crash test seed {seed} (replay with WAL_CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let uring = tashkent_wal::io_uring_available();
    let started = Instant::now();

    // Every LSN ever acknowledged -> (key, len).
    let mut acked: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    let mut runs_with_acks = 0;
    // Highest purge LSN the child announced (0: none yet).
    let mut max_purge = 0u64;
    let mut purges = 0;
    for run in 1..=runs {
        let backend = if uring && run % 2 == 0 {
            "io_uring"
        } else {
            "portable"
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_wal-crash-child"))
            .arg(dir.path())
            .arg(backend)
            .arg(run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = Vec::new();
        out.read_until(b'\n', &mut line).unwrap();
        assert_eq!(
            line, b"ready\n",
            "run {run}: child did not start (seed {seed})"
        );
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            loop {
                let mut l = Vec::new();
                match out.read_until(b'\n', &mut l) {
                    // Only complete lines: a line cut by the kill was not
                    // necessarily fully printed.
                    Ok(n) if n > 0 && l.ends_with(b"\n") => lines.push(l),
                    _ => return lines,
                }
            }
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(5..150)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        if !lines.is_empty() {
            runs_with_acks += 1;
        }
        for l in lines {
            let s = String::from_utf8(l).unwrap();
            if let Some(n) = s.strip_prefix("purge ") {
                max_purge = max_purge.max(n.trim().parse().unwrap());
                purges += 1;
                continue;
            }
            let f: Vec<u64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();
            let (lsn, key, len) = (f[0], f[1], f[2] as usize);
            if let Some(prev) = acked.insert(lsn, (key, len)) {
                panic!(
                    "run {run}: LSN {lsn} acknowledged twice ({prev:?} and {key}) (seed {seed})"
                );
            }
        }

        // Reopen: must succeed, hold every acked record, and hold only
        // complete records the child submitted, with dense LSNs.
        let wal = Wal::open(
            dir.path(),
            WalOptions {
                backend: Backend::Portable,
                segment_size: 64 << 10,
                ..WalOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("run {run}: reopen failed: {e} (seed {seed})"));
        let last = wal.last_lsn();
        if let Some((&max_acked, _)) = acked.iter().next_back() {
            assert!(
                last >= max_acked,
                "run {run}: acked LSN {max_acked} > last {last} (seed {seed})"
            );
        }
        // Only whole segments below an announced purge LSN may be gone.
        let first = wal.first_lsn();
        assert!(
            first == 1 || first <= max_purge,
            "run {run}: first LSN {first} but the highest purge was {max_purge} (seed {seed})"
        );
        let mut expect = first;
        for rec in wal.read_from(first).unwrap() {
            let (lsn, p) = rec.unwrap_or_else(|e| panic!("run {run}: read: {e} (seed {seed})"));
            assert_eq!(lsn, expect);
            expect += 1;
            assert!(p.len() >= 8, "run {run}: LSN {lsn} too short");
            let key = u64::from_le_bytes(p[..8].try_into().unwrap());
            assert!(
                p[..] == payload(key, p.len())[..],
                "run {run}: LSN {lsn} is not a record the child wrote (seed {seed})"
            );
            if let Some(&(k, len)) = acked.get(&lsn) {
                // Also proves every acked LSN >= first is present: the
                // reader checks LSNs are dense from `first` to `last`.
                assert_eq!(
                    (key, p.len()),
                    (k, len),
                    "run {run}: acked LSN {lsn} differs (seed {seed})"
                );
            }
        }
        assert_eq!(
            expect,
            last + 1,
            "run {run}: reader stopped early (seed {seed})"
        );
        drop(wal);
    }
    eprintln!(
        "crash test: {runs} kills, {} acknowledged records, {purges} purges, {:.1}s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        runs_with_acks * 2 >= runs,
        "too few runs acknowledged anything ({runs_with_acks}/{runs}); the test is not testing"
    );
}
