//! The recovery-time experiment: how long rebuilding a replica from a
//! checkpoint takes, against the length of the log to replay and the size
//! of the database, split into its two phases (ARCHITECTURE.md, "Recovery").
//!
//! For each database size (AllUpdates rows):
//!
//! 1. a source PostgreSQL gets capture installed and the AllUpdates table
//!    loaded directly (no middleware: the load is not what is measured);
//!    a checkpoint of it is taken (version 0);
//! 2. a fresh certifier's log is filled with AllUpdates writesets (one
//!    row update each, the captured line of a real UPDATE on the source
//!    with other ids and values), certified through the pipelined client;
//! 3. for each log length, a new replica is rebuilt: new data directory
//!    (initdb, not counted), **restore** (`pg_restore -j`, reconfiguration
//!    and ANALYZE: `recover::restore_checkpoint`), then its proxy starts and
//!    **replays** the log from version 1; replay ends when the replica's
//!    applied version reaches the end of the log.
//!
//! The replaying proxy commits up to `apply_batch` queued versions per
//! replica transaction (`ProxyConfig::max_apply_batch`); one log length
//! (`baseline_log`) is also replayed with batches of 1, one replica
//! transaction and one `tashkent.apply` call per version, for comparison.
//!
//! The result ([`RecoveryReport`]) is a text table, JSON and an SVG plot of
//! restore and replay time against log length, one line per database
//! size and batch size. The replay rate (writesets per second) is what the
//! log length costs; the goal on the 2-core development machine is
//! 20,000/s.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use tashkent_certifier::{CertifierClient, CertifierConfig, Outcome, Writeset};

use tashkent::error::{Error, Result};
use tashkent::ops::checkpoint::{self, Source};
use tashkent::ops::pg::{connect, PgConfig, PgServer};
use tashkent::ops::recover;
use tashkent::proxy::capture;
use tashkent::proxy::{self, ProxyConfig};
pub use tashkent_tpcb::{RecoveryReport, RecoveryRow};

/// What to measure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveryPlan {
    /// Database sizes: AllUpdates rows.
    pub rows: Vec<u64>,
    /// Log lengths to replay (writesets), ascending.
    pub log_lengths: Vec<u64>,
    /// Parallel pg_dump / pg_restore jobs.
    pub jobs: u32,
    /// Certifications in flight while the log is generated.
    pub in_flight: usize,
    /// The replaying proxy's `max_apply_batch`.
    pub apply_batch: usize,
    /// Also replay this many writesets with `max_apply_batch = 1` (one
    /// replica transaction per version), for comparison; must be one of
    /// `log_lengths`.
    pub baseline_log: Option<u64>,
    /// Where the temporary state goes (default: the system temporary
    /// directory).
    #[serde(skip)]
    pub work_dir: Option<PathBuf>,
}

impl Default for RecoveryPlan {
    fn default() -> Self {
        RecoveryPlan {
            rows: vec![100_000, 1_000_000],
            log_lengths: vec![10_000, 100_000, 1_000_000],
            jobs: 2,
            in_flight: 2048,
            apply_batch: 500,
            baseline_log: Some(10_000),
            work_dir: None,
        }
    }
}

