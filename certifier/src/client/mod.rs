//! The client the proxy uses: `CertifierClient`.
//!
//! `certify` chunks large writesets transparently; `subscribe` reassembles
//! the frames of each version and checks that versions arrive dense and in
//! order. The client is cheap to clone (one HTTP/2 connection shared).
//!
//! With [`ClientOptions::tls`] it speaks TLS only (see [`crate::tls`]): the
//! address is `host:port` or `https://host:port`; `http://` with TLS, or
//! `https://` without, is refused rather than guessed.
//!
//! A replicated certifier is given as a list, `a,b,c`: calls then follow
//! the leader (`follow`). With one address the client is the single
//! certifier's, unchanged: one connection, no retries.

mod follow;
mod pipeline;
mod spill;

use std::pin::Pin;
use std::sync::Arc;

use bytes::BytesMut;
use futures::{Stream, StreamExt};
use prost::Message;
use tonic::transport::Channel;

use crate::config::DEFAULT_MAX_MESSAGE_BYTES;
use crate::error::CertifierError;
use crate::outcome::Outcome;
use crate::proto::certifier_client::CertifierClient as Grpc;
use crate::proto::{
    ReportAppliedRequest, ReportCheckpointRequest, ReportCheckpointResponse, StatusRequest,
    StatusResponse, SubscribeRequest, Writeset,
};
use crate::tls::ClientTls;
use crate::writeset;
use crate::Version;
use pipeline::PipelineClient;

/// HTTP/2 flow-control window, per stream and per connection.
pub(crate) const WINDOW_BYTES: u32 = 8 << 20;

/// While a call is open, after this long without a frame received from
/// the certifier, a client's connection sends an HTTP/2 ping.
///
/// Why: a partitioned link closes nothing and refuses nothing, and TCP
/// retransmits for about a quarter of an hour before it gives up, so a
/// proxy's COMMIT in flight (or a replica's Subscribe) would wait that
/// long on a node it can no longer reach. A stream that keeps bringing
/// data (a Subscribe catching up, however slowly) sends no ping; an idle
/// one is answered at once by a live certifier. Only the client pings:
/// a server's ping would wait behind what it already queued for a slow
/// subscriber and could drop a healthy stream (the server bounds what a
/// silent client holds instead: `server::streamed::CHUNK_PATIENCE`).
pub(crate) const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a ping may go unanswered before the connection is dropped
/// (its calls fail as unavailable, outcome unknown, and a client given
/// several nodes asks the others). Interval plus timeout stays under the
/// default failover timeout (10 s), so a certification that met a silent
/// link still has time to be asked again elsewhere.
pub(crate) const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The sending half of a streamed Certify call (see
/// [`CertifierClient::certify_stream`]).
pub struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<Writeset>,
}

impl ChunkSender {
    /// Sends the next chunk (waits while the call is behind: the caller
    /// produces chunks no faster than the certifier takes them).
    pub async fn send(&self, chunk: Writeset) -> Result<(), CertifierError> {
        self.tx.send(chunk).await.map_err(|_| {
            CertifierError::Rpc(tonic::Status::unavailable(
                "the Certify call ended before its last chunk",
            ))
        })
    }

    /// Sends the last chunk; the call's answer follows.
    pub async fn finish(self, mut chunk: Writeset) -> Result<(), CertifierError> {
        chunk.last_chunk = true;
        self.send(chunk).await
    }
}

/// A committed writeset, as Subscribe delivers it.
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedWriteset {
    pub version: Version,
    pub writeset: Writeset,
    /// Only the writeset's header came (its items and statements were
    /// elided, see [`CertifierClient::subscribe_frames_eliding`]).
    pub elided: bool,
}

/// Client-side settings; they must agree with the certifier's.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The certifier's `max_message_bytes`.
    pub max_message_bytes: usize,
    /// Size of the Certify chunks a large writeset is cut into.
    pub chunk_bytes: usize,
    /// Largest writeset a subscriber reassembles.
    pub max_writeset_bytes: usize,
    /// TLS, trusting these certificates (the certifier has `tls_cert`);
    /// `None`: plaintext.
    pub tls: Option<ClientTls>,
    /// Several addresses (a replicated certifier): how long a call keeps
    /// looking for a node that answers it (the leader, for
    /// certifications) before its last error is returned.
    pub failover_timeout: std::time::Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            chunk_bytes: 4 << 20,
            max_writeset_bytes: 1 << 32,
            tls: None,
            failover_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// A connection to one certifier node.
