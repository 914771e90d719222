//! Framing: splitting a byte stream into startup packets and messages.
//!
//! A connection opens with one untagged packet (`length:i32 code:i32 …`):
//! a StartupMessage, an SSLRequest, a GSSENCRequest or a CancelRequest.
//! After that every message is `tag:u8 length:i32 body`, where the length
//! counts itself but not the tag.

use bytes::{Buf, Bytes, BytesMut};

/// The largest startup packet accepted (PostgreSQL's own limit).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// The default largest message accepted: generous for bulk SQL text and
/// COPY chunks, small enough that a hostile length cannot exhaust memory.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 256 << 20;

const PROTOCOL_3_0: u32 = 3 << 16;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// Protocol violations; each becomes an `08P01` error for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A declared length below the protocol minimum.
    #[error("invalid message length {len} (minimum {min})")]
    LengthTooSmall { len: i64, min: usize },
    /// A declared length above the configured maximum.
    #[error("message length {len} exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// A startup packet with an unknown code or protocol version.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.x")]
    UnsupportedProtocol { major: u16, minor: u16 },
    /// A message body that does not match its type's layout.
    #[error("malformed {what} message: {reason}")]
    Malformed { what: &'static str, reason: String },
}

/// The first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// Protocol 3.x startup with its parameters (`user`, `database`, …).
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption.
    GssEncRequest,
    /// Cancel the query running on the backend with this key.
    Cancel { pid: i32, secret: i32 },
}

impl StartupPacket {
    /// A parameter's value, e.g. `user`.
    pub fn param(&self, name: &str) -> Option<&str> {
        match self {
            StartupPacket::Startup { params, .. } => params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }

    /// Encodes the packet as a client would send it.
    pub fn encode(&self) -> Bytes {
        let mut body = Vec::new();
        match self {
            StartupPacket::Startup { minor, params } => {
                body.extend_from_slice(&(PROTOCOL_3_0 | u32::from(*minor)).to_be_bytes());
                for (k, v) in params {
                    put_cstr(&mut body, k);
                    put_cstr(&mut body, v);
                }
                body.push(0);
            }
            StartupPacket::SslRequest => body.extend_from_slice(&SSL_REQUEST.to_be_bytes()),
            StartupPacket::GssEncRequest => body.extend_from_slice(&GSSENC_REQUEST.to_be_bytes()),
            StartupPacket::Cancel { pid, secret } => {
                body.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
                body.extend_from_slice(&pid.to_be_bytes());
                body.extend_from_slice(&secret.to_be_bytes());
            }
        }
        let mut out = Vec::with_capacity(body.len() + 4);
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out.into()
    }
}

/// One tagged protocol message, kept as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    tag: u8,
    body: Bytes,
}

impl Message {
    /// A message from its tag and body.
    pub fn new(tag: u8, body: impl Into<Bytes>) -> Message {
        Message {
            tag,
            body: body.into(),
        }
    }

    /// The type byte (`b'Q'`, `b'P'`, …).
    pub fn tag(&self) -> u8 {
        self.tag
    }

    /// The body, without tag and length.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The message as it travels: tag, length, body.
    pub fn encode_into(&self, out: &mut BytesMut) {
        out.reserve(self.body.len() + 5);
        out.extend_from_slice(&[self.tag]);
        out.extend_from_slice(&((self.body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&self.body);
    }

    /// The encoded message in a fresh buffer.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode_into(&mut out);
        out.freeze()
    }
}

/// Takes one startup packet off the front of `buf`, if complete.
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(WireError::LengthTooSmall {
            len: len.into(),
            min: 8,
        });
    }
    let len = len as usize;
    if len > MAX_STARTUP_LEN {
        return Err(WireError::TooLarge {
            len,
            max: MAX_STARTUP_LEN,
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len).freeze();
    packet.advance(4);
    let code = packet.get_u32();
    let malformed = |reason: &str| WireError::Malformed {
        what: "startup",
        reason: reason.to_string(),
    };
    match code {
        SSL_REQUEST | GSSENC_REQUEST if !packet.is_empty() => Err(malformed("trailing bytes")),
        SSL_REQUEST => Ok(Some(StartupPacket::SslRequest)),
        GSSENC_REQUEST => Ok(Some(StartupPacket::GssEncRequest)),
        CANCEL_REQUEST => {
            if packet.len() != 8 {
                return Err(malformed("cancel request must carry pid and key"));
            }
            let pid = packet.get_i32();
            let secret = packet.get_i32();
            Ok(Some(StartupPacket::Cancel { pid, secret }))
        }
        _ if code >> 16 == 3 => {
            let mut params = Vec::new();
            let mut rest = packet;
            loop {
                let name = take_cstr(&mut rest).ok_or_else(|| malformed("unterminated name"))?;
                if name.is_empty() {
                    break;
                }
                let value = take_cstr(&mut rest).ok_or_else(|| malformed("unterminated value"))?;
                params.push((name, value));
            }
            if !rest.is_empty() {
                return Err(malformed("bytes after the parameter list"));
            }
            Ok(Some(StartupPacket::Startup {
                minor: (code & 0xffff) as u16,
                params,
            }))
        }
        _ => Err(WireError::UnsupportedProtocol {
            major: (code >> 16) as u16,
            minor: (code & 0xffff) as u16,
        }),
    }
}

/// Takes one tagged message off the front of `buf`, if complete.
///
/// The length is validated before the body is waited for, so a hostile
/// length is refused at once instead of making the caller buffer it.
pub fn decode_message(buf: &mut BytesMut, max_len: usize) -> Result<Option<Message>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(WireError::LengthTooSmall {
            len: len.into(),
            min: 4,
        });
    }
    let len = len as usize;
    if len > max_len {
        return Err(WireError::TooLarge { len, max: max_len });
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(len + 1);
    frame.advance(5);
    Ok(Some(Message {
        tag,
        body: frame.freeze(),
    }))
}

