//! The proxy's own statements on a client's backend, prepared once per
//! backend and then only bound and executed: no parsing or planning per
//! transaction, and one Sync per flight.
//!
//! They are named statements (`__tashkent_<name>`), each parsed ahead of
//! its first use in the same flight (no extra round trip; one at a time,
//! since an aborted transaction refuses to parse anything but its end). A
//! client's `DISCARD ALL` or `DEALLOCATE` drops them with its own: the
//! session then closes and parses them again before their next use
//! (`Own::forget`; closing a statement that is not there is no error).

use bytes::{BufMut, Bytes, BytesMut};

use crate::proxy::capture;
use crate::proxy::wire::Message;

/// One statement of the proxy's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OwnStatement {
    Begin,
    BeginReadOnly,
    /// The snapshot's version (`capture::OPENING_SQL`).
    Snapshot,
    /// The captured entries (`capture::READ_SQL`), read in binary.
    ReadOut,
    /// `tashkent.take_turns($1, $1)`: records version `$1` as applied and
    /// takes its place in the commit order; returns the transaction's id.
    TakeTurn,
    /// `tashkent.wait_turn($1, $2)`: waits until version `$1` (whose
    /// transaction is `$2`, NULL when known committed) committed.
    WaitTurn,
    Commit,
    Rollback,
    /// `pg_current_wal_insert_lsn()`: where the WAL ends (after a COMMIT:
    /// past its commit record).
    WalInsertLsn,
}

impl OwnStatement {
    fn name(self) -> &'static str {
        match self {
            OwnStatement::Begin => "__tashkent_begin",
            OwnStatement::BeginReadOnly => "__tashkent_begin_ro",
            OwnStatement::Snapshot => "__tashkent_snapshot",
            OwnStatement::ReadOut => "__tashkent_read_out",
            OwnStatement::TakeTurn => "__tashkent_take_turn",
            OwnStatement::WaitTurn => "__tashkent_wait_turn",
            OwnStatement::Commit => "__tashkent_commit",
            OwnStatement::Rollback => "__tashkent_rollback",
            OwnStatement::WalInsertLsn => "__tashkent_wal_insert_lsn",
        }
    }

    fn sql(self) -> &'static str {
        match self {
            OwnStatement::Begin => "BEGIN ISOLATION LEVEL REPEATABLE READ",
            OwnStatement::BeginReadOnly => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            OwnStatement::Snapshot => capture::OPENING_SQL,
            OwnStatement::ReadOut => capture::READ_SQL,
            OwnStatement::TakeTurn => "SELECT tashkent.take_turns($1, $1)",
            OwnStatement::WaitTurn => "SELECT tashkent.wait_turn($1, $2)",
            OwnStatement::Commit => "COMMIT",
            OwnStatement::Rollback => "ROLLBACK",
            OwnStatement::WalInsertLsn => "SELECT pg_current_wal_insert_lsn()",
        }
    }

    /// Parameter types of the Parse message (0: inferred).
    fn params(self) -> &'static [u32] {
        match self {
            // int8; int8, xid8
            OwnStatement::TakeTurn => &[20],
            OwnStatement::WaitTurn => &[20, 5069],
            _ => &[],
        }
    }
}

/// Which of the proxy's statements the backend holds.
#[derive(Debug, Default)]
pub(super) struct Own {
    /// Bit `stmt as u8` set: parsed on this backend.
    prepared: u16,
    /// The client may have dropped some: close before parsing again.
    close_first: bool,
}

impl Own {
    /// The client may have dropped prepared statements (`DISCARD ALL`,
    /// `DEALLOCATE`), or one of ours was missing: parse them again.
    pub fn forget(&mut self) {
        self.prepared = 0;
        self.close_first = true;
    }

    /// Messages that run `stmt` with `params` (text), preceded by its
    /// Parse if the backend lacks it. No Sync: the caller ends the flight.
    pub fn execute(&mut self, stmt: OwnStatement, params: &[Option<&str>], out: &mut Vec<Message>) {
        let bit = 1u16 << (stmt as u16);
        if self.prepared & bit == 0 {
            if self.close_first {
                out.push(close(stmt));
            }
            out.push(parse(stmt));
            self.prepared |= bit;
        }
        out.push(bind(stmt, params));
        out.push(execute());
    }
}

/// The Sync that ends a flight.
pub(super) fn sync() -> Message {
    Message::new(b'S', Bytes::new())
}

/// A Flush inside a flight: the backend sends what it has answered so far
/// (the commit order's next committer waits for it).
pub(super) fn flush() -> Message {
    Message::new(b'H', Bytes::new())
}

fn close(stmt: OwnStatement) -> Message {
    let mut b = BytesMut::new();
    b.put_u8(b'S');
    b.put_slice(stmt.name().as_bytes());
    b.put_u8(0);
    Message::new(b'C', b.freeze())
}

fn parse(stmt: OwnStatement) -> Message {
    let mut b = BytesMut::new();
    b.put_slice(stmt.name().as_bytes());
    b.put_u8(0);
    b.put_slice(stmt.sql().as_bytes());
    b.put_u8(0);
    b.put_i16(stmt.params().len() as i16);
    for &oid in stmt.params() {
        b.put_u32(oid);
    }
    Message::new(b'P', b.freeze())
}

fn bind(stmt: OwnStatement, params: &[Option<&str>]) -> Message {
    let mut b = BytesMut::new();
    b.put_u8(0); // the unnamed portal
    b.put_slice(stmt.name().as_bytes());
    b.put_u8(0);
    b.put_i16(0); // parameters in text
    b.put_i16(params.len() as i16);
    for p in params {
        match p {
            Some(p) => {
                b.put_i32(p.len() as i32);
                b.put_slice(p.as_bytes());
            }
            None => b.put_i32(-1),
        }
    }
    // The read-out's chunks come as binary bytea (no hex, whatever the
    // client's settings); everything else as text.
    if stmt == OwnStatement::ReadOut {
        b.put_i16(1);
        b.put_i16(1);
    } else {
        b.put_i16(0);
    }
    Message::new(b'B', b.freeze())
}

fn execute() -> Message {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_i32(0);
    Message::new(b'E', b.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(own: &mut Own, stmt: OwnStatement) -> Vec<u8> {
        let mut out = Vec::new();
        own.execute(stmt, &[Some("42")], &mut out);
        out.iter().map(|m| m.tag()).collect()
    }

    #[test]
    fn each_statement_is_parsed_once_until_forgotten() {
        let mut own = Own::default();
        assert_eq!(tags(&mut own, OwnStatement::Begin), b"PBE");
        assert_eq!(tags(&mut own, OwnStatement::Begin), b"BE");
        assert_eq!(tags(&mut own, OwnStatement::TakeTurn), b"PBE");
        own.forget();
        assert_eq!(tags(&mut own, OwnStatement::Begin), b"CPBE");
        assert_eq!(tags(&mut own, OwnStatement::Begin), b"BE");
        // The last statement has a bit of its own too.
        assert_eq!(tags(&mut own, OwnStatement::WalInsertLsn), b"CPBE");
        assert_eq!(tags(&mut own, OwnStatement::WalInsertLsn), b"BE");
    }
}
