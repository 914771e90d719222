//! `tashkent bench contention`: fairness on hot rows (issue "consistency
//! levels and fairness"), with unmodified clients through several proxies.
//!
//! Each scenario runs on a fresh Tashkent-MW cluster of separate processes,
//! once with the proxies' fairness mechanism (`fair_retries`) on and once
//! with it off (today's behaviour without it, the "before"):
//!
//! - `tpcb-s1`, `tpcb-s2`: `pgbench -i -s S` through proxy 1, then pgbench's
//!   TPC-B through two proxies at once — side A `-M prepared`, side B
//!   `-M simple`, 4 clients each, `--max-tries 20`. Goal: each side's
//!   "failed after max-tries" ≤ 5 %, each side ≥ 25 % of the other's
//!   throughput.
//! - `sysbench`: sysbench `oltp_write_only` through three proxies (2
//!   threads each), with its default skewed key distribution (`special`)
//!   and with uniform keys. Goal: the skewed run's worst p95 latency under
//!   10× the uniform run's.
//!
//! After each run every replica must have applied everything and
//! `tashkent verify` must find them identical; a divergence fails the
//! command. Results go to `contention.json` and `contention-table.txt`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use tashkent::ops::cluster::{ClusterConfig, LocalCluster, Placement};
use tashkent::ops::config::ConfigFile;

/// Flags of `tashkent bench contention`.
#[derive(Debug, Clone, clap::Args)]
pub struct ContentionArgs {
    /// Scenarios, comma-separated: tpcb-s1, tpcb-s2, sysbench.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tpcb-s1,tpcb-s2,sysbench"
    )]
    pub scenarios: Vec<Scenario>,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Run with the proxies' fairness on, off, or both ("on,off").
    #[arg(long, value_delimiter = ',', default_value = "on,off")]
    pub fairness: Vec<Fairness>,
    /// Rows per sysbench table (2 tables).
    #[arg(long, default_value_t = 10_000)]
    pub table_size: u64,
    /// Certifier nodes: 1 (the single certifier) or 3 (raft; its leader
    /// keeps the turns).
    #[arg(long, default_value_t = 1)]
    pub certifiers: u32,
    /// Where contention.json and contention-table.txt are written.
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    pub results_dir: PathBuf,
    /// Where the temporary state goes (a real disk).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Scenario {
    #[value(name = "tpcb-s1")]
    #[serde(rename = "tpcb-s1")]
    TpcbS1,
    #[value(name = "tpcb-s2")]
    #[serde(rename = "tpcb-s2")]
    TpcbS2,
    #[serde(rename = "sysbench")]
    Sysbench,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::TpcbS1 => "tpcb-s1",
            Scenario::TpcbS2 => "tpcb-s2",
            Scenario::Sysbench => "sysbench",
        }
    }
}

impl Fairness {
    fn name(self) -> &'static str {
        match self {
            Fairness::On => "on",
            Fairness::Off => "off",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fairness {
    On,
    Off,
}

/// pgbench clients per side and their retries, as in the issue.
const CLIENTS_PER_SIDE: u32 = 4;
const MAX_TRIES: u32 = 20;
/// sysbench threads per proxy.
const SYSBENCH_THREADS: u32 = 2;

/// One side of a run: one load generator against one proxy.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// What ran where, e.g. "A: pgbench -M prepared, proxy 1".
    pub name: String,
    pub tps: f64,
    pub committed: u64,
    /// Transactions given up after the retries (pgbench), or sysbench's
    /// ignored errors (each one a retried transaction).
    pub failed: u64,
    pub failed_pct: f64,
    pub latency_avg_ms: f64,
    /// sysbench's 95th percentile; pgbench reports none here.
    pub latency_p95_ms: Option<f64>,
}

/// One scenario run with fairness on or off.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub scenario: Scenario,
    pub fairness: Fairness,
    /// "" for pgbench; "special" (skewed) or "uniform" for sysbench.
    pub keys: String,
    pub sides: Vec<Side>,
}

