//! Following the leader of a replicated certifier: a client given several
//! addresses sends each call to the node it believes leads; on a
//! NotLeader answer it switches to the leader named (`tashkent-leader`;
//! also a client given a single address, which may be a follower's),
//! on a broken connection or an unavailable node to the next address, and
//! tries again with back-off until `failover_timeout`. Certification is
//! idempotent by txn id (the dedupe table is replicated), so a
//! certification whose outcome the connection lost is simply asked again,
//! of whichever node leads then, and gets the original answer.
//!
//! Subscribe may be served by any node: the current one first, then the
//! others in turn; the one that answered becomes the current one.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use super::pipeline::PipelineClient;
use super::{uri, CertifierClient, ClientOptions, Conn, Grpc, WINDOW_BYTES};
use crate::error::CertifierError;
use crate::outcome::Outcome;
use crate::proto::{ReportCheckpointRequest, ReportCheckpointResponse, SubscribeRequest, Writeset};

/// How long connecting to one node of several may take (a dead host must
/// not eat the whole failover time).
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// First and longest pause between attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Whether another node (or the same one later) may answer a call that
/// failed with `e`: not the leader, unreachable, connection broken, log
/// failed there. Answers about the request itself (invalid, too large,
/// purged) are final.
fn retryable(e: &CertifierError) -> bool {
    match e {
        CertifierError::NotLeader { .. }
        | CertifierError::Connect { .. }
        | CertifierError::Transport(_)
        | CertifierError::LogFailed { .. } => true,
        CertifierError::Rpc(s) => matches!(
            s.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::Internal
        ),
        _ => false,
    }
}

/// The log failures one call met while following the leader: the nodes
/// that answered with one, and the most telling of them, which the call
/// ends with rather than a later "unavailable" or "not the leader" that
/// says less. A failure with the outcome unknown stays so: a later node's
/// refusal does not tell whether the first one's record committed.
#[derive(Default)]
struct FailedLogs {
    nodes: Vec<Arc<str>>,
    worst: Option<CertifierError>,
}

impl FailedLogs {
    /// Notes `e`, `addr`'s answer; returns it.
    fn note(&mut self, addr: &Arc<str>, e: CertifierError) -> CertifierError {
        let CertifierError::LogFailed {
            failure,
            cause,
            outcome_unknown,
        } = &e
        else {
            return e;
        };
        if !self.nodes.contains(addr) {
            self.nodes.push(addr.clone());
        }
        let unknown_before = matches!(
            self.worst,
            Some(CertifierError::LogFailed {
                outcome_unknown: true,
                ..
            })
        );
        self.worst = Some(CertifierError::LogFailed {
            failure: *failure,
            cause: cause.clone(),
            outcome_unknown: *outcome_unknown || unknown_before,
        });
        e
    }

    /// Whether a majority of the nodes `addrs` answered with a log
    /// failure: a node whose log failed never acknowledges again (until it
    /// is restarted), so no majority can commit.
    fn on_a_majority(&self, addrs: &[String]) -> bool {
        let failed = addrs
            .iter()
            .filter(|a| self.nodes.iter().any(|n| **n == ***a))
            .count();
        failed > addrs.len() / 2
    }

    /// What the call ends with, its last error being `last`.
    fn telling(self, last: CertifierError) -> CertifierError {
        self.worst.unwrap_or(last)
    }
}

impl Conn {
    /// Connects to one node; `bounded`: within `NODE_CONNECT_TIMEOUT`.
    pub(crate) async fn connect(
        addr: &str,
        opts: &ClientOptions,
        bounded: bool,
    ) -> Result<Conn, CertifierError> {
        let uri = uri(addr, opts.tls.is_some())?;
        let mut endpoint = Endpoint::from_shared(uri)?
            .tcp_nodelay(true)
            // One pipeline stream carries every transaction of this client:
            // the default 64 KiB HTTP/2 window would throttle it.
            .initial_stream_window_size(Some(WINDOW_BYTES))
            .initial_connection_window_size(Some(WINDOW_BYTES));
        if bounded {
            endpoint = endpoint.connect_timeout(NODE_CONNECT_TIMEOUT);
        }
        if let Some(tls) = &opts.tls {
            endpoint = endpoint.tls_config(tls.tonic_config())?;
        }
        let channel: Channel = endpoint
            .connect()
            .await
            .map_err(|e| CertifierError::Connect {
                addr: addr.to_owned(),
                tls: opts.tls.is_some(),
                reason: crate::error::chain(&e),
            })?;
        let grpc = Grpc::new(channel)
            .max_decoding_message_size(opts.max_message_bytes)
            .max_encoding_message_size(opts.max_message_bytes);
        Ok(Conn {
            pipeline: Arc::new(PipelineClient::new(grpc.clone(), opts.max_message_bytes)),
            grpc,
            addr: addr.into(),
        })
    }

    /// Certifies `ws`: over the pipeline when it fits `chunk` bytes, else
    /// in chunks over a call of its own.
    pub(crate) async fn certify(
        &self,
        ws: Writeset,
        chunk: usize,
    ) -> Result<Outcome, CertifierError> {
        if prost::Message::encoded_len(&ws) <= chunk {
            return self.pipeline.certify(ws).await;
        }
        self.certify_chunks(crate::writeset::split(ws, chunk)).await
    }

