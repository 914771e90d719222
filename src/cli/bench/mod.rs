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
mod recovery;
mod soak;
mod tpcc;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tashkent_tpcb::tpcc::TpccScale;
use tashkent_tpcb::{Report, ResultRow, RunConfig, RunStats, Workload, ROWS_PER_SCALE};

use tashkent::ops::cluster::{ClusterConfig, DurabilityMode, LocalCluster, Placement};
use tashkent::ops::config::ConfigFile;
use tashkent::ops::pg::{connect, Durability, PgConfig, PgServer};
use tashkent_certifier::{CertifierConfig, WalBackend};

/// The database every system serves the workloads in.
const DATABASE: &str = "postgres";

/// How long the replicas may go without applying anything while they are
/// behind the certifier before the bench calls them stuck.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
pub enum System {
    /// One standalone PostgreSQL, fsync on, no middleware.
    #[value(name = "postgres-fsync")]
    #[serde(rename = "postgres-fsync")]
    PostgresFsync,
    /// One standalone PostgreSQL, fsync and synchronous_commit off (what a
    /// Tashkent-MW replica runs).
    #[value(name = "postgres-nofsync")]
    #[serde(rename = "postgres-nofsync")]
    PostgresNofsync,
    /// One standalone PostgreSQL, fsync on, every transaction repeatable
    /// read (the isolation tashkent gives).
    #[value(name = "postgres-rr")]
    #[serde(rename = "postgres-rr")]
    PostgresRr,
    /// pgbouncer (session mode) in front of one standalone PostgreSQL with
    /// fsync off: the proxy users would pick instead (`pgbouncer.rs`).
    #[value(name = "pgbouncer")]
    #[serde(rename = "pgbouncer")]
    Pgbouncer,
    /// Ordering in the middleware, durability in every replica (`durability = database`).
    #[value(name = "base")]
    #[serde(rename = "base")]
    Base,
    /// Ordering in the middleware, durability in every replica's WAL, one
    /// flush per group (`durability = database-grouped`).
    #[value(name = "tashkent-api")]
    #[serde(rename = "tashkent-api")]
    TashkentApi,
    /// Ordering and durability in the middleware (`durability = middleware`).
    #[value(name = "tashkent-mw")]
    #[serde(rename = "tashkent-mw")]
    TashkentMw,
    /// Tashkent-MW with a replicated certifier: three raft nodes, each
    /// with its own log (`[cluster] certifiers = 3`).
    #[value(name = "tashkent-mw-raft")]
    #[serde(rename = "tashkent-mw-raft")]
    TashkentMwRaft,
}

impl System {
    /// The name in tables, JSON and plots.
    pub fn name(self) -> &'static str {
        match self {
            System::PostgresFsync => "postgres-fsync",
            System::PostgresNofsync => "postgres-nofsync",
            System::PostgresRr => "postgres-rr",
            System::Pgbouncer => "pgbouncer",
            System::Base => "base",
            System::TashkentApi => "tashkent-api",
            System::TashkentMw => "tashkent-mw",
            System::TashkentMwRaft => "tashkent-mw-raft",
        }
    }

    /// The cluster mode, or `None` for a standalone server.
    fn durability(self) -> Option<DurabilityMode> {
        match self {
            System::PostgresFsync
            | System::PostgresNofsync
            | System::PostgresRr
            | System::Pgbouncer => None,
            System::Base => Some(DurabilityMode::Database),
            System::TashkentApi => Some(DurabilityMode::DatabaseGrouped),
            System::TashkentMw | System::TashkentMwRaft => Some(DurabilityMode::Middleware),
        }
    }

    /// Certifier nodes of a cluster.
    fn certifiers(self) -> u32 {
        match self {
            System::TashkentMwRaft => 3,
            _ => 1,
        }
    }

    /// A standalone server's configuration.
    fn standalone(self) -> PgConfig {
        let (durability, settings) = match self {
            System::PostgresNofsync | System::Pgbouncer => (Durability::Off, vec![]),
            System::PostgresRr => (
                Durability::On,
                vec![(
                    "default_transaction_isolation".to_owned(),
                    "'repeatable read'".to_owned(),
                )],
            ),
            _ => (Durability::On, vec![]),
        };
        PgConfig {
            base_dir: None,
            durability,
            settings,
            ..PgConfig::default()
        }
    }
}

