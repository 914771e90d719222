//! Batching at the proposer: group commit one level above the log.
//!
//! openraft 0.9 writes one entry per `client_write`, and each entry costs
//! the core, the replication and the state machine a round of their own.
//! A [`Proposer`] keeps one entry in flight (more only when a full one is
//! waiting, see `IN_FLIGHT`) and gathers the certifications that arrive
//! meanwhile into the next one (`Command::CertifyBatch`): under load,
//! many certifications share an entry, its replication and its
//! fdatasync, and each still gets its own answer. A lone certification
//! is sent at once.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::decider::{Decider, Proposal, Proposed};
use super::parts::PART_BYTES;
use super::types::{Command, Response};
use super::writes::{WriteFailed, Writes, Written};
use crate::error::CertifierError;

type Reply = oneshot::Sender<Result<Response, CertifierError>>;

/// Proposes certifications through a raft node, batched. Cheap to clone;
/// the batching task ends when the last clone is dropped.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<(Bytes, Reply)>,
    writes: Writes,
}

impl Proposer {
    /// Proposes through `writes` (a raft node, which must be the leader to
    /// succeed), at most `max_batch` certifications per entry.
    pub fn new(writes: impl Into<Writes>, max_batch: usize) -> Proposer {
        let writes = writes.into();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(writes.clone(), rx, max_batch.max(1)));
        Proposer { tx, writes }
    }

    /// Certifies `record` (a certifier record, version 0): the answer of
    /// applying it, once committed. Queued at once, so calls made before
    /// the batching task runs share an entry. A record over
    /// [`PART_BYTES`] is proposed in parts instead (`parts.rs`).
    pub fn certify(
        &self,
        record: Bytes,
    ) -> impl std::future::Future<Output = Result<Response, CertifierError>> {
        let in_parts = (record.len() > PART_BYTES).then(|| (self.writes.clone(), record.clone()));
        let (reply, answer) = oneshot::channel();
        let queued = in_parts.is_none() && self.tx.send((record, reply)).is_ok();
        async move {
            if let Some((writes, record)) = in_parts {
                return certify_in_parts(&writes, &record).await;
            }
            if !queued {
                return Err(CertifierError::OutcomeUnknown(
                    "the proposer has stopped".into(),
                ));
            }
            answer.await.unwrap_or_else(|_| {
                Err(CertifierError::OutcomeUnknown(
                    "the proposer stopped before the answer".into(),
                ))
            })
        }
    }
}

/// Entries proposed and not yet answered, at most.
///
/// One entry is in flight unless a full one is waiting: the
/// certifications that arrive while an entry is being replicated and
/// committed wait for it and then go together. On this 2-core machine
/// the cost of an entry (its AppendEntries on every follower, an
/// fdatasync on each, the raft core's bookkeeping) is what bounds three
/// nodes, and proposing at once whatever arrived (up to four entries in
/// flight, as before) made entries a third as large: `cargo bench --bench
/// certify -- raft/end_to_end_3node`, three runs each, gave 44–47k/s
/// with one entry in flight against 28–32k/s with four (53 against 19
/// certifications per entry). A full entry (`max_batch` records or
/// [`PART_BYTES`]) goes at once, so a bulk load still has entries in
/// flight while earlier ones commit (the leader's appends share its
/// flushes: see `vendor/README.md`). Letting a second entry go once 16
/// or 40 certifications wait did not help either (three alternating runs:
/// 34–42k/s and 40–47k/s against 41–49k/s): a follower has one
/// AppendEntries in flight, so entries proposed meanwhile wait for its
/// flush anyway.
const IN_FLIGHT: usize = 4;

/// Certifications waiting for an entry, in arrival order.
struct Queue {
    waiting: VecDeque<(Bytes, Reply)>,
    bytes: usize,
    max_batch: usize,
}

impl Queue {
    fn push(&mut self, item: (Bytes, Reply)) {
        self.bytes += item.0.len();
        self.waiting.push_back(item);
    }

    /// Enough for an entry of its own: no more would join it.
    fn full(&self) -> bool {
        self.waiting.len() >= self.max_batch || self.bytes >= PART_BYTES
    }

