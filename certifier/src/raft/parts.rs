//! A certification too large for one raft entry, replicated in parts: what
//! earlier builds proposed, still applied from their logs and snapshots.
//! Leaders now propose such a writeset in chunks, spooled on every node
//! (`chunks.rs`), which share this module's rules for abandoned ones.
//!
//! openraft 0.9 gives an AppendEntries the heartbeat interval (150 ms) to
//! be answered, and heartbeats to a follower queue behind the entries sent
//! to it: a 200 MB entry timed out over and over, the followers heard no
//! heartbeat meanwhile, elections followed, and clients were told 08007
//! for transactions that committed. So a record over [`PART_BYTES`] is
//! cut into pieces of at most that size, each its own entry
//! (`Command::Part`), proposed one after the other by the leader; the one
//! with `last` set completes the record, which is then certified as a
//! `Certify` entry would be. Entries stay small whatever the transaction.
//!
//! Until its last piece is applied, an assembly is part of the replicated
//! state ([`Pending`]): in memory, in snapshots (`snapshot.rs`), rebuilt by
//! re-applying the log. Pieces of a call that never finished (its leader
//! failed between two pieces; the client retries under a new tag) are
//! dropped once [`PENDING_MAX_AGE`] entries have been applied since their
//! newest piece, or earlier when the assemblies in progress hold more than
//! [`PENDING_MAX_BYTES`] (the oldest go first). These rules depend on the
//! log alone, so every node keeps and drops the same assemblies and
//! answers a last piece the same way.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};

/// Largest piece, and largest record proposed whole. With
/// `max_payload_entries` 8 an AppendEntries carries at most 8 MiB of them.
pub const PART_BYTES: usize = 1 << 20;

/// Entries applied after an assembly's newest piece before it is dropped.
pub const PENDING_MAX_AGE: u64 = 100_000;

/// Most bytes of pieces held; past it, the assemblies whose newest piece
/// is oldest are dropped (abandoned ones, unless many large transactions
/// are in flight at once: then the dropped one is retried).
pub const PENDING_MAX_BYTES: usize = 1 << 30;

/// `record` cut into pieces of at most [`PART_BYTES`] (slices, no copy).
pub fn split(record: &Bytes) -> Vec<Bytes> {
    (0..record.len())
        .step_by(PART_BYTES)
        .map(|at| record.slice(at..record.len().min(at + PART_BYTES)))
        .collect()
}

/// The tags of the assemblies (tag, index of the newest entry) whose
/// newest entry is more than [`PENDING_MAX_AGE`] entries before `index`:
/// the ones to drop, for parts and chunks alike.
pub(super) fn expired(assemblies: impl Iterator<Item = (u64, u64)>, index: u64) -> Vec<u64> {
    assemblies
        .filter(|(_, newest)| index.saturating_sub(*newest) > PENDING_MAX_AGE)
        .map(|(tag, _)| tag)
        .collect()
}

/// The tag of the assembly (tag, index of the newest entry) to drop first
/// when too many bytes are held: the one whose newest entry is oldest.
pub(super) fn oldest(assemblies: impl Iterator<Item = (u64, u64)>) -> Option<u64> {
    assemblies
        .min_by_key(|(tag, newest)| (*newest, *tag))
        .map(|(tag, _)| tag)
}

/// The pieces applied so far of the records not yet complete, by tag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    assemblies: BTreeMap<u64, Assembly>,
    /// Bytes of all pieces held.
    bytes: usize,
}

/// One record being assembled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembly {
    /// Log index of its newest piece.
    pub newest: u64,
    pub pieces: Vec<Bytes>,
}

impl Assembly {
    fn bytes(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum()
    }
}

impl Pending {
    /// Applies a piece at log index `index`: the whole record when `last`
    /// completes it. A last piece whose earlier pieces are not here (they
    /// expired) is an error, the same on every node.
    pub fn apply(
        &mut self,
        index: u64,
        tag: u64,
        piece: Bytes,
        last: bool,
    ) -> Result<Option<Bytes>, String> {
        self.apply_within(index, tag, piece, last, PENDING_MAX_BYTES)
    }

    /// [`Pending::apply`] holding at most `max_bytes` of pieces.
    fn apply_within(
        &mut self,
        index: u64,
        tag: u64,
        piece: Bytes,
        last: bool,
        max_bytes: usize,
    ) -> Result<Option<Bytes>, String> {
        if !last {
            self.bytes += piece.len();
            let a = self.assemblies.entry(tag).or_insert(Assembly {
                newest: index,
                pieces: Vec::new(),
            });
            a.newest = index;
            a.pieces.push(piece);
            self.shed(max_bytes);
            return Ok(None);
        }
        let Some(a) = self.assemblies.remove(&tag) else {
            return Err(format!(
                "the earlier parts of this transaction's record (tag {tag:#x}) were dropped \
                 ({PENDING_MAX_AGE} entries without a new part, or more than \
                 {PENDING_MAX_BYTES} bytes of parts in progress): it was not certified"
            ));
        };
        self.bytes -= a.bytes();
        let len = a.pieces.iter().map(Bytes::len).sum::<usize>() + piece.len();
        let mut record = BytesMut::with_capacity(len);
        for p in a.pieces.iter().chain(std::iter::once(&piece)) {
            record.extend_from_slice(p);
        }
        Ok(Some(record.freeze()))
    }

