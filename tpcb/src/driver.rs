//! Running a workload: one tokio task and one connection per client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};

use crate::error::{redact, Error, Result};
use crate::stats::RunStats;
use crate::workload::{connect, tpcc_refused, Size, Workload, ROWS_PER_SCALE};

/// What to run and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    /// libpq connection strings (key/value or URL); client `i` connects to
    /// `targets[i % targets.len()]`.
    pub targets: Vec<String>,
    pub workload: Workload,
    /// The scale the tables were loaded with.
    pub scale: u32,
    /// AllUpdates rows / TPC-B accounts per scale unit the tables were
    /// loaded with ([`ROWS_PER_SCALE`] unless loaded by
    /// [`crate::load_rows`]).
    pub rows_per_scale: u64,
    /// Concurrent clients (each one connection and one task).
    pub clients: usize,
    /// Length of the measured window.
    pub duration: Duration,
    /// Time run before the measured window; nothing in it is counted.
    pub warmup: Duration,
    /// Seeds the clients' random parameters (client `i` gets its own
    /// stream derived from it).
    pub seed: u64,
}

impl RunConfig {
    /// One client, 10 s measured after 2 s of warm-up, seed 0, tables of
    /// the standard size.
    pub fn new(targets: Vec<String>, workload: Workload, scale: u32) -> RunConfig {
        RunConfig {
            targets,
            workload,
            scale,
            rows_per_scale: ROWS_PER_SCALE,
            clients: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            seed: 0,
        }
    }
}

/// Which part of a run is under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Warmup,
    Measure,
    /// The measured window is over (last report of a run).
    Done,
}

/// A snapshot of a run for progress display, reported about 5 times a
/// second and once at the end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub phase: Phase,
    /// Time since the warm-up began.
    pub elapsed: Duration,
    /// Warm-up plus measured window.
    pub total: Duration,
    /// Committed transactions so far, warm-up included.
    pub committed: u64,
    /// Aborted attempts so far, warm-up included.
    pub aborts: u64,
}

/// A progress callback for [`run`].
pub type ProgressFn<'a> = &'a (dyn Fn(&Progress) + Sync);

/// A progress bar for a run of `cfg` (in milliseconds of warm-up plus
/// measured time); feed it with [`bar_callback`].
pub fn progress_bar(cfg: &RunConfig) -> ProgressBar {
    progress_bar_for(cfg.workload.title(), cfg.warmup, cfg.duration)
}

/// A progress bar titled `title` for a run of `warmup + duration`.
pub fn progress_bar_for(title: &str, warmup: Duration, duration: Duration) -> ProgressBar {
    let total = (warmup + duration).as_millis() as u64;
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {elapsed_precise} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(title.to_owned());
    bar
}

/// A [`run`] progress callback that moves `bar` (see [`progress_bar`]).
pub fn bar_callback(bar: &ProgressBar) -> impl Fn(&Progress) + Sync + '_ {
    move |p: &Progress| {
        bar.set_position(p.elapsed.as_millis() as u64);
        let phase = match p.phase {
            Phase::Warmup => "warm-up",
            Phase::Measure => "measuring",
            Phase::Done => "done",
        };
        bar.set_message(format!(
            "{phase}: {} committed, {} aborted",
            p.committed, p.aborts
        ));
        if p.phase == Phase::Done {
            bar.finish();
        }
    }
}

