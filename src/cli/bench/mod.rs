//! `tashkent bench`: the side-by-side measurement of ARCHITECTURE.md, "Measuring".
//!
//! One command starts every system to compare, each fresh in its own
//! temporary state directory, drives the workloads of `tashkent-tpcb`
//! against it and stops it again:
//!
//! - `postgres-fsync`: one standalone PostgreSQL with its own durability
//!   (fsync on), the same memory settings as the replicas, clients
//!   connected directly;
//! - `base`: a local cluster with `durability = database` (ordering in the
//!   middleware, each replica's serial commits pay PostgreSQL's fsync);
//! - `tashkent-api`: a local cluster with `durability = database-grouped`
//!   (ordering in the middleware, passed into each replica's WAL by
//!   committing in order with `synchronous_commit = off`; one forced flush
//!   acknowledges a whole group);
//! - `tashkent-mw`: a local cluster with `durability = middleware` (the
//!   certifier's group-committed log, replicas with fsync off);
//! - `tashkent-mw-raft`: the same with a replicated certifier, three raft
//!   nodes (not in the default set).
//!
//! Clusters run at every requested replica count; their clients are spread
//! over all proxies. Data is loaded through the middleware and every
//! replica must have applied it before the measured run starts. After a
//! run on a cluster the replicas must converge to the same contents, and
//! after TPC-B every replica must satisfy TPC-B's invariant; a violation is
//! a bug and fails the command (after the results are written).
//!
//! The results (one table per workload, the side-by-side ratios, JSON of
//! every figure, one SVG plot per workload of throughput against replica
//! count) go to stdout and to a results directory.

mod contention;
mod pgbench;
mod pgbouncer;
mod plan;
mod ratios;
mod recovery;
mod replicas;
mod soak;
mod tpcc;

pub use plan::{BenchArgs, BenchPlan, Client, Experiment, System};
pub use ratios::{ratios, ratios_text, Ratio};
use replicas::check;
pub(crate) use replicas::{verify_replicas, wait_applied};

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tashkent_tpcb::{Report, ResultRow, RunConfig, RunStats, Workload};

use tashkent::ops::cluster::{ClusterConfig, LocalCluster, Placement};
use tashkent::ops::config::ConfigFile;
use tashkent::ops::pg::PgServer;
use tashkent_certifier::{CertifierConfig, WalBackend};

/// The database every system serves the workloads in.
const DATABASE: &str = "postgres";

/// Everything a bench produced.
#[derive(Debug, Clone, Serialize)]
pub struct BenchOutcome {
    pub plan: BenchPlan,
    #[serde(flatten)]
    pub report: Report,
    pub ratios: Vec<Ratio>,
    /// Failed runs and broken invariants (each one a bug or a broken setup).
    pub problems: Vec<String>,
    /// Files written into the results directory.
    #[serde(skip)]
    pub files: Vec<PathBuf>,
}

/// Runs the plan and writes the results; the command's output (table,
/// ratios, files) is returned, progress goes to stderr. A setup that
/// fails is reported in `problems` and the others still run.
pub async fn run(plan: &BenchPlan) -> Result<BenchOutcome> {
    std::fs::create_dir_all(&plan.results_dir)
        .with_context(|| format!("creating {}", plan.results_dir.display()))?;
    let setups = plan.setups();
    let total = setups.len() * plan.workloads.len();
    let mut report = Report::default();
    let mut problems = Vec::new();
    let mut done = 0;
    for (system, replicas) in setups {
        let label = format!("{} ×{replicas}", system.name());
        let res = run_setup(
            plan,
            system,
            replicas,
            &label,
            &mut done,
            total,
            &mut report,
            &mut problems,
        )
        .await;
        if let Err(e) = res {
            let msg = format!("{label}: {e:#}");
            eprintln!("!! {msg}");
            problems.push(msg);
        }
    }
    // Report order: per workload, the setups in plan order.
    report.results.sort_by_key(|r| {
        (
            plan.workloads.iter().position(|w| *w == r.workload),
            plan.systems
                .iter()
                .position(|s| s.name() == r.system.as_str()),
            r.replicas,
        )
    });
    let outcome = BenchOutcome {
        plan: plan.clone(),
        ratios: ratios(&report),
        report,
        problems,
        files: Vec::new(),
    };
    write_results(outcome)
}

