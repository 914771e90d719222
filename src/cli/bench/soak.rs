//! `tashkent bench soak`: memory under minutes of load.
//!
//! A cluster of separate processes (PostgreSQL replicas, and the
//! `tashkent` binary itself as certifier and proxies) runs AllUpdates from
//! this process through every proxy while the resident memory of every
//! tashkent process is sampled. After the warm-up, a process may not grow
//! by more than `--max-growth-mb`: per-transaction state must not outlive
//! its transaction (I8). The replicas' applied-version logs must stay
//! short too, and the replicas identical (`verify`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tashkent_tpcb::{RunConfig, Workload};

use tashkent::ops::cluster::{ClusterConfig, LocalCluster, Placement};
use tashkent::ops::config::ConfigFile;
use tashkent::ops::pg::connect;

/// Flags of `tashkent bench soak`.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// PostgreSQL replicas (each with its proxy).
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// Concurrent clients, spread over the proxies.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 180)]
    pub duration: u64,
    /// Seconds of it before memory counts (allocators and the certifier's
    /// bounded caches settle).
    #[arg(long, default_value_t = 60)]
    pub warmup: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 5)]
    pub interval: u64,
    /// Most a process's memory may grow after the warm-up, in MiB.
    #[arg(long, default_value_t = 32)]
    pub max_growth_mb: u64,
    /// Where soak.json and soak-table.txt are written.
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    pub results_dir: PathBuf,
    /// Where the temporary state goes (a real disk).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

/// Resident memory of `pid` in kB (VmRSS).
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// What the soak measured.
#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub processes: Vec<String>,
    /// Seconds since the load started, and each process's RSS in KiB.
    pub samples: Vec<(u64, Vec<u64>)>,
    pub warmup_s: u64,
    pub committed: u64,
    pub tps: f64,
    /// Per process: RSS at the end of the warm-up, the most after it, at
    /// the end (KiB).
    pub after_warmup: Vec<(u64, u64, u64)>,
    /// Rows in each replica's `tashkent.applied` at the end.
    pub applied_rows: Vec<i64>,
    pub problems: Vec<String>,
}

impl SoakReport {
    pub fn table(&self) -> String {
        let mut header = vec!["t (s)".to_string()];
        header.extend(self.processes.iter().map(|p| format!("{p} RSS (MiB)")));
        let rows: Vec<Vec<String>> = self
            .samples
            .iter()
            .map(|(t, rss)| {
                let mut row = vec![t.to_string()];
                row.extend(rss.iter().map(|kb| format!("{:.1}", *kb as f64 / 1024.0)));
                row
            })
            .collect();
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        let mut out = String::new();
        tashkent_tpcb::write_table(&mut out, &header, &rows, true);
        let _ = writeln!(
            out,
            "\n{} transactions committed ({:.0}/s); after the {} s warm-up:",
            self.committed, self.tps, self.warmup_s
        );
        for (p, (at, max, end)) in self.processes.iter().zip(&self.after_warmup) {
            let _ = writeln!(
                out,
                "  {p}: {:.1} MiB at the end of the warm-up, at most {:.1} MiB, {:.1} MiB at the end",
                *at as f64 / 1024.0,
                *max as f64 / 1024.0,
                *end as f64 / 1024.0
            );
        }
        let _ = writeln!(
            out,
            "  rows of tashkent.applied per replica: {:?}",
            self.applied_rows
        );
        if self.problems.is_empty() {
            let _ = writeln!(out, "memory flat: no process grew after the warm-up");
        } else {
            for p in &self.problems {
                let _ = writeln!(out, "PROBLEM: {p}");
            }
        }
        out
    }
}

