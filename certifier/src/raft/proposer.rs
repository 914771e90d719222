//! Batching at the proposer: group commit one level above the log.
//!
//! openraft 0.9 writes one entry per `client_write`, and each entry costs
//! the core, the replication and the state machine a round of their own.
//! A [`Proposer`] keeps a few entries in flight and gathers the
//! certifications that arrive meanwhile into the next one
//! (`Command::CertifyBatch`): under load, many certifications share an
//! entry, its replication and its fdatasync, and each still gets its own
//! answer. A lone certification is sent at once.

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot};

use super::parts::PART_BYTES;
use super::types::{Command, NodeId, Raft, Response};
use crate::error::CertifierError;

type Reply = oneshot::Sender<Result<Response, CertifierError>>;

/// Proposes certifications through a raft node, batched. Cheap to clone;
/// the batching task ends when the last clone is dropped.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<(Bytes, Reply)>,
    raft: Raft,
}

impl Proposer {
    /// Proposes through `raft` (which must be the leader to succeed), at
    /// most `max_batch` certifications per entry.
    pub fn new(raft: Raft, max_batch: usize) -> Proposer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft.clone(), rx, max_batch.max(1)));
        Proposer { tx, raft }
    }

    /// Certifies `record` (a certifier record, version 0): the answer of
    /// applying it, once committed. Queued at once, so calls made before
    /// the batching task runs share an entry. A record over
    /// [`PART_BYTES`] is proposed in parts instead (`parts.rs`).
    pub fn certify(
        &self,
        record: Bytes,
    ) -> impl std::future::Future<Output = Result<Response, CertifierError>> {
        let in_parts = (record.len() > PART_BYTES).then(|| (self.raft.clone(), record.clone()));
        let (reply, answer) = oneshot::channel();
        let queued = in_parts.is_none() && self.tx.send((record, reply)).is_ok();
        async move {
            if let Some((raft, record)) = in_parts {
                return certify_in_parts(&raft, &record).await;
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

/// Entries proposed and not yet answered, at most. More than one lets
/// the leader append and replicate an entry while the one before is
/// being committed and applied (openraft sends whatever accumulated in
/// one AppendEntries, and the leader's appends share its flushes: see
/// `vendor/README.md`); a few suffice.
const IN_FLIGHT: usize = 4;

type Written = Result<
    openraft::raft::ClientWriteResponse<super::types::TypeConfig>,
    RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>,
>;

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<(Bytes, Reply)>, max_batch: usize) {
    let mut inflight = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            first = rx.recv(), if open && inflight.len() < IN_FLIGHT => {
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                // Also bounded in bytes: one entry must reach the
                // followers within openraft's AppendEntries timeout
                // (`parts.rs`). No record joins once 1 MiB is reached, so
                // an entry stays under 2 MiB (records over 1 MiB go in
                // parts).
                let mut bytes = first.0.len();
                let mut batch = vec![first];
                while batch.len() < max_batch && bytes < PART_BYTES {
                    match rx.try_recv() {
                        Ok(next) => {
                            bytes += next.0.len();
                            batch.push(next);
                        }
                        Err(_) => break,
                    }
                }
                let (records, replies): (Vec<Bytes>, Vec<Reply>) = batch.into_iter().unzip();
                let cmd = match <[Bytes; 1]>::try_from(records) {
                    Ok([record]) => Command::Certify { record },
                    Err(records) => Command::CertifyBatch { records },
                };
                let raft = raft.clone();
                inflight.push(async move { (replies, raft.client_write(cmd).await) });
            }
            Some((replies, written)) = inflight.next(), if !inflight.is_empty() => {
                answer(replies, written);
            }
            else => break,
        }
    }
}

/// Proposes `record`'s pieces one after the other under a fresh tag; the
/// last one's answer is the certification's. A failure before the last
/// piece leaves nothing certified (its pieces expire), so a retry under a
/// new tag is safe.
async fn certify_in_parts(raft: &Raft, record: &Bytes) -> Result<Response, CertifierError> {
    let tag: u64 = rand::random();
    let pieces = super::parts::split(record);
    let n = pieces.len();
    let mut answer = Response::Applied;
    for (i, piece) in pieces.into_iter().enumerate() {
        let last = i + 1 == n;
        let written = raft
            .client_write(Command::Part { tag, piece, last })
            .await
            .map_err(|e| write_error(&e))?;
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

/// A failed `client_write`: not the leader (nothing was proposed), or a
/// failure after proposing, when the outcome is not known here.
pub(crate) fn write_error(
    e: &RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>,
) -> CertifierError {
    match e.forward_to_leader() {
        Some(f) => CertifierError::NotLeader {
            leader: f.leader_id,
            addr: f.leader_node.as_ref().map(|n| n.addr.clone()),
        },
        None => CertifierError::OutcomeUnknown(format!("raft: {e}")),
    }
}
