//! One client connection: the protocol relay and the transaction life
//! cycle around it (ARCHITECTURE.md, "The life of a transaction").
//!
//! The proxy keeps one backend connection per client and relays messages
//! as bytes. It owns the transaction boundaries: every transaction runs on
//! the replica as `REPEATABLE READ` opened by the proxy, whose first query
//! reads the applied version (the snapshot version, I3); BEGIN is answered
//! at once and the opening query travels with the client's next statement.
//! COMMIT (explicit, or the end of an autocommit statement or extended
//! batch) reads the captured writeset; an empty one commits locally, any
//! other is certified and committed in version order when the applier
//! hands this session its turn. The proxy never retries for the client:
//! a certification abort is `40001`, an unknowable outcome `08007`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tashkent_certifier::{Outcome, Version};
use tokio::net::TcpStream;

use super::conn::{Conn, ConnError, Stream};
use super::consistency::Consistency;
use super::coordination::{SessionSignal, Shared};
use super::errors;
use super::sql::{classify, drops_prepared, is_copy, split_statements, Kind};
use crate::proxy::wire::{
    ErrorResponse, FrontendMessage, Message, StartupPacket, TransactionStatus,
};

mod commit;
mod extended;
mod freshness;
mod own;
mod relay;
mod simple;
mod startup;
mod txn;

use own::{Own, OwnStatement};
use startup::handshake;
use txn::Txn;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client: {0}")]
    Client(ConnError),
    #[error("replica: {0}")]
    Backend(ConnError),
}

type Result<T> = std::result::Result<T, SessionError>;

pub async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let _counted = shared.metrics.connection();
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |a| a.ip().to_string());
    let client = Conn::new(stream, shared.cfg.max_message_bytes)
        .check_tags(crate::proxy::wire::is_frontend_tag);
    let (client, backend, backend_pid, settings) = match handshake(&shared, client, &peer).await {
        Ok(Some(b)) => b,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!("connection setup: {e}");
            return;
        }
    };
    let signal = shared.register_session(backend_pid);
    let consistency = Consistency {
        level: shared.cfg.consistency,
        timeout: shared.cfg.consistency_timeout,
        lock_conflicts: shared.cfg.lock_conflicts,
    };
    let mut session = Session {
        consistency,
        txn_consistency: None,
        causal_floor: 0,
        last_commit: 0,
        retry_floor: 0,
        fair_session: shared.new_session_id(),
        losses: 0,
        lost_txn: false,
        fair_key: 0,
        held_turn: 0,
        shared,
        signal,
        backend_pid,
        early_abort: None,
        cancels_settled: 0,
        absorb_after: None,
        rollback_to_sent: false,
        client,
        backend,
        txn: None,
        statements: HashMap::new(),
        portals: HashMap::new(),
        batch: Vec::new(),
        copy_statements: Default::default(),
        in_batch: false,
        swallow_sync: false,
        own: Own::default(),
        dropping: Dropping::default(),
    };
    for (name, value) in settings {
        if let Err(e) = session.set_proxy_setting(&name, Some(&value), false) {
            // As PostgreSQL with a bad `-c` in options: the connection ends.
            let _ = session.client.send(&e.message()).await;
            session.shared.unregister_session(session.backend_pid);
            session.client.close().await;
            return;
        }
    }
    if let Err(e) = session.run().await {
        tracing::debug!("session ended: {e}");
        if let SessionError::Backend(_) = e {
            let err = errors::replica_connection_lost(&e);
            let _ = session.client.send(&err.message()).await;
        }
    }
    session.close_txn();
    if session.fair_key != 0 {
        let key = std::mem::take(&mut session.fair_key);
        session.leave_turn_later(key);
    }
    session.shared.unregister_session(session.backend_pid);
    session.client.close().await;
}