/// Runs `cfg.workload` against `cfg.targets` and measures it.
///
/// Every client connects and prepares its statements first; then all run
/// transactions back to back for `warmup + duration`. Counted are the
/// transactions (and aborted attempts) that end inside the measured
/// window, and for each committed one the latency of its committing
/// attempt. An attempt failing with SQLSTATE 40001 or 40P01 is rolled back
/// and counted as an abort, and the client goes on with new random
/// parameters; 08007 (outcome unknown) is counted apart and not retried;
/// any other error stops all clients and fails the run.
pub async fn run(cfg: &RunConfig, progress: Option<ProgressFn<'_>>) -> Result<RunStats> {
    if cfg.targets.is_empty() {
        return Err(Error::Config("no targets to run against".into()));
    }
    if cfg.clients == 0 {
        return Err(Error::Config("at least one client is needed".into()));
    }
    if cfg.duration.is_zero() {
        return Err(Error::Config(
            "the measured duration must not be zero".into(),
        ));
    }
    if cfg.workload == Workload::Tpcc {
        return Err(tpcc_refused("this driver"));
    }
    let size = Size::new(cfg.scale, cfg.rows_per_scale)?;

    let sessions = futures::future::try_join_all((0..cfg.clients).map(|i| {
        let t = i % cfg.targets.len();
        // The first client of each target checks the tables.
        Session::open(
            i,
            t,
            &cfg.targets[t],
            cfg.workload,
            size,
            i < cfg.targets.len(),
        )
    }))
    .await?;

    let clients = sessions.into_iter().enumerate().map(|(i, session)| {
        let rng = client_rng(cfg.seed, i);
        move |window, shared| client_main(session, window, shared, rng)
    });
    let all = drive(cfg.warmup, cfg.duration, clients, progress).await?;
    let mut total = ClientStats::default();
    for stats in all {
        total.merge(stats);
    }
    Ok(RunStats::from_samples(
        total.committed,
        total.aborts,
        total.unknown,
        cfg.duration,
        &mut total.latencies_us,
    ))
}

/// Client `i`'s own stream of random choices from the run's seed.
pub(crate) fn client_rng(seed: u64, i: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Runs one task per client for `warmup + duration`, reporting progress
/// about 5 times a second from the shared counters, and returns every
/// client's result; the first client error stops all of them and is the
/// result.
pub(crate) async fn drive<T, C, F>(
    warmup: Duration,
    duration: Duration,
    clients: impl IntoIterator<Item = C>,
    progress: Option<ProgressFn<'_>>,
) -> Result<Vec<T>>
where
    T: Send + 'static,
    C: FnOnce(Window, Arc<Shared>) -> F,
    F: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let shared = Arc::new(Shared::default());
    let start = Instant::now();
    let window = Window {
        start: start + warmup,
        end: start + warmup + duration,
    };
    let mut tasks = JoinSet::new();
    let mut ids = HashMap::new();
    for (i, client) in clients.into_iter().enumerate() {
        let handle = tasks.spawn(client(window, Arc::clone(&shared)));
        ids.insert(handle.id(), i);
    }

    let report = |phase: Phase| {
        if let Some(f) = progress {
            f(&Progress {
                phase,
                elapsed: start.elapsed().min(warmup + duration),
                total: warmup + duration,
                committed: shared.committed.load(Ordering::Relaxed),
                aborts: shared.aborts.load(Ordering::Relaxed),
            });
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut results = Vec::new();
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Ok(r))) => results.push(r),
                Some(Ok(Err(e))) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    tasks.abort_all();
                    return Err(e);
                }
                Some(Err(e)) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    tasks.abort_all();
                    return Err(Error::Task {
                        client: ids.get(&e.id()).copied().unwrap_or(usize::MAX),
                        message: e.to_string(),
                    });
                }
            },
            _ = tick.tick(), if progress.is_some() => {
                let phase = if Instant::now() < window.start { Phase::Warmup } else { Phase::Measure };
                report(phase);
            }
        }
    }
    report(Phase::Done);
    Ok(results)
}

/// The measured window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub(crate) fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

/// Live counters (for progress) and the stop flag.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub stop: AtomicBool,
    pub committed: AtomicU64,
    pub aborts: AtomicU64,
}

/// One client's measured figures.
#[derive(Debug, Default)]
struct ClientStats {
    committed: u64,
    aborts: u64,
    unknown: u64,
    latencies_us: Vec<u64>,
}

impl ClientStats {
    fn merge(&mut self, other: ClientStats) {
        self.committed += other.committed;
        self.aborts += other.aborts;
        self.unknown += other.unknown;
        self.latencies_us.extend(other.latencies_us);
    }
}

