//! The ordered committer and applier of one replica.
//!
//! It follows the certifier's stream of committed writesets in version
//! order. For each version it either hands the turn to the local session
//! that is waiting to commit that transaction (origin = this replica), or
//! applies the writeset itself from the log: a remote transaction, a local
//! one whose session died, or one certified before this proxy restarted
//! ("crash mid-commit"). Either way the replica commits the version in the
//! same transaction that records it in `tashkent.applied` (I2), and the
//! next version is not started before that commit returned.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tashkent_certifier::{CertifierClient, CommittedWriteset, Version};
use tokio_postgres::Client;

use super::shared::{Shared, Turn};
use super::writeset;
use super::ProxyConfig;
use crate::capture;
use crate::error::{Error, Result};

/// Batches stop growing past this many bytes of writesets.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// How often the applier reports progress to the certifier at most.
const REPORT_EVERY: Duration = Duration::from_millis(100);
/// Versions of `tashkent.applied` rows kept behind the newest.
const APPLIED_LOG_KEEP: u64 = 1000;

/// A session of the proxy's own on its replica.
pub async fn connect_admin(cfg: &ProxyConfig) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(&cfg.admin_conninfo(), tokio_postgres::NoTls)
        .await
        .map_err(Error::sql(format!(
            "connecting to the replica at {}:{}",
            cfg.pg_host, cfg.pg_port
        )))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The applier's session, and a second one that watches for local
/// transactions blocking it.
pub struct ApplierConn {
    client: Client,
    pid: i32,
    monitor: Client,
}

/// Connects the applier's sessions to the replica.
pub async fn connect(shared: &Shared) -> Result<ApplierConn> {
    let client = connect_admin(&shared.cfg).await?;
    let monitor = connect_admin(&shared.cfg).await?;
    // The applier must never be the victim of a deadlock with a local
    // transaction: with a longer timeout the other side's check fires
    // first and aborts the local transaction.
    client
        .batch_execute(
            "SET session_replication_role = replica; SET deadlock_timeout = '10s'; \
             SET standard_conforming_strings = on; SET statement_timeout = 0",
        )
        .await
        .map_err(Error::sql("preparing the applier session"))?;
    let pid = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .map_err(Error::sql("reading the applier's backend pid"))?
        .get(0);
    Ok(ApplierConn {
        client,
        pid,
        monitor,
    })
}

/// How long an apply may wait on locks before blocking local transactions
/// are aborted.
const BLOCKED_CHECK: Duration = Duration::from_millis(20);

/// Early abort (DESIGN.md, step 7): local transactions that hold locks the
/// applier waits for and are not being certified are doomed and their
/// statements cancelled.
async fn release_blockers(shared: &Shared, conn: &ApplierConn) {
    let Ok(rows) = conn
        .monitor
        .query("SELECT unnest(pg_blocking_pids($1))", &[&conn.pid])
        .await
    else {
        return;
    };
    for row in rows {
        let pid: i32 = row.get(0);
        if let Some(session) = shared.doom(pid) {
            tracing::debug!("aborting local transaction on backend {pid}: it blocks the applier");
            let _ = conn
                .monitor
                .execute("SELECT pg_cancel_backend($1)", &[&pid])
                .await;
            session.cancel_delivered();
        }
    }
}

