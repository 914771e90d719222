//! The client the proxy uses: `CertifierClient`.
//!
//! `certify` chunks large writesets transparently; `subscribe` reassembles
//! the frames of each version and checks that versions arrive dense and in
//! order. The client is cheap to clone (one HTTP/2 connection shared).
//!
//! With [`ClientOptions::tls`] it speaks TLS only (see [`crate::tls`]): the
//! address is `host:port` or `https://host:port`; `http://` with TLS, or
//! `https://` without, is refused rather than guessed.

mod pipeline;

use std::pin::Pin;
use std::sync::Arc;

use bytes::BytesMut;
use futures::{Stream, StreamExt};
use prost::Message;
use tonic::transport::{Channel, Endpoint};

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
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            chunk_bytes: 4 << 20,
            max_writeset_bytes: 1 << 32,
            tls: None,
        }
    }
}

#[derive(Clone)]
pub struct CertifierClient {
    grpc: Grpc<Channel>,
    pipeline: Arc<PipelineClient>,
    /// Where and how it connected, for [`CertifierClient::connect_again`].
    addr: Arc<str>,
    opts: ClientOptions,
}

type SubscribeStream =
    Pin<Box<dyn Stream<Item = Result<CommittedWriteset, CertifierError>> + Send>>;

/// The URI of `addr` ("host:port", or with a scheme): `https` with TLS,
/// `http` without; a scheme that contradicts the TLS setting is refused,
/// since tonic would otherwise quietly speak what the scheme says.
fn uri(addr: &str, tls: bool) -> Result<String, CertifierError> {
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
    pub async fn connect_with(
        addr: impl AsRef<str>,
        opts: ClientOptions,
    ) -> Result<CertifierClient, CertifierError> {
        let addr = addr.as_ref();
        let uri = uri(addr, opts.tls.is_some())?;
        let mut endpoint = Endpoint::from_shared(uri)?
            .tcp_nodelay(true)
            // One pipeline stream carries every transaction of this client:
            // the default 64 KiB HTTP/2 window would throttle it.
            .initial_stream_window_size(Some(WINDOW_BYTES))
            .initial_connection_window_size(Some(WINDOW_BYTES));
        if let Some(tls) = &opts.tls {
            endpoint = endpoint.tls_config(tls.tonic_config())?;
        }
        let channel = endpoint
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
        Ok(CertifierClient {
            pipeline: Arc::new(PipelineClient::new(grpc.clone(), opts.max_message_bytes)),
            grpc,
            addr: addr.into(),
            opts,
        })
    }

    /// A new client of the same certifier with the same options, on an
    /// HTTP/2 connection of its own.
    pub async fn connect_again(&self) -> Result<CertifierClient, CertifierError> {
        CertifierClient::connect_with(&*self.addr, self.opts.clone()).await
    }

    /// The address it was connected with.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Certifies `ws` (its txn_id makes retries idempotent: on an error
    /// whose outcome is unknown, retry with the same writeset). Writesets
    /// that fit one chunk share the connection's CertifyPipeline stream;
    /// larger ones are sent in chunks over a Certify call of their own.
    pub async fn certify(&self, ws: Writeset) -> Result<Outcome, CertifierError> {
        let chunk = self
            .opts
            .chunk_bytes
            .min(self.opts.max_message_bytes.saturating_sub(1024));
        if ws.encoded_len() <= chunk {
            return self.pipeline.certify(ws).await;
        }
        self.certify_chunked(ws, chunk).await
    }

    /// Certifies `ws` over a Certify call of its own, in chunks of at most
    /// `chunk_bytes` (encoded).
    pub async fn certify_chunked(
        &self,
        ws: Writeset,
        chunk_bytes: usize,
    ) -> Result<Outcome, CertifierError> {
        let chunks = writeset::split(ws, chunk_bytes);
        let resp = self
            .grpc
            .clone()
            .certify(futures::stream::iter(chunks))
            .await?
            .into_inner();
        Outcome::try_from(resp)
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
        let (tx, rx) = tokio::sync::mpsc::channel::<Writeset>(2);
        let mut grpc = self.grpc.clone();
        let call =
            async move {
                let chunks = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|c| (c, rx))
                });
                let resp = grpc.certify(chunks).await?.into_inner();
                Outcome::try_from(resp)
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
        let frames = self
            .grpc
            .clone()
            .subscribe(SubscribeRequest {
                from_version: from,
                elide_txn_prefix: txn_prefix,
                elide_from,
            })
            .await
            .map_err(|s| {
                CertifierError::purged_from_status(&s, from.max(1))
                    .unwrap_or(CertifierError::Rpc(s))
            })?
            .into_inner();
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
        let r = self
            .grpc
            .clone()
            .report_applied(ReportAppliedRequest {
                replica_id,
                applied_version,
                oldest_snapshot,
            })
            .await?;
        Ok(r.into_inner().horizon)
    }

    /// Reports the oldest kept checkpoint's version; the certifier may then
    /// purge its log (see the .proto for the rule). Returns the purge point
    /// the rule allowed and the oldest version still in the log.
    pub async fn report_checkpoint(
        &self,
        version: Version,
    ) -> Result<ReportCheckpointResponse, CertifierError> {
        Ok(self
            .grpc
            .clone()
            .report_checkpoint(ReportCheckpointRequest { version })
            .await?
            .into_inner())
    }

    /// The newest version the certifier has acknowledged (durable).
    pub async fn acknowledged(&self) -> Result<Version, CertifierError> {
        Ok(self
            .grpc
            .clone()
            .acknowledged(crate::proto::AcknowledgedRequest {})
            .await?
            .into_inner()
            .version)
    }

    pub async fn status(&self) -> Result<StatusResponse, CertifierError> {
        Ok(self
            .grpc
            .clone()
            .status(StatusRequest {})
            .await?
            .into_inner())
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
