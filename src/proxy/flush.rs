//! Group flush of the replica's WAL (Tashkent-API, `ack_after_flush`).
//!
//! The replica commits the ordered transactions with `synchronous_commit =
//! off`: their commit records enter the WAL in version order and nobody
//! waits for the disk. A session that committed learns its commit's LSN
//! (the insert position right after its COMMIT, in the same flight) and
//! waits here before it answers the client. One task per proxy, with a
//! replica connection of its own, forces the flushes: while a session waits
//! for an LSN above the known flushed one, it runs a tiny transaction that
//! takes an xid and writes one WAL record, with `synchronous_commit = on` —
//! its commit record's `XLogFlush` flushes every record before it (see
//! `FLUSH_SQL`) — and publishes
//! `pg_current_wal_flush_lsn()`. A round covers every commit that completed
//! before the round began, so however many sessions wait, one fsync answers
//! them all.
//!
//! A session is answered when the flushed LSN reaches its commit's LSN, or
//! when a round that began after its commit completed succeeded. When the
//! connection fails (the replica crashed), every session still waiting is
//! told so: its commit may be lost with the replica's unflushed WAL (the
//! writeset stays in the certifier's log and is applied again from there).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::error::{Error, Result};
use crate::proxy::ProxyConfig;

/// What the flusher has established.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct State {
    /// The connection's incarnation (1 for the first): a flushed LSN of
    /// one incarnation says nothing about WAL written before a crash.
    epoch: u64,
    /// The replica's WAL is durable up to here (this epoch).
    flushed: u64,
    /// The last round that succeeded.
    done: u64,
    /// The last round that failed (its waiters cannot be answered).
    failed: u64,
}

/// The shared side: sessions wait, the flusher task flushes.
pub struct Flusher {
    state: watch::Sender<State>,
    /// Rounds begun.
    started: AtomicU64,
    /// The highest round a session waits for.
    wanted: AtomicU64,
    wake: Notify,
    /// Rounds run and the flushes they saved (sessions answered by a round
    /// another began, or by the LSN alone), for the metrics and the tests.
    pub rounds: AtomicU64,
    pub waits: AtomicU64,
}

/// Why a session cannot acknowledge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotDurable(pub String);

impl Flusher {
    /// Connects the flusher's session (the first epoch) and starts its
    /// task.
    pub async fn start(cfg: &ProxyConfig) -> Result<(Arc<Flusher>, tokio::task::JoinHandle<()>)> {
        let client = connect(cfg).await?;
        let flusher = Arc::new(Flusher {
            state: watch::Sender::new(State {
                epoch: 1,
                ..State::default()
            }),
            started: AtomicU64::new(0),
            wanted: AtomicU64::new(0),
            wake: Notify::new(),
            rounds: AtomicU64::new(0),
            waits: AtomicU64::new(0),
        });
        let task = tokio::spawn(run(flusher.clone(), cfg.clone(), client));
        Ok((flusher, task))
    }

    /// The current epoch; taken by a session right after its commit.
    pub fn epoch(&self) -> u64 {
        self.state.borrow().epoch
    }

    /// Waits until the replica's WAL is durable past `lsn` (None: past
    /// every commit completed before this call), for a commit made in
    /// `epoch`.
    pub async fn durable(
        &self,
        epoch: u64,
        lsn: Option<u64>,
    ) -> std::result::Result<(), NotDurable> {
        let covered = |s: &State| lsn.is_some_and(|l| s.epoch == epoch && s.flushed >= l);
        if covered(&self.state.borrow()) {
            return Ok(());
        }
        self.waits.fetch_add(1, Ordering::Relaxed);
        // A round begun from now on covers this commit.
        let round = self.started.load(Ordering::SeqCst) + 1;
        self.wanted.fetch_max(round, Ordering::SeqCst);
        self.wake.notify_one();
        let mut rx = self.state.subscribe();
        let s = *rx
            .wait_for(|s| covered(s) || s.epoch != epoch || s.done >= round || s.failed >= round)
            .await
            .map_err(|_| NotDurable("the proxy is stopping".into()))?;
        if covered(&s) || (s.epoch == epoch && s.done >= round) {
            Ok(())
        } else {
            Err(NotDurable(
                "the replica failed before its WAL was flushed past this commit".into(),
            ))
        }
    }
}

