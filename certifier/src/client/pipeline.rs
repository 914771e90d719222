//! CertifyPipeline, client half: a handle to a driver task that owns one
//! pipeline stream and matches answers to callers. Requests queue at most
//! `QUEUE` deep before `certify` waits.

use std::collections::HashMap;

use futures::StreamExt;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::Status;

use crate::batch::{batch_bytes, batches};
use crate::error::CertifierError;
use crate::outcome::Outcome;
use crate::proto::certifier_client::CertifierClient as Grpc;
use crate::proto::{PipelineEntry, PipelineRequest, Writeset};

/// Requests a client queues for its pipeline before callers wait.
const QUEUE: usize = 4096;

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
                            let _ = reply.send(crate::outcome::from_answer(a.outcome));
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
