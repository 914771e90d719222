//! What a bench run measures: the systems, the client, the workloads and
//! the load, from the command line (`BenchArgs`) to the plan it runs
//! (`BenchPlan`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;
use tashkent_tpcb::tpcc::TpccScale;
use tashkent_tpcb::{Workload, ROWS_PER_SCALE};

use tashkent::ops::cluster::DurabilityMode;
use tashkent::ops::pg::{Durability, PgConfig};
use tashkent_certifier::WalBackend;

use super::{contention, recovery, soak};

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
    pub(super) fn durability(self) -> Option<DurabilityMode> {
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
    pub(super) fn certifiers(self) -> u32 {
        match self {
            System::TashkentMwRaft => 3,
            _ => 1,
        }
    }

    /// A standalone server's configuration.
    pub(super) fn standalone(self) -> PgConfig {
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
