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

use super::spool::Spool;
use super::tail::Tail;
use crate::certifier::{Certifier, Limits};
use crate::error::CertifierError;
use crate::record;
use crate::rule::ConflictSet;
use crate::window::HorizonCause;
use crate::writeset::{Part, StreamDecoder};

/// Rebuilds the certifier from `wal` (blocking: reads the WAL) and fills
/// `tail` with the newest records; tells `spool` which of its records the
/// retained versions need.
pub fn recover(
    wal: &Wal,
    spool: &Spool,
    limits: Limits,
    tail: &mut Tail,
) -> Result<Certifier, CertifierError> {
    let last = wal.last_lsn();
    let first = wal.first_lsn();
    if last == 0 {
        return Ok(Certifier::new(limits));
    }
    let keep = limits.window.max_versions.max(limits.max_dedupe) as u64;
    let start = first.max((last + 1).saturating_sub(keep)).max(1);
    let mut c = Certifier::resume(limits, start - 1, HorizonCause::Restart);
    // Spooled versions older than the replayed ones: only their spool
    // references matter.
    spool.retain_spooled(wal, start)?;
    if start > last {
        return Ok(c);
    }
    for r in wal.read_from(start)? {
        let (lsn, rec) = r?;
        let ws = record::decode(lsn, &rec)?;
        let cs = match &ws.spool {
            Some(s) if record::is_spooled(&rec) => {
                spool.retained(lsn, s.first);
                spooled_conflicts(spool, s, lsn)?
            }
            _ => ConflictSet::of(&ws),
        };
        c.replay(lsn, &ws.txn_id, &cs)?;
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

/// The conflict keys of a spooled version, read back from the spool.
fn spooled_conflicts(
    spool: &Spool,
    r: &crate::proto::SpoolRef,
    version: u64,
) -> Result<ConflictSet, CertifierError> {
    let mut cs = ConflictSet::default();
    let (mut items, mut ddls) = (0usize, 0usize);
    spooled_parts(spool, r, version, |part| match part {
        Part::Header(_) => {}
        Part::Item(i) => {
            cs.add(std::slice::from_ref(&i), &[], items, ddls);
            items += 1;
        }
        Part::Ddl(d) => {
            cs.add(&[], std::slice::from_ref(&d), items, ddls);
            ddls += 1;
        }
    })?;
    Ok(cs)
}

/// Hands `each` the parts of spooled version `version` (`r`), read back
/// from the spool, in order (blocking).
pub(crate) fn spooled_parts(
    spool: &Spool,
    r: &crate::proto::SpoolRef,
    version: u64,
    mut each: impl FnMut(Part),
) -> Result<(), CertifierError> {
    let mut decoder = StreamDecoder::new(usize::MAX);
    let corrupt = |reason: String| CertifierError::CorruptRecord { version, reason };
    for chunk in spool.chunks(r)? {
        let chunk = chunk.map_err(|e| corrupt(e.to_string()))?;
        for part in decoder.push(&chunk).map_err(|e| corrupt(e.to_string()))? {
            each(part);
        }
    }
    decoder.finish().map_err(|e| corrupt(e.to_string()))?;
    Ok(())
}