    pub(crate) async fn certify_chunks(
        &self,
        chunks: Vec<Writeset>,
    ) -> Result<Outcome, CertifierError> {
        let resp = self
            .grpc
            .clone()
            .certify(futures::stream::iter(chunks))
            .await?
            .into_inner();
        Outcome::try_from(resp)
    }

    pub(crate) async fn subscribe(
        &self,
        request: SubscribeRequest,
    ) -> Result<tonic::Streaming<crate::proto::SubscribeFrame>, CertifierError> {
        let from = request.from_version.max(1);
        Ok(self
            .grpc
            .clone()
            .subscribe(request)
            .await
            .map_err(|s| {
                CertifierError::purged_from_status(&s, from).unwrap_or(CertifierError::Rpc(s))
            })?
            .into_inner())
    }
}

impl CertifierClient {
    /// Runs `call` against the current node, following the leader (see
    /// the module docs) until it answers or `failover_timeout` passes.
    pub(crate) async fn following<T, F, Fut>(&self, call: F) -> Result<T, CertifierError>
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: Future<Output = Result<T, CertifierError>>,
    {
        // Given one address, only a redirect is followed: a single
        // certifier's errors are final, and a follower named alone still
        // leads its client to the leader.
        let single = self.addrs.len() == 1;
        let deadline = tokio::time::Instant::now() + self.opts.failover_timeout;
        let mut backoff = BACKOFF_MIN;
        let mut failed = FailedLogs::default();
        loop {
            let conn = self.conn();
            let e = match call(conn.clone()).await {
                Ok(t) => return Ok(t),
                Err(e) => e,
            };
            let redirect = matches!(&e, CertifierError::NotLeader { addr: Some(_), .. });
            if !retryable(&e) || (single && !redirect) {
                return Err(e);
            }
            let e = failed.note(&conn.addr, e);
            if failed.on_a_majority(&self.addrs) || tokio::time::Instant::now() >= deadline {
                return Err(failed.telling(e));
            }
            let hint = match &e {
                CertifierError::NotLeader { addr: Some(a), .. } if **a != *conn.addr => {
                    Some(a.clone())
                }
                _ => None,
            };
            tracing::debug!(node = %conn.addr, leader = ?hint, "certifier call failed, trying another node: {e}");
            if hint.is_none() {
                // No leader known (an election), or the node is gone.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            self.switch(&conn, hint).await;
        }
    }

    /// Moves off `from` (unless another call did already): to `hint`, else
    /// to the addresses after `from`'s in turn; stays if none connects.
    async fn switch(&self, from: &Arc<Conn>, hint: Option<String>) {
        let _one = self.switching.lock().await;
        if !Arc::ptr_eq(&self.conn(), from) {
            return;
        }
        let at = self
            .addrs
            .iter()
            .position(|a| **a == *from.addr)
            .unwrap_or(0);
        let n = self.addrs.len();
        let others = (1..n).map(|i| self.addrs[(at + i) % n].clone());
        for addr in hint.into_iter().chain(others) {
            match Conn::connect(&addr, &self.opts, true).await {
                Ok(c) => {
                    *self.current.write() = Arc::new(c);
                    return;
                }
                Err(e) => tracing::debug!("certifier node {addr}: {e}"),
            }
        }
    }

    /// Subscribes at the current node, else at the others in turn.
    pub(crate) async fn subscribe_any(
        &self,
        request: SubscribeRequest,
    ) -> Result<tonic::Streaming<crate::proto::SubscribeFrame>, CertifierError> {
        let first = self.conn();
        let mut last = match first.subscribe(request.clone()).await {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        for addr in self.addrs.iter().filter(|a| ***a != *first.addr) {
            let got = match Conn::connect(addr, &self.opts, true).await {
                Ok(c) => c.subscribe(request.clone()).await.map(|s| (s, c)),
                Err(e) => Err(e),
            };
            match got {
                Ok((s, c)) => {
                    let _one = self.switching.lock().await;
                    *self.current.write() = Arc::new(c);
                    return Ok(s);
                }
                // A node that installed a snapshot lacks older versions;
                // another may have them. Say "purged" only if none does.
                Err(e) if last.is_purged() && !e.is_purged() => {}
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Reports a checkpoint to every node (each purges its own versions
    /// log); answers the first node's answer that came.
    pub(crate) async fn report_checkpoint_everywhere(
        &self,
        version: u64,
    ) -> Result<ReportCheckpointResponse, CertifierError> {
        let mut first: Option<Result<ReportCheckpointResponse, CertifierError>> = None;
        for addr in self.addrs.iter() {
            let r = match Conn::connect(addr, &self.opts, true).await {
                Ok(c) => c
                    .grpc
                    .clone()
                    .report_checkpoint(ReportCheckpointRequest { version })
                    .await
                    .map(|r| r.into_inner())
                    .map_err(CertifierError::from),
                Err(e) => Err(e),
            };
            match (&first, r) {
                (Some(Ok(_)), _) => {}
                (_, r) => first = Some(r),
            }
        }
        first.unwrap_or_else(|| Err(CertifierError::Config("no certifier address".into())))
    }
}
