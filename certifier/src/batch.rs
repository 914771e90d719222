//! Batching for the CertifyPipeline stream, both halves: whatever is
//! queued goes out as one message (fewer HTTP/2 frames and wake-ups per
//! transaction). And the unbatched stream of a channel, for the streams
//! that send each item as it comes.

use futures::Stream;
use tokio::sync::mpsc;

/// Most entries (answers) per message.
pub(crate) const BATCH: usize = 512;
/// Most bytes per batch (and never more than the maximum message size
/// minus room for framing; a single entry always fits).
const BATCH_BYTES: usize = 1 << 20;

/// Yields each item queued in `rx`, in order; ends when `rx` closes.
pub(crate) fn received<T: Send + 'static>(rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) })
}

/// Yields what is queued in `rx` at once as one batch: at least one item,
/// then more while the batch stays within `BATCH` items and `max_bytes` (by
/// `weight`, which includes the per-entry framing). Ends when `rx` closes.
pub(crate) fn batches<T: Send + 'static>(
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

/// The batch size for a connection whose messages may be `max_message_bytes`.
pub(crate) fn batch_bytes(max_message_bytes: usize) -> usize {
    BATCH_BYTES
        .min(max_message_bytes.saturating_sub(1024))
        .max(1)
}