pub(crate) struct Conn {
    grpc: Grpc<Channel>,
    pipeline: Arc<PipelineClient>,
    addr: Arc<str>,
}

#[derive(Clone)]
pub struct CertifierClient {
    /// The node calls go to: the only one, or the leader as far as known.
    current: Arc<parking_lot::RwLock<Arc<Conn>>>,
    /// Every address given (one for a single certifier).
    addrs: Arc<[String]>,
    /// Serialises switching to another node.
    switching: Arc<tokio::sync::Mutex<()>>,
    /// Where and how it connected, for [`CertifierClient::connect_again`].
    addr: Arc<str>,
    opts: ClientOptions,
}

type SubscribeStream =
    Pin<Box<dyn Stream<Item = Result<CommittedWriteset, CertifierError>> + Send>>;

/// The URI of `addr` ("host:port", or with a scheme): `https` with TLS,
/// `http` without; a scheme that contradicts the TLS setting is refused,
/// since tonic would otherwise quietly speak what the scheme says.
pub(crate) fn uri(addr: &str, tls: bool) -> Result<String, CertifierError> {
    let scheme = if tls { "https" } else { "http" };
    match addr.split_once("://") {
        None => Ok(format!("{scheme}://{addr}")),
        Some((given, _)) if given.eq_ignore_ascii_case(scheme) => Ok(addr.to_owned()),
        Some(("https", _)) => Err(CertifierError::Config(format!(
            "{addr}: https:// needs the certificate to trust (a CA: --certifier-tls-ca, \
             certifier_tls_ca)"
        ))),
        Some(_) if tls => Err(CertifierError::Config(format!(
            "{addr}: TLS is configured (a CA to trust), so the address must be host:port or \
             https://host:port"
        ))),
        Some((given, _)) => Err(CertifierError::Config(format!(
            "{addr}: unknown scheme {given}:// (host:port, http:// or https://)"
        ))),
    }
}

/// Raw Subscribe frames, see [`CertifierClient::subscribe_frames`].
pub type FrameStream =
    Pin<Box<dyn Stream<Item = Result<crate::proto::SubscribeFrame, CertifierError>> + Send>>;

impl CertifierClient {
    /// Connects to `addr` ("host:port" or "http://host:port").
    pub async fn connect(addr: impl AsRef<str>) -> Result<CertifierClient, CertifierError> {
        CertifierClient::connect_with(addr, ClientOptions::default()).await
    }

    /// Connects to `addr` with `opts`: over TLS when `opts.tls` says whom
    /// to trust (then `addr` is "host:port" or "https://host:port").
    /// `addr` may list the nodes of a replicated certifier, `a,b,c`: the
    /// first that accepts a connection is used first.
    pub async fn connect_with(
        addr: impl AsRef<str>,
        opts: ClientOptions,
    ) -> Result<CertifierClient, CertifierError> {
        let addr = addr.as_ref();
        let addrs: Vec<String> = addr
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        let addrs: Arc<[String]> = match addrs.len() {
            0 | 1 => Arc::from(vec![addr.trim().to_owned()]),
            _ => Arc::from(addrs),
        };
        let mut last = None;
        for a in addrs.iter() {
            match Conn::connect(a, &opts, addrs.len() > 1).await {
                Ok(conn) => {
                    return Ok(CertifierClient {
                        current: Arc::new(parking_lot::RwLock::new(Arc::new(conn))),
                        addrs: addrs.clone(),
                        switching: Arc::default(),
                        addr: addr.into(),
                        opts,
                    })
                }
                // An address that cannot work never will.
                Err(e @ CertifierError::Config(_)) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| CertifierError::Config("no certifier address".into())))
    }