/// Runs until the proxy shuts down; errors are logged and retried.
pub async fn run(shared: Arc<Shared>) {
    let mut client: Option<ApplierConn> = None;
    let mut last_report = std::time::Instant::now() - REPORT_EVERY;
    // The log stream gets an HTTP/2 connection of its own: while catching
    // up, its backlog fills the connection's flow-control window, and the
    // answers of other calls on that connection (the progress reports this
    // loop awaits) could not arrive until this loop reads on: a deadlock.
    let mut subscriber: Option<CertifierClient> = None;
    loop {
        let from = *shared.applied.borrow() + 1;
        let sub = match &subscriber {
            Some(s) => s.clone(),
            None => match CertifierClient::connect(&shared.cfg.certifier).await {
                Ok(c) => subscriber.insert(c).clone(),
                Err(e) => {
                    tracing::warn!(
                        "connecting to the certifier at {}: {e}",
                        shared.cfg.certifier
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let stream = match sub.subscribe(from).await {
            Ok(s) => s,
            Err(e) if e.is_purged() => {
                needs_recovery(&shared, &e);
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            Err(e) => {
                tracing::warn!("subscribing to the certifier from version {from}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut stream = stream.peekable();
        while let Some(next) = stream.next().await {
            let committed = match next {
                Ok(c) => c,
                Err(e) if e.is_purged() => {
                    needs_recovery(&shared, &e);
                    break;
                }
                Err(e) => {
                    tracing::warn!("certifier stream: {e}");
                    break;
                }
            };
            let v = committed.version;
            if v <= *shared.applied.borrow() {
                continue;
            }
            // Catching up: the versions already waiting behind this one
            // that are applied from the log anyway share its replica
            // transaction and its `tashkent.apply` call.
            let mut batch = vec![committed];
            if batchable(&shared, &batch[0]) {
                let mut bytes = 0;
                while batch.len() < shared.cfg.max_apply_batch && bytes < MAX_BATCH_BYTES {
                    let ready = std::pin::Pin::new(&mut stream)
                        .next_if(|r| matches!(r, Ok(c) if batchable(&shared, c)))
                        .now_or_never();
                    let Some(Some(Ok(c))) = ready else { break };
                    bytes += c.writeset.items.iter().map(|i| i.row.len()).sum::<usize>();
                    batch.push(c);
                }
            }
            let last = batch.last().map_or(v, |c| c.version);
            let rewound = if batch.len() == 1 {
                let committed = batch.pop().expect("one version");
                commit_in_order(&shared, &mut client, committed).await
            } else {
                commit_batch(&shared, &mut client, batch).await
            };
            if let Some(db) = rewound {
                // PostgreSQL restarted without its newest commits (with
                // synchronous_commit off they were only in memory; the
                // certifier's log has them): replay them from there.
                tracing::warn!(
                    "the replica restarted at version {db}, below {}: replaying from version {}",
                    v - 1,
                    db + 1
                );
                shared.applied.send_replace(db);
                break;
            }
            shared.applied.send_replace(last);
            if last_report.elapsed() >= REPORT_EVERY {
                last_report = std::time::Instant::now();
                report(&shared).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The log no longer holds what this replica needs: say so once, loudly,
/// and make sessions refuse writes (they could never commit).
fn needs_recovery(shared: &Shared, e: &tashkent_certifier::CertifierError) {
    let why = format!("replica {} cannot catch up: {e}", shared.cfg.replica_id);
    if shared.set_recovery_needed(why.clone()) {
        tracing::error!("{why}");
    }
}

/// Reports the replica's progress (also called by the idle ticker).
pub async fn report(shared: &Shared) {
    if shared.recovery_needed().is_some() {
        // Silent, so that the certifier's log purge does not wait for a
        // replica that will be rebuilt from a checkpoint anyway.
        return;
    }
    let applied = *shared.applied.borrow();
    let oldest = shared.oldest_snapshot();
    if let Err(e) = shared
        .certifier
        .report_applied(shared.cfg.replica_id, applied, oldest)
        .await
    {
        tracing::debug!("reporting progress: {e}");
    }
}

/// Commits version `c.version` (every version below it is committed).
/// `Some(db)`: the replica turned out to hold only the versions up to `db`
/// (see [`ensure_connected`]); nothing was committed, the caller replays
/// from `db + 1`.
async fn commit_in_order(
    shared: &Shared,
    client: &mut Option<ApplierConn>,
    c: CommittedWriteset,
) -> Option<Version> {
    let v = c.version;
    // Before a local session commits `v` on a replica that may have lost
    // versions below it.
    match ensure_connected(shared, client, v).await {
        Ok(Some(db)) => return Some(db),
        Ok(None) => {}
        // apply_once connects again below.
        Err(e) => tracing::warn!("connecting the applier: {e}"),
    }
    if c.writeset.origin == shared.cfg.replica_id {
        if let Some(turn) = shared.take_pending(&c.writeset.txn_id) {
            let (done, committed) = tokio::sync::oneshot::channel();
            if turn.send(Turn { version: v, done }).is_ok() && committed.await == Ok(true) {
                return None;
            }
        }
    }
    let text = writeset::apply_text(&c.writeset);
    let own = own_tables(shared, std::slice::from_ref(&c));
    let mut attempt = 0u32;
    loop {
        match apply_once(shared, client, v, v, &text, &own, attempt > 0).await {
            Ok(rewound) => return rewound,
            Err(e) => {
                attempt += 1;
                tracing::error!("applying version {v} (attempt {attempt}): {e}");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(20)))).await;
            }
        }
    }
}

/// True for a version the applier applies from the log that may share a
/// replica transaction with others: not a local session's (which commits
/// it itself when its turn comes) and without DDL or TRUNCATE (which
/// `tashkent.apply` must see on its own).
fn batchable(shared: &Shared, c: &CommittedWriteset) -> bool {
    c.writeset.ddl.is_empty()
        && !(c.writeset.origin == shared.cfg.replica_id && shared.is_pending(&c.writeset.txn_id))
}

/// Commits consecutive versions (see [`batchable`]) in one replica
/// transaction: their captured lines in version order in one
/// `tashkent.apply` call, and one `tashkent.applied` row per version, so
/// the applied version is exact in every snapshot (I2, I3). If the batch
/// fails, its versions are committed one by one. `Some(db)` as for
/// [`commit_in_order`].
async fn commit_batch(
    shared: &Shared,
    client: &mut Option<ApplierConn>,
    batch: Vec<CommittedWriteset>,
) -> Option<Version> {
    let (first, last) = (batch[0].version, batch[batch.len() - 1].version);
    let mut text = String::new();
    for c in &batch {
        text.push_str(&writeset::apply_text(&c.writeset));
    }
    let text = super::merge::merge_upserts(&text);
    let own = own_tables(shared, &batch);
    match apply_once(shared, client, first, last, &text, &own, false).await {
        Ok(rewound) => return rewound,
        Err(e) => tracing::warn!("applying versions {first}..={last} together: {e}; one by one"),
    }
    for c in batch {
        let rewound = commit_in_order(shared, client, c).await;
        if rewound.is_some() {
            return rewound;
        }
    }
    None
}

/// Tables this replica's own transactions wrote in `batch`. Applied from
/// the log they restore rows whose serial values this replica drew (a
/// rebuild, or a crash mid-commit): its sequences must move past them.
fn own_tables(shared: &Shared, batch: &[CommittedWriteset]) -> Vec<String> {
    let mut tables: Vec<String> = batch
        .iter()
        .filter(|c| c.writeset.origin == shared.cfg.replica_id)
        .flat_map(|c| c.writeset.items.iter().map(|i| i.table.clone()))
        .collect();
    tables.sort_unstable();
    tables.dedup();
    tables
}

/// Connects the applier's sessions if they are not (first use, or the
/// replica's PostgreSQL went away). After a reconnect the replica's applied
/// version is read back: `Some(db)` when it is below `v - 1`, i.e. the
/// server restarted without commits it had acknowledged (fsync and
/// synchronous_commit are off; the certifier's log is what is durable).
async fn ensure_connected(
    shared: &Shared,
    client: &mut Option<ApplierConn>,
    v: Version,
) -> Result<Option<Version>> {
    if client
        .as_ref()
        .is_none_or(|c| c.client.is_closed() || c.monitor.is_closed())
    {
        let conn = connect(shared).await?;
        let db = capture::applied_version(&conn.client).await?;
        *client = Some(conn);
        if db + 1 < v {
            return Ok(Some(db));
        }
    }
    Ok(None)
}

/// Applies the captured lines `text` of versions `first..=last` in one
/// replica transaction that records each of them as applied.
async fn apply_once(
    shared: &Shared,
    client: &mut Option<ApplierConn>,
    first: Version,
    last: Version,
    text: &str,
    own_tables: &[String],
    retry: bool,
) -> Result<Option<Version>> {
    if let Some(db) = ensure_connected(shared, client, first).await? {
        return Ok(Some(db));
    }
    let v = last;
    let conn = client.as_ref().expect("connected above");
    let pg = &conn.client;
    // After a failure the version may be committed already (an attempt
    // whose answer was lost): never apply twice.
    if retry && capture::applied_version(pg).await? >= v {
        return Ok(None);
    }
    let mut sql = String::with_capacity(text.len() + 160);
    sql.push_str("BEGIN; SELECT tashkent.apply('");
    sql.push_str(&text.replace('\'', "''"));
    sql.push_str("'); ");
    if !own_tables.is_empty() {
        sql.push_str(&capture::advance_sequences_sql(Some(own_tables)));
        sql.push_str("; ");
    }
    if first == last {
        sql.push_str(&capture::record_applied_sql(v));
    } else {
        sql.push_str(&format!(
            "INSERT INTO tashkent.applied (version) SELECT generate_series({first}, {last})"
        ));
    }
    sql.push_str("; ");
    if last / APPLIED_LOG_KEEP > (first - 1) / APPLIED_LOG_KEEP {
        let keep_from = last / APPLIED_LOG_KEEP * APPLIED_LOG_KEEP;
        sql.push_str(&capture::prune_applied_sql(keep_from - APPLIED_LOG_KEEP));
        sql.push_str("; ");
    }
    sql.push_str("COMMIT");
    let apply = pg.batch_execute(&sql);
    tokio::pin!(apply);
    let mut check =
        tokio::time::interval_at(tokio::time::Instant::now() + BLOCKED_CHECK, BLOCKED_CHECK);
    let applied = loop {
        tokio::select! {
            r = &mut apply => break r,
            _ = check.tick() => release_blockers(shared, conn).await,
        }
    };
    if let Err(e) = applied {
        let _ = pg.batch_execute("ROLLBACK").await;
        return Err(Error::sql(if first == last {
            format!("applying version {v}")
        } else {
            format!("applying versions {first}..={last}")
        })(e));
    }
    Ok(None)
}