/// Writes `results.json`, `results.txt` and the plots.
fn write_results(mut outcome: BenchOutcome) -> Result<BenchOutcome> {
    let dir = outcome.plan.results_dir.clone();
    let json = serde_json::to_string_pretty(&outcome).context("serialising the results")?;
    let json_path = dir.join("results.json");
    std::fs::write(&json_path, json).with_context(|| format!("writing {}", json_path.display()))?;
    let txt_path = dir.join("results.txt");
    std::fs::write(&txt_path, summary_text(&outcome))
        .with_context(|| format!("writing {}", txt_path.display()))?;
    let plots = outcome
        .report
        .write_plot(&dir)
        .context("writing the plots")?;
    outcome.files = vec![json_path, txt_path];
    outcome.files.extend(plots);
    Ok(outcome)
}

/// The table, the ratios and the problems, as printed.
pub fn summary_text(outcome: &BenchOutcome) -> String {
    let mut out = outcome.report.to_table();
    if !outcome.ratios.is_empty() {
        out.push_str("\nThroughput ratios (measured side by side)\n");
        out.push_str(&ratios_text(&outcome.ratios));
    }
    if !outcome.problems.is_empty() {
        out.push_str("\nPROBLEMS (bugs or a broken setup):\n");
        for p in &outcome.problems {
            let _ = writeln!(out, "  {p}");
        }
    }
    out
}

/// Where a setup's clients connect and how to reach its replicas.
struct Target {
    /// Client connection strings (one per proxy, or the server).
    clients: Vec<String>,
    /// Direct connection strings of the replicas (checks).
    replicas: Vec<String>,
}

/// A running system; stopped by [`Running::stop`] (or on drop).
enum Running {
    Standalone(PgServer),
    /// pgbouncer and the server behind it (dropped in this order).
    Pooled(pgbouncer::Pgbouncer, PgServer),
    Cluster(Box<LocalCluster>),
}

impl Running {
    async fn start(
        system: System,
        replicas: u32,
        certifier_wal: WalBackend,
        state: &Path,
    ) -> Result<Running> {
        match system.durability() {
            None => {
                let cfg = system.standalone();
                let server = tokio::task::spawn_blocking(move || PgServer::start(cfg))
                    .await
                    .context("starting PostgreSQL")??;
                if system != System::Pgbouncer {
                    return Ok(Running::Standalone(server));
                }
                tokio::task::spawn_blocking(move || {
                    let bouncer = pgbouncer::Pgbouncer::start(&server)?;
                    Ok(Running::Pooled(bouncer, server))
                })
                .await
                .context("starting pgbouncer")?
            }
            Some(durability) => {
                let file = ConfigFile {
                    cluster: ClusterConfig {
                        state_dir: state.to_owned(),
                        replicas,
                        durability,
                        certifiers: system.certifiers(),
                        database: DATABASE.into(),
                        // Measured like standalone PostgreSQL, which runs
                        // without TLS: pgbench's default sslmode=prefer
                        // would otherwise encrypt every proxy's traffic.
                        tls: false,
                        ..ClusterConfig::default()
                    },
                    certifier: CertifierConfig {
                        wal_backend: certifier_wal,
                        ..CertifierConfig::default()
                    },
                    ..ConfigFile::default()
                };
                // The system runs in processes of its own, apart from the
                // load and its runtime.
                let exe = std::env::current_exe().context("locating the tashkent binary")?;
                Ok(Running::Cluster(Box::new(
                    LocalCluster::start_placed(&file, Placement::Processes { exe }).await?,
                )))
            }
        }
    }

    fn target(&self) -> Target {
        match self {
            Running::Standalone(s) => Target {
                clients: vec![s.conninfo(DATABASE)],
                replicas: vec![s.conninfo(DATABASE)],
            },
            Running::Pooled(b, s) => Target {
                clients: vec![b.conninfo(s.user(), DATABASE)],
                replicas: vec![s.conninfo(DATABASE)],
            },
            Running::Cluster(c) => Target {
                clients: (0..c.replicas.len()).map(|i| c.proxy_conninfo(i)).collect(),
                replicas: c.replicas.iter().map(|r| r.conninfo(DATABASE)).collect(),
            },
        }
    }

    /// Waits until every replica applied every certified version.
    async fn converge(&self) -> Result<()> {
        match self {
            Running::Standalone(_) | Running::Pooled(..) => Ok(()),
            Running::Cluster(c) => wait_applied(c).await,
        }
    }

