//! Typed views of the messages a client sends after startup.
//!
//! Only the fields the proxy acts on are decoded; a message the proxy
//! merely forwards is never rebuilt, so its bytes go out as they came in.

use bytes::{Buf, Bytes};

use super::frame::{take_cstr, Message, WireError};

/// What a Describe or Close message targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Describe {
    /// A prepared statement (`'S'`).
    Statement,
    /// A portal (`'P'`).
    Portal,
}

/// A decoded frontend message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    /// Simple query: one string, possibly several statements.
    Query { sql: String },
    /// Extended query: prepare `sql` as `statement` (empty: unnamed).
    Parse {
        statement: String,
        sql: String,
        param_types: Vec<u32>,
    },
    /// Extended query: bind `statement` into `portal`.
    Bind { portal: String, statement: String },
    /// Extended query: run `portal`, at most `max_rows` rows (0: all).
    Execute { portal: String, max_rows: i32 },
    /// Describe a statement or portal.
    Describe { target: Describe, name: String },
    /// Close a statement or portal.
    Close { target: Describe, name: String },
    /// End of an extended-query batch.
    Sync,
    /// Flush pending output.
    Flush,
    /// Orderly disconnect.
    Terminate,
    /// A chunk of COPY FROM STDIN data.
    CopyData(Bytes),
    /// End of COPY FROM STDIN data.
    CopyDone,
    /// The client aborts a COPY FROM STDIN.
    CopyFail { reason: String },
    /// Password, SASL initial response or SASL response (context decides).
    Password(Bytes),
    /// Fast-path function call.
    FunctionCall,
}

impl FrontendMessage {
    /// Decodes `msg`; an unknown tag or a body that does not fit its
    /// type's layout is a protocol violation.
    pub fn parse(msg: &Message) -> Result<FrontendMessage, WireError> {
        let mut body = msg.body().clone();
        let what = name_of(msg.tag());
        let malformed = |reason: &str| WireError::Malformed {
            what,
            reason: reason.to_string(),
        };
        let cstr = |body: &mut Bytes, field: &str| {
            take_cstr(body).ok_or_else(|| malformed(&format!("unterminated {field}")))
        };
        let parsed = match msg.tag() {
            b'Q' => FrontendMessage::Query {
                sql: cstr(&mut body, "query string")?,
            },
            b'P' => {
                let statement = cstr(&mut body, "statement name")?;
                let sql = cstr(&mut body, "query string")?;
                let count = take_i16(&mut body).ok_or_else(|| malformed("missing type count"))?;
                if count < 0 || body.len() != count as usize * 4 {
                    return Err(malformed("parameter type count does not match the body"));
                }
                let param_types = (0..count).map(|_| body.get_u32()).collect();
                FrontendMessage::Parse {
                    statement,
                    sql,
                    param_types,
                }
            }
            b'B' => {
                let portal = cstr(&mut body, "portal name")?;
                let statement = cstr(&mut body, "statement name")?;
                // The parameter values are forwarded untouched, but their
                // framing must be sound before they reach the server.
                check_bind_tail(&mut body).map_err(&malformed)?;
                FrontendMessage::Bind { portal, statement }
            }
            b'E' => {
                let portal = cstr(&mut body, "portal name")?;
                let max_rows = take_i32(&mut body).ok_or_else(|| malformed("missing row limit"))?;
                FrontendMessage::Execute { portal, max_rows }
            }
            b'D' | b'C' => {
                let target = match take_u8(&mut body) {
                    Some(b'S') => Describe::Statement,
                    Some(b'P') => Describe::Portal,
                    _ => return Err(malformed("target must be 'S' or 'P'")),
                };
                let name = cstr(&mut body, "name")?;
                if msg.tag() == b'D' {
                    FrontendMessage::Describe { target, name }
                } else {
                    FrontendMessage::Close { target, name }
                }
            }
            b'S' => FrontendMessage::Sync,
            b'H' => FrontendMessage::Flush,
            b'X' => FrontendMessage::Terminate,
            b'd' => return Ok(FrontendMessage::CopyData(body)),
            b'c' => FrontendMessage::CopyDone,
            b'f' => FrontendMessage::CopyFail {
                reason: cstr(&mut body, "reason")?,
            },
            b'p' => return Ok(FrontendMessage::Password(body)),
            b'F' => return Ok(FrontendMessage::FunctionCall),
            tag => {
                return Err(WireError::Malformed {
                    what: "frontend",
                    reason: format!("unknown message type {:?}", char::from(tag)),
                })
            }
        };
        if !body.is_empty() {
            return Err(malformed("trailing bytes"));
        }
        Ok(parsed)
    }
}

/// True for the type bytes a client may send after startup; anything
/// else is refused at once, before its length is trusted.
pub fn is_frontend_tag(tag: u8) -> bool {
    name_of(tag) != "frontend"
}

