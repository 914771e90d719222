//! One client connection: the protocol relay and the transaction life
//! cycle around it (DESIGN.md, "Transaction life cycle").
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

use super::conn::{Conn, ConnError};
use super::shared::{SessionSignal, Shared};
use super::sql::{classify, split_statements, Kind};
use super::writeset;
use crate::capture;
use crate::wire::{ErrorResponse, FrontendMessage, Message, StartupPacket, TransactionStatus};

const READ_WS_SQL: &str = "SELECT current_setting('tashkent.ws', true)";

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client: {0}")]
    Client(ConnError),
    #[error("replica: {0}")]
    Backend(ConnError),
}

type Result<T> = std::result::Result<T, SessionError>;

/// A transaction open on the backend.
struct Txn {
    /// Opened by BEGIN (else: an autocommit statement or extended batch).
    explicit: bool,
    /// The snapshot's version; `None` until the opening query's answer is
    /// read.
    snapshot: Option<Version>,
    /// An error happened: only ROLLBACK (or ROLLBACK TO) gets out.
    failed: bool,
    /// The opening query was sent and its answer not yet read.
    opening: bool,
    /// The captured text read together with the last statement.
    prefetched_ws: Option<String>,
}

pub async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let mut client = Conn::new(stream, shared.cfg.max_message_bytes);
    let (backend, backend_pid) = match handshake(&shared, &mut client).await {
        Ok(Some(b)) => b,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!("connection setup: {e}");
            return;
        }
    };
    let signal = shared.register_session(backend_pid);
    let mut session = Session {
        shared,
        signal,
        backend_pid,
        early_abort: None,
        client,
        backend,
        txn: None,
        statements: HashMap::new(),
        portals: HashMap::new(),
        batch: Vec::new(),
    };
    if let Err(e) = session.run().await {
        tracing::debug!("session ended: {e}");
        if let SessionError::Backend(_) = e {
            let err = ErrorResponse::fatal("08006", format!("connection to the replica lost: {e}"));
            let _ = session.client.send(&err.message()).await;
        }
    }
    session.close_txn();
    session.shared.unregister_session(session.backend_pid);
}

/// Startup: SSL/GSS encryption refused ('N'), cancel requests forwarded,
/// and authentication relayed to the replica, which decides (the client
/// runs nothing before the replica says AuthenticationOk).
async fn handshake(shared: &Shared, client: &mut Conn) -> Result<Option<(Conn, i32)>> {
    loop {
        let packet = client.read_startup().await.map_err(SessionError::Client)?;
        let params = match &packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                client.push_raw(b"N");
                client.flush().await.map_err(SessionError::Client)?;
                continue;
            }
            StartupPacket::Cancel { .. } => {
                // The client holds the replica's own backend key (relayed
                // at startup), so the request goes on unchanged.
                if let Ok(mut pg) = connect_backend(shared).await {
                    pg.push_raw(&packet.encode());
                    let _ = pg.flush().await;
                }
                return Ok(None);
            }
            StartupPacket::Startup { params, .. } => params,
        };
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let Some(user) = param("user") else {
            return refuse(
                client,
                ErrorResponse::fatal(
                    "28000",
                    "no PostgreSQL user name specified in startup packet",
                ),
            )
            .await;
        };
        let database = param("database").unwrap_or(user);
        if database != shared.cfg.database {
            return refuse(
                client,
                ErrorResponse::fatal(
                    "3D000",
                    format!(
                    "database \"{database}\" is not replicated by this proxy (it serves \"{}\")",
                    shared.cfg.database
                ),
                ),
            )
            .await;
        }
        let mut backend = match connect_backend(shared).await {
            Ok(b) => b,
            Err(e) => {
                return refuse(
                    client,
                    ErrorResponse::fatal("08006", format!("cannot reach the replica: {e}")),
                )
                .await;
            }
        };
        backend.push_raw(&packet.encode());
        backend.flush().await.map_err(SessionError::Backend)?;
        let mut backend_pid = 0;
        loop {
            let m = backend.read().await.map_err(SessionError::Backend)?;
            client.push(&m);
            match m.tag() {
                b'R' => {
                    let code = m
                        .body()
                        .get(..4)
                        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    client.flush().await.map_err(SessionError::Client)?;
                    // Cleartext, MD5, SASL start and SASL continue expect
                    // the client's answer.
                    if matches!(code, Some(3 | 5 | 10 | 11)) {
                        let answer = client.read().await.map_err(SessionError::Client)?;
                        if answer.tag() != b'p' {
                            return refuse(
                                client,
                                ErrorResponse::fatal(
                                    "08P01",
                                    "expected an authentication response",
                                ),
                            )
                            .await;
                        }
                        backend.send(&answer).await.map_err(SessionError::Backend)?;
                    }
                }
                b'E' => {
                    client.flush().await.map_err(SessionError::Client)?;
                    return Ok(None);
                }
                b'K' => {
                    if let Some(b) = m.body().get(..4) {
                        backend_pid = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
                b'Z' => {
                    client.flush().await.map_err(SessionError::Client)?;
                    return Ok(Some((backend, backend_pid)));
                }
                _ => {}
            }
        }
    }
}