/// `tashkent bench soak`.
pub fn main(args: SoakArgs) -> Result<()> {
    if args.warmup >= args.duration {
        bail!("--warmup must be shorter than --duration");
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let report = runtime.block_on(soak(&args))?;
    std::fs::create_dir_all(&args.results_dir)
        .with_context(|| format!("creating {}", args.results_dir.display()))?;
    let table = report.table();
    std::fs::write(args.results_dir.join("soak-table.txt"), &table)?;
    std::fs::write(
        args.results_dir.join("soak.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    print!("{table}");
    println!(
        "table: {}\njson: {}",
        args.results_dir.join("soak-table.txt").display(),
        args.results_dir.join("soak.json").display()
    );
    if !report.problems.is_empty() {
        bail!("{} problem(s) in the soak", report.problems.len());
    }
    Ok(())
}

async fn soak(args: &SoakArgs) -> Result<SoakReport> {
    let dir = super::work_dir(args.work_dir.as_deref())?;
    let file = ConfigFile {
        cluster: ClusterConfig {
            state_dir: dir.path().join("state"),
            replicas: args.replicas,
            // Memory of the plaintext path, as the bench measures it.
            tls: false,
            ..ClusterConfig::default()
        },
        ..ConfigFile::default()
    };
    let exe = std::env::current_exe().context("locating the tashkent binary")?;
    let cluster = LocalCluster::start_placed(&file, Placement::Processes { exe }).await?;
    let targets: Vec<String> = (0..cluster.replicas.len())
        .map(|i| cluster.proxy_conninfo(i))
        .collect();
    eprintln!(
        "soak: {} replica(s), {} clients, {} s of AllUpdates ({} s warm-up), sampling every {} s",
        args.replicas, args.clients, args.duration, args.warmup, args.interval
    );
    tashkent_tpcb::load(&targets[0], Workload::AllUpdates, 1)
        .await
        .context("loading the table")?;
    let mut processes = vec![("certifier".to_string(), cluster.certifier_pid())];
    for i in 0..cluster.replicas.len() {
        processes.push((format!("proxy {}", i + 1), cluster.proxy_pid(i)));
    }
    let pids: Vec<u32> = processes
        .iter()
        .map(|(name, pid)| pid.with_context(|| format!("the {name} is not a process")))
        .collect::<Result<_>>()?;
    let cfg = RunConfig {
        clients: args.clients,
        duration: Duration::from_secs(args.duration),
        warmup: Duration::ZERO,
        ..RunConfig::new(targets.clone(), Workload::AllUpdates, 1)
    };
    let load = tokio::spawn(async move { tashkent_tpcb::run(&cfg, None).await });
    let started = Instant::now();
    let mut samples = Vec::new();
    while !load.is_finished() {
        let t = started.elapsed().as_secs();
        samples.push((
            t,
            pids.iter()
                .map(|&p| rss_kb(p).unwrap_or(0))
                .collect::<Vec<_>>(),
        ));
        let next = Duration::from_secs((samples.len() as u64) * args.interval.max(1));
        let wait = next.saturating_sub(started.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = async { while !load.is_finished() { tokio::time::sleep(Duration::from_millis(100)).await } } => {}
        }
    }
    let stats = load.await?.context("running AllUpdates")?;
    samples.push((
        started.elapsed().as_secs(),
        pids.iter().map(|&p| rss_kb(p).unwrap_or(0)).collect(),
    ));
    let mut problems = Vec::new();
    let mut after_warmup = Vec::new();
    for (i, (name, _)) in processes.iter().enumerate() {
        let at = samples
            .iter()
            .rev()
            .find(|(t, _)| *t <= args.warmup)
            .map_or(0, |(_, r)| r[i]);
        let max = samples
            .iter()
            .filter(|(t, _)| *t >= args.warmup)
            .map(|(_, r)| r[i])
            .max()
            .unwrap_or(at);
        let end = samples.last().map_or(0, |(_, r)| r[i]);
        if max > at + args.max_growth_mb * 1024 {
            problems.push(format!(
                "{} grew from {:.1} MiB to {:.1} MiB after the warm-up",
                name,
                at as f64 / 1024.0,
                max as f64 / 1024.0
            ));
        }
        after_warmup.push((at, max, end));
    }
    let mut applied_rows = Vec::new();
    for r in &cluster.replicas {
        let c = connect(&r.conninfo("postgres")).await?;
        // Everything committed is applied before the log is counted.
        let n: i64 = c
            .query_one("SELECT count(*) FROM tashkent.applied", &[])
            .await?
            .get(0);
        if n > 10_000 {
            problems.push(format!(
                "tashkent.applied holds {n} rows on {}:{}",
                r.host(),
                r.port()
            ));
        }
        applied_rows.push(n);
    }
    if let Some(p) = super::verify_replicas(&cluster).await? {
        problems.push(p);
    }
    Ok(SoakReport {
        processes: processes.into_iter().map(|(name, _)| name).collect(),
        samples,
        warmup_s: args.warmup,
        committed: stats.committed,
        tps: stats.throughput_tps,
        after_warmup,
        applied_rows,
        problems,
    })
}