/// What drives the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Client {
    /// tashkent-tpcb's driver (tokio-postgres), in the bench's process.
    Builtin,
    /// Unmodified pgbench processes, one per proxy (`-M prepared`).
    Pgbench,
}

/// Flags of `tashkent bench`.
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// Another experiment instead of the side-by-side comparison.
    #[command(subcommand)]
    pub experiment: Option<Experiment>,
    /// Workloads to run, comma-separated: allupdates, tpcb, tpcc.
    #[arg(long, value_delimiter = ',', default_value = "allupdates,tpcb")]
    pub workloads: Vec<Workload>,
    /// TPC-C warehouses (10 districts, 30,000 customers and 100,000 stock
    /// rows each).
    #[arg(long, value_name = "W", default_value_t = 1)]
    pub warehouses: i32,
    /// TPC-C items (the specification's 100,000; fewer load faster).
    #[arg(long, default_value_t = tashkent_tpcb::tpcc::ITEMS, hide = true)]
    pub tpcc_items: i32,
    /// TPC-C customers (and initial orders) per district (the
    /// specification's 3,000).
    #[arg(long, default_value_t = tashkent_tpcb::tpcc::CUSTOMERS, hide = true)]
    pub tpcc_customers: i32,
    /// Systems to measure, comma-separated: postgres-fsync,
    /// postgres-nofsync, postgres-rr (standalone: fsync on, fsync off,
    /// fsync on with repeatable read), base (durability = database),
    /// tashkent-api (durability = database-grouped), tashkent-mw
    /// (durability = middleware), tashkent-mw-raft (the same with three
    /// certifier nodes on raft).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "postgres-fsync,postgres-nofsync,postgres-rr,base,tashkent-api,tashkent-mw"
    )]
    pub systems: Vec<System>,
    /// What drives the load: builtin (tashkent-tpcb's driver) or pgbench
    /// (unmodified pgbench, one process per proxy, `-M prepared`).
    #[arg(long, value_enum, default_value = "builtin")]
    pub client: Client,
    /// Replica counts of the clusters, comma-separated (e.g. 1,3); the
    /// standalone server always runs once, as 1. Default 1,2,3.
    #[arg(long, value_delimiter = ',', conflicts_with = "max_replicas")]
    pub replicas: Vec<u32>,
    /// Run the clusters at 1..=N replicas.
    #[arg(long, value_name = "N")]
    pub max_replicas: Option<u32>,
    /// Table size: 100,000 AllUpdates rows, or 1 branch, 10 tellers and
    /// 100,000 accounts, per scale unit.
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
    /// AllUpdates rows / TPC-B accounts per scale unit (smaller tables load
    /// faster and contend more).
    #[arg(long, default_value_t = ROWS_PER_SCALE, hide = true)]
    pub rows_per_scale: u64,
    /// Concurrent clients (one connection each), spread over all proxies.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Measured seconds per system and replica count.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_secs)]
    pub duration: Duration,
    /// Unmeasured seconds before each measurement.
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = parse_secs)]
    pub warmup: Duration,
    /// Seed of the clients' random choices.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the table, JSON and plots are written (created if missing).
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    pub results_dir: PathBuf,
    /// Where the systems' temporary state directories go (default: the
    /// system temporary directory). Must be on a real disk: fsync costs
    /// are part of what is measured.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// The certifiers' WAL I/O backend (`[certifier] wal_backend`).
    #[arg(long, value_enum, default_value = "auto")]
    pub certifier_wal: WalBackend,
}

