//! Driving TPC-C: one connection and task per client, the standard mix
//! back to back, `40001`/`40P01` retried with the same input.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::stats::{Samples, TpccStats, TxnKind};
use super::txn::{execute, Completed, Failure, Input, Statements};
use super::{TpccScale, DISTRICTS};
use crate::driver::{classify, client_rng, drive, Outcome, ProgressFn, Shared, Window};
use crate::error::{redact, Error, Result};
use crate::stats::RunStats;
use crate::workload::connect;

/// What to run and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpccRunConfig {
    /// Client `i` connects to `targets[i % targets.len()]`.
    pub targets: Vec<String>,
    /// The scale the tables were loaded with.
    pub scale: TpccScale,
    /// Concurrent clients; client `i`'s home warehouse is `i % W + 1`
    /// and its Stock-Level district `(i / W) % 10 + 1`.
    pub clients: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub seed: u64,
}

/// Runs the standard mix against `cfg.targets` for `warmup + duration`.
///
/// Counted are the transactions that complete inside the measured
/// window (committed, or a New-Order rolled back for its unused item),
/// each with its response time from the first attempt to the completing
/// one. An attempt failing with `40001` or `40P01` is rolled back,
/// counted as a retry of its type and run again with the same input;
/// `08007` (outcome unknown) is counted apart; any other error fails the
/// run. The [`RunStats`] count all types together (`aborts` = retries).
pub async fn run(
    cfg: &TpccRunConfig,
    progress: Option<ProgressFn<'_>>,
) -> Result<(RunStats, TpccStats)> {
    cfg.scale.validate()?;
    if cfg.targets.is_empty() || cfg.clients == 0 || cfg.duration.is_zero() {
        return Err(Error::Config(
            "TPC-C needs a target, a client and a measured duration".into(),
        ));
    }
    let sessions = futures::future::try_join_all((0..cfg.clients).map(|i| {
        let t = i % cfg.targets.len();
        Session::open(i, t, &cfg.targets[t], cfg.scale)
    }))
    .await?;
    let scale = cfg.scale;
    let clients = sessions.into_iter().enumerate().map(|(i, session)| {
        let rng = client_rng(cfg.seed, i);
        let w = (i % scale.warehouses as usize) as i32 + 1;
        let d = ((i / scale.warehouses as usize) % DISTRICTS as usize) as i32 + 1;
        move |window, shared| client_main(session, window, shared, rng, (w, d))
    });
    let all = drive(cfg.warmup, cfg.duration, clients, progress).await?;
    let mut samples: [Samples; 5] = Default::default();
    for client in all {
        for (total, s) in samples.iter_mut().zip(client) {
            total.merge(s);
        }
    }
    let completed = samples.iter().map(|s| s.completed).sum();
    let retries = samples.iter().map(|s| s.retries).sum();
    let unknown = samples.iter().map(|s| s.unknown).sum();
    let mut latencies: Vec<u64> = samples
        .iter()
        .flat_map(|s| s.latencies_us.iter().copied())
        .collect();
    let stats = RunStats::from_samples(completed, retries, unknown, cfg.duration, &mut latencies);
    Ok((stats, TpccStats::from_samples(&mut samples, cfg.duration)))
}

async fn client_main(
    mut session: Session,
    window: Window,
    shared: Arc<Shared>,
    mut rng: StdRng,
    (w, home_d): (i32, i32),
) -> Result<[Samples; 5]> {
    let mut samples: [Samples; 5] = Default::default();
    let over =
        |shared: &Shared| shared.stop.load(Ordering::Relaxed) || Instant::now() >= window.end;
    while !over(&shared) {
        let kind = TxnKind::from_roll(rng.random_range(1..=100));
        let input = Input::draw(kind, &mut rng, &session.scale, w, home_d);
        let began = Instant::now();
        let mut retries = 0;
        let outcome = loop {
            match session.attempt(&input).await? {
                Attempt::Completed(c) => break Some(Ok(c)),
                Attempt::Unknown => break Some(Err(())),
                Attempt::Retry => {
                    retries += 1;
                    shared.aborts.fetch_add(1, Ordering::Relaxed);
                    if over(&shared) {
                        // Abandoned at the end of the run: not counted.
                        break None;
                    }
                }
            }
        };
        let ended = Instant::now();
        let Some(outcome) = outcome else { break };
        if outcome.is_ok() {
            shared.committed.fetch_add(1, Ordering::Relaxed);
        }
        if !window.contains(ended) {
            continue;
        }
        let s = &mut samples[kind.index()];
        s.retries += retries;
        match outcome {
            Ok(done) => {
                s.completed += 1;
                s.rollbacks += u64::from(done == Completed::RolledBack);
                s.latencies_us
                    .push(ended.duration_since(began).as_micros() as u64);
            }
            Err(()) => s.unknown += 1,
        }
    }
    Ok(samples)
}

/// How one attempt ended.
enum Attempt {
    Completed(Completed),
    /// `40001` / `40P01`: rolled back, to be run again.
    Retry,
    /// `08007`: the commit may or may not have happened.
    Unknown,
}

/// One client's connection and prepared statements.
struct Session {
    client: Client,
    statements: Statements,
    who: String,
    conninfo: String,
    scale: TpccScale,
}

impl Session {
    async fn open(
        index: usize,
        target: usize,
        conninfo: &str,
        scale: TpccScale,
    ) -> Result<Session> {
        let who = format!(
            "TPC-C client {index} on target {target} ({})",
            redact(conninfo)
        );
        let client = connect(conninfo, &who).await?;
        let statements = prepare(&client, &who).await?;
        Ok(Session {
            client,
            statements,
            who,
            conninfo: conninfo.to_owned(),
            scale,
        })
    }

    async fn reconnect(&mut self) -> Result<()> {
        self.client = connect(&self.conninfo, &format!("{}: reconnecting", self.who)).await?;
        self.statements = prepare(&self.client, &self.who).await?;
        Ok(())
    }

    async fn attempt(&mut self, input: &Input) -> Result<Attempt> {
        let (step, err) = match execute(&self.client, &self.statements, input).await {
            Ok(done) => return Ok(Attempt::Completed(done)),
            Err(Failure::Missing(what)) => {
                return Err(Error::Consistency(format!(
                    "{}: {}: {what}",
                    self.who,
                    input.kind()
                )))
            }
            Err(Failure::Db(step, err)) => (step, err),
        };
        let attempt = match classify(&err) {
            Some(Outcome::Aborted) => Attempt::Retry,
            Some(Outcome::Unknown) => Attempt::Unknown,
            _ => return Err(Error::db(format!("{}: {step}", self.who), err)),
        };
        if self.client.is_closed() {
            self.reconnect().await?;
        } else if let Err(e) = self.client.batch_execute("ROLLBACK").await {
            // After a failed COMMIT the transaction is already over and
            // ROLLBACK only draws a warning.
            if e.is_closed() || self.client.is_closed() {
                self.reconnect().await?;
            } else {
                return Err(Error::db(format!("{}: ROLLBACK after {step}", self.who), e));
            }
        }
        Ok(attempt)
    }
}

async fn prepare(client: &Client, who: &str) -> Result<Statements> {
    Statements::prepare(client).await.map_err(|(what, e)| {
        if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
            Error::NotLoaded(format!(
                "{who}: {what}: {} (load the TPC-C tables first)",
                crate::error::describe(&e)
            ))
        } else {
            Error::db(format!("{who}: {what}"), e)
        }
    })
}