/// The flusher's session: `synchronous_commit = on`, whatever the replica's.
async fn connect(cfg: &ProxyConfig) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(&cfg.admin_conninfo(), tokio_postgres::NoTls)
        .await
        .map_err(Error::sql(format!(
            "connecting the flusher to the replica at {}:{}",
            cfg.pg_host, cfg.pg_port
        )))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
        .batch_execute("SET synchronous_commit = on; SET application_name = 'tashkent flusher'")
        .await
        .map_err(Error::sql("setting up the flusher's session"))?;
    Ok(client)
}

/// One flush: a transaction with an xid that wrote WAL commits
/// synchronously (its `XLogFlush` covers every earlier WAL record); the
/// answer is the flushed LSN.
///
/// An xid alone is not enough: PostgreSQL's `RecordTransactionCommit`
/// flushes only when the transaction wrote WAL before its commit record
/// (`wrote_xlog`), so a transaction that merely took an xid commits
/// asynchronously whatever `synchronous_commit` says (measured: the
/// host-crash test in `tests/ops/grouped.rs` lost acknowledged commits
/// with it). A logical-decoding message is the smallest WAL record a
/// session can write at any `wal_level`, touching no table.
const FLUSH_SQL: &str = "BEGIN; SELECT pg_current_xact_id(); \
     SELECT pg_logical_emit_message(false, 'tashkent.flush', ''); COMMIT; \
     SELECT pg_current_wal_flush_lsn()";

async fn flush(client: &Client) -> std::result::Result<u64, String> {
    let answer = client
        .simple_query(FLUSH_SQL)
        .await
        .map_err(|e| e.to_string())?;
    answer
        .iter()
        .rev()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(parse_lsn),
            _ => None,
        })
        .ok_or_else(|| "the flush answered no LSN".to_owned())
}

async fn run(flusher: Arc<Flusher>, cfg: ProxyConfig, first: Client) {
    let mut client = Some(first);
    loop {
        // Wait until a session wants a round not yet done.
        loop {
            let done = flusher
                .state
                .borrow()
                .done
                .max(flusher.state.borrow().failed);
            if flusher.wanted.load(Ordering::SeqCst) > done {
                break;
            }
            flusher.wake.notified().await;
        }
        let Some(c) = client.as_ref() else {
            match connect(&cfg).await {
                Ok(c) => {
                    client = Some(c);
                    // A new incarnation: earlier waiters are told.
                    flusher.state.send_modify(|s| {
                        s.epoch += 1;
                        s.flushed = 0;
                    });
                }
                Err(e) => {
                    tracing::warn!("flusher: {e}");
                    // Nobody waiting now can be answered.
                    let wanted = flusher.wanted.load(Ordering::SeqCst);
                    flusher
                        .state
                        .send_modify(|s| s.failed = s.failed.max(wanted));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            continue;
        };
        let round = flusher.started.fetch_add(1, Ordering::SeqCst) + 1;
        flusher.rounds.fetch_add(1, Ordering::Relaxed);
        match flush(c).await {
            Ok(lsn) => flusher.state.send_modify(|s| {
                s.flushed = s.flushed.max(lsn);
                s.done = round;
            }),
            Err(e) => {
                tracing::warn!("flusher: flushing the replica's WAL failed: {e}");
                client = None;
                flusher.state.send_modify(|s| s.failed = round);
            }
        }
    }
}

/// Parses PostgreSQL's `pg_lsn` text (`16/B374D848`).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u32::MAX as u64 && lo <= u32::MAX as u64).then_some((hi << 32) | lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_as_postgresql_prints_them() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("0/1"), Some(1));
        assert_eq!(parse_lsn("x"), None);
        assert_eq!(parse_lsn(""), None);
    }
}