/// A goal and whether a run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub scenario: Scenario,
    pub fairness: Fairness,
    pub goal: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Debug, Serialize)]
pub struct ContentionReport {
    pub duration_s: u64,
    pub certifiers: u32,
    pub runs: Vec<RunResult>,
    pub verdicts: Vec<Verdict>,
    pub problems: Vec<String>,
}

/// `tashkent bench contention`.
pub fn main(args: ContentionArgs) -> Result<()> {
    let bins = tashkent::ops::pg::PgBinaries::locate().context("locating PostgreSQL")?;
    let pgbench = bins.tool("pgbench").context("locating pgbench")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let mut report = ContentionReport {
        duration_s: args.duration,
        certifiers: args.certifiers,
        runs: Vec::new(),
        verdicts: Vec::new(),
        problems: Vec::new(),
    };
    for &scenario in &args.scenarios {
        for &fairness in &args.fairness {
            let runs = runtime.block_on(run_scenario(
                &args,
                scenario,
                fairness,
                &pgbench,
                &mut report.problems,
            ))?;
            report.verdicts.extend(verdicts(scenario, fairness, &runs));
            report
                .runs
                .extend(runs.into_iter().map(|(keys, sides)| RunResult {
                    scenario,
                    fairness,
                    keys,
                    sides,
                }));
        }
    }
    std::fs::create_dir_all(&args.results_dir)
        .with_context(|| format!("creating {}", args.results_dir.display()))?;
    let table = report.table();
    let table_path = args.results_dir.join("contention-table.txt");
    let json_path = args.results_dir.join("contention.json");
    std::fs::write(&table_path, &table)?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
    print!("{table}");
    println!(
        "table: {}\njson: {}",
        table_path.display(),
        json_path.display()
    );
    if !report.problems.is_empty() {
        bail!(
            "{} problem(s): the replicas diverged",
            report.problems.len()
        );
    }
    Ok(())
}

/// One scenario on a fresh cluster.
async fn run_scenario(
    args: &ContentionArgs,
    scenario: Scenario,
    fairness: Fairness,
    pgbench: &Path,
    problems: &mut Vec<String>,
) -> Result<Vec<(String, Vec<Side>)>> {
    let proxies = match scenario {
        Scenario::TpcbS1 | Scenario::TpcbS2 => 2,
        Scenario::Sysbench => 3,
    };
    let dir = super::work_dir(args.work_dir.as_deref())?;
    let mut file = ConfigFile {
        cluster: ClusterConfig {
            state_dir: dir.path().join("state"),
            replicas: proxies,
            tls: false,
            certifiers: args.certifiers,
            ..ClusterConfig::default()
        },
        ..ConfigFile::default()
    };
    file.proxy.fair_retries = fairness == Fairness::On;
    let exe = std::env::current_exe().context("locating the tashkent binary")?;
    let cluster = LocalCluster::start_placed(&file, Placement::Processes { exe }).await?;
    let label = format!("{} (fairness {})", scenario.name(), fairness.name());
    eprintln!("contention: {label}, {} s", args.duration);
    let runs = match scenario {
        Scenario::TpcbS1 => vec![tpcb(&cluster, 1, args.duration, pgbench, dir.path()).await?],
        Scenario::TpcbS2 => vec![tpcb(&cluster, 2, args.duration, pgbench, dir.path()).await?],
        Scenario::Sysbench => sysbench(&cluster, args).await?,
    };
    super::wait_applied(&cluster).await?;
    if let Some(p) = super::verify_replicas(&cluster).await? {
        eprintln!("!! BUG: {label}: {p}");
        problems.push(format!("{label}: {p}"));
    }
    cluster.shutdown().await?;
    Ok(runs)
}

