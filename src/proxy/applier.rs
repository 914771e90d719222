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

use futures::StreamExt;
use tashkent_certifier::{CommittedWriteset, Version};
use tokio_postgres::Client;

use super::shared::{Shared, Turn};
use super::writeset;
use super::ProxyConfig;
use crate::capture;
use crate::error::{Error, Result};

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
        if shared.doom(pid) {
            tracing::debug!("aborting local transaction on backend {pid}: it blocks the applier");
            let _ = conn
                .monitor
                .execute("SELECT pg_cancel_backend($1)", &[&pid])
                .await;
        }
    }
}

/// Runs until the proxy shuts down; errors are logged and retried.
pub async fn run(shared: Arc<Shared>) {
    let mut client: Option<ApplierConn> = None;
    let mut last_report = std::time::Instant::now() - REPORT_EVERY;
    loop {
        let from = *shared.applied.borrow() + 1;
        let mut stream = match shared.certifier.subscribe(from).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("subscribing to the certifier from version {from}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while let Some(next) = stream.next().await {
            let committed = match next {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("certifier stream: {e}");
                    break;
                }
            };
            let v = committed.version;
            if v <= *shared.applied.borrow() {
                continue;
            }
            commit_in_order(&shared, &mut client, committed).await;
            shared.applied.send_replace(v);
            if last_report.elapsed() >= REPORT_EVERY {
                last_report = std::time::Instant::now();
                report(&shared).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reports the replica's progress (also called by the idle ticker).
pub async fn report(shared: &Shared) {
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

async fn commit_in_order(shared: &Shared, client: &mut Option<ApplierConn>, c: CommittedWriteset) {
    let v = c.version;
    if c.writeset.origin == shared.cfg.replica_id {
        if let Some(turn) = shared.take_pending(&c.writeset.txn_id) {
            let (done, committed) = tokio::sync::oneshot::channel();
            if turn.send(Turn { version: v, done }).is_ok() && committed.await == Ok(true) {
                return;
            }
        }
    }
    let text = writeset::apply_text(&c.writeset);
    let mut attempt = 0u32;
    loop {
        match apply_once(shared, client, v, &text, attempt > 0).await {
            Ok(()) => return,
            Err(e) => {
                attempt += 1;
                tracing::error!("applying version {v} (attempt {attempt}): {e}");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(20)))).await;
            }
        }
    }
}

async fn apply_once(
    shared: &Shared,
    client: &mut Option<ApplierConn>,
    v: Version,
    text: &str,
    retry: bool,
) -> Result<()> {
    if client
        .as_ref()
        .is_none_or(|c| c.client.is_closed() || c.monitor.is_closed())
    {
        *client = Some(connect(shared).await?);
    }
    let conn = client.as_ref().expect("connected above");
    let pg = &conn.client;
    // After a failure the version may be committed already (an attempt
    // whose answer was lost): never apply twice.
    if retry && capture::applied_version(pg).await? >= v {
        return Ok(());
    }
    let mut sql = String::with_capacity(text.len() + 160);
    sql.push_str("BEGIN; SELECT tashkent.apply('");
    sql.push_str(&text.replace('\'', "''"));
    sql.push_str("'); ");
    sql.push_str(&capture::record_applied_sql(v));
    sql.push_str("; ");
    if v.is_multiple_of(APPLIED_LOG_KEEP) {
        sql.push_str(&capture::prune_applied_sql(v - APPLIED_LOG_KEEP));
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
        return Err(Error::sql(format!("applying version {v}"))(e));
    }
    Ok(())
}