fn query(sql: &str) -> Message {
    let mut body = BytesMut::with_capacity(sql.len() + 1);
    body.put_slice(sql.as_bytes());
    body.put_u8(0);
    Message::new(b'Q', body.freeze())
}

fn command_complete(tag: &str) -> Message {
    let mut body = BytesMut::with_capacity(tag.len() + 1);
    body.put_slice(tag.as_bytes());
    body.put_u8(0);
    Message::new(b'C', body.freeze())
}

/// What a relayed exchange ended with.
struct Relayed {
    status: TransactionStatus,
    error: bool,
}

/// The answer to one of the proxy's own queries.
struct Answer {
    error: Option<ErrorResponse>,
    /// First column of the first row, as text (`None`: no row or NULL).
    value: Option<Bytes>,
}

/// Whether to go on with the rest of a simple query.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

struct Session {
    /// The session's consistency settings (`SET tashkent.consistency`).
    consistency: Consistency,
    /// The open transaction's, when `SET LOCAL` changed them.
    txn_consistency: Option<Consistency>,
    /// The newest version this session committed or waited for: under
    /// `causal`, every transaction waits until the replica has it.
    causal_floor: Version,
    /// The version of the session's last commit (0: none yet).
    last_commit: Version,
    /// The version the last transaction lost to (certification conflict
    /// or early abort): the next one waits until the replica has it, so
    /// a retry does not lose to the same write again (fairness).
    retry_floor: Version,
    /// This session's id at the certifier's fair turns (random, non-zero).
    fair_session: u64,
    /// Transactions of this session that ended in 40001 since its last
    /// commit of an update (the certifier's fair turns queue a session that
    /// keeps losing).
    losses: u32,
    /// The last transaction got a 40001: counted in `losses` once, when
    /// the next one opens (however often the error was looked at).
    lost_txn: bool,
    /// The key the certifier queued this session on after its last loss
    /// (0: none): the next transaction first waits for its turn on it.
    fair_key: u64,
    /// The key whose turn the open transaction has and has not yet used
    /// in a certification (0: none): given up if it ends without one.
    held_turn: u64,
    shared: Arc<Shared>,
    /// The applier's early-abort signal for this session.
    signal: Arc<SessionSignal>,
    backend_pid: i32,
    /// The error an early-aborted explicit transaction reports next.
    early_abort: Option<ErrorResponse>,
    /// The applier's cancels known to have landed or been dropped (see
    /// `coordination::Cancels`).
    cancels_settled: u64,
    /// An absorbing query for the cancels up to this count is queued: the
    /// next flush waits until they are delivered.
    absorb_after: Option<u64>,
    /// A ROLLBACK TO is among what the next relay answers: if it succeeds
    /// the failed transaction goes on.
    rollback_to_sent: bool,
    client: Conn,
    backend: Conn,
    txn: Option<Txn>,
    /// Kinds of the client's prepared statements and portals ("" unnamed).
    statements: HashMap<String, Kind>,
    portals: HashMap<String, Kind>,
    /// Extended-protocol messages up to the next Sync.
    batch: Vec<(Message, FrontendMessage)>,
    /// Prepared statements that are COPY commands.
    copy_statements: std::collections::HashSet<String>,
    /// A batch is being run (a COPY then ends with a Sync of its own).
    in_batch: bool,
    /// The client's Sync that ends an extended-protocol COPY was already
    /// answered.
    swallow_sync: bool,
    /// The proxy's own statements on the backend.
    own: Own,
    /// The client's statements and portals that drop prepared statements.
    dropping: Dropping,
}

/// Prepared statements and portals of the client that run `DISCARD ALL`
/// or `DEALLOCATE` (executing one drops the proxy's statements too).
#[derive(Default)]
struct Dropping {
    statements: std::collections::HashSet<String>,
    portals: std::collections::HashSet<String>,
}