    async fn stop(self) -> Result<()> {
        match self {
            Running::Standalone(mut s) => tokio::task::spawn_blocking(move || s.stop())
                .await
                .context("stopping PostgreSQL")?
                .context("stopping PostgreSQL"),
            Running::Pooled(b, mut s) => tokio::task::spawn_blocking(move || {
                let bouncer = b.stop().context("stopping pgbouncer");
                s.stop().context("stopping PostgreSQL")?;
                bouncer
            })
            .await
            .context("stopping pgbouncer and PostgreSQL")?,
            Running::Cluster(c) => c.shutdown().await.context("stopping the cluster"),
        }
    }
}

/// Starts one system, runs every workload on it, stops it.
#[allow(clippy::too_many_arguments)]
async fn run_setup(
    plan: &BenchPlan,
    system: System,
    replicas: u32,
    label: &str,
    done: &mut usize,
    total: usize,
    report: &mut Report,
    problems: &mut Vec<String>,
) -> Result<()> {
    let state = work_dir(plan.work_dir.as_deref())?;
    let spinner = spinner(format!(
        "{label}: starting {}",
        match system {
            System::Pgbouncer => "PostgreSQL and pgbouncer".to_owned(),
            s if s.durability().is_none() => "PostgreSQL".to_owned(),
            _ => format!("{replicas} replica(s), certifier and proxies"),
        }
    ));
    let started = Instant::now();
    let running = Running::start(
        system,
        replicas,
        plan.certifier_wal,
        &state.path().join("state"),
    )
    .await;
    let running = match running {
        Ok(r) => r,
        Err(e) => {
            spinner.finish_and_clear();
            // Skip the workloads of this setup in the count.
            *done += plan.workloads.len();
            return Err(e);
        }
    };
    let target = running.target();
    spinner.set_message(format!(
        "{label}: started in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let mut result = Ok(());
    for &workload in &plan.workloads {
        *done += 1;
        let name = format!("[{done}/{total}] {} {label}", workload.title());
        let step = Step {
            plan,
            system,
            replicas,
            running: &running,
            target: &target,
            name: &name,
            spinner: &spinner,
        };
        if let Err(e) = run_workload(&step, workload, report, problems).await {
            let msg = format!("{name}: {e:#}");
            eprintln!("!! {msg}");
            problems.push(msg);
        }
    }
    spinner.set_message(format!("{label}: stopping"));
    if let Err(e) = running.stop().await {
        result = Err(e);
    }
    spinner.finish_and_clear();
    drop(state);
    result
}

/// One workload on one started system: where it runs and what it reports to.
struct Step<'a> {
    plan: &'a BenchPlan,
    system: System,
    replicas: u32,
    running: &'a Running,
    target: &'a Target,
    /// "[i/n] workload system ×replicas", the prefix of its messages.
    name: &'a str,
    spinner: &'a ProgressBar,
}

impl Step<'_> {
    /// Swaps the spinner for a progress bar of the measured run.
    fn run_bar(&self) -> ProgressBar {
        self.spinner.set_message(String::new());
        self.spinner.disable_steady_tick();
        let bar = tashkent_tpcb::progress_bar_for(self.name, self.plan.warmup, self.plan.duration);
        if let Ok(style) =
            ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed_precise} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    }

    /// Clears `bar` and brings the spinner back.
    fn end_bar(&self, bar: &ProgressBar) {
        bar.finish_and_clear();
        self.spinner.enable_steady_tick(Duration::from_millis(120));
    }
}