    /// The next entry's certifications, if one may be proposed with
    /// `inflight` entries unanswered. Bounded in bytes as well: one entry
    /// must reach the followers within openraft's AppendEntries timeout
    /// (`parts.rs`). No record joins once 1 MiB is reached, so an entry
    /// stays under 2 MiB (records over 1 MiB go in parts).
    fn next_entry(&mut self, inflight: usize) -> Option<Vec<(Bytes, Reply)>> {
        let may = inflight == 0 || (inflight < IN_FLIGHT && self.full());
        if !may || self.waiting.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut batch = Vec::new();
        while batch.len() < self.max_batch && bytes < PART_BYTES {
            let Some(next) = self.waiting.pop_front() else {
                break;
            };
            bytes += next.0.len();
            batch.push(next);
        }
        self.bytes -= bytes;
        Some(batch)
    }
}

/// One entry's certifications, from proposal to answers.
type InFlight = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

async fn run(writes: Writes, mut rx: mpsc::UnboundedReceiver<(Bytes, Reply)>, max_batch: usize) {
    let mut inflight = FuturesUnordered::<InFlight>::new();
    let mut queue = Queue {
        waiting: VecDeque::new(),
        bytes: 0,
        max_batch,
    };
    let mut open = true;
    loop {
        while let Some(batch) = queue.next_entry(inflight.len()) {
            let (records, replies): (Vec<Bytes>, Vec<Reply>) = batch.into_iter().unzip();
            let writes = writes.clone();
            // Proposed inside the future, which the loop polls with the
            // others: an entry waiting for the gate must not keep those in
            // flight from finishing (a hand-over waits for them).
            inflight.push(match writes.decider().cloned() {
                Some(d) => Box::pin(async move { decided(&d, &writes, records, replies).await }),
                None => Box::pin(async move {
                    let cmd = match <[Bytes; 1]>::try_from(records) {
                        Ok([record]) => Command::Certify { record },
                        Err(records) => Command::CertifyBatch { records },
                    };
                    answer(replies, writes.write(cmd).await)
                }),
            });
        }
        tokio::select! {
            got = rx.recv(), if open => {
                let Some(first) = got else {
                    open = false;
                    continue;
                };
                queue.push(first);
                while let Ok(next) = rx.try_recv() {
                    queue.push(next);
                }
            }
            Some(()) = inflight.next(), if !inflight.is_empty() => {}
            // Closed with nothing in flight: the queue is empty too (it
            // is proposed whenever nothing is in flight).
            else => break,
        }
    }
}

/// Certifies `records` at proposal (`decider.rs`) and hands each its
/// answer: at once for one that needs no entry, else once the entry of
/// the others is applied.
async fn decided(d: &Arc<Decider>, writes: &Writes, records: Vec<Bytes>, replies: Vec<Reply>) {
    let proposals = records.into_iter().map(Proposal::Certify).collect();
    let Proposed { direct, entry } = match d.propose(writes, proposals).await {
        Ok(p) => p,
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(each(&e)));
            }
            return;
        }
    };
    let mut rest = Vec::with_capacity(replies.len());
    for (reply, answer) in replies.into_iter().zip(direct) {
        match answer {
            Some(a) => {
                let _ = reply.send(Ok(a));
            }
            None => rest.push(reply),
        }
    }
    if let Some((term, submitted)) = entry {
        answer(rest, d.answer(term, submitted).await);
    }
}

/// `e`, for one of several certifications that share it.
fn each(e: &CertifierError) -> CertifierError {
    match e {
        CertifierError::NotLeader {
            leader,
            addr,
            outcome_unknown,
        } => CertifierError::NotLeader {
            leader: *leader,
            addr: addr.clone(),
            outcome_unknown: *outcome_unknown,
        },
        CertifierError::Rpc(status) => CertifierError::Rpc(status.clone()),
        e => CertifierError::OutcomeUnknown(e.to_string()),
    }
}

/// Proposes the writeset of `record` in chunks (`chunks.rs`), one after
/// the other under a fresh tag; the last one's answer is the
/// certification's. A failure before the last chunk leaves nothing
/// certified (its chunks expire), so a retry under a new tag is safe.
async fn certify_in_parts(writes: &Writes, record: &Bytes) -> Result<Response, CertifierError> {
    let ws = crate::record::decode(0, record)?;
    propose_pieces(
        writes,
        rand::random(),
        super::chunks::pieces(ws, PART_BYTES),
        true,
    )
    .await
}

