//! `tashkent bench --client pgbench`: the load driven by unmodified
//! pgbench, so that anyone can set the figures beside their own pgbench
//! runs.
//!
//! One pgbench process per target (the clients split over them as evenly
//! as they go), `-M prepared`, the workload's script from
//! [`tashkent_tpcb::pgbench_script`], serialization failures retried up to
//! [`MAX_TRIES`] times. Every pgbench writes its per-transaction log
//! (`-l`); the figures are computed from the transactions that ended in
//! the measured window (after the warm-up), exactly as the built-in driver
//! counts them: commits, their latency, and every retry or failure as an
//! abort.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tashkent_tpcb::{RunConfig, RunStats};

/// How often pgbench retries a transaction that failed with a
/// serialization error (`--max-tries`).
pub const MAX_TRIES: u32 = 100;

/// Runs `cfg` with the pgbench at `pgbench`, its scripts and logs in `dir`.
pub async fn run(cfg: &RunConfig, pgbench: &Path, dir: &Path) -> Result<RunStats> {
    let script = dir.join(format!("{}.sql", cfg.workload.name()));
    let text = tashkent_tpcb::pgbench_script(cfg.workload, cfg.scale, cfg.rows_per_scale)?;
    std::fs::write(&script, text).with_context(|| format!("writing {}", script.display()))?;
    // pgbench's -T takes whole seconds; the window is cut from its log.
    let seconds = (cfg.warmup + cfg.duration).as_secs_f64().ceil().max(1.0) as u64;
    let start = SystemTime::now();
    let mut children = Vec::new();
    for (i, (target, clients)) in split(cfg.clients, &cfg.targets).into_iter().enumerate() {
        let prefix = dir.join(format!("pgbench-{i}"));
        let mut cmd = tokio::process::Command::new(pgbench);
        cmd.args(["-n", "-M", "prepared", "-l"])
            .arg("--log-prefix")
            .arg(&prefix)
            .args(["-c", &clients.to_string()])
            .args(["-j", &clients.min(2).to_string()])
            .args(["-T", &seconds.to_string()])
            .args(["--max-tries", &MAX_TRIES.to_string()])
            .arg("-f")
            .arg(&script)
            .arg(target)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", pgbench.display()))?;
        children.push((target.clone(), child));
    }
    for (target, child) in children {
        let out = child
            .wait_with_output()
            .await
            .context("waiting for pgbench")?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            bail!(
                "pgbench against {target} failed ({}): {}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
    }
    let from = start + cfg.warmup;
    let window = Window {
        from: micros(from),
        to: micros(from + cfg.duration),
    };
    let mut tally = Tally::default();
    for log in logs(dir)? {
        let text =
            std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
        for line in text.lines() {
            tally
                .add(line, &window)
                .with_context(|| format!("{}: {line:?}", log.display()))?;
        }
    }
    Ok(RunStats::from_samples(
        tally.latencies.len() as u64,
        tally.aborts,
        0,
        cfg.duration,
        &mut tally.latencies,
    ))
}

/// The targets with the number of clients each gets (targets without a
/// client are left out).
fn split(clients: usize, targets: &[String]) -> Vec<(&String, usize)> {
    let n = targets.len();
    targets
        .iter()
        .enumerate()
        .map(|(i, t)| (t, clients / n + usize::from(i < clients % n)))
        .filter(|(_, c)| *c > 0)
        .collect()
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as u64
}

/// pgbench's per-transaction logs in `dir` (one per thread).
fn logs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = e?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("pgbench-") && !name.ends_with(".sql") {
            out.push(path);
        }
    }
    Ok(out)
}

/// Microseconds since the epoch: the measured window.
struct Window {
    from: u64,
    to: u64,
}

#[derive(Default)]
struct Tally {
    latencies: Vec<u64>,
    aborts: u64,
}

impl Tally {
    /// One line of pgbench's log: `client transaction time script epoch
    /// micros [retries]`, `time` being the latency in µs or `failed`.
    fn add(&mut self, line: &str, window: &Window) -> Result<()> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 {
            bail!("not a pgbench log line");
        }
        let end = f[4].parse::<u64>()? * 1_000_000 + f[5].parse::<u64>()?;
        if end < window.from || end >= window.to {
            return Ok(());
        }
        let retries: u64 = match f.get(6) {
            Some(r) => r.parse()?,
            None => 0,
        };
        self.aborts += retries;
        match f[2].parse::<u64>() {
            Ok(latency) => self.latencies.push(latency),
            // A transaction that failed every try.
            Err(_) => self.aborts += 1,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_split_evenly_over_the_targets() {
        let t: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let counts: Vec<usize> = split(8, &t).into_iter().map(|(_, c)| c).collect();
        assert_eq!(counts, vec![3, 3, 2]);
        assert_eq!(split(2, &t).len(), 2);
    }

    #[test]
    fn log_lines_in_the_window_count_commits_retries_and_failures() {
        let w = Window {
            from: 100_000_000,
            to: 110_000_000,
        };
        let mut t = Tally::default();
        t.add("0 1 850 0 99 999999 0", &w).unwrap(); // before the window
        t.add("0 2 900 0 100 5 2", &w).unwrap();
        t.add("1 7 failed 0 105 0 99", &w).unwrap();
        t.add("1 8 700 0 109 999999", &w).unwrap();
        t.add("1 9 700 0 110 0", &w).unwrap(); // after
        assert_eq!(t.latencies, vec![900, 700]);
        assert_eq!(t.aborts, 2 + 99 + 1);
        assert!(t.add("garbage", &w).is_err());
    }
}
