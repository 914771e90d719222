//! Restart: rebuild the certifier's state from the WAL.
//!
//! The version counter is the WAL's last LSN (version == LSN, see
//! `record`). The conflict window and the committed part of the dedupe table
//! are rebuilt by replaying the newest `max(window.max_versions, max_dedupe)`
//! records; the horizon starts just below the first replayed version, so a
//! snapshot older than that is aborted as too old (never certified against
//! history the rebuilt window does not have). Replica reports are not
//! persisted: until replicas report again only the memory bound moves the
//! horizon.
//!
//! Aborts are not logged. A retried transaction that was aborted before the
//! crash is aborted again: the answer was only sent once the conflicting
//! version was durable, so that version is in the WAL and either in the
//! rebuilt window (same conflict) or below its horizon (too old). A
//! transaction whose answer was never received may of course get either
//! answer — the client could not have seen the first one.

use tashkent_wal::Wal;

use crate::certifier::{Certifier, Limits};
use crate::error::CertifierError;
use crate::record;
use crate::rule::ConflictSet;
use crate::tail::Tail;
use crate::window::HorizonCause;

/// Rebuilds the certifier from `wal` (blocking: reads the WAL) and fills
/// `tail` with the newest records.
pub fn recover(wal: &Wal, limits: Limits, tail: &mut Tail) -> Result<Certifier, CertifierError> {
    let last = wal.last_lsn();
    let first = wal.first_lsn();
    if last == 0 {
        return Ok(Certifier::new(limits));
    }
    let keep = limits.window.max_versions.max(limits.max_dedupe) as u64;
    let start = first.max((last + 1).saturating_sub(keep)).max(1);
    let mut c = Certifier::resume(limits, start - 1, HorizonCause::Restart);
    if start > last {
        return Ok(c);
    }
    for r in wal.read_from(start)? {
        let (lsn, rec) = r?;
        let ws = record::decode(lsn, &rec)?;
        c.replay(lsn, ws.txn_id.clone(), &ConflictSet::of(&ws))?;
        tail.push(lsn, rec);
    }
    if c.latest() != last {
        return Err(CertifierError::CorruptRecord {
            version: c.latest() + 1,
            reason: format!("WAL ends at {last} but records stop after {}", c.latest()),
        });
    }
    tracing::info!(
        first_replayed = start,
        latest = last,
        horizon = c.window().horizon(),
        "certifier state rebuilt from the WAL"
    );
    Ok(c)
}
