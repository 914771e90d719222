//! A framed, buffered PostgreSQL protocol stream: the proxy's side of a
//! client connection and of its connection to the replica.
//!
//! Reads return whole messages (lengths checked against a maximum before
//! anything is buffered for them); writes are collected in an output buffer
//! and go out on `flush`, so a relay writes many small messages in one
//! syscall.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::proxy::wire::{decode_message, decode_startup, Message, StartupPacket, WireError};

/// Why a stream stopped delivering messages.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connection closed")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Protocol(#[from] WireError),
}

/// A TCP connection (clients; a replica by address), a Unix-domain
/// one (a replica on this host, by its socket directory: cheaper per
/// message), or a client's TCP connection after it switched to TLS.
///
/// An enum rather than a generic `Conn<S>`: the session code stays one
/// type, and a plaintext read or write costs one match. The TLS state is
/// boxed so the plaintext variants stay small.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Connects to PostgreSQL at `host` (a socket directory when it starts
    /// with `/`, as in libpq) and `port`.
    pub async fn connect(host: &str, port: u16) -> std::io::Result<Stream> {
        if host.starts_with('/') {
            let path = std::path::Path::new(host).join(format!(".s.PGSQL.{port}"));
            Ok(Stream::Unix(UnixStream::connect(path).await?))
        } else {
            let s = TcpStream::connect((host, port)).await?;
            let _ = s.set_nodelay(true);
            Ok(Stream::Tcp(s))
        }
    }

    async fn read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_buf(buf).await,
            Stream::Unix(s) => s.read_buf(buf).await,
            Stream::Tls(s) => s.read_buf(buf).await,
        }
    }

    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(buf).await,
            Stream::Unix(s) => s.write_all(buf).await,
            Stream::Tls(s) => {
                // rustls may keep records it could not write yet: only a
                // flush promises they left.
                s.write_all(buf).await?;
                s.flush().await
            }
        }
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Stream {
        let _ = s.set_nodelay(true);
        Stream::Tcp(s)
    }
}

pub struct Conn {
    stream: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    max_message: usize,
    /// For a client connection: type bytes that may arrive (checked before
    /// waiting for a message's body, as PostgreSQL does).
    valid_tag: Option<fn(u8) -> bool>,
}

impl Conn {
    pub fn new(stream: impl Into<Stream>, max_message: usize) -> Conn {
        Conn {
            stream: stream.into(),
            rbuf: BytesMut::with_capacity(16 << 10),
            wbuf: BytesMut::with_capacity(16 << 10),
            max_message,
            valid_tag: None,
        }
    }

    /// Refuses unknown message types as soon as their first byte arrives.
    pub fn check_tags(mut self, valid: fn(u8) -> bool) -> Conn {
        self.valid_tag = Some(valid);
        self
    }

    /// True for a client connection that runs over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// True when bytes the client sent are buffered but not yet read as
    /// a message.
    pub fn has_buffered_input(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// Runs the server side of a TLS handshake on a client's TCP
    /// connection (after its SSLRequest was answered `S`); the connection
    /// goes on over TLS. Nothing may be buffered: bytes read before the
    /// handshake were not encrypted.
    pub async fn start_tls(self, acceptor: &TlsAcceptor) -> Result<Conn, ConnError> {
        debug_assert!(self.rbuf.is_empty() && self.wbuf.is_empty());
        let Stream::Tcp(tcp) = self.stream else {
            return Err(ConnError::Io(std::io::Error::other(
                "TLS is only started on a plaintext TCP connection",
            )));
        };
        let tls = acceptor.accept(tcp).await?;
        Ok(Conn {
            stream: Stream::Tls(Box::new(tls)),
            ..self
        })
    }

    /// Ends a TLS connection with its close_notify, so the client reads
    /// an orderly end after the last message; a no-op for plaintext (the
    /// socket closes when the connection is dropped). Bounded: a client
    /// that stopped reading must not keep the session's task.
    pub async fn close(&mut self) {
        if let Stream::Tls(s) = &mut self.stream {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), s.shutdown()).await;
        }
    }

    /// True when a whole message is buffered, so `read` will not wait.
    pub fn has_buffered_message(&self) -> bool {
        if self.rbuf.len() < 5 {
            return false;
        }
        let len = u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
        self.rbuf.len() > len as usize
    }

    async fn fill(&mut self) -> Result<(), ConnError> {
        self.rbuf.reserve(16 << 10);
        if self.stream.read_buf(&mut self.rbuf).await? == 0 {
            return Err(ConnError::Closed);
        }
        Ok(())
    }

    /// The next tagged message.
    pub async fn read(&mut self) -> Result<Message, ConnError> {
        loop {
            if let (Some(valid), Some(&tag)) = (self.valid_tag, self.rbuf.first()) {
                if !valid(tag) {
                    return Err(ConnError::Protocol(WireError::Malformed {
                        what: "frontend",
                        reason: format!("invalid frontend message type {tag}"),
                    }));
                }
            }
            if let Some(m) = decode_message(&mut self.rbuf, self.max_message)? {
                return Ok(m);
            }
            self.fill().await?;
        }
    }

    /// The connection's first, untagged packet.
    pub async fn read_startup(&mut self) -> Result<StartupPacket, ConnError> {
        loop {
            if let Some(p) = decode_startup(&mut self.rbuf)? {
                return Ok(p);
            }
            self.fill().await?;
        }
    }

    pub fn push(&mut self, msg: &Message) {
        msg.encode_into(&mut self.wbuf);
    }

    pub fn push_raw(&mut self, bytes: &[u8]) {
        self.wbuf.extend_from_slice(bytes);
    }

    pub fn pending_output(&self) -> usize {
        self.wbuf.len()
    }

    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    pub async fn send(&mut self, msg: &Message) -> Result<(), ConnError> {
        self.push(msg);
        self.flush().await
    }
}