/// Loads one workload, waits for the replicas, runs and checks it.
async fn run_workload(
    step: &Step<'_>,
    workload: Workload,
    report: &mut Report,
    problems: &mut Vec<String>,
) -> Result<()> {
    if workload == Workload::Tpcc {
        return tpcc::run_workload(step, report, problems).await;
    }
    let Step {
        plan,
        system,
        replicas,
        running,
        target,
        name,
        spinner,
    } = *step;
    spinner.set_message(format!("{name}: loading (scale {})", plan.scale));
    tashkent_tpcb::load_rows(
        &target.clients[0],
        workload,
        plan.scale,
        plan.rows_per_scale,
    )
    .await
    .context("loading")?;
    spinner.set_message(format!(
        "{name}: waiting until every replica applied the load"
    ));
    running.converge().await?;
    let cfg = RunConfig {
        targets: target.clients.clone(),
        workload,
        scale: plan.scale,
        rows_per_scale: plan.rows_per_scale,
        clients: plan.clients,
        duration: plan.duration,
        warmup: plan.warmup,
        seed: plan.seed,
    };
    let bar = step.run_bar();
    let stats = match plan.client {
        Client::Builtin => {
            let callback = tashkent_tpcb::bar_callback(&bar);
            tashkent_tpcb::run(&cfg, Some(&callback))
                .await
                .map_err(anyhow::Error::from)
        }
        Client::Pgbench => {
            let logs = work_dir(plan.work_dir.as_deref())?;
            let pgbench = tashkent::ops::pg::PgBinaries::locate()
                .and_then(|b| b.tool("pgbench"))
                .context("locating pgbench")?;
            bar.set_message("pgbench");
            let ticker = tokio::spawn({
                let bar = bar.clone();
                async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        bar.tick();
                    }
                }
            });
            let stats = pgbench::run(&cfg, &pgbench, logs.path()).await;
            ticker.abort();
            stats
        }
    };
    step.end_bar(&bar);
    let stats = stats.context("running")?;
    eprintln!("{name}: {}", one_line(&stats));
    report.results.push(ResultRow {
        workload,
        system: system.name().to_owned(),
        replicas,
        stats,
        tpcc: None,
    });

    spinner.set_message(format!("{name}: checking the replicas"));
    running.converge().await?;
    for p in check(workload, &target.replicas).await? {
        let msg = format!("{name}: {p}");
        eprintln!("!! BUG: {msg}");
        problems.push(msg);
    }
    Ok(())
}

/// Throughput, latency and aborts in one line.
fn one_line(s: &RunStats) -> String {
    format!(
        "{:.0} tps, mean {:.2} ms, p99 {:.2} ms, {:.1} % aborts",
        s.throughput_tps,
        s.latency_ms.mean,
        s.latency_ms.p99,
        s.abort_rate * 100.0
    )
}

/// A fresh temporary directory the PostgreSQL account can traverse.
pub(crate) fn work_dir(parent: Option<&Path>) -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let mut b = tempfile::Builder::new();
    b.prefix("tashkent-bench-");
    let dir = match parent {
        Some(p) => {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
            b.tempdir_in(p)
        }
        None => b.tempdir(),
    }
    .context("creating a temporary state directory")?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .context("opening the state directory to the server account")?;
    Ok(dir)
}

/// A spinner on stderr for the steps between runs (hidden when stderr is
/// not a terminal).
fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
        bar.set_style(style);
    }
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// `tashkent bench`: runs the plan on a fresh runtime, prints the table,
/// the ratios and where the files are; fails if any run failed or any
/// invariant broke. Ctrl-C stops every system it started.
pub fn main(args: BenchArgs) -> Result<()> {
    match args.experiment {
        Some(Experiment::Recovery(args)) => return recovery::main(args),
        Some(Experiment::Soak(args)) => return soak::main(args),
        Some(Experiment::Contention(args)) => return contention::main(args),
        None => {}
    }
    let plan = args.plan()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let outcome = runtime.block_on(async {
        let mut shutdown = super::ShutdownSignal::install()?;
        eprintln!(
            "tashkent bench: {} on {} ({} setups), {} clients, {} s + {} s warm-up each; results in {}",
            plan.workloads
                .iter()
                .map(|w| w.name())
                .collect::<Vec<_>>()
                .join(","),
            plan.setups()
                .iter()
                .map(|(s, n)| format!("{}×{n}", s.name()))
                .collect::<Vec<_>>()
                .join(" "),
            plan.setups().len(),
            plan.clients,
            plan.duration.as_secs_f64(),
            plan.warmup.as_secs_f64(),
            plan.results_dir.display()
        );
        // Dropping the bench future stops whatever it started (servers,
        // proxies, certifier) and removes the temporary state.
        tokio::select! {
            r = run(&plan) => r,
            s = shutdown.wait() => bail!("stopped by {s}; every system started was stopped"),
        }
    })?;
    let mut text = summary_text(&outcome);
    text.push('\n');
    for f in &outcome.files {
        let what = match f.extension().and_then(|e| e.to_str()) {
            Some("svg") => "plot",
            Some("json") => "json",
            _ => "table",
        };
        let _ = writeln!(text, "{what}: {}", f.display());
    }
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
    if !outcome.problems.is_empty() {
        bail!(
            "{} problem(s) during the bench (see PROBLEMS above)",
            outcome.problems.len()
        );
    }
    Ok(())
}
