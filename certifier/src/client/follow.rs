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
use super::{
    uri, CertifierClient, ClientOptions, Conn, Grpc, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT,
    WINDOW_BYTES,
};
use crate::error::{says_outcome, CertifierError, LogFailure, OUTCOME_NOT_WRITTEN};
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

/// What one call met while following the leader: the nodes that answered
/// with a log failure, the most telling of those failures (the call ends
/// with it rather than with a later "unavailable" or "not the leader"
/// that says less), and whether any attempt may have written the request
/// (its outcome unknown: a broken call, a failure after proposing). A
/// later node's refusal does not tell whether an earlier attempt's record
/// committed, so then the log failure the call ends with says "outcome
/// unknown" (`08007`), never "not committed".
#[derive(Default)]
struct Attempts {
    failed_nodes: Vec<Arc<str>>,
    worst: Option<(LogFailure, String)>,
    maybe_written: bool,
}

impl Attempts {
    /// Notes `e`, `addr`'s answer.
    fn note(&mut self, addr: &Arc<str>, e: &CertifierError) {
        let not_written = match e {
            CertifierError::Connect { .. } => true,
            CertifierError::NotLeader {
                outcome_unknown, ..
            } => !outcome_unknown,
            CertifierError::LogFailed {
                outcome_unknown, ..
            } => !outcome_unknown,
            CertifierError::Rpc(s) => says_outcome(s.metadata(), OUTCOME_NOT_WRITTEN),
            _ => false,
        };
        self.maybe_written |= !not_written;
        if let CertifierError::LogFailed { failure, cause, .. } = e {
            if !self.failed_nodes.contains(addr) {
                self.failed_nodes.push(addr.clone());
            }
            self.worst = Some((*failure, cause.clone()));
        }
    }

    /// Whether a majority of the nodes `addrs` answered with a log
    /// failure: a node whose log failed never acknowledges again (until it
    /// is restarted), so no majority can commit. (Of the nodes the client
    /// was given: give it every node.)
    fn on_a_majority(&self, addrs: &[String]) -> bool {
        let failed = addrs
            .iter()
            .filter(|a| self.failed_nodes.iter().any(|n| **n == ***a))
            .count();
        failed > addrs.len() / 2
    }

