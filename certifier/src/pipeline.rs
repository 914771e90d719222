//! CertifyPipeline: many certifications multiplexed over one bidirectional
//! stream, both halves. Entries carry ids; answers come back in completion
//! order. Both sides batch whatever is queued into one message. The point is
//! throughput: one HTTP/2 stream per transaction (what a unary or
//! client-streaming call costs) would dominate the certifier's CPU.
//!
//! Memory is bounded on both sides: the server stops reading a stream while
//! the writesets it is certifying for that stream exceed `IN_FLIGHT_BYTES`;
//! the client queues at most `QUEUE` requests before `certify` waits, and a
//! batch holds at most `BATCH` entries / about `BATCH_BYTES`.

use std::collections::HashMap;
use std::pin::Pin;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::error::CertifierError;
use crate::proto::certifier_client::CertifierClient as Grpc;
use crate::proto::{
    pipeline_answer, PipelineAnswer, PipelineEntry, PipelineRequest, PipelineResponse,
    RequestError, Writeset,
};
use crate::service::{CertifierService, Outcome};

/// Bytes of writesets one stream may have in certification at once.
const IN_FLIGHT_BYTES: usize = 64 << 20;
/// Requests a client queues for its pipeline before callers wait.
const QUEUE: usize = 4096;
/// Most entries (answers) per message.
const BATCH: usize = 512;
/// Most bytes per batch (and never more than the maximum message size
/// minus room for framing; a single entry always fits, see `client`).
const BATCH_BYTES: usize = 1 << 20;

type ResponseStream = Pin<Box<dyn Stream<Item = Result<PipelineResponse, Status>> + Send>>;

/// Yields what is queued in `rx` at once as one batch: at least one item,
/// then more while the batch stays within `BATCH` items and `max_bytes` (by
/// `weight`, which includes the per-entry framing). Ends when `rx` closes.
fn batches<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
    max_bytes: usize,
    weight: fn(&T) -> usize,
) -> impl Stream<Item = Vec<T>> + Send {
    futures::stream::unfold((rx, None), move |(mut rx, carry)| async move {
        let first = match carry {
            Some(t) => t,
            None => rx.recv().await?,
        };
        let mut bytes = weight(&first);
        let mut batch = vec![first];
        let mut carry = None;
        while batch.len() < BATCH {
            let Ok(t) = rx.try_recv() else { break };
            let w = weight(&t);
            if bytes + w > max_bytes {
                carry = Some(t);
                break;
            }
            bytes += w;
            batch.push(t);
        }
        Some((batch, (rx, carry)))
    })
}

/// Largest batch for a given maximum message size.
fn batch_bytes(max_message_bytes: usize) -> usize {
    BATCH_BYTES
        .min(max_message_bytes.saturating_sub(1024))
        .max(1)
}

/// Server half: certifies the entries of a stream concurrently (so they
/// share group commits) inside one task, and sends whatever answers are
/// ready together: one wake-up and one message per group commit rather than
/// per transaction.
pub(crate) fn serve(
    svc: CertifierService,
    mut inbound: Streaming<PipelineRequest>,
) -> ResponseStream {
    let (tx, rx) = mpsc::channel::<Result<PipelineResponse, Status>>(64);
    let mut stop = svc.inner.stop_signal.subscribe();
    let max_bytes = batch_bytes(svc.inner.limits.max_message_bytes);
    tokio::spawn(async move {
        let mut inflight = FuturesUnordered::new();
        let mut inflight_bytes = 0usize;
        let mut reading = true;
        loop {
            tokio::select! {
                msg = inbound.message(), if reading && inflight_bytes < IN_FLIGHT_BYTES => {
                    match msg {
                        Ok(Some(req)) => {
                            for entry in req.entries {
                                let size = entry.encoded_len();
                                inflight_bytes += size;
                                let svc = svc.clone();
                                inflight.push(async move {
                                    let outcome = answer(&svc, entry.writeset).await;
                                    let a = PipelineAnswer {
                                        request_id: entry.request_id,
                                        outcome: Some(outcome),
                                    };
                                    (a, size)
                                });
                            }
                        }
                        // The client closed its half: finish what is in flight.
                        Ok(None) => reading = false,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                }
                Some((first, size)) = inflight.next(), if !inflight.is_empty() => {
                    inflight_bytes -= size;
                    let mut bytes = first.encoded_len();
                    let mut answers = vec![first];
                    // Everything else already answered goes in the same message.
                    while answers.len() < BATCH && bytes < max_bytes {
                        match inflight.next().now_or_never() {
                            Some(Some((a, size))) => {
                                inflight_bytes -= size;
                                bytes += a.encoded_len() + 8;
                                answers.push(a);
                            }
                            _ => break,
                        }
                    }
                    if tx.send(Ok(PipelineResponse { answers })).await.is_err() {
                        return;
                    }
                }
                // Shutting down: stop reading; answers in flight still go
                // out, then the stream ends (the client sees Unavailable for
                // anything it sends after this and retries).
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) }, if reading => reading = false,
            }
            if !reading && inflight.is_empty() {
                return;
            }
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|r| (r, rx))
    }))
}

async fn answer(svc: &CertifierService, ws: Option<Writeset>) -> pipeline_answer::Outcome {
    use pipeline_answer::Outcome as O;
    let max = svc.inner.limits.max_writeset_bytes;
    let r = match ws {
        None => Err(CertifierError::InvalidArgument(
            "pipeline entry without writeset".into(),
        )),
        Some(ws) if ws.encoded_len() as u64 > max => Err(CertifierError::WritesetTooLarge { max }),
        Some(ws) => svc.certify(ws).await,
    };
    match r {
        Ok(Outcome::Committed { version }) => O::Committed(crate::proto::Committed { version }),
        Ok(Outcome::Aborted { code, reason }) => O::Aborted(crate::proto::Aborted {
            code: code as i32,
            reason,
        }),
        Err(e) => {
            let s = Status::from(e);
            O::Error(RequestError {
                code: s.code() as i32,
                message: s.message().to_owned(),
            })
        }
    }
}