/// Runs the experiment; `progress` gets one line per step.
pub async fn recovery_experiment(
    plan: &RecoveryPlan,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<RecoveryReport> {
    let mut lengths = plan.log_lengths.clone();
    lengths.sort_unstable();
    lengths.dedup();
    if plan.rows.is_empty() || lengths.is_empty() || lengths[0] == 0 {
        return Err(Error::Config(
            "the recovery experiment needs database sizes and positive log lengths".into(),
        ));
    }
    let mut report = RecoveryReport::default();
    for &rows in &plan.rows {
        let state = super::work_dir(plan.work_dir.as_deref())
            .map_err(|e| Error::Config(format!("{e:#}")))?;
        let r = one_size(plan, rows, &lengths, state.path(), progress, &mut report).await;
        drop(state);
        r?;
    }
    Ok(report)
}

async fn one_size(
    plan: &RecoveryPlan,
    rows: u64,
    lengths: &[u64],
    state: &Path,
    progress: &(dyn Fn(&str) + Sync),
    report: &mut RecoveryReport,
) -> Result<()> {
    // 1. The source and its checkpoint.
    progress(&format!("{rows} rows: loading the source database"));
    let base = state.join("source");
    let mut source = tokio::task::spawn_blocking(move || PgServer::start(base_config(base, None)))
        .await
        .map_err(|e| Error::Config(format!("starting the source: {e}")))??;
    let src = Source {
        host: source.host().to_string(),
        port: source.port(),
        user: source.user().to_string(),
        database: "postgres".into(),
        replica_id: 1,
        binaries: source.binaries().clone(),
    };
    let client = connect(&src.conninfo()).await?;
    capture::install(&client, capture::DEFAULT_MAX_WRITESET_BYTES).await?;
    capture::configure_replica(&client, 1, 2).await?;
    tashkent_tpcb::load_rows(
        &src.conninfo(),
        tashkent_tpcb::Workload::AllUpdates,
        1,
        rows,
    )
    .await
    .map_err(|e| Error::Config(format!("loading {rows} rows: {e}")))?;
    client
        .batch_execute("VACUUM ANALYZE allupdates")
        .await
        .map_err(Error::sql("vacuuming the source"))?;
    // The captured entry of a real update is the template of the log;
    // the primary-key hashes of every row make the other rows' keys.
    client
        .batch_execute("BEGIN; UPDATE allupdates SET val = val + 1 WHERE id = 1")
        .await
        .map_err(Error::sql("capturing a template writeset"))?;
    let template = capture::read(&client).await?;
    client
        .batch_execute("ROLLBACK")
        .await
        .map_err(Error::sql("capturing a template writeset"))?;
    let hashes: Vec<i64> = client
        .query(
            "SELECT hashint4extended(id, 0) FROM generate_series(1, $1::bigint::int) AS id ORDER BY id",
            &[&(rows as i64)],
        )
        .await
        .map_err(Error::sql("hashing the primary keys"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let template = Template::new(&template, hashes)?;
    let db_bytes: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .map_err(Error::sql("reading the database size"))?
        .get(0);
    drop(client);
    progress(&format!("{rows} rows: taking the checkpoint"));
    let ckpt = checkpoint::take(&src, &state.join("checkpoints"), plan.jobs).await?;
    if ckpt.manifest.version != 0 {
        return Err(Error::Config(format!(
            "the source is at version {}, expected 0",
            ckpt.manifest.version
        )));
    }
    tokio::task::spawn_blocking(move || source.stop())
        .await
        .map_err(|e| Error::Config(format!("stopping the source: {e}")))??;

    // 2. The certifier and its log.
    let certifier = tashkent_certifier::start(CertifierConfig {
        listen: "127.0.0.1:0".parse().expect("an address"),
        wal_dir: state.join("certifier-wal"),
        ..CertifierConfig::default()
    })
    .await
    .map_err(|source| Error::Certifier {
        context: "starting the certifier".into(),
        source,
    })?;
    let addr = certifier.local_addr().to_string();
    let cert = CertifierClient::connect(&addr)
        .await
        .map_err(|source| Error::Certifier {
            context: "connecting to the certifier".into(),
            source,
        })?;
    let mut generated = 0u64;
    let result = async {
        for &length in lengths {
            progress(&format!(
                "{rows} rows: filling the log to {length} writesets"
            ));
            let started = Instant::now();
            generate(&cert, &template, rows, generated, length, plan.in_flight).await?;
            tracing::info!(
                writesets = length - generated,
                seconds = started.elapsed().as_secs_f64(),
                "log filled"
            );
            generated = length;
            let mut batches = vec![plan.apply_batch];
            if plan.baseline_log == Some(length) && plan.apply_batch != 1 {
                batches.push(1);
            }
            for batch in batches {
                progress(&format!(
                    "{rows} rows: rebuilding a replica and replaying {length} writesets \
                     (batches of up to {batch})"
                ));
                let (restore_s, replay_s) =
                    rebuild_and_replay(state, &ckpt, &addr, length, plan.jobs, batch).await?;
                let row = RecoveryRow {
                    rows,
                    db_bytes: db_bytes as u64,
                    dump_bytes: ckpt.manifest.dump_bytes(),
                    checkpoint_s: ckpt.manifest.dump_seconds,
                    log_length: length,
                    apply_batch: batch,
                    restore_s,
                    replay_s,
                    replay_per_s: length as f64 / replay_s,
                };
                progress(&format!(
                    "{rows} rows, {length} writesets, batch {batch}: restore {restore_s:.2} s, \
                     replay {replay_s:.2} s ({:.0}/s)",
                    row.replay_per_s
                ));
                report.results.push(row);
            }
        }
        Ok::<(), Error>(())
    }
    .await;
    let stopped = certifier.shutdown().await;
    result?;
    stopped.map_err(|source| Error::Certifier {
        context: "stopping the certifier".into(),
        source,
    })
}

fn base_config(base: PathBuf, port: Option<u16>) -> PgConfig {
    PgConfig {
        base_dir: Some(base),
        port,
        ..PgConfig::default()
    }
}

/// A captured AllUpdates update, made into the update of any row.
struct Template {
    table: String,
    /// The primary key's conflict key without the row's hash.
    key_prefix: Vec<u8>,
    /// The record text after the `val` column.
    row_rest: String,
    /// `hashint4extended(id, 0)` of every id, from 1.
    hashes: Vec<i64>,
}

impl Template {
    fn new(captured: &[u8], hashes: Vec<i64>) -> Result<Template> {
        let bad = |why: &str| Error::Capture {
            reason: format!("unexpected template writeset ({why}): {captured:?}"),
        };
        let entries = capture::entry::parse_all(captured)?;
        let Some(capture::entry::Entry::Update(u)) = entries.first() else {
            return Err(bad("not one update"));
        };
        // The key: index name, NUL, tag 1, the 8-byte hash (tashkent_capture.c).
        let key_prefix =
            u.pk.get(..u.pk.len().saturating_sub(8))
                .filter(|p| p.ends_with(&[0, 1]))
                .ok_or_else(|| bad("primary key"))?
                .to_vec();
        let row = std::str::from_utf8(&u.row).map_err(|_| bad("row"))?;
        let row_rest = row
            .splitn(3, ',')
            .nth(2)
            .ok_or_else(|| bad("row"))?
            .to_owned();
        Ok(Template {
            table: u.table.clone(),
            key_prefix,
            row_rest,
            hashes,
        })
    }

    /// The captured entry of setting row `id`'s val to `val`.
    fn update(&self, id: u64, val: u64) -> capture::entry::Entry {
        let mut pk = self.key_prefix.clone();
        pk.extend_from_slice(&self.hashes[(id - 1) as usize].to_le_bytes());
        capture::entry::Entry::Update(capture::entry::RowChange {
            table: self.table.clone(),
            pk: pk.into(),
            row: format!("({id},{val},{}", self.row_rest).into(),
            ..capture::entry::RowChange::default()
        })
    }
}

/// Certifies AllUpdates writesets until the log holds `to` versions (it
/// holds `from`): row `k mod rows + 1` gets value `k`, at most a
/// quarter of `rows` in flight, so that no two writesets in flight touch
/// the same row.
async fn generate(
    cert: &CertifierClient,
    template: &Template,
    rows: u64,
    from: u64,
    to: u64,
    in_flight: usize,
) -> Result<()> {
    let make = |k: u64, snapshot: u64| -> Result<Writeset> {
        let id = k % rows + 1;
        let entry = capture::entry::encode(&[template.update(id, k)]);
        let txn_id = bytes::Bytes::from(format!("recovery-bench-{k}"));
        proxy::writeset::build(txn_id, 1, snapshot, &entry, u64::MAX)?.ok_or_else(|| {
            Error::Capture {
                reason: "an empty synthetic writeset".into(),
            }
        })
    };
    // A writeset's snapshot must hold the previous writer of its row
    // (`rows` writesets earlier); the snapshot lags by up to `in_flight`.
    let in_flight = in_flight
        .min(usize::try_from(rows / 4).unwrap_or(usize::MAX))
        .max(1);
    let mut committed = from;
    let mut next = from;
    let mut pending = FuturesUnordered::new();
    while committed < to {
        while next < to && pending.len() < in_flight {
            let ws = make(next, committed)?;
            let cert = cert.clone();
            pending.push(async move { cert.certify(ws).await });
            next += 1;
        }
        match pending.next().await {
            Some(Ok(Outcome::Committed { version })) => committed = committed.max(version),
            Some(Ok(Outcome::Aborted { reason, .. })) => {
                return Err(Error::Config(format!(
                    "a synthetic writeset was aborted: {reason}"
                )))
            }
            Some(Err(source)) => {
                return Err(Error::Certifier {
                    context: "certifying a synthetic writeset".into(),
                    source,
                })
            }
            None => break,
        }
    }
    // Every one of them is committed, so the log holds exactly `to`.
    while let Some(r) = pending.next().await {
        r.map_err(|source| Error::Certifier {
            context: "certifying a synthetic writeset".into(),
            source,
        })?;
    }
    Ok(())
}

/// Rebuilds a replica from `ckpt` and lets its proxy replay `length`
/// versions; returns (restore seconds, replay seconds).
async fn rebuild_and_replay(
    state: &Path,
    ckpt: &checkpoint::Checkpoint,
    certifier: &str,
    length: u64,
    jobs: u32,
    apply_batch: usize,
) -> Result<(f64, f64)> {
    let base = state.join(format!("replica-{length}"));
    let b = base.clone();
    let mut server = tokio::task::spawn_blocking(move || PgServer::start(base_config(b, None)))
        .await
        .map_err(|e| Error::Config(format!("starting the replica: {e}")))??;
    let target = Source {
        host: server.host().to_string(),
        port: server.port(),
        user: server.user().to_string(),
        database: "postgres".into(),
        replica_id: 2,
        binaries: server.binaries().clone(),
    };
    let result = async {
        let started = Instant::now();
        let version = recover::restore_checkpoint(&target, 2, ckpt, jobs).await?;
        let restore_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let proxy = proxy::start(ProxyConfig {
            replica_id: 2,
            replicas: 2,
            listen: "127.0.0.1:0".parse().expect("an address"),
            pg_host: target.host.clone(),
            pg_port: target.port,
            database: target.database.clone(),
            certifier: certifier.to_string(),
            max_apply_batch: apply_batch,
            ..ProxyConfig::default()
        })
        .await?;
        let watch = connect(&target.conninfo()).await?;
        let goal = version + length;
        loop {
            if capture::applied_version(&watch).await? >= goal {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let replay_s = started.elapsed().as_secs_f64();
        proxy.shutdown().await;
        Ok::<_, Error>((restore_s, replay_s))
    }
    .await;
    let _ = tokio::task::spawn_blocking(move || server.stop()).await;
    let _ = std::fs::remove_dir_all(&base);
    result
}

/// Flags of the recovery experiment (`tashkent bench recovery`).
#[derive(Debug, Clone, clap::Args)]
pub struct RecoveryBenchArgs {
    /// Database sizes in AllUpdates rows, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    pub rows: Vec<u64>,
    /// Log lengths (writesets to replay), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub log: Vec<u64>,
    /// Parallel pg_dump / pg_restore jobs.
    #[arg(long, default_value_t = 2)]
    pub jobs: u32,
    /// The replaying proxy's most versions per replica transaction.
    #[arg(long, default_value_t = 500)]
    pub apply_batch: usize,
    /// Also replay this log length one version per replica transaction
    /// (the unbatched applier), for comparison; 0: don't.
    #[arg(long, default_value_t = 10_000)]
    pub baseline_log: u64,
    /// Where the table, JSON and plot are written (created if missing).
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    pub results_dir: PathBuf,
    /// Where the temporary state goes (default: the system temporary
    /// directory).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

/// Runs the experiment from the command line: progress on stderr, the
/// table and the files written on stdout.
pub fn main(args: RecoveryBenchArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let plan = RecoveryPlan {
        rows: args.rows,
        log_lengths: args.log,
        jobs: args.jobs,
        apply_batch: args.apply_batch,
        baseline_log: Some(args.baseline_log).filter(|n| *n > 0),
        work_dir: args.work_dir,
        ..RecoveryPlan::default()
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let report = runtime.block_on(async {
        let mut shutdown = crate::cli::ShutdownSignal::install()?;
        let progress = |s: &str| eprintln!("{s}");
        tokio::select! {
            r = recovery_experiment(&plan, &progress) => Ok(r?),
            s = shutdown.wait() => anyhow::bail!("stopped by {s}"),
        }
    })?;
    let files = report.write(&args.results_dir)?;
    let mut text = report.to_table();
    for f in files {
        let _ = writeln!(text, "wrote {}", f.display());
    }
    print!("{text}");
    Ok(())
}