/// Sends a FATAL error during startup; the connection then ends.
async fn refuse(client: &mut Conn, e: ErrorResponse) -> Result<Option<(Conn, i32)>> {
    client
        .send(&e.message())
        .await
        .map_err(SessionError::Client)?;
    Ok(None)
}

async fn connect_backend(shared: &Shared) -> std::result::Result<Conn, ConnError> {
    let stream = TcpStream::connect((shared.cfg.pg_host.as_str(), shared.cfg.pg_port)).await?;
    Ok(Conn::new(stream, shared.cfg.max_message_bytes))
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

fn warning(sqlstate: &str, text: &str) -> Message {
    let mut n = ErrorResponse::error(sqlstate, text);
    for (code, value) in n.fields.iter_mut() {
        if *code == b'S' || *code == b'V' {
            *value = "WARNING".into();
        }
    }
    n.notice()
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
    shared: Arc<Shared>,
    /// The applier's early-abort signal for this session.
    signal: Arc<SessionSignal>,
    backend_pid: i32,
    /// The error an early-aborted explicit transaction reports next.
    early_abort: Option<ErrorResponse>,
    client: Conn,
    backend: Conn,
    txn: Option<Txn>,
    /// Kinds of the client's prepared statements and portals ("" unnamed).
    statements: HashMap<String, Kind>,
    portals: HashMap<String, Kind>,
    /// Extended-protocol messages up to the next Sync.
    batch: Vec<(Message, FrontendMessage)>,
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
                FrontendMessage::Sync => self.run_batch().await?,
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
                    let e = ErrorResponse::error(
                        "0A000",
                        "fast-path function calls are not supported by tashkent",
                    )
                    .with_hint("Call the function with SELECT.");
                    self.client.push(&e.message());
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
        let e = ErrorResponse::fatal("08P01", format!("protocol violation: {what}"));
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
        let report = txn.explicit && !txn.failed;
        let explicit = txn.explicit;
        self.rollback().await?;
        if explicit {
            self.txn = Some(Txn {
                explicit: true,
                snapshot: None,
                failed: true,
                opening: false,
                prefetched_ws: None,
            });
            if report {
                self.early_abort = Some(early_abort_error());
            }
        }
        Ok(())
    }

    /// The error for a statement sent into a failed transaction.
    fn failed_txn_error(&mut self) -> ErrorResponse {
        self.early_abort.take().unwrap_or_else(in_failed_txn)
    }

    /// A cancelled statement of a doomed transaction is an early abort.
    fn translate(&self, e: ErrorResponse) -> ErrorResponse {
        if e.sqlstate() == Some("57014") && self.signal.doomed.load(Ordering::Acquire) {
            early_abort_error()
        } else {
            e
        }
    }

    fn status(&self) -> TransactionStatus {
        match &self.txn {
            None => TransactionStatus::Idle,
            Some(t) if t.failed => TransactionStatus::Failed,
            Some(_) => TransactionStatus::InBlock,
        }
    }

    async fn ready(&mut self) -> Result<()> {
        let z = self.status().message();
        self.client.push(&z);
        self.client.flush().await.map_err(SessionError::Client)
    }

    fn fail_txn(&mut self) {
        if let Some(t) = &mut self.txn {
            t.failed = true;
        }
    }

    /// Forgets the open transaction (the backend rolls it back when the
    /// connection closes).
    fn close_txn(&mut self) {
        self.early_abort = None;
        if let Some(Txn {
            snapshot: Some(s), ..
        }) = self.txn.take()
        {
            self.shared.close_snapshot(s);
        }
    }

    // ---- talking to the backend ----

    /// Queues the transaction's opening query (sent with what follows).
    fn open_txn(&mut self, explicit: bool, read_only: bool) {
        let mode = if read_only { " READ ONLY" } else { "" };
        let sql = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ{mode}; {}",
            capture::SNAPSHOT_VERSION_SQL
        );
        self.backend.push(&query(&sql));
        self.signal.doomed.store(false, Ordering::Release);
        self.txn = Some(Txn {
            explicit,
            snapshot: None,
            failed: false,
            opening: true,
            prefetched_ws: None,
        });
    }

    /// Reads the opening query's answer if it is outstanding.
    async fn finish_open(&mut self) -> Result<()> {
        if !self.txn.as_ref().is_some_and(|t| t.opening) {
            return Ok(());
        }
        if let Some(t) = &mut self.txn {
            t.opening = false;
        }
        let answer = self.own_answer().await?;
        let version = answer
            .value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<Version>().ok());
        match (answer.error, version) {
            (None, Some(v)) => {
                self.shared.open_snapshot(v);
                if let Some(t) = &mut self.txn {
                    t.snapshot = Some(v);
                }
            }
            (error, _) => {
                let e = error.unwrap_or_else(|| {
                    ErrorResponse::error("XX000", "could not read the replica's applied version")
                });
                self.client.push(&e.message());
                self.fail_txn();
            }
        }
        Ok(())
    }

    async fn backend_read(&mut self) -> Result<Message> {
        if !self.backend.has_buffered_message() || self.client.pending_output() > (256 << 10) {
            self.client.flush().await.map_err(SessionError::Client)?;
        }
        self.backend.read().await.map_err(SessionError::Backend)
    }

    async fn flush_backend(&mut self) -> Result<()> {
        self.backend.flush().await.map_err(SessionError::Backend)
    }

    /// Relays the backend's answer to the client up to ReadyForQuery
    /// (which is kept: the proxy reports its own transaction status).
    async fn relay(&mut self) -> Result<Relayed> {
        self.flush_backend().await?;
        self.finish_open().await?;
        let mut error = false;
        loop {
            let m = self.backend_read().await?;
            match m.tag() {
                b'Z' => {
                    let status = TransactionStatus::parse(&m)
                        .map_err(|e| SessionError::Backend(ConnError::Protocol(e)))?;
                    if error || status == TransactionStatus::Failed {
                        self.fail_txn();
                    }
                    return Ok(Relayed { status, error });
                }
                b'E' => {
                    error = true;
                    match ErrorResponse::parse(&m) {
                        Ok(e) if e.sqlstate() == Some("57014") => {
                            let e = self.translate(e);
                            self.client.push(&e.message());
                        }
                        _ => self.client.push(&m),
                    }
                }
                b'G' => {
                    self.client.push(&m);
                    self.client.flush().await.map_err(SessionError::Client)?;
                    self.copy_in().await?;
                }
                _ => self.client.push(&m),
            }
        }
    }

    /// `relay`, with the writeset read-out sent right behind what is
    /// relayed when `read_ws` (the transaction ends there): one round trip
    /// fewer per commit.
    async fn relay_reading_ws(&mut self, read_ws: bool) -> Result<Relayed> {
        if read_ws {
            self.backend.push(&query(READ_WS_SQL));
        }
        let r = self.relay().await?;
        if read_ws {
            let answer = self.own_answer().await?;
            if let (false, None, Some(t)) = (r.error, answer.error, self.txn.as_mut()) {
                t.prefetched_ws = Some(text_of(answer.value));
            }
        }
        Ok(r)
    }

    /// COPY FROM STDIN: the client's data goes to the backend until it ends.
    async fn copy_in(&mut self) -> Result<()> {
        loop {
            let m = self.client.read().await.map_err(SessionError::Client)?;
            self.backend.push(&m);
            let end = matches!(m.tag(), b'c' | b'f');
            if end || self.backend.pending_output() > (256 << 10) {
                self.flush_backend().await?;
            }
            if end {
                return Ok(());
            }
        }
    }

    /// Reads the answer to one of the proxy's own queries (not relayed,
    /// except notifications and parameter changes).
    async fn own_answer(&mut self) -> Result<Answer> {
        self.flush_backend().await?;
        let mut answer = Answer {
            error: None,
            value: None,
        };
        let mut first_row = true;
        loop {
            let m = self.backend.read().await.map_err(SessionError::Backend)?;
            match m.tag() {
                b'Z' => return Ok(answer),
                b'E' if answer.error.is_none() => {
                    answer.error = ErrorResponse::parse(&m).ok();
                }
                b'D' if first_row => {
                    first_row = false;
                    answer.value = first_column(m.body());
                }
                b'A' | b'S' => self.client.push(&m),
                _ => {}
            }
        }
    }

    async fn own_query(&mut self, sql: &str) -> Result<Answer> {
        self.backend.push(&query(sql));
        self.own_answer().await
    }

    async fn rollback(&mut self) -> Result<()> {
        self.finish_open_quietly().await?;
        self.own_query("ROLLBACK").await?;
        self.close_txn();
        Ok(())
    }

    /// Reads an outstanding opening answer without reporting its error
    /// (the transaction is being ended anyway).
    async fn finish_open_quietly(&mut self) -> Result<()> {
        if self.txn.as_ref().is_some_and(|t| t.opening) {
            if let Some(t) = &mut self.txn {
                t.opening = false;
            }
            let answer = self.own_answer().await?;
            if let (None, Some(v)) = (answer.error, answer.value) {
                if let Some(v) = std::str::from_utf8(&v).ok().and_then(|v| v.parse().ok()) {
                    self.shared.open_snapshot(v);
                    if let Some(t) = &mut self.txn {
                        t.snapshot = Some(v);
                    }
                }
            }
        }
        Ok(())
    }

    // ---- commit ----

    /// Commits the open transaction; `Err` is the error for the client
    /// (the transaction is over either way).
    async fn commit(&mut self) -> Result<std::result::Result<(), ErrorResponse>> {
        self.signal.committing.store(true, Ordering::Release);
        let outcome = self.commit_inner().await;
        self.signal.committing.store(false, Ordering::Release);
        Ok(outcome?.map_err(|e| self.translate(e)))
    }

    async fn commit_inner(&mut self) -> Result<std::result::Result<(), ErrorResponse>> {
        self.finish_open_quietly().await?;
        let Some(txn) = self.txn.as_mut() else {
            return Ok(Ok(()));
        };
        let snapshot = txn.snapshot.unwrap_or(0);
        let captured = match txn.prefetched_ws.take() {
            Some(text) => text,
            None => {
                let answer = self.own_query(READ_WS_SQL).await?;
                if let Some(e) = answer.error {
                    self.rollback().await?;
                    return Ok(Err(e));
                }
                text_of(answer.value)
            }
        };
        let txn_id = self.shared.new_txn_id();
        let ws = match writeset::build(
            txn_id.clone(),
            self.shared.cfg.replica_id,
            snapshot,
            &captured,
        ) {
            Ok(ws) => ws,
            Err(e) => {
                self.rollback().await?;
                return Ok(Err(ErrorResponse::error(
                    "XX000",
                    format!("reading the writeset: {e}"),
                )));
            }
        };
        let Some(ws) = ws else {
            let answer = self.own_query("COMMIT").await?;
            self.close_txn();
            return Ok(answer.error.map_or(Ok(()), Err));
        };
        let mut turn = self.shared.expect_turn(&txn_id);
        let certifier = self.shared.certifier.clone();
        let certify = certifier.certify(ws);
        tokio::pin!(certify);
        let mut certified = false;
        let turn = loop {
            tokio::select! {
                biased;
                t = &mut turn => match t {
                    Ok(t) => break t,
                    // The applier took the hand-off and then dropped it:
                    // it applies the writeset itself.
                    Err(_) => {
                        self.rollback().await?;
                        return Ok(Err(unknown_outcome("the replica's committer went away")));
                    }
                },
                outcome = &mut certify, if !certified => match outcome {
                    Ok(Outcome::Committed { .. }) => certified = true,
                    Ok(Outcome::Aborted { reason, .. }) => {
                        self.shared.withdraw(&txn_id);
                        self.rollback().await?;
                        return Ok(Err(ErrorResponse::error(
                            "40001",
                            "could not serialize access: the transaction conflicts with a concurrently committed one",
                        )
                        .with_detail(reason)
                        .with_hint("Retry the transaction.")));
                    }
                    Err(e) => {
                        if self.shared.withdraw(&txn_id) {
                            self.rollback().await?;
                            return Ok(Err(unknown_outcome(&e.to_string())));
                        }
                        // Already handed to us by the applier: committed.
                        certified = true;
                    }
                },
            }
        };
        let v = turn.version;
        let answer = self
            .own_query(&format!("{}; COMMIT", capture::record_applied_sql(v)))
            .await?;
        let ok = answer.error.is_none();
        if !ok {
            // The writeset is certified and durable: the applier applies
            // it from the log, and the client's COMMIT stands.
            self.own_query("ROLLBACK").await?;
        }
        let _ = turn.done.send(ok);
        self.close_txn();
        if !ok {
            self.shared.wait_applied(v).await;
        }
        Ok(Ok(()))
    }

    // ---- simple query ----

    async fn simple_query(&mut self, msg: &Message, sql: &str) -> Result<()> {
        let statements = split_statements(sql);
        if statements.is_empty() {
            self.backend.push(msg);
            self.relay().await?;
            return self.ready().await;
        }
        let n = statements.len();
        for (i, stmt) in statements.into_iter().enumerate() {
            if self.statement(stmt, i + 1 == n).await? == Flow::Stop {
                break;
            }
        }
        if self.txn.as_ref().is_some_and(|t| !t.explicit) {
            self.end_implicit().await?;
        }
        self.ready().await
    }

    async fn end_implicit(&mut self) -> Result<()> {
        if self.txn.as_ref().is_some_and(|t| t.failed) {
            return self.rollback().await;
        }
        if let Err(e) = self.commit().await? {
            self.client.push(&e.message());
        }
        Ok(())
    }

    async fn statement(&mut self, stmt: &str, last: bool) -> Result<Flow> {
        let kind = classify(stmt);
        if self.txn.as_ref().is_some_and(|t| t.failed)
            && !matches!(
                kind,
                Kind::Commit { .. } | Kind::Rollback { .. } | Kind::Savepoint
            )
        {
            let e = self.failed_txn_error();
            self.client.push(&e.message());
            return Ok(Flow::Stop);
        }
        match kind {
            Kind::Refused { message, hint } => {
                self.client.push(
                    &ErrorResponse::error("0A000", message)
                        .with_hint(hint)
                        .message(),
                );
                self.fail_txn();
                Ok(Flow::Stop)
            }
            Kind::Begin { read_only } => {
                self.begin(read_only);
                Ok(Flow::Continue)
            }
            Kind::Commit { chain } => {
                let ok = self.end_explicit(true).await?;
                if chain && ok {
                    self.open_txn(true, false);
                }
                Ok(if ok { Flow::Continue } else { Flow::Stop })
            }
            Kind::Rollback { chain } => {
                self.end_explicit(false).await?;
                if chain {
                    self.open_txn(true, false);
                }
                Ok(Flow::Continue)
            }
            Kind::SetTransaction => {
                self.client.push(&command_complete("SET"));
                Ok(Flow::Continue)
            }
            Kind::LocalMaintenance | Kind::Savepoint if self.txn.is_none() => {
                self.backend.push(&query(stmt));
                let r = self.relay().await?;
                Ok(if r.error { Flow::Stop } else { Flow::Continue })
            }
            _ => {
                if self.txn.is_none() {
                    self.open_txn(false, false);
                }
                self.backend.push(&query(stmt));
                let implicit_end = last && self.txn.as_ref().is_some_and(|t| !t.explicit);
                let r = self.relay_reading_ws(implicit_end).await?;
                if r.error {
                    return Ok(Flow::Stop);
                }
                if r.status == TransactionStatus::Idle {
                    // The statement ended the backend's transaction behind
                    // the proxy's back (it cannot with the refusals in
                    // place, but never report a block that is gone).
                    self.close_txn();
                }
                Ok(Flow::Continue)
            }
        }
    }

    fn begin(&mut self, read_only: bool) {
        match &mut self.txn {
            None => self.open_txn(true, read_only),
            Some(t) if !t.explicit => t.explicit = true,
            Some(_) => self.client.push(&warning(
                "25001",
                "there is already a transaction in progress",
            )),
        }
        self.client.push(&command_complete("BEGIN"));
    }

    /// COMMIT or ROLLBACK of the client; false when COMMIT failed.
    async fn end_explicit(&mut self, commit: bool) -> Result<bool> {
        let tag = if commit { "COMMIT" } else { "ROLLBACK" };
        let Some(txn) = &self.txn else {
            self.client
                .push(&warning("25P01", "there is no transaction in progress"));
            self.client.push(&command_complete(tag));
            return Ok(true);
        };
        if !commit || txn.failed {
            self.rollback().await?;
            self.client.push(&command_complete("ROLLBACK"));
            return Ok(true);
        }
        match self.commit().await? {
            Ok(()) => {
                self.client.push(&command_complete("COMMIT"));
                Ok(true)
            }
            Err(e) => {
                self.client.push(&e.message());
                Ok(false)
            }
        }
    }

    // ---- extended query ----

    /// Runs the messages collected up to (and answering) a Sync.
    ///
    /// Transaction-control statements (BEGIN, COMMIT, ROLLBACK, SET
    /// TRANSACTION) never reach the replica: their Parse, Bind, Describe
    /// and Execute are answered by the proxy, after a Sync of its own
    /// whenever earlier messages of the batch still await their answers
    /// (so answers stay in order).
    async fn run_batch(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        let kinds = self.message_kinds(&batch);
        let mut forwarded = false;
        let mut skipping = false;
        for (i, (msg, parsed)) in batch.iter().enumerate() {
            if skipping {
                continue;
            }
            if self.txn.is_none() && needs_txn_ahead(&batch[i..], &kinds[i..]) {
                self.open_txn(false, false);
            }
            let kind = kinds[i].as_ref();
            let is_execute = matches!(parsed, FrontendMessage::Execute { .. });
            let control = kind.is_some_and(is_control);
            let refused = matches!(parsed, FrontendMessage::Parse { .. })
                && matches!(kind, Some(Kind::Refused { .. }));
            let blocked = is_execute
                && self.txn.as_ref().is_some_and(|t| t.failed)
                && !matches!(
                    kind,
                    Some(Kind::Commit { .. } | Kind::Rollback { .. } | Kind::Savepoint)
                );
            if control || refused || blocked {
                // The proxy answers: everything sent before must be answered first.
                if forwarded {
                    forwarded = false;
                    if !self.sync_point().await? {
                        skipping = true;
                        continue;
                    }
                }
            }
            if blocked {
                let e = self.failed_txn_error();
                self.client.push(&e.message());
                skipping = true;
                continue;
            }
            match parsed {
                FrontendMessage::Parse { statement, .. } => {
                    let kind = kind.cloned().unwrap_or(Kind::Other);
                    if let Kind::Refused { message, hint } = &kind {
                        self.client.push(
                            &ErrorResponse::error("0A000", message.clone())
                                .with_hint(hint.clone())
                                .message(),
                        );
                        self.fail_txn();
                        skipping = true;
                        continue;
                    }
                    self.statements.insert(statement.clone(), kind);
                    if control {
                        self.client.push(&Message::new(b'1', Bytes::new()));
                        continue;
                    }
                }
                FrontendMessage::Bind { portal, .. } => {
                    self.portals
                        .insert(portal.clone(), kind.cloned().unwrap_or(Kind::Other));
                    if control {
                        self.client.push(&Message::new(b'2', Bytes::new()));
                        continue;
                    }
                }
                FrontendMessage::Describe { target, .. } if control => {
                    if *target == crate::wire::Describe::Statement {
                        self.client
                            .push(&Message::new(b't', Bytes::from_static(&[0, 0])));
                    }
                    self.client.push(&Message::new(b'n', Bytes::new()));
                    continue;
                }
                FrontendMessage::Close { target, name } => {
                    match target {
                        crate::wire::Describe::Statement => self.statements.remove(name),
                        crate::wire::Describe::Portal => self.portals.remove(name),
                    };
                }
                FrontendMessage::Execute { .. } if control => {
                    if let Some(kind) = kind {
                        if !self.control(kind).await? {
                            skipping = true;
                        }
                    }
                    continue;
                }
                _ => {}
            }
            self.backend.push(msg);
            forwarded = true;
        }
        // The client's Sync.
        let implicit_end = self.txn.as_ref().is_some_and(|t| !t.explicit && !t.failed);
        if forwarded {
            self.backend.push(&Message::new(b'S', Bytes::new()));
            self.relay_reading_ws(implicit_end).await?;
        }
        if self.txn.as_ref().is_some_and(|t| !t.explicit) {
            self.end_implicit().await?;
        }
        self.ready().await
    }

    /// Sends a Sync of the proxy's own so the messages so far are answered;
    /// false when one of them failed.
    async fn sync_point(&mut self) -> Result<bool> {
        self.backend.push(&Message::new(b'S', Bytes::new()));
        let r = self.relay().await?;
        Ok(!r.error)
    }

    /// Executes a transaction-control portal; false when it failed.
    async fn control(&mut self, kind: &Kind) -> Result<bool> {
        match kind {
            Kind::Begin { read_only } => {
                self.begin(*read_only);
                Ok(true)
            }
            Kind::Commit { chain } => {
                let ok = self.end_explicit(true).await?;
                if *chain && ok {
                    self.open_txn(true, false);
                }
                Ok(ok)
            }
            Kind::Rollback { chain } => {
                self.end_explicit(false).await?;
                if *chain {
                    self.open_txn(true, false);
                }
                Ok(true)
            }
            _ => {
                self.client.push(&command_complete("SET"));
                Ok(true)
            }
        }
    }

    /// For each message of `batch`, the kind of statement it concerns
    /// (Parse: the statement parsed; Bind, Describe, Execute, Close: the
    /// statement or portal named), following the batch's own Parses and
    /// Binds.
    fn message_kinds(&self, batch: &[(Message, FrontendMessage)]) -> Vec<Option<Kind>> {
        let mut statements: HashMap<&str, Kind> = HashMap::new();
        let mut portals: HashMap<&str, Kind> = HashMap::new();
        let statement_kind = |statements: &HashMap<&str, Kind>, name: &str| {
            statements
                .get(name)
                .or_else(|| self.statements.get(name))
                .cloned()
                .unwrap_or(Kind::Other)
        };
        let portal_kind = |portals: &HashMap<&str, Kind>, name: &str| {
            portals
                .get(name)
                .or_else(|| self.portals.get(name))
                .cloned()
                .unwrap_or(Kind::Other)
        };
        batch
            .iter()
            .map(|(_, m)| match m {
                FrontendMessage::Parse { statement, sql, .. } => {
                    let kind = classify(sql);
                    statements.insert(statement, kind.clone());
                    Some(kind)
                }
                FrontendMessage::Bind { portal, statement } => {
                    let kind = statement_kind(&statements, statement);
                    portals.insert(portal, kind.clone());
                    Some(kind)
                }
                FrontendMessage::Describe { target, name }
                | FrontendMessage::Close { target, name } => Some(match target {
                    crate::wire::Describe::Statement => statement_kind(&statements, name),
                    crate::wire::Describe::Portal => portal_kind(&portals, name),
                }),
                FrontendMessage::Execute { portal, .. } => Some(portal_kind(&portals, portal)),
                _ => None,
            })
            .collect()
    }
}