fn name_of(tag: u8) -> &'static str {
    match tag {
        b'Q' => "Query",
        b'P' => "Parse",
        b'B' => "Bind",
        b'E' => "Execute",
        b'D' => "Describe",
        b'C' => "Close",
        b'S' => "Sync",
        b'H' => "Flush",
        b'X' => "Terminate",
        b'd' => "CopyData",
        b'c' => "CopyDone",
        b'f' => "CopyFail",
        b'p' => "Password",
        b'F' => "FunctionCall",
        _ => "frontend",
    }
}

/// Walks Bind's format codes, parameter values and result formats.
fn check_bind_tail(body: &mut Bytes) -> Result<(), &'static str> {
    let formats = take_i16(body).ok_or("missing format count")?;
    skip(body, formats, 2).ok_or("format codes do not fit")?;
    let params = take_i16(body).ok_or("missing parameter count")?;
    if params < 0 {
        return Err("negative parameter count");
    }
    for _ in 0..params {
        let len = take_i32(body).ok_or("missing parameter length")?;
        if len >= 0 {
            skip(body, 1, len as usize).ok_or("parameter value does not fit")?;
        } else if len != -1 {
            return Err("invalid parameter length");
        }
    }
    let results = take_i16(body).ok_or("missing result format count")?;
    skip(body, results, 2).ok_or("result format codes do not fit")
}

fn skip(body: &mut Bytes, count: i16, size: usize) -> Option<()> {
    let total = usize::try_from(count).ok()?.checked_mul(size)?;
    (body.len() >= total).then(|| body.advance(total))
}

fn take_u8(body: &mut Bytes) -> Option<u8> {
    (!body.is_empty()).then(|| body.get_u8())
}

fn take_i16(body: &mut Bytes) -> Option<i16> {
    (body.len() >= 2).then(|| body.get_i16())
}

fn take_i32(body: &mut Bytes) -> Option<i32> {
    (body.len() >= 4).then(|| body.get_i32())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Message {
        Message::new(tag, Bytes::copy_from_slice(body))
    }

    #[test]
    fn query() {
        assert_eq!(
            FrontendMessage::parse(&msg(b'Q', b"BEGIN; SELECT 1\0")).unwrap(),
            FrontendMessage::Query {
                sql: "BEGIN; SELECT 1".into()
            }
        );
        assert!(FrontendMessage::parse(&msg(b'Q', b"SELECT 1")).is_err());
        assert!(FrontendMessage::parse(&msg(b'Q', b"SELECT 1\0x")).is_err());
    }

    #[test]
    fn parse_with_types() {
        let mut body = b"s1\0UPDATE t SET x = $1\0".to_vec();
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&23u32.to_be_bytes());
        assert_eq!(
            FrontendMessage::parse(&msg(b'P', &body)).unwrap(),
            FrontendMessage::Parse {
                statement: "s1".into(),
                sql: "UPDATE t SET x = $1".into(),
                param_types: vec![23]
            }
        );
        body.truncate(body.len() - 1);
        assert!(FrontendMessage::parse(&msg(b'P', &body)).is_err());
    }

    #[test]
    fn bind_checks_its_framing() {
        let mut body = b"\0s1\0".to_vec();
        body.extend_from_slice(&0i16.to_be_bytes()); // formats
        body.extend_from_slice(&2i16.to_be_bytes()); // params
        body.extend_from_slice(&3i32.to_be_bytes());
        body.extend_from_slice(b"abc");
        body.extend_from_slice(&(-1i32).to_be_bytes()); // NULL
        body.extend_from_slice(&0i16.to_be_bytes()); // result formats
        assert_eq!(
            FrontendMessage::parse(&msg(b'B', &body)).unwrap(),
            FrontendMessage::Bind {
                portal: "".into(),
                statement: "s1".into()
            }
        );
        let mut lying = body.clone();
        lying[8..12].copy_from_slice(&1000i32.to_be_bytes());
        assert!(FrontendMessage::parse(&msg(b'B', &lying)).is_err());
    }

    #[test]
    fn execute_describe_close() {
        let mut body = b"p\0".to_vec();
        body.extend_from_slice(&0i32.to_be_bytes());
        assert_eq!(
            FrontendMessage::parse(&msg(b'E', &body)).unwrap(),
            FrontendMessage::Execute {
                portal: "p".into(),
                max_rows: 0
            }
        );
        assert_eq!(
            FrontendMessage::parse(&msg(b'D', b"Ss1\0")).unwrap(),
            FrontendMessage::Describe {
                target: Describe::Statement,
                name: "s1".into()
            }
        );
        assert_eq!(
            FrontendMessage::parse(&msg(b'C', b"P\0")).unwrap(),
            FrontendMessage::Close {
                target: Describe::Portal,
                name: "".into()
            }
        );
        assert!(FrontendMessage::parse(&msg(b'D', b"Xs1\0")).is_err());
    }

    #[test]
    fn unknown_tag_is_an_error() {
        let err = FrontendMessage::parse(&msg(b'z', b"")).unwrap_err();
        assert!(
            err.to_string().contains("unknown message type 'z'"),
            "{err}"
        );
    }
}