async fn client_main(
    mut session: Session,
    window: Window,
    shared: Arc<Shared>,
    mut rng: StdRng,
) -> Result<ClientStats> {
    let mut stats = ClientStats::default();
    while !shared.stop.load(Ordering::Relaxed) {
        let began = Instant::now();
        if began >= window.end {
            break;
        }
        let outcome = session.attempt(&mut rng).await?;
        let ended = Instant::now();
        let measured = window.contains(ended);
        match outcome {
            Outcome::Committed => {
                shared.committed.fetch_add(1, Ordering::Relaxed);
                if measured {
                    stats.committed += 1;
                    stats
                        .latencies_us
                        .push(ended.duration_since(began).as_micros() as u64);
                }
            }
            Outcome::Aborted => {
                shared.aborts.fetch_add(1, Ordering::Relaxed);
                if measured {
                    stats.aborts += 1;
                }
            }
            Outcome::Unknown => {
                if measured {
                    stats.unknown += 1;
                }
            }
        }
    }
    Ok(stats)
}

/// How an attempt ended (other errors fail the run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Committed,
    /// 40001 / 40P01: rolled back, retry with new parameters.
    Aborted,
    /// 08007: the commit may or may not have happened.
    Unknown,
}

pub(crate) fn classify(err: &tokio_postgres::Error) -> Option<Outcome> {
    let code = err.code()?;
    if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
        Some(Outcome::Aborted)
    } else if *code == SqlState::TRANSACTION_RESOLUTION_UNKNOWN {
        Some(Outcome::Unknown)
    } else {
        None
    }
}

/// A workload's prepared statements.
enum Statements {
    AllUpdates {
        update: Statement,
    },
    Tpcb {
        update_account: Statement,
        select_account: Statement,
        update_teller: Statement,
        update_branch: Statement,
        insert_history: Statement,
    },
}

/// One client's connection.
struct Session {
    client: Client,
    statements: Statements,
    /// "client i on target t (conninfo)" for error messages.
    who: String,
    conninfo: String,
    workload: Workload,
    size: Size,
}

impl Session {
    async fn open(
        index: usize,
        target: usize,
        conninfo: &str,
        workload: Workload,
        size: Size,
        check_tables: bool,
    ) -> Result<Session> {
        let who = format!("client {index} on target {target} ({})", redact(conninfo));
        let client = connect(conninfo, &who).await?;
        if check_tables {
            check_loaded(&client, workload, size, &who).await?;
        }
        let statements = prepare(&client, workload, &who).await?;
        Ok(Session {
            client,
            statements,
            who,
            conninfo: conninfo.to_owned(),
            workload,
            size,
        })
    }

    /// Connects again after the server closed the connection on an abort
    /// or an unknown outcome.
    async fn reconnect(&mut self) -> Result<()> {
        self.client = connect(&self.conninfo, &format!("{}: reconnecting", self.who)).await?;
        self.statements = prepare(&self.client, self.workload, &self.who).await?;
        Ok(())
    }

    /// One attempt of one transaction with fresh random parameters.
    async fn attempt(&mut self, rng: &mut StdRng) -> Result<Outcome> {
        let (step, err) = match self.transaction(rng).await {
            Ok(()) => return Ok(Outcome::Committed),
            Err(failure) => failure,
        };
        let Some(outcome) = classify(&err) else {
            return Err(Error::db(format!("{}: {step}", self.who), err));
        };
        if self.client.is_closed() {
            self.reconnect().await?;
        } else if self.workload == Workload::Tpcb {
            // After a failure at COMMIT the transaction is already over and
            // this only draws a warning.
            if let Err(e) = self.client.batch_execute("ROLLBACK").await {
                if e.is_closed() || self.client.is_closed() {
                    self.reconnect().await?;
                } else {
                    return Err(Error::db(
                        format!("{}: ROLLBACK after {step} failed", self.who),
                        e,
                    ));
                }
            }
        }
        Ok(outcome)
    }

