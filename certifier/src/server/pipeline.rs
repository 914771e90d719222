//! CertifyPipeline, server half: many certifications multiplexed over one
//! bidirectional stream (see the .proto). Entries carry ids; answers come
//! back in completion order, batched. One HTTP/2 stream per transaction (a
//! unary call) would dominate the certifier's CPU.
//!
//! Memory is bounded: the server stops reading a stream while the
//! writesets it is certifying for that stream exceed `IN_FLIGHT_BYTES`.

use std::pin::Pin;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::service::CertifierService;
use crate::batch::{batch_bytes, BATCH};
use crate::error::CertifierError;
use crate::proto::{pipeline_answer, PipelineAnswer, PipelineRequest, PipelineResponse, Writeset};

/// Bytes of writesets one stream may have in certification at once.
const IN_FLIGHT_BYTES: usize = 64 << 20;

type ResponseStream = Pin<Box<dyn Stream<Item = Result<PipelineResponse, Status>> + Send>>;

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
    Box::pin(crate::batch::received(rx))
}

async fn answer(svc: &CertifierService, ws: Option<Writeset>) -> pipeline_answer::Outcome {
    let max = svc.inner.limits.max_writeset_bytes;
    crate::outcome::to_answer(match ws {
        None => Err(CertifierError::InvalidArgument(
            "pipeline entry without writeset".into(),
        )),
        Some(ws) if ws.encoded_len() as u64 > max => Err(CertifierError::WritesetTooLarge { max }),
        Some(ws) => svc.certify(ws).await,
    })
}