    /// What the call ends with, its last error being `last`.
    fn telling(self, last: CertifierError) -> CertifierError {
        match self.worst {
            Some((failure, cause)) => CertifierError::LogFailed {
                failure,
                cause,
                outcome_unknown: self.maybe_written,
            },
            None => last,
        }
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
            .initial_connection_window_size(Some(WINDOW_BYTES))
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT);
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
        let chunks = crate::writeset::split(ws, chunk);
        self.certify_chunks(futures::stream::iter(chunks)).await
    }

    pub(crate) async fn certify_chunks(
        &self,
        chunks: impl futures::Stream<Item = Writeset> + Send + 'static,
    ) -> Result<Outcome, CertifierError> {
        let resp = self.grpc.clone().certify(chunks).await?.into_inner();
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
        // Given one address, only a redirect is followed (and, from where
        // it led, the way back): a single certifier's errors are final, and
        // a follower named alone still leads its client to the leader.
        let single = self.addrs.len() == 1;
        let deadline = tokio::time::Instant::now() + self.opts.failover_timeout;
        let mut backoff = BACKOFF_MIN;
        let mut attempts = Attempts::default();
        loop {
            let conn = self.conn();
            let e = match call(conn.clone()).await {
                Ok(t) => return Ok(t),
                Err(e) => e,
            };
            if !retryable(&e) {
                return Err(e);
            }
            let redirect = matches!(&e, CertifierError::NotLeader { addr: Some(_), .. });
            let away = *conn.addr != *self.addrs[0];
            attempts.note(&conn.addr, &e);
            if single && !redirect && !away {
                return Err(attempts.telling(e));
            }
            if attempts.on_a_majority(&self.addrs) || tokio::time::Instant::now() >= deadline {
                return Err(attempts.telling(e));
            }
            let hint = match &e {
                CertifierError::NotLeader { addr: Some(a), .. } if **a != *conn.addr => {
                    Some(a.clone())
                }
                // A leader a redirect led to is gone: back to the address given.
                _ if single => Some(self.addrs[0].clone()),
                _ => None,
            };
            tracing::debug!(node = %conn.addr, leader = ?hint, "certifier call failed, trying another node: {e}");
            if hint.is_none() || !redirect {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn log_failed(outcome_unknown: bool) -> CertifierError {
        CertifierError::LogFailed {
            failure: LogFailure::DiskFull,
            cause: "disk full".into(),
            outcome_unknown,
        }
    }

    fn unavailable(outcome: Option<&'static str>) -> CertifierError {
        let mut s = tonic::Status::unavailable("out of contact");
        if let Some(o) = outcome {
            crate::error::say_outcome(s.metadata_mut(), o);
        }
        CertifierError::Rpc(s)
    }

    fn ends_unknown(errors: &[(&str, CertifierError)]) -> Option<bool> {
        let mut a = Attempts::default();
        for (addr, e) in errors {
            a.note(&Arc::from(*addr), e);
        }
        match a.telling(CertifierError::Protocol("last".into())) {
            CertifierError::LogFailed {
                outcome_unknown, ..
            } => Some(outcome_unknown),
            _ => None,
        }
    }

    #[test]
    fn a_call_refused_everywhere_unwritten_ends_not_committed() {
        let not_leader = CertifierError::from(tonic::Status::from(CertifierError::NotLeader {
            leader: None,
            addr: Some("b:1".into()),
            outcome_unknown: false,
        }));
        assert!(
            matches!(&not_leader, CertifierError::NotLeader { addr: Some(a), outcome_unknown: false, .. } if a == "b:1"),
            "{not_leader:?}"
        );
        let errors = [
            ("a", not_leader),
            ("b", unavailable(Some(OUTCOME_NOT_WRITTEN))),
            ("b", log_failed(false)),
            ("c", log_failed(false)),
        ];
        assert_eq!(ends_unknown(&errors), Some(false));
    }

    #[test]
    fn an_attempt_that_may_have_written_makes_the_end_unknown() {
        // A connection broken under the call, a failure after proposing,
        // an out-of-contact node that had proposed: later refusals do not
        // tell whether that record committed.
        for maybe in [
            CertifierError::Rpc(tonic::Status::unknown("h2 protocol error")),
            log_failed(true),
            unavailable(Some(crate::error::OUTCOME_UNKNOWN)),
            unavailable(None),
            // A leader that lost its entry unapplied, as the wire brings it.
            CertifierError::from(tonic::Status::from(CertifierError::NotLeader {
                leader: Some(2),
                addr: Some("b:1".into()),
                outcome_unknown: true,
            })),
        ] {
            let errors = [
                ("a", maybe),
                ("b", log_failed(false)),
                ("c", log_failed(false)),
            ];
            assert_eq!(ends_unknown(&errors), Some(true), "{:?}", errors[0].1);
        }
    }

    #[test]
    fn without_a_log_failure_the_last_error_stands() {
        assert_eq!(ends_unknown(&[("a", unavailable(None))]), None);
    }

    #[test]
    fn a_majority_of_failed_logs_ends_the_call() {
        let addrs: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let mut a = Attempts::default();
        a.note(&Arc::from("a"), &log_failed(false));
        a.note(&Arc::from("a"), &log_failed(false));
        assert!(!a.on_a_majority(&addrs));
        a.note(&Arc::from("b"), &unavailable(None));
        assert!(!a.on_a_majority(&addrs));
        a.note(&Arc::from("c"), &log_failed(false));
        assert!(a.on_a_majority(&addrs));
    }
}
