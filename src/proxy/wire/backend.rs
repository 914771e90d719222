//! The backend messages the proxy writes itself or has to read.
//!
//! The proxy answers some things on its own (errors for refused SQL,
//! `40001` on certification abort, `08007` when a commit's outcome is
//! unknown) and must understand a few of the server's messages
//! (ReadyForQuery's transaction status, ErrorResponse's SQLSTATE).

use bytes::{Buf, Bytes};

use super::frame::{put_cstr, take_cstr, Message, WireError};

/// The transaction status a ReadyForQuery message reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `'I'`: not in a transaction block.
    Idle,
    /// `'T'`: in a transaction block.
    InBlock,
    /// `'E'`: in a failed transaction block (queries rejected until rollback).
    Failed,
}

impl TransactionStatus {
    /// Reads a ReadyForQuery (`'Z'`) message.
    pub fn parse(msg: &Message) -> Result<TransactionStatus, WireError> {
        let malformed = |reason: &str| WireError::Malformed {
            what: "ReadyForQuery",
            reason: reason.to_string(),
        };
        if msg.tag() != b'Z' {
            return Err(malformed("not a ReadyForQuery message"));
        }
        match msg.body().as_ref() {
            [b'I'] => Ok(TransactionStatus::Idle),
            [b'T'] => Ok(TransactionStatus::InBlock),
            [b'E'] => Ok(TransactionStatus::Failed),
            _ => Err(malformed("status must be one of I, T, E")),
        }
    }

    /// The ReadyForQuery message reporting this status.
    pub fn message(self) -> Message {
        let byte = match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InBlock => b'T',
            TransactionStatus::Failed => b'E',
        };
        Message::new(b'Z', Bytes::copy_from_slice(&[byte]))
    }
}

/// Fields of an ErrorResponse or NoticeResponse, by their code byte.
pub type ErrorFields = Vec<(u8, String)>;

/// An ErrorResponse (`'E'`) or NoticeResponse (`'N'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    /// The fields in order: `S` severity, `V` non-localised severity,
    /// `C` SQLSTATE, `M` message, `D` detail, `H` hint, …
    pub fields: ErrorFields,
}

impl ErrorResponse {
    /// An `ERROR` with `sqlstate` and `message`.
    pub fn error(sqlstate: &str, message: impl Into<String>) -> ErrorResponse {
        ErrorResponse {
            fields: vec![
                (b'S', "ERROR".into()),
                (b'V', "ERROR".into()),
                (b'C', sqlstate.into()),
                (b'M', message.into()),
            ],
        }
    }

    /// A `FATAL` error: the connection closes after it.
    pub fn fatal(sqlstate: &str, message: impl Into<String>) -> ErrorResponse {
        let mut e = ErrorResponse::error(sqlstate, message);
        e.fields[0].1 = "FATAL".into();
        e.fields[1].1 = "FATAL".into();
        e
    }

    /// The same error, FATAL (the connection closes after it).
    pub fn into_fatal(mut self) -> ErrorResponse {
        for (code, value) in &mut self.fields {
            if *code == b'S' || *code == b'V' {
                *value = "FATAL".into();
            }
        }
        self
    }

    /// Adds a detail line.
    pub fn with_detail(mut self, detail: impl Into<String>) -> ErrorResponse {
        self.fields.push((b'D', detail.into()));
        self
    }

    /// Adds a hint line.
    pub fn with_hint(mut self, hint: impl Into<String>) -> ErrorResponse {
        self.fields.push((b'H', hint.into()));
        self
    }

    /// A field's value by its code byte.
    pub fn field(&self, code: u8) -> Option<&str> {
        self.fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_str())
    }

    /// The SQLSTATE.
    pub fn sqlstate(&self) -> Option<&str> {
        self.field(b'C')
    }

    /// The primary message.
    pub fn message_text(&self) -> Option<&str> {
        self.field(b'M')
    }

    /// Reads an ErrorResponse or NoticeResponse.
    pub fn parse(msg: &Message) -> Result<ErrorResponse, WireError> {
        let malformed = |reason: &str| WireError::Malformed {
            what: "ErrorResponse",
            reason: reason.to_string(),
        };
        if msg.tag() != b'E' && msg.tag() != b'N' {
            return Err(malformed("not an ErrorResponse or NoticeResponse"));
        }
        let mut body = msg.body().clone();
        let mut fields = Vec::new();
        loop {
            if body.is_empty() {
                return Err(malformed("missing terminator"));
            }
            let code = body.get_u8();
            if code == 0 {
                break;
            }
            let value = take_cstr(&mut body).ok_or_else(|| malformed("unterminated field"))?;
            fields.push((code, value));
        }
        if !body.is_empty() {
            return Err(malformed("trailing bytes"));
        }
        Ok(ErrorResponse { fields })
    }

    /// The `'E'` message.
    pub fn message(&self) -> Message {
        self.encode(b'E')
    }

    /// The same fields as a `'N'` notice.
    pub fn notice(&self) -> Message {
        self.encode(b'N')
    }

    fn encode(&self, tag: u8) -> Message {
        let mut body = Vec::new();
        for (code, value) in &self.fields {
            body.push(*code);
            put_cstr(&mut body, value);
        }
        body.push(0);
        Message::new(tag, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_round_trip() {
        let err = ErrorResponse::error("40001", "could not serialize access")
            .with_detail("write-write conflict with version 17")
            .with_hint("retry the transaction");
        let parsed = ErrorResponse::parse(&err.message()).unwrap();
        assert_eq!(parsed, err);
        assert_eq!(parsed.sqlstate(), Some("40001"));
        assert_eq!(
            parsed.field(b'D'),
            Some("write-write conflict with version 17")
        );
        assert_eq!(
            ErrorResponse::fatal("08P01", "x").field(b'S'),
            Some("FATAL")
        );
    }

    #[test]
    fn error_without_terminator_is_malformed() {
        let msg = Message::new(b'E', &b"CXX000\0"[..]);
        assert!(ErrorResponse::parse(&msg).is_err());
    }

    #[test]
    fn ready_for_query() {
        for status in [
            TransactionStatus::Idle,
            TransactionStatus::InBlock,
            TransactionStatus::Failed,
        ] {
            assert_eq!(TransactionStatus::parse(&status.message()).unwrap(), status);
        }
        assert!(TransactionStatus::parse(&Message::new(b'Z', &b"X"[..])).is_err());
    }
}