    /// A new client of the same certifier with the same options, on an
    /// HTTP/2 connection of its own.
    /// Of several nodes, the one this client uses now comes first.
    pub async fn connect_again(&self) -> Result<CertifierClient, CertifierError> {
        if self.addrs.len() == 1 {
            return CertifierClient::connect_with(&*self.addr, self.opts.clone()).await;
        }
        let now = self.conn().addr.clone();
        let c = CertifierClient::connect_with(&*now, self.opts.clone())
            .await
            .ok();
        match c {
            Some(c) => Ok(CertifierClient {
                addrs: self.addrs.clone(),
                addr: self.addr.clone(),
                ..c
            }),
            None => CertifierClient::connect_with(&*self.addr, self.opts.clone()).await,
        }
    }

    /// The address it was connected with (a list for several nodes).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The node calls go to now.
    fn conn(&self) -> Arc<Conn> {
        self.current.read().clone()
    }

    /// Certifies `ws` (its txn_id makes retries idempotent: on an error
    /// whose outcome is unknown, retry with the same writeset). Writesets
    /// that fit one chunk share the connection's CertifyPipeline stream;
    /// larger ones are sent in chunks over a Certify call of their own.
    /// Given a follower of a replicated certifier, it follows the
    /// follower's redirect to the leader (the other calls do not: give a
    /// client every node).
    pub async fn certify(&self, ws: Writeset) -> Result<Outcome, CertifierError> {
        let chunk = self
            .opts
            .chunk_bytes
            .min(self.opts.max_message_bytes.saturating_sub(1024));
        // Also with one address: a follower's redirect is followed.
        self.following(|c| {
            let ws = ws.clone();
            async move { c.certify(ws, chunk).await }
        })
        .await
    }

    /// Certifies `ws` over a Certify call of its own, in chunks of at most
    /// `chunk_bytes` (encoded).
    pub async fn certify_chunked(
        &self,
        ws: Writeset,
        chunk_bytes: usize,
    ) -> Result<Outcome, CertifierError> {
        let chunks = writeset::split(ws, chunk_bytes);
        if self.addrs.len() == 1 {
            return self
                .conn()
                .certify_chunks(futures::stream::iter(chunks))
                .await;
        }
        self.following(|c| {
            let chunks = futures::stream::iter(chunks.clone());
            async move { c.certify_chunks(chunks).await }
        })
        .await
    }

    /// Certifies a writeset sent in chunks as it is produced: chunks go
    /// through the returned sender (the first carries the header, the last
    /// is sent with [`ChunkSender::finish`]); the future answers once the
    /// outcome is durable. If the sender is dropped before `finish`, the
    /// certifier refuses the call and nothing is certified.
    pub fn certify_stream(
        &self,
    ) -> (
        ChunkSender,
        impl std::future::Future<Output = Result<Outcome, CertifierError>> + Send + 'static,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Writeset>(2);
        let this = self.clone();
        let call = async move {
            if this.addrs.len() == 1 {
                let chunks = crate::batch::received(rx);
                let mut grpc = this.conn().grpc.clone();
                let resp = grpc.certify(chunks).await?.into_inner();
                return Outcome::try_from(resp);
            }
            // Several nodes: the chunks are kept (on disk, `spill`) as they
            // come, so that the call can be repeated on another node (the
            // leader may change under it); each attempt reads them back
            // as they are written.
            let chunks = Arc::new(spill::Spill::new()?);
            let writer = tokio::spawn({
                let chunks = chunks.clone();
                async move {
                    let written = async {
                        while let Some(c) = rx.recv().await {
                            chunks.push(&c).await?;
                            if c.last_chunk {
                                return Ok(true);
                            }
                        }
                        Ok::<_, CertifierError>(false)
                    }
                    .await;
                    chunks.close();
                    written
                }
            });
            let answer = this
                .following(|c| {
                    let (chunks, read) = chunks.replay();
                    async move { read.failed(c.certify_chunks(chunks).await) }
                })
                .await;
            // Without its last chunk no attempt was certified: the writer
            // says why.
            match writer.await {
                Ok(Ok(true)) => answer,
                Ok(Ok(false)) => Err(CertifierError::InvalidArgument(
                    "Certify stream ended without a chunk marked last_chunk: not certified".into(),
                )),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(CertifierError::Io(std::io::Error::other(e))),
            }
        };
        (ChunkSender { tx }, call)
    }