type Reply = oneshot::Sender<Result<Outcome, CertifierError>>;

/// Client half: a handle to a driver task that owns one pipeline stream.
/// When the stream breaks, every request in flight on it fails (outcome
/// unknown: retry with the same writeset) and the next call opens a new one.
pub(crate) struct PipelineClient {
    grpc: Grpc<Channel>,
    max_message_bytes: usize,
    tx: parking_lot::Mutex<Option<mpsc::Sender<(Writeset, Reply)>>>,
}

impl PipelineClient {
    pub(crate) fn new(grpc: Grpc<Channel>, max_message_bytes: usize) -> PipelineClient {
        PipelineClient {
            grpc,
            max_message_bytes,
            tx: parking_lot::Mutex::new(None),
        }
    }

    fn sender(&self) -> mpsc::Sender<(Writeset, Reply)> {
        let mut slot = self.tx.lock();
        match &*slot {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(drive(self.grpc.clone(), rx, self.max_message_bytes));
                *slot = Some(tx.clone());
                tx
            }
        }
    }

    pub(crate) async fn certify(&self, ws: Writeset) -> Result<Outcome, CertifierError> {
        let (reply, answer) = oneshot::channel();
        let mut item = (ws, reply);
        // The driver may have died between `sender()` and `send`: one more
        // try on a fresh stream.
        for _ in 0..2 {
            match self.sender().send(item).await {
                Ok(()) => {
                    return answer.await.unwrap_or_else(|_| {
                        Err(CertifierError::Rpc(Status::unavailable(
                            "certify pipeline closed; outcome unknown",
                        )))
                    })
                }
                Err(mpsc::error::SendError(back)) => item = back,
            }
        }
        Err(CertifierError::Rpc(Status::unavailable(
            "cannot open a certify pipeline",
        )))
    }
}

fn unknown(pending: &mut HashMap<u64, Reply>, why: &Status) {
    for (_, reply) in pending.drain() {
        let _ = reply.send(Err(CertifierError::Rpc(Status::new(
            why.code(),
            format!(
                "certify pipeline broken, outcome unknown: {}",
                why.message()
            ),
        ))));
    }
}

/// Owns one pipeline stream: batches queued requests into messages, matches
/// answers to callers.
async fn drive(
    mut grpc: Grpc<Channel>,
    mut requests: mpsc::Receiver<(Writeset, Reply)>,
    max_message_bytes: usize,
) {
    let (out_tx, out_rx) = mpsc::channel::<PipelineEntry>(QUEUE);
    let mut pending: HashMap<u64, Reply> = HashMap::new();
    let mut next_id = 0u64;
    let weight: fn(&PipelineEntry) -> usize = |e| e.encoded_len() + 8;
    let outbound = batches(out_rx, batch_bytes(max_message_bytes), weight)
        .map(|entries| PipelineRequest { entries });
    let mut inbound = match grpc.certify_pipeline(outbound).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            requests.close();
            while let Some((_, reply)) = requests.recv().await {
                let _ = reply.send(Err(CertifierError::Rpc(status.clone())));
            }
            return;
        }
    };
    let mut out_tx = Some(out_tx);
    loop {
        tokio::select! {
            req = requests.recv(), if out_tx.is_some() => match req {
                Some((ws, reply)) => {
                    next_id += 1;
                    pending.insert(next_id, reply);
                    let entry = PipelineEntry { request_id: next_id, writeset: Some(ws) };
                    let sent = match &out_tx {
                        Some(tx) => tx.send(entry).await.is_ok(),
                        None => false,
                    };
                    if !sent {
                        unknown(&mut pending, &Status::unavailable("request stream closed"));
                        break;
                    }
                }
                // Every client handle is gone: finish what is in flight.
                None => {
                    out_tx = None;
                    if pending.is_empty() {
                        break;
                    }
                }
            },
            msg = inbound.next() => match msg {
                Some(Ok(resp)) => {
                    for a in resp.answers {
                        if let Some(reply) = pending.remove(&a.request_id) {
                            let _ = reply.send(outcome(a.outcome));
                        }
                    }
                    if out_tx.is_none() && pending.is_empty() {
                        break;
                    }
                }
                Some(Err(status)) => {
                    unknown(&mut pending, &status);
                    break;
                }
                None => {
                    unknown(&mut pending, &Status::unavailable("certifier ended the stream"));
                    break;
                }
            },
        }
    }
    // Requests queued behind a broken stream: the caller sees Unavailable
    // and retries (on a new stream).
    requests.close();
    while let Ok((_, reply)) = requests.try_recv() {
        let _ = reply.send(Err(CertifierError::Rpc(Status::unavailable(
            "certify pipeline broken before the request was sent",
        ))));
    }
}

fn outcome(o: Option<pipeline_answer::Outcome>) -> Result<Outcome, CertifierError> {
    use pipeline_answer::Outcome as O;
    match o {
        Some(O::Committed(c)) => Ok(Outcome::Committed { version: c.version }),
        Some(O::Aborted(a)) => Ok(Outcome::Aborted {
            code: crate::proto::AbortCode::try_from(a.code)
                .unwrap_or(crate::proto::AbortCode::Unspecified),
            reason: a.reason,
        }),
        Some(O::Error(e)) => Err(CertifierError::Rpc(Status::new(
            tonic::Code::from_i32(e.code),
            e.message,
        ))),
        None => Err(CertifierError::Protocol(
            "pipeline answer without outcome".into(),
        )),
    }
}
