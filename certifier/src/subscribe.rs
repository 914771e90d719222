//! Subscribe: committed writesets in version order, durable ones only,
//! following new commits. Recent records come from the in-memory tail, older
//! ones from a WAL reader (on a blocking thread). Each record is sent as
//! frames of at most the maximum message size.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

use crate::error::CertifierError;
use crate::proto::SubscribeFrame;
use crate::record;
use crate::service::Inner;
use crate::Version;

/// Records fetched per round (bounds a subscriber's memory together with
/// `MAX_BATCH_BYTES`).
const MAX_BATCH: usize = 256;
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Frames buffered per subscriber before the sender waits for the client.
const CHANNEL_FRAMES: usize = 32;
/// Room for the frame's other fields and gRPC framing.
const FRAME_OVERHEAD: usize = 64;

type FrameStream = Pin<Box<dyn Stream<Item = Result<SubscribeFrame, Status>> + Send + 'static>>;

pub(crate) fn stream(inner: Arc<Inner>, from: Version) -> FrameStream {
    let (tx, rx) = mpsc::channel(CHANNEL_FRAMES);
    tokio::spawn(async move {
        let r = tokio::select! {
            r = run(&inner, from, &tx) => r,
            // The client went away.
            () = tx.closed() => Ok(()),
        };
        if let Err(e) = r {
            let _ = tx.send(Err(e.into())).await;
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

async fn run(
    inner: &Inner,
    from: Version,
    tx: &mpsc::Sender<Result<SubscribeFrame, Status>>,
) -> Result<(), CertifierError> {
    let mut durable_rx = inner.durable.subscribe();
    let frame_max = inner
        .limits
        .max_message_bytes
        .saturating_sub(FRAME_OVERHEAD)
        .max(1);
    let mut next = from;
    loop {
        let durable = *durable_rx.borrow_and_update();
        if next > durable {
            // Nothing will become durable any more: say why.
            inner.poisoned()?;
            if inner.stopping() || durable_rx.changed().await.is_err() {
                return Ok(());
            }
            continue;
        }
        let mut batch = inner.tail.lock().get(next, durable, MAX_BATCH);
        if batch.is_empty() {
            batch = read_wal(inner, next, durable).await?;
        }
        for (version, rec) in batch {
            if version != next {
                return Err(CertifierError::CorruptRecord {
                    version,
                    reason: format!("expected version {next}"),
                });
            }
            send_record(tx, version, record::body(version, &rec)?, frame_max).await?;
            next += 1;
        }
    }
}

async fn read_wal(
    inner: &Inner,
    from: Version,
    to: Version,
) -> Result<Vec<(Version, Bytes)>, CertifierError> {
    let wal = inner.wal.clone();
    tokio::task::spawn_blocking(move || -> Result<_, CertifierError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        // A purge may overtake a slow subscriber: say so, like Subscribe.
        let purged = |e: tashkent_wal::WalError| match e {
            tashkent_wal::WalError::Purged { lsn, first } => {
                CertifierError::Purged { from: lsn, first }
            }
            e => e.into(),
        };
        for r in wal.read_from(from).map_err(purged)? {
            let (lsn, rec) = r.map_err(purged)?;
            if lsn > to {
                break;
            }
            bytes += rec.len();
            out.push((lsn, rec));
            if out.len() >= MAX_BATCH || bytes >= MAX_BATCH_BYTES {
                break;
            }
        }
        if out.is_empty() {
            return Err(CertifierError::CorruptRecord {
                version: from,
                reason: "durable version not readable from the WAL".into(),
            });
        }
        Ok(out)
    })
    .await
    .map_err(|e| CertifierError::Io(std::io::Error::other(e)))?
}

async fn send_record(
    tx: &mpsc::Sender<Result<SubscribeFrame, Status>>,
    version: Version,
    body: Bytes,
    frame_max: usize,
) -> Result<(), CertifierError> {
    let mut rest = body;
    loop {
        let data = rest.split_to(rest.len().min(frame_max));
        let last = rest.is_empty();
        let frame = SubscribeFrame {
            version,
            data,
            last,
        };
        if tx.send(Ok(frame)).await.is_err() {
            // Client gone: the select in `stream` ends the task.
            return Ok(());
        }
        if last {
            return Ok(());
        }
    }
}