/// Proposes `pieces` of writeset `tag` one after the other, the last one
/// marked `last` if `ends` says so; the last one's answer.
pub(crate) async fn propose_pieces(
    writes: &Writes,
    tag: u64,
    pieces: Vec<Bytes>,
    ends: bool,
) -> Result<Response, CertifierError> {
    let n = pieces.len();
    let mut answer = Response::Applied;
    for (i, piece) in pieces.into_iter().enumerate() {
        let last = ends && i + 1 == n;
        let cmd = Command::Chunk { tag, piece, last };
        let written = if last {
            writes.certified_at_apply(cmd).await
        } else {
            writes.write(cmd).await
        };
        let written = written.map_err(|e| {
            let mut e = write_error(&e);
            // Nothing is certified before the last chunk.
            if let CertifierError::NotLeader {
                outcome_unknown, ..
            } = &mut e
            {
                *outcome_unknown &= last;
            }
            e
        })?;
        answer = written.data;
    }
    Ok(answer)
}

/// Hands each certification of an entry its answer.
fn answer(replies: Vec<Reply>, written: Written) {
    match written {
        Ok(r) => match r.data {
            Response::Batch(answers) if answers.len() == replies.len() => {
                for (reply, a) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(a));
                }
            }
            single if replies.len() == 1 => {
                for reply in replies {
                    let _ = reply.send(Ok(single.clone()));
                }
            }
            other => {
                let e = format!("{} certifications answered {other:?}", replies.len());
                for reply in replies {
                    let _ = reply.send(Err(CertifierError::Protocol(e.clone())));
                }
            }
        },
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(write_error(&e)));
            }
        }
    }
}

/// A failed `client_write`: not the leader (nothing was proposed, or —
/// when this node led as it was asked — the entry may have left its log
/// unapplied, truncated by a new leader or purged behind a snapshot that
/// may hold it: the outcome is unknown; a retry of the same transaction
/// id on the leader gets its first answer, if it had one), or a failure
/// after proposing, when the outcome is not known here.
pub(crate) fn write_error(e: &WriteFailed) -> CertifierError {
    match e.error.forward_to_leader() {
        Some(f) => CertifierError::NotLeader {
            leader: f.leader_id,
            addr: f.leader_node.as_ref().map(|n| n.addr.clone()),
            outcome_unknown: e.may_have_led,
        },
        None => CertifierError::OutcomeUnknown(format!("raft: {}", e.error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(records: &[usize], max_batch: usize) -> Queue {
        let mut q = Queue {
            waiting: VecDeque::new(),
            bytes: 0,
            max_batch,
        };
        for len in records {
            q.push((Bytes::from(vec![0u8; *len]), oneshot::channel().0));
        }
        q
    }

    #[test]
    fn a_second_entry_goes_only_when_full() {
        let mut q = queue(&[10, 10, 10], 4);
        assert!(q.next_entry(1).is_none(), "three of four wait");
        assert_eq!(q.next_entry(0).map(|b| b.len()), Some(3));
        assert_eq!(q.bytes, 0);

        let mut q = queue(&[10; 9], 4);
        assert_eq!(q.next_entry(1).map(|b| b.len()), Some(4), "a full entry");
        assert_eq!(q.next_entry(2).map(|b| b.len()), Some(4));
        assert!(q.next_entry(3).is_none(), "one left: not full");
        assert!(q.next_entry(IN_FLIGHT).is_none());
        assert_eq!(q.next_entry(0).map(|b| b.len()), Some(1));
        assert!(q.next_entry(0).is_none(), "empty");
    }

    #[test]
    fn an_entry_stops_at_one_part_of_bytes() {
        let mut q = queue(&[PART_BYTES / 2, PART_BYTES / 2, 1, 1], 256);
        assert!(q.full());
        let first = q.next_entry(1).expect("full by bytes");
        assert_eq!(first.len(), 2);
        assert_eq!(q.bytes, 2);
        assert!(q.next_entry(1).is_none());
        assert_eq!(q.next_entry(0).map(|b| b.len()), Some(2));
    }
}