/// Experiments of `tashkent bench` other than the side-by-side comparison.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Experiment {
    /// Recovery time (restore a checkpoint, replay the log) against log
    /// length and database size.
    Recovery(recovery::RecoveryBenchArgs),
    /// Memory under minutes of load: the RSS of every tashkent process
    /// sampled while AllUpdates runs through the proxies; fails if one
    /// grows after the warm-up.
    Soak(soak::SoakArgs),
    /// Fairness on hot rows: pgbench TPC-B through two proxies at once and
    /// sysbench (skewed and uniform keys) through three, with the proxies'
    /// fairness on and off; then `verify`.
    Contention(contention::ContentionArgs),
}

fn parse_secs(s: &str) -> std::result::Result<Duration, String> {
    let t = s.trim().trim_end_matches('s');
    let secs: f64 = t
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// What one `tashkent bench` does, validated.
#[derive(Debug, Clone, Serialize)]
pub struct BenchPlan {
    pub workloads: Vec<Workload>,
    pub systems: Vec<System>,
    /// Replica counts of the clusters, ascending.
    pub replicas: Vec<u32>,
    pub scale: u32,
    pub rows_per_scale: u64,
    /// TPC-C's size (warehouses, items, customers per district).
    pub tpcc: TpccScale,
    pub clients: usize,
    pub client: Client,
    #[serde(rename = "duration_s", serialize_with = "secs")]
    pub duration: Duration,
    #[serde(rename = "warmup_s", serialize_with = "secs")]
    pub warmup: Duration,
    pub seed: u64,
    pub results_dir: PathBuf,
    #[serde(skip)]
    pub work_dir: Option<PathBuf>,
    pub certifier_wal: WalBackend,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl BenchArgs {
    /// Checks the flags and turns them into a plan.
    pub fn plan(&self) -> Result<BenchPlan> {
        let mut replicas = match (self.max_replicas, self.replicas.is_empty()) {
            (Some(n), _) => (1..=n).collect(),
            (None, false) => self.replicas.clone(),
            (None, true) => vec![1, 2, 3],
        };
        replicas.sort_unstable();
        replicas.dedup();
        if replicas.is_empty() || replicas.iter().any(|n| !(1..=16).contains(n)) {
            bail!("replica counts must be between 1 and 16, got {replicas:?}");
        }
        let mut workloads = self.workloads.clone();
        workloads.dedup();
        let mut systems = self.systems.clone();
        systems.sort_unstable();
        systems.dedup();
        if workloads.is_empty() || systems.is_empty() {
            bail!("nothing to run: give at least one workload and one system");
        }
        if self.clients == 0 {
            bail!("at least one client is needed");
        }
        if self.duration.is_zero() {
            bail!("the measured duration must not be zero");
        }
        if self.scale == 0 || self.rows_per_scale == 0 {
            bail!("scale and rows per scale must be at least 1");
        }
        let tpcc = TpccScale {
            warehouses: self.warehouses,
            items: self.tpcc_items,
            customers: self.tpcc_customers,
        };
        if workloads.contains(&Workload::Tpcc) {
            tpcc.validate()?;
            if self.client == Client::Pgbench {
                bail!("--client pgbench runs allupdates and tpcb only; TPC-C needs the builtin client");
            }
        }
        Ok(BenchPlan {
            workloads,
            systems,
            replicas,
            scale: self.scale,
            rows_per_scale: self.rows_per_scale,
            tpcc,
            clients: self.clients,
            client: self.client,
            duration: self.duration,
            warmup: self.warmup,
            seed: self.seed,
            results_dir: self.results_dir.clone(),
            work_dir: self.work_dir.clone(),
            certifier_wal: self.certifier_wal,
        })
    }
}

impl BenchPlan {
    /// Every (system, replica count) to start, in report order.
    pub fn setups(&self) -> Vec<(System, u32)> {
        let mut out = Vec::new();
        for &s in &self.systems {
            match s.durability() {
                None => out.push((s, 1)),
                Some(_) => out.extend(self.replicas.iter().map(|&n| (s, n))),
            }
        }
        out
    }
}

/// A side-by-side ratio of two systems' throughput.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ratio {
    pub workload: Workload,
    pub replicas: u32,
    /// `system ÷ versus`.
    pub system: String,
    pub versus: String,
    pub ratio: f64,
}

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

/// Ratios that the design's claims are about: Tashkent-MW against the
/// standalone server at one replica, and against Base at every replica
/// count both ran at; Tashkent-API against Base, Tashkent-MW against
/// Tashkent-API, and Tashkent-MW on three certifier nodes against one,
/// likewise.
pub fn ratios(report: &Report) -> Vec<Ratio> {
    let tps = |w: Workload, system: &str, n: u32| {
        report
            .rows(w)
            .find(|r| r.system == system && r.replicas == n)
            .map(|r| r.stats.throughput_tps)
    };
    let mut out = Vec::new();
    for w in report.workloads() {
        let counts_of = |system: System| {
            let mut counts: Vec<u32> = report
                .rows(w)
                .filter(|r| r.system == system.name())
                .map(|r| r.replicas)
                .collect();
            counts.sort_unstable();
            counts.dedup();
            counts
        };
        let mut push = |mw: &str, n: u32, versus: &str| {
            if let (Some(a), Some(b)) = (tps(w, mw, n), tps(w, versus, n)) {
                if b > 0.0 {
                    out.push(Ratio {
                        workload: w,
                        replicas: n,
                        system: mw.to_owned(),
                        versus: versus.to_owned(),
                        ratio: a / b,
                    });
                }
            }
        };
        let (mw, api, base) = (
            System::TashkentMw.name(),
            System::TashkentApi.name(),
            System::Base.name(),
        );
        for standalone in [
            System::PostgresFsync,
            System::PostgresNofsync,
            System::PostgresRr,
            System::Pgbouncer,
        ] {
            push(mw, 1, standalone.name());
        }
        // The pooler's own cost: the same server, directly and through it.
        push(System::Pgbouncer.name(), 1, System::PostgresNofsync.name());
        for n in counts_of(System::Base) {
            push(mw, n, base);
        }
        for n in counts_of(System::Base) {
            push(api, n, base);
        }
        for n in counts_of(System::TashkentApi) {
            push(mw, n, api);
        }
        for n in counts_of(System::TashkentMw) {
            push(System::TashkentMwRaft.name(), n, mw);
        }
    }
    out
}

/// The ratios as text lines.
pub fn ratios_text(ratios: &[Ratio]) -> String {
    let mut out = String::new();
    for r in ratios {
        let _ = writeln!(
            out,
            "{:<10}  {} ÷ {}, {} replica{}: {:.2}×",
            r.workload.title(),
            r.system,
            r.versus,
            r.replicas,
            if r.replicas == 1 { "" } else { "s" },
            r.ratio
        );
    }
    out
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

/// Checks the replicas after a run: TPC-B's invariant on each, and the
/// same contents on all. Returns the violations found.
async fn check(workload: Workload, replicas: &[String]) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut prints = Vec::new();
    for (i, conninfo) in replicas.iter().enumerate() {
        if workload == Workload::Tpcb {
            match tashkent_tpcb::tpcb_invariant(conninfo).await {
                Ok(()) => {}
                Err(e @ tashkent_tpcb::Error::Invariant { .. }) => problems.push(format!(
                    "TPC-B invariant violated on replica {}: {e}",
                    i + 1
                )),
                Err(e) => return Err(e).context(format!("checking replica {}", i + 1)),
            }
        }
        prints.push(fingerprint(workload, conninfo).await?);
    }
    if prints.windows(2).any(|w| w[0] != w[1]) {
        let listed: Vec<String> = prints
            .iter()
            .enumerate()
            .map(|(i, p)| format!("replica {}: {p}", i + 1))
            .collect();
        problems.push(format!(
            "replicas diverged after the run ({})",
            listed.join("; ")
        ));
    }
    Ok(problems)
}

/// An order-independent digest of a workload's tables.
async fn fingerprint(workload: Workload, conninfo: &str) -> Result<String> {
    let sql = match workload {
        Workload::AllUpdates => {
            "SELECT count(*)::bigint, coalesce(sum(val), 0)::bigint, \
             coalesce(sum(hashtext(id || ':' || val)), 0)::bigint FROM allupdates"
        }
        Workload::Tpcb => {
            "SELECT (SELECT count(*) FROM pgbench_history)::bigint, \
             (SELECT coalesce(sum(delta), 0) FROM pgbench_history)::bigint, \
             (SELECT coalesce(sum(hashtext(aid || ':' || abalance)), 0) FROM pgbench_accounts)::bigint, \
             (SELECT coalesce(sum(hashtext(tid || ':' || tbalance)), 0) FROM pgbench_tellers)::bigint, \
             (SELECT coalesce(sum(hashtext(bid || ':' || bbalance)), 0) FROM pgbench_branches)::bigint"
        }
        // Compared by `tashkent verify` instead (bench/tpcc.rs).
        Workload::Tpcc => bail!("TPC-C's replicas are compared by verify"),
    };
    let client = connect(conninfo).await?;
    let row = client
        .query_one(sql, &[])
        .await
        .with_context(|| format!("digesting the {workload} tables"))?;
    let values: Vec<String> = (0..row.len())
        .map(|i| row.get::<_, i64>(i).to_string())
        .collect();
    Ok(values.join("/"))
}

/// Waits until every replica of `cluster` has applied the certifier's
/// latest version (everything committed so far). Fails if the replicas
/// make no progress for [`STALL_TIMEOUT`], with the certifier's view of
/// them for the bug report.
pub(crate) async fn wait_applied(cluster: &LocalCluster) -> Result<()> {
    let certifier = cluster.certifier_client().await?;
    let latest = certifier
        .status()
        .await
        .context("asking the certifier for its status")?
        .latest_version;
    let mut clients = Vec::new();
    for r in &cluster.replicas {
        clients.push(connect(&r.conninfo(DATABASE)).await?);
    }
    let mut last: Vec<u64> = Vec::new();
    let mut progress_at = Instant::now();
    loop {
        let mut applied = Vec::new();
        for c in &clients {
            applied.push(
                tashkent::proxy::capture::applied_version(c)
                    .await
                    .context("reading a replica's applied version")?,
            );
        }
        if applied.iter().all(|&v| v >= latest) {
            return Ok(());
        }
        if applied != last {
            last = applied;
            progress_at = Instant::now();
        } else if progress_at.elapsed() >= STALL_TIMEOUT {
            let seen = match certifier.status().await {
                Ok(s) => format!(
                    "certifier: latest {}, durable {}, horizon {} ({}), replicas reported {:?}",
                    s.latest_version,
                    s.durable_version,
                    s.horizon,
                    s.horizon_cause,
                    s.replicas
                        .iter()
                        .map(|r| (r.replica_id, r.applied_version, r.millis_since_report))
                        .collect::<Vec<_>>()
                ),
                Err(e) => format!("certifier status: {e}"),
            };
            bail!(
                "replicas stuck below version {latest}: applied {last:?} unchanged for {} s \
                 ({seen}; (id, applied, ms since report))",
                STALL_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `tashkent verify` over every replica of `cluster`: `None` when they are
/// identical (or there is one), else the verdict.
pub(crate) async fn verify_replicas(cluster: &LocalCluster) -> Result<Option<String>> {
    use tashkent::ops::verify::{verify, Options, Target};
    if cluster.replicas.len() < 2 {
        return Ok(None);
    }
    let targets: Vec<Target> = cluster
        .replicas
        .iter()
        .enumerate()
        .map(|(i, r)| Target {
            name: format!("replica {}", i + 1),
            conninfo: r.conninfo(DATABASE),
        })
        .collect();
    let report = verify(&targets, &Options::default()).await?;
    Ok((!report.identical()).then(|| report.verdict()))
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
        let shutdown = super::ShutdownSignal::install()?;
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