    /// Runs the transaction; an error comes with the step that failed.
    async fn transaction(
        &self,
        rng: &mut StdRng,
    ) -> std::result::Result<(), (&'static str, tokio_postgres::Error)> {
        let c = &self.client;
        match &self.statements {
            Statements::AllUpdates { update } => {
                let id = rng.random_range(1..=self.size.rows as i32);
                c.execute(update, &[&id])
                    .await
                    .map_err(|e| ("UPDATE allupdates", e))?;
            }
            Statements::Tpcb {
                update_account,
                select_account,
                update_teller,
                update_branch,
                insert_history,
            } => {
                let aid = rng.random_range(1..=self.size.rows as i32);
                let bid = rng.random_range(1..=self.size.branches as i32);
                let tid = rng.random_range(1..=self.size.tellers as i32);
                let delta = rng.random_range(-5000..=5000i32);
                c.batch_execute("BEGIN").await.map_err(|e| ("BEGIN", e))?;
                c.execute(update_account, &[&delta, &aid])
                    .await
                    .map_err(|e| ("UPDATE pgbench_accounts", e))?;
                c.query(select_account, &[&aid])
                    .await
                    .map_err(|e| ("SELECT pgbench_accounts", e))?;
                c.execute(update_teller, &[&delta, &tid])
                    .await
                    .map_err(|e| ("UPDATE pgbench_tellers", e))?;
                c.execute(update_branch, &[&delta, &bid])
                    .await
                    .map_err(|e| ("UPDATE pgbench_branches", e))?;
                c.execute(insert_history, &[&tid, &bid, &aid, &delta])
                    .await
                    .map_err(|e| ("INSERT INTO pgbench_history", e))?;
                c.batch_execute("COMMIT").await.map_err(|e| ("COMMIT", e))?;
            }
        }
        Ok(())
    }
}

async fn prepare(client: &Client, workload: Workload, who: &str) -> Result<Statements> {
    let p = |sql: &'static str| async move {
        client
            .prepare(sql)
            .await
            .map_err(|e| not_loaded(e, workload, &format!("{who}: preparing {sql}")))
    };
    Ok(match workload {
        Workload::AllUpdates => Statements::AllUpdates {
            update: p("UPDATE allupdates SET val = val + 1 WHERE id = $1").await?,
        },
        // pgbench's built-in tpcb-like script.
        Workload::Tpcb => Statements::Tpcb {
            update_account: p(
                "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
            )
            .await?,
            select_account: p("SELECT abalance FROM pgbench_accounts WHERE aid = $1").await?,
            update_teller: p("UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2")
                .await?,
            update_branch: p("UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2")
                .await?,
            insert_history: p("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
                 VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)")
            .await?,
        },
        Workload::Tpcc => return Err(tpcc_refused("this driver")),
    })
}

/// Fails unless the tables hold keys 1..=n of the expected sizes (checked
/// through the primary key indexes, so cheap at any scale).
async fn check_loaded(client: &Client, workload: Workload, size: Size, who: &str) -> Result<()> {
    let (sql, expected): (&str, Vec<(&str, u64)>) = match workload {
        Workload::AllUpdates => (
            "SELECT coalesce(max(id), 0)::bigint FROM allupdates",
            vec![("allupdates", size.rows)],
        ),
        Workload::Tpcb => (
            "SELECT (SELECT coalesce(max(aid), 0) FROM pgbench_accounts)::bigint, \
                    (SELECT coalesce(max(tid), 0) FROM pgbench_tellers)::bigint, \
                    (SELECT coalesce(max(bid), 0) FROM pgbench_branches)::bigint",
            vec![
                ("pgbench_accounts", size.rows),
                ("pgbench_tellers", size.tellers),
                ("pgbench_branches", size.branches),
            ],
        ),
        Workload::Tpcc => return Err(tpcc_refused("this driver")),
    };
    let row = client
        .query_one(sql, &[])
        .await
        .map_err(|e| not_loaded(e, workload, &format!("{who}: checking the tables")))?;
    for (i, (table, want)) in expected.into_iter().enumerate() {
        let have: i64 = row.get(i);
        if have != want as i64 {
            return Err(Error::NotLoaded(format!(
                "{who}: {table} has keys up to {have}, the run expects {want} \
                 (loaded with another scale?)"
            )));
        }
    }
    Ok(())
}

/// A missing table means the workload was not loaded; other errors are
/// reported as they are.
fn not_loaded(e: tokio_postgres::Error, workload: Workload, context: &str) -> Error {
    if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
        Error::NotLoaded(format!(
            "{context}: {} (load the {workload} tables first)",
            crate::error::describe(&e)
        ))
    } else {
        Error::db(context, e)
    }
}