/// TPC-B through proxies 1 (A, prepared) and 2 (B, simple) at once.
async fn tpcb(
    cluster: &LocalCluster,
    scale: u32,
    duration: u64,
    pgbench: &Path,
    dir: &Path,
) -> Result<(String, Vec<Side>)> {
    let init = tokio::process::Command::new(pgbench)
        .args(["-i", "-q", "-s", &scale.to_string()])
        .arg(cluster.proxy_conninfo(0))
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running pgbench -i")?;
    if !init.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    super::wait_applied(cluster).await?;
    let side = |proxy: usize, mode: &str| {
        let mut cmd = tokio::process::Command::new(pgbench);
        cmd.args(["-n", "-M", mode])
            .args(["-c", &CLIENTS_PER_SIDE.to_string(), "-j", "1"])
            .args(["--max-tries", &MAX_TRIES.to_string()])
            .args(["-T", &duration.to_string()])
            .arg(cluster.proxy_conninfo(proxy))
            .current_dir(dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd.output()
    };
    let (a, b) = tokio::join!(side(0, "prepared"), side(1, "simple"));
    let mut sides = Vec::new();
    for (name, out) in [
        ("A: pgbench -M prepared, proxy 1", a),
        ("B: pgbench -M simple, proxy 2", b),
    ] {
        let out = out.context("running pgbench")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() && !text.contains("number of failed transactions") {
            bail!(
                "pgbench ({name}) failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        sides.push(parse_pgbench(name, &text)?);
    }
    Ok((String::new(), sides))
}

/// The words after `prefix` on the first line of a summary that starts
/// with it (leading blanks aside).
fn words_after<'a>(text: &'a str, prefix: &str) -> Option<std::str::SplitWhitespace<'a>> {
    let line = text.lines().find(|l| l.trim_start().starts_with(prefix))?;
    Some(line.trim_start()[prefix.len()..].split_whitespace())
}

/// pgbench's summary: tps, transactions processed, failed, latency average.
fn parse_pgbench(name: &str, text: &str) -> Result<Side> {
    let after = |prefix: &str| -> Option<f64> { words_after(text, prefix)?.next()?.parse().ok() };
    let committed = after("number of transactions actually processed:")
        .with_context(|| format!("no transaction count in pgbench's output: {text}"))?
        as u64;
    let failed = after("number of failed transactions:").unwrap_or(0.0) as u64;
    let tps = after("tps =").with_context(|| format!("no tps in pgbench's output: {text}"))?;
    let latency = after("latency average =").unwrap_or(f64::NAN);
    Ok(Side {
        name: name.to_string(),
        tps,
        committed,
        failed,
        failed_pct: pct(failed, committed + failed),
        latency_avg_ms: latency,
        latency_p95_ms: None,
    })
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// sysbench oltp_write_only through every proxy at once, skewed then
/// uniform keys, on the same tables.
async fn sysbench(
    cluster: &LocalCluster,
    args: &ContentionArgs,
) -> Result<Vec<(String, Vec<Side>)>> {
    let addrs = cluster.proxy_addrs();
    let base = |port: u16| -> Vec<String> {
        vec![
            "--db-driver=pgsql".into(),
            "--pgsql-host=127.0.0.1".into(),
            format!("--pgsql-port={port}"),
            "--pgsql-user=postgres".into(),
            "--pgsql-password=unused".into(),
            "--pgsql-db=postgres".into(),
            "--tables=2".into(),
            format!("--table-size={}", args.table_size),
        ]
    };
    let prepare = tokio::process::Command::new("sysbench")
        .args(base(addrs[0].port()))
        .args(["oltp_write_only", "prepare"])
        .stdin(Stdio::null())
        .output()
        .await
        .context("running sysbench (install it: apt-get install sysbench)")?;
    if !prepare.status.success() {
        bail!(
            "sysbench prepare failed: {}{}",
            String::from_utf8_lossy(&prepare.stdout),
            String::from_utf8_lossy(&prepare.stderr)
        );
    }
    super::wait_applied(cluster).await?;
    let mut runs = Vec::new();
    for keys in ["special", "uniform"] {
        let mut children = Vec::new();
        for (i, a) in addrs.iter().enumerate() {
            let child = tokio::process::Command::new("sysbench")
                .args(base(a.port()))
                .arg(format!("--threads={SYSBENCH_THREADS}"))
                .arg(format!("--time={}", args.duration))
                .arg(format!("--rand-type={keys}"))
                .args(["--percentile=95", "oltp_write_only", "run"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("starting sysbench")?;
            children.push((i, child));
        }
        let mut sides = Vec::new();
        for (i, child) in children {
            let out = child.wait_with_output().await.context("running sysbench")?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if !out.status.success() {
                bail!(
                    "sysbench against proxy {} failed: {text}{}",
                    i + 1,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            sides.push(parse_sysbench(&format!("proxy {}", i + 1), &text)?);
        }
        runs.push((keys.to_string(), sides));
    }
    Ok(runs)
}

/// sysbench's summary: transactions (and per second), ignored errors,
/// latency avg and 95th percentile.
fn parse_sysbench(name: &str, text: &str) -> Result<Side> {
    let field = |prefix: &str| -> Option<(f64, Option<f64>)> {
        let mut words = words_after(text, prefix)?;
        let first = words.next()?.parse().ok()?;
        // "866 (57.06 per sec.)"
        let second = words
            .next()
            .and_then(|w| w.trim_start_matches('(').parse().ok());
        Some((first, second))
    };
    let (committed, tps) = field("transactions:")
        .with_context(|| format!("no transaction count in sysbench's output: {text}"))?;
    let (failed, _) = field("ignored errors:").unwrap_or((0.0, None));
    let (avg, _) = field("avg:").unwrap_or((f64::NAN, None));
    let (p95, _) = field("95th percentile:").unwrap_or((f64::NAN, None));
    Ok(Side {
        name: name.to_string(),
        tps: tps.unwrap_or(0.0),
        committed: committed as u64,
        failed: failed as u64,
        failed_pct: pct(failed as u64, committed as u64 + failed as u64),
        latency_avg_ms: avg,
        latency_p95_ms: Some(p95),
    })
}

/// The goals, judged on one scenario's runs.
fn verdicts(scenario: Scenario, fairness: Fairness, runs: &[(String, Vec<Side>)]) -> Vec<Verdict> {
    let verdict = |goal: &str, measured: String, met: bool| Verdict {
        scenario,
        fairness,
        goal: goal.to_string(),
        measured,
        met,
    };
    match scenario {
        Scenario::TpcbS1 | Scenario::TpcbS2 => {
            let Some((_, sides)) = runs.first() else {
                return Vec::new();
            };
            let worst_failed = sides.iter().map(|s| s.failed_pct).fold(0.0, f64::max);
            let (lo, hi) = sides.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), s| {
                (lo.min(s.tps), hi.max(s.tps))
            });
            let share = if hi > 0.0 { 100.0 * lo / hi } else { 0.0 };
            vec![
                verdict(
                    "each side's failed after max-tries <= 5 %",
                    format!("worst {worst_failed:.1} %"),
                    worst_failed <= 5.0,
                ),
                verdict(
                    "each side >= 25 % of the other's throughput",
                    format!("slower side {share:.0} % of the faster"),
                    share >= 25.0,
                ),
            ]
        }
        Scenario::Sysbench => {
            let worst = |keys: &str| {
                runs.iter()
                    .find(|(k, _)| k == keys)
                    .map(|(_, sides)| {
                        sides
                            .iter()
                            .filter_map(|s| s.latency_p95_ms)
                            .fold(0.0, f64::max)
                    })
                    .unwrap_or(f64::NAN)
            };
            let (skewed, uniform) = (worst("special"), worst("uniform"));
            let ratio = skewed / uniform;
            vec![verdict(
                "skewed p95 < 10x uniform p95 (worst proxy)",
                format!("{skewed:.1} ms vs {uniform:.1} ms: {ratio:.1}x"),
                ratio < 10.0,
            )]
        }
    }
}

impl ContentionReport {
    pub fn table(&self) -> String {
        let header = [
            "scenario",
            "fairness",
            "keys",
            "side",
            "tps",
            "committed",
            "failed",
            "failed %",
            "avg ms",
            "p95 ms",
        ];
        let rows: Vec<Vec<String>> = self
            .runs
            .iter()
            .flat_map(|r| {
                r.sides.iter().map(move |s| {
                    vec![
                        r.scenario.name().to_string(),
                        r.fairness.name().to_string(),
                        r.keys.clone(),
                        s.name.clone(),
                        format!("{:.1}", s.tps),
                        s.committed.to_string(),
                        s.failed.to_string(),
                        format!("{:.1}", s.failed_pct),
                        format!("{:.1}", s.latency_avg_ms),
                        s.latency_p95_ms.map_or("-".into(), |p| format!("{p:.1}")),
                    ]
                })
            })
            .collect();
        let mut out = String::new();
        tashkent_tpcb::write_table(&mut out, &header, &rows, true);
        let _ = writeln!(
            out,
            "\nfailed: pgbench's transactions given up after {MAX_TRIES} tries; sysbench's \
             ignored errors (each a 40001, the transaction retried)"
        );
        let _ = writeln!(out, "\ngoals ({} s per run):", self.duration_s);
        for v in &self.verdicts {
            let _ = writeln!(
                out,
                "  {}, fairness {}: {} — {} ({})",
                v.scenario.name(),
                v.fairness.name(),
                v.goal,
                v.measured,
                if v.met { "met" } else { "MISSED" }
            );
        }
        for p in &self.problems {
            let _ = writeln!(out, "PROBLEM: {p}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbench_and_sysbench_summaries() {
        let pg = "number of transactions actually processed: 3252\n\
                  number of failed transactions: 19 (0.581%)\n\
                  latency average = 24.512 ms\n\
                  tps = 162.611207 (without initial connection time)\n";
        let s = parse_pgbench("A", pg).unwrap();
        assert_eq!((s.committed, s.failed), (3252, 19));
        assert!((s.tps - 162.611207).abs() < 1e-9);
        assert!((s.latency_avg_ms - 24.512).abs() < 1e-9);
        assert!((s.failed_pct - 100.0 * 19.0 / 3271.0).abs() < 1e-9);

        let sb = "    transactions:                        866    (57.06 per sec.)\n\
                  \x20   ignored errors:                      165    (10.87 per sec.)\n\
                  \x20        avg:                                   35.02\n\
                  \x20        95th percentile:                       68.05\n";
        let s = parse_sysbench("proxy 1", sb).unwrap();
        assert_eq!((s.committed, s.failed), (866, 165));
        assert!((s.tps - 57.06).abs() < 1e-9);
        assert_eq!(s.latency_p95_ms, Some(68.05));
        assert!(parse_sysbench("p", "nothing").is_err());
        assert!(parse_pgbench("p", "nothing").is_err());
    }

    #[test]
    fn judges_the_goals() {
        let side = |tps: f64, failed_pct: f64, p95: Option<f64>| Side {
            name: String::new(),
            tps,
            committed: 100,
            failed: 0,
            failed_pct,
            latency_avg_ms: 1.0,
            latency_p95_ms: p95,
        };
        let fair = [(
            String::new(),
            vec![side(100.0, 1.0, None), side(30.0, 5.0, None)],
        )];
        assert!(verdicts(Scenario::TpcbS1, Fairness::On, &fair)
            .iter()
            .all(|v| v.met));
        let starved = [(
            String::new(),
            vec![side(100.0, 0.0, None), side(20.0, 6.0, None)],
        )];
        assert!(verdicts(Scenario::TpcbS1, Fairness::Off, &starved)
            .iter()
            .all(|v| !v.met));
        let sb = |skewed: f64| {
            [
                ("special".to_string(), vec![side(1.0, 0.0, Some(skewed))]),
                ("uniform".to_string(), vec![side(1.0, 0.0, Some(10.0))]),
            ]
        };
        assert!(verdicts(Scenario::Sysbench, Fairness::On, &sb(99.0))[0].met);
        assert!(!verdicts(Scenario::Sysbench, Fairness::On, &sb(100.0))[0].met);
    }
}