impl Session {
    async fn run(&mut self) -> Result<()> {
        loop {
            let read = tokio::select! {
                m = self.client.read() => m,
                _ = self.signal.wake.notified() => {
                    self.abort_doomed().await?;
                    continue;
                }
            };
            let msg = match read {
                Ok(m) => m,
                Err(ConnError::Closed) => return Ok(()),
                Err(ConnError::Protocol(e)) => {
                    return self.protocol_violation(&e.to_string()).await
                }
                Err(e) => return Err(SessionError::Client(e)),
            };
            let parsed = match FrontendMessage::parse(&msg) {
                Ok(p) => p,
                Err(e) => return self.protocol_violation(&e.to_string()).await,
            };
            match parsed {
                FrontendMessage::Query { sql } => self.simple_query(&msg, &sql).await?,
                FrontendMessage::Parse { .. }
                | FrontendMessage::Bind { .. }
                | FrontendMessage::Describe { .. }
                | FrontendMessage::Execute { .. }
                | FrontendMessage::Close { .. }
                | FrontendMessage::Flush => {
                    if self.batch.len() >= 100_000 {
                        return self
                            .protocol_violation(
                                "more than 100000 extended-query messages without Sync",
                            )
                            .await;
                    }
                    self.batch.push((msg, parsed));
                }
                FrontendMessage::Sync if self.batch.is_empty() && self.swallow_sync => {
                    self.swallow_sync = false;
                }
                FrontendMessage::Sync => {
                    self.in_batch = true;
                    let r = self.run_batch().await;
                    self.in_batch = false;
                    r?;
                }
                FrontendMessage::Terminate => {
                    self.close_txn();
                    let _ = self.backend.send(&msg).await;
                    return Ok(());
                }
                // Outside COPY the server ignores these too.
                FrontendMessage::CopyData(_)
                | FrontendMessage::CopyDone
                | FrontendMessage::CopyFail { .. } => {}
                FrontendMessage::FunctionCall => {
                    self.client.push(&errors::fast_path_refused().message());
                    self.fail_txn();
                    self.ready().await?;
                }
                FrontendMessage::Password(_) => {
                    return self
                        .protocol_violation("unexpected authentication message")
                        .await;
                }
            }
        }
    }

    async fn protocol_violation(&mut self, what: &str) -> Result<()> {
        let e = errors::protocol_violation(what);
        let _ = self.client.send(&e.message()).await;
        Ok(())
    }

    /// Rolls back a transaction the applier doomed while it waited for
    /// its client; an explicit one then reports `40001` and stays failed
    /// until the client ends it.
    async fn abort_doomed(&mut self) -> Result<()> {
        if !self.signal.doomed.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let Some(txn) = &self.txn else {
            return Ok(());
        };
        let report = txn.explicit() && !txn.failed();
        let explicit = txn.explicit();
        self.rollback().await?;
        if explicit {
            self.txn = Some(Txn::doomed_remnant());
            if report {
                self.early_abort = Some(errors::early_abort());
            }
        }
        Ok(())
    }

    /// The error for a statement sent into a failed transaction.
    fn failed_txn_error(&mut self) -> ErrorResponse {
        let doomed = self.txn.as_ref().is_some_and(Txn::doomed);
        self.early_abort.take().unwrap_or_else(|| {
            if doomed {
                errors::early_abort()
            } else {
                errors::in_failed_transaction()
            }
        })
    }

    /// Whether a statement of `kind` runs in the open transaction as it
    /// is: always unless it failed; then only what ends it, or ROLLBACK TO
    /// a savepoint unless it was aborted early.
    fn admits(&self, kind: Option<&Kind>) -> bool {
        self.txn.as_ref().is_none_or(|t| t.admits(kind))
    }

    /// A statement cancelled while the applier's cancels are outstanding
    /// is an early abort. Notes a serialization failure (an early abort, a
    /// certification conflict) as the transaction's loss.
    fn translate(&mut self, e: ErrorResponse) -> ErrorResponse {
        let e = self.translate_cancel(e);
        self.note_loss(&e);
        e
    }