/// Reads a NUL-terminated string, advancing past it; `None` if unterminated.
pub(crate) fn take_cstr(buf: &mut Bytes) -> Option<String> {
    let end = buf.iter().position(|b| *b == 0)?;
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.advance(end + 1);
    Some(text)
}

pub(crate) fn put_cstr(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(text.as_bytes());
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn startup_round_trip() {
        let packet = StartupPacket::Startup {
            minor: 0,
            params: vec![
                ("user".into(), "alice".into()),
                ("database".into(), "bank".into()),
            ],
        };
        let mut buf = BytesMut::from(&packet.encode()[..]);
        buf.extend_from_slice(b"Q");
        let decoded = decode_startup(&mut buf).unwrap().unwrap();
        assert_eq!(decoded, packet);
        assert_eq!(decoded.param("database"), Some("bank"));
        assert_eq!(&buf[..], b"Q", "only the packet is consumed");
    }

    #[test]
    fn ssl_gss_and_cancel_requests() {
        for packet in [
            StartupPacket::SslRequest,
            StartupPacket::GssEncRequest,
            StartupPacket::Cancel {
                pid: 42,
                secret: -7,
            },
        ] {
            let mut buf = BytesMut::from(&packet.encode()[..]);
            assert_eq!(decode_startup(&mut buf).unwrap(), Some(packet));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn incomplete_input_waits() {
        let bytes = StartupPacket::SslRequest.encode();
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(decode_startup(&mut buf).unwrap(), None, "cut at {cut}");
        }
        let msg = Message::new(b'Q', &b"SELECT 1\0"[..]).encode();
        for cut in 0..msg.len() {
            let mut buf = BytesMut::from(&msg[..cut]);
            assert_eq!(
                decode_message(&mut buf, 1024).unwrap(),
                None,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn hostile_lengths_are_refused_before_buffering() {
        let mut huge = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            decode_message(&mut huge, 1 << 20),
            Err(WireError::TooLarge {
                len: 0x7fff_ffff,
                max: 1 << 20
            })
        );
        assert!(huge.capacity() < 1 << 20, "nothing was reserved for it");
        let mut negative = BytesMut::from(&[b'Q', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decode_message(&mut negative, 1 << 20),
            Err(WireError::LengthTooSmall { len: -1, .. })
        ));
        let mut big_startup = BytesMut::from(&[0, 1, 0, 0, 0, 3, 0, 0][..]);
        assert!(matches!(
            decode_startup(&mut big_startup),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn unknown_protocol_is_refused() {
        let mut buf = BytesMut::from(&[0, 0, 0, 8, 0, 2, 0, 0][..]);
        assert_eq!(
            decode_startup(&mut buf),
            Err(WireError::UnsupportedProtocol { major: 2, minor: 0 })
        );
    }

    #[test]
    fn unterminated_startup_parameters_are_malformed() {
        let mut buf = BytesMut::from(&[0, 0, 0, 12, 0, 3, 0, 0, b'u', b's', b'e', b'r'][..]);
        assert!(matches!(
            decode_startup(&mut buf),
            Err(WireError::Malformed { .. })
        ));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = decode_startup(&mut buf);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(msg)) = decode_message(&mut buf, 256) {
                let _ = crate::proxy::wire::FrontendMessage::parse(&msg);
                let _ = crate::proxy::wire::ErrorResponse::parse(&msg);
            }
        }

        #[test]
        fn typed_views_never_panic(
            tag in proptest::sample::select(b"QPBEDCSHXdcfpFZEN".to_vec()),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let msg = Message::new(tag, body);
            let _ = crate::proxy::wire::FrontendMessage::parse(&msg);
            let _ = crate::proxy::wire::ErrorResponse::parse(&msg);
            let _ = crate::proxy::wire::TransactionStatus::parse(&msg);
        }

        #[test]
        fn message_round_trip(tag in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let msg = Message::new(tag, body);
            let mut buf = BytesMut::from(&msg.encode()[..]);
            prop_assert_eq!(decode_message(&mut buf, 1024).unwrap(), Some(msg));
            prop_assert!(buf.is_empty());
        }
    }
}