fn is_control(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Begin { .. } | Kind::Commit { .. } | Kind::Rollback { .. } | Kind::SetTransaction
    )
}

/// True when an Execute before the next transaction-control Execute needs
/// a transaction.
fn needs_txn_ahead(batch: &[(Message, FrontendMessage)], kinds: &[Option<Kind>]) -> bool {
    for ((_, m), k) in batch.iter().zip(kinds) {
        let (FrontendMessage::Execute { .. }, Some(k)) = (m, k) else {
            continue;
        };
        match k {
            k if is_control(k) => return false,
            Kind::LocalMaintenance | Kind::Refused { .. } => {}
            _ => return true,
        }
    }
    false
}

fn in_failed_txn() -> ErrorResponse {
    ErrorResponse::error(
        "25P02",
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

fn early_abort_error() -> ErrorResponse {
    ErrorResponse::error(
        "40001",
        "could not serialize access: the transaction was aborted because it blocked a committed transaction being applied",
    )
    .with_hint("Retry the transaction.")
}

fn unknown_outcome(why: &str) -> ErrorResponse {
    ErrorResponse::error(
        "08007",
        "the outcome of the COMMIT is unknown: the certifier could not be reached after the transaction was sent",
    )
    .with_detail(why.to_string())
    .with_hint("Check whether the transaction's effects are present before retrying it.")
}

fn text_of(value: Option<Bytes>) -> String {
    value
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default()
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