    /// The transaction lost if `e` is a serialization failure.
    fn note_loss(&mut self, e: &ErrorResponse) {
        if e.sqlstate() == Some("40001") {
            self.lost_txn = true;
        }
    }

    fn translate_cancel(&mut self, e: ErrorResponse) -> ErrorResponse {
        if e.sqlstate() == Some("57014")
            && self.signal.cancels.lock().requested > self.cancels_settled
        {
            self.cancels_settled += 1;
            self.shared
                .metrics
                .aborted(crate::proxy::metrics::AbortCause::EarlyAbort);
            self.retry_floor = self
                .retry_floor
                .max(self.signal.doomed_by.load(Ordering::Acquire));
            if let Some(t) = &mut self.txn {
                t.doom();
            }
            errors::early_abort()
        } else {
            e
        }
    }

    /// Answers `SHOW tashkent.<name>` (a text column named `name`).
    fn proxy_show(&mut self, name: &str) -> std::result::Result<(), ErrorResponse> {
        let cfg = &self.shared.cfg;
        let value = match name {
            "replica" => format!(
                "host={} port={} dbname={}",
                cfg.pg_host, cfg.pg_port, cfg.database
            ),
            "replica_id" => cfg.replica_id.to_string(),
            "applied_version" => self.shared.applied.borrow().to_string(),
            _ => self
                .freshness_show(name)
                .ok_or_else(|| errors::unknown_proxy_setting(name))?,
        };
        self.push_one_row(name, &value, "SHOW");
        Ok(())
    }

    /// Answers a query of the proxy's own: one text column `name`, one
    /// row `value`, then `tag`.
    fn push_one_row(&mut self, name: &str, value: &str, tag: &str) {
        let mut desc = BytesMut::new();
        desc.put_i16(1);
        desc.put_slice(name.as_bytes());
        desc.put_u8(0);
        desc.put_u32(0); // table
        desc.put_i16(0); // column
        desc.put_u32(25); // text
        desc.put_i16(-1);
        desc.put_i32(-1);
        desc.put_i16(0);
        let mut row = BytesMut::new();
        row.put_i16(1);
        row.put_i32(value.len() as i32);
        row.put_slice(value.as_bytes());
        self.client.push(&Message::new(b'T', desc.freeze()));
        self.client.push(&Message::new(b'D', row.freeze()));
        self.client.push(&command_complete(tag));
    }

    fn status(&self) -> TransactionStatus {
        self.txn
            .as_ref()
            .map_or(TransactionStatus::Idle, Txn::status)
    }

    async fn ready(&mut self) -> Result<()> {
        let z = self.status().message();
        self.client.push(&z);
        self.client.flush().await.map_err(SessionError::Client)
    }

    fn fail_txn(&mut self) {
        if let Some(t) = &mut self.txn {
            t.fail();
        }
    }

    /// Forgets the open transaction (the backend rolls it back when the
    /// connection closes).
    fn close_txn(&mut self) {
        if self.held_turn != 0 {
            // Ended without a certification (read only, rolled back, an
            // error): the row's next session need not wait for the lapse.
            let key = std::mem::take(&mut self.held_turn);
            self.leave_turn_later(key);
        }
        self.early_abort = None;
        self.txn_consistency = None;
        self.signal.cancels.lock().txn_open = false;
        if let Some(s) = self.txn.take().and_then(|t| t.registered()) {
            self.shared.close_snapshot(s);
        }
    }
}

/// The first column of a DataRow, as its text bytes (`None` for NULL).
fn first_column(body: &Bytes) -> Option<Bytes> {
    if body.len() < 6 {
        return None;
    }
    let n = i16::from_be_bytes([body[0], body[1]]);
    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
    if n < 1 || len < 0 || body.len() < 6 + len as usize {
        return None;
    }
    Some(body.slice(6..6 + len as usize))
}