    /// The raw Subscribe frames from `from` (0 = from the first): each a
    /// slice of one version's record, versions dense and in order (checked),
    /// the frame with `last` completing its version. Lets a subscriber
    /// apply a writeset of any size while it streams in (see
    /// [`crate::writeset::StreamDecoder`]).
    pub async fn subscribe_frames(&self, from: Version) -> Result<FrameStream, CertifierError> {
        self.subscribe_frames_eliding(from, bytes::Bytes::new(), 0)
            .await
    }

    /// [`CertifierClient::subscribe_frames`], with the versions from
    /// `elide_from` on whose txn_id starts with `txn_prefix` (a proxy's
    /// own transactions, whose changes it holds) as their header only, in
    /// one frame marked `elided` (those that fit one frame; an empty prefix
    /// elides nothing).
    pub async fn subscribe_frames_eliding(
        &self,
        from: Version,
        txn_prefix: bytes::Bytes,
        elide_from: Version,
    ) -> Result<FrameStream, CertifierError> {
        let request = SubscribeRequest {
            from_version: from,
            elide_txn_prefix: txn_prefix,
            elide_from,
        };
        let frames = if self.addrs.len() == 1 {
            self.conn().subscribe(request).await?
        } else {
            self.subscribe_any(request).await?
        };
        let state = (frames, from.max(1));
        let s = futures::stream::unfold(Some(state), move |state| async move {
            let (mut frames, next) = state?;
            let frame = match frames.next().await {
                None => return None,
                Some(Err(e)) => {
                    let e = CertifierError::purged_from_status(&e, next)
                        .unwrap_or(CertifierError::Rpc(e));
                    return Some((Err(e), None));
                }
                Some(Ok(f)) => f,
            };
            if frame.version != next {
                let e = CertifierError::Protocol(format!(
                    "expected version {next}, got {}",
                    frame.version
                ));
                return Some((Err(e), None));
            }
            let next = if frame.last { next + 1 } else { next };
            Some((Ok(frame), Some((frames, next))))
        });
        Ok(Box::pin(s))
    }

    /// Committed writesets from `from` (0 = from the first), in version
    /// order, following new commits until the stream is dropped. Each is
    /// assembled in memory (up to `max_writeset_bytes`); see
    /// [`CertifierClient::subscribe_frames`] for writesets of any size.
    pub async fn subscribe(&self, from: Version) -> Result<SubscribeStream, CertifierError> {
        let frames = self.subscribe_frames(from).await?;
        let max = self.opts.max_writeset_bytes;
        let state = (frames, BytesMut::new(), from.max(1));
        let s = futures::stream::unfold(Some(state), move |state| async move {
            let (mut frames, mut buf, next) = state?;
            loop {
                let frame = match frames.next().await {
                    None => return None,
                    Some(Err(e)) => return Some((Err(e), None)),
                    Some(Ok(f)) => f,
                };
                if buf.len() + frame.data.len() > max {
                    let e = CertifierError::Protocol(format!(
                        "writeset {next} is larger than {max} bytes"
                    ));
                    return Some((Err(e), None));
                }
                buf.extend_from_slice(&frame.data);
                if frame.last {
                    let item = Writeset::decode(buf.split().freeze())
                        .map(|writeset| CommittedWriteset {
                            version: next,
                            writeset,
                            elided: frame.elided,
                        })
                        .map_err(|e| CertifierError::Protocol(format!("writeset {next}: {e}")));
                    return Some((item, Some((frames, buf, next + 1))));
                }
            }
        });
        Ok(Box::pin(s))
    }

    /// Reports a replica's progress; returns the certifier's horizon.
    pub async fn report_applied(
        &self,
        replica_id: u32,
        applied_version: Version,
        oldest_snapshot: Version,
    ) -> Result<Version, CertifierError> {
        let request = ReportAppliedRequest {
            replica_id,
            applied_version,
            oldest_snapshot,
        };
        self.following(|c| async move {
            let r = c.grpc.clone().report_applied(request).await?;
            Ok(r.into_inner().horizon)
        })
        .await
    }