    /// Drops the assemblies whose newest piece is more than
    /// [`PENDING_MAX_AGE`] entries before `index`.
    pub fn expire(&mut self, index: u64) {
        for tag in expired(self.assemblies.iter().map(|(t, a)| (*t, a.newest)), index) {
            self.drop_assembly(tag);
        }
    }

    /// Drops the oldest assemblies while more than `max_bytes` are held.
    fn shed(&mut self, max_bytes: usize) {
        while self.bytes > max_bytes {
            let Some(oldest) = oldest(self.assemblies.iter().map(|(t, a)| (*t, a.newest))) else {
                break;
            };
            self.drop_assembly(oldest);
        }
    }

    fn drop_assembly(&mut self, tag: u64) {
        if let Some(a) = self.assemblies.remove(&tag) {
            self.bytes -= a.bytes();
            tracing::warn!(
                tag,
                pieces = a.pieces.len(),
                bytes = a.bytes(),
                "dropped the parts of a large certification that never finished"
            );
        }
    }

    /// Every assembly, by tag (what a snapshot holds).
    pub fn assemblies(&self) -> impl Iterator<Item = (u64, &Assembly)> {
        self.assemblies.iter().map(|(t, a)| (*t, a))
    }

    /// The state a snapshot held.
    pub fn from_assemblies(assemblies: impl IntoIterator<Item = (u64, Assembly)>) -> Pending {
        let assemblies: BTreeMap<u64, Assembly> = assemblies.into_iter().collect();
        Pending {
            bytes: assemblies.values().map(Assembly::bytes).sum(),
            assemblies,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.assemblies.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_assemble_give_the_record_back() {
        // Only records over PART_BYTES are proposed in parts.
        for len in [PART_BYTES + 1, 2 * PART_BYTES, 3 * PART_BYTES + 7] {
            let record: Bytes = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let pieces = split(&record);
            assert!(pieces.len() >= 2);
            assert!(pieces
                .iter()
                .all(|p| p.len() <= PART_BYTES && !p.is_empty()));
            let mut pending = Pending::default();
            // Another call's pieces interleave.
            pending
                .apply(0, 9, Bytes::from_static(b"other"), false)
                .unwrap();
            let n = pieces.len();
            let mut got = None;
            for (i, p) in pieces.into_iter().enumerate() {
                got = pending.apply(i as u64 + 1, 5, p, i + 1 == n).unwrap();
            }
            assert_eq!(got.unwrap(), record, "{len} bytes");
            assert_eq!(pending.assemblies().count(), 1);
        }
    }

    #[test]
    fn an_abandoned_assembly_expires_and_its_last_piece_is_refused() {
        let mut p = Pending::default();
        p.apply(10, 1, Bytes::from_static(b"a"), false).unwrap();
        p.apply(20, 2, Bytes::from_static(b"b"), false).unwrap();
        p.expire(10 + PENDING_MAX_AGE);
        assert_eq!(p.assemblies().count(), 2);
        p.expire(11 + PENDING_MAX_AGE);
        assert_eq!(p.assemblies().map(|(t, _)| t).collect::<Vec<_>>(), [2]);
        assert!(p
            .apply(12 + PENDING_MAX_AGE, 1, Bytes::new(), true)
            .is_err());
        let whole = p
            .apply(12 + PENDING_MAX_AGE, 2, Bytes::from_static(b"c"), true)
            .unwrap();
        assert_eq!(whole.unwrap(), Bytes::from_static(b"bc"));
        assert!(p.is_empty());
    }

    #[test]
    fn past_the_byte_cap_the_oldest_assembly_goes() {
        let mut p = Pending::default();
        let piece = || Bytes::from_static(b"0123456789");
        p.apply_within(1, 1, piece(), false, 25).unwrap();
        p.apply_within(2, 2, piece(), false, 25).unwrap();
        // Tag 1 gets a newer piece: tag 2 is now the oldest.
        p.apply_within(3, 1, piece(), false, 25).unwrap();
        assert_eq!(p.assemblies().map(|(t, _)| t).collect::<Vec<_>>(), [1]);
        assert_eq!(p.bytes, 20);
        assert!(p.apply_within(4, 2, piece(), true, 25).is_err());
        let whole = p.apply_within(4, 1, piece(), true, 25).unwrap().unwrap();
        assert_eq!(whole.len(), 30);
        assert_eq!((p.bytes, p.is_empty()), (0, true));
        let restored = Pending::from_assemblies([(
            5,
            Assembly {
                newest: 9,
                pieces: vec![piece(), piece()],
            },
        )]);
        assert_eq!(restored.bytes, 20);
    }
}