    /// Reports the oldest kept checkpoint's version; the certifier may then
    /// purge its log (see the .proto for the rule). Returns the purge point
    /// the rule allowed and the oldest version still in the log.
    pub async fn report_checkpoint(
        &self,
        version: Version,
    ) -> Result<ReportCheckpointResponse, CertifierError> {
        if self.addrs.len() > 1 {
            // Each node purges its own versions log.
            return self.report_checkpoint_everywhere(version).await;
        }
        Ok(self
            .conn()
            .grpc
            .clone()
            .report_checkpoint(ReportCheckpointRequest { version })
            .await?
            .into_inner())
    }

    /// The newest version the certifier has acknowledged (durable).
    /// (Of several nodes: the leader's, which is what answered.)
    pub async fn acknowledged(&self) -> Result<Version, CertifierError> {
        if self.addrs.len() == 1 {
            return Ok(self
                .conn()
                .grpc
                .clone()
                .acknowledged(crate::proto::AcknowledgedRequest {})
                .await?
                .into_inner()
                .version);
        }
        self.following(|c| async move {
            let r = c.grpc.clone();
            let s = r.clone().status(StatusRequest {}).await?.into_inner();
            if !s.role.is_empty() && s.role != "leader" {
                return Err(CertifierError::NotLeader {
                    leader: Some(s.leader_id).filter(|l| *l != 0),
                    addr: Some(s.leader_addr).filter(|a| !a.is_empty()),
                    outcome_unknown: false,
                });
            }
            Ok(r.clone()
                .acknowledged(crate::proto::AcknowledgedRequest {})
                .await?
                .into_inner()
                .version)
        })
        .await
    }

    /// Waits until `session` has its turn on `key` (`Aborted.turn_key`) or
    /// is no longer queued on it (the certifier bounds the wait): the
    /// newest version that wrote the key, and whether the turn is the
    /// session's. Only a single certifier or a raft leader queues sessions;
    /// this asks the node in use (a node that stopped leading answers "not
    /// queued", and the next certification finds the new leader).
    pub async fn await_turn(
        &self,
        session: u64,
        key: u64,
    ) -> Result<(Version, bool), CertifierError> {
        let r = self
            .conn()
            .grpc
            .clone()
            .await_turn(crate::proto::TurnRequest { session, key })
            .await?
            .into_inner();
        Ok((r.version, r.granted))
    }

    /// `session` gives up its place on `key` (see [`Self::await_turn`]).
    pub async fn leave_turn(&self, session: u64, key: u64) -> Result<(), CertifierError> {
        self.conn()
            .grpc
            .clone()
            .leave_turn(crate::proto::TurnRequest { session, key })
            .await?;
        Ok(())
    }

    /// The status of the node this client uses now.
    pub async fn status(&self) -> Result<StatusResponse, CertifierError> {
        Ok(self
            .conn()
            .grpc
            .clone()
            .status(StatusRequest {})
            .await?
            .into_inner())
    }

    /// Connects to the one node at `addr` and asks its status, all within
    /// `within` (a node asking its peers: one that does not answer in
    /// time says nothing).
    pub async fn status_within(
        addr: &str,
        opts: ClientOptions,
        within: std::time::Duration,
    ) -> Result<(CertifierClient, StatusResponse), CertifierError> {
        let asked = tokio::time::timeout(within, async {
            let c = CertifierClient::connect_with(addr, opts).await?;
            let s = c.status().await?;
            Ok((c, s))
        })
        .await;
        asked.unwrap_or_else(|_| {
            Err(CertifierError::Rpc(tonic::Status::deadline_exceeded(
                format!("{addr} did not answer within {within:?}"),
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::uri;

    #[test]
    fn the_scheme_follows_the_tls_setting() {
        assert_eq!(uri("127.0.0.1:7", false).unwrap(), "http://127.0.0.1:7");
        assert_eq!(uri("127.0.0.1:7", true).unwrap(), "https://127.0.0.1:7");
        assert_eq!(uri("http://h:7", false).unwrap(), "http://h:7");
        assert_eq!(uri("https://h:7", true).unwrap(), "https://h:7");
        // No quiet downgrade, no TLS without a CA.
        assert!(uri("http://h:7", true).is_err());
        assert!(uri("https://h:7", false)
            .unwrap_err()
            .to_string()
            .contains("certifier-tls-ca"));
        assert!(uri("ftp://h:7", false).is_err());
    }
}
