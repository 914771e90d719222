//! Subscribe: committed writesets in version order, durable ones only,
//! following new commits. Recent records come from the in-memory tail, older
//! ones from a WAL reader (on a blocking thread). Each record is sent as
//! frames of at most the maximum message size.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use prost::Message;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use super::contact::STREAM_GRACE;
use super::service::Inner;
use crate::error::CertifierError;
use crate::proto::SubscribeFrame;
use crate::record;
use crate::Version;

/// Records fetched per round (bounds a subscriber's memory together with
/// `MAX_BATCH_BYTES`).
const MAX_BATCH: usize = 256;
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Frames buffered per subscriber before the sender waits for the client.
const CHANNEL_FRAMES: usize = 256;
/// Bytes of frames buffered per subscriber before the sender waits: what
/// one subscriber holds in the certifier's memory, besides its batch.
const CHANNEL_BYTES: usize = 4 << 20;
/// Largest frame.
const FRAME_BYTES: usize = 1 << 20;
/// Room for the frame's other fields and gRPC framing.
const FRAME_OVERHEAD: usize = 64;

type FrameStream = Pin<Box<dyn Stream<Item = Result<SubscribeFrame, Status>> + Send + 'static>>;

/// The frames on their way to one subscriber, bounded by count and bytes
/// (a frame's share of the byte budget is returned when gRPC takes it).
struct Outbox {
    tx: mpsc::Sender<(Result<SubscribeFrame, Status>, Option<OwnedSemaphorePermit>)>,
    bytes: Arc<Semaphore>,
}

impl Outbox {
    /// False when the subscriber is gone.
    async fn send(&self, frame: Result<SubscribeFrame, Status>) -> bool {
        let len = frame
            .as_ref()
            .map_or(0, |f| f.data.len())
            .clamp(1, CHANNEL_BYTES);
        let Ok(permit) = self.bytes.clone().acquire_many_owned(len as u32).await else {
            return false;
        };
        self.tx.send((frame, Some(permit))).await.is_ok()
    }
}

/// Which records a subscriber wants as their header only (its own
/// transactions, whose changes it holds): see `SubscribeRequest`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Elide {
    pub txn_prefix: Bytes,
    pub from: Version,
}

impl Elide {
    /// The header's length when `body` (of `version`) is to be elided.
    fn header_len(&self, version: Version, body: &[u8]) -> Option<usize> {
        if self.txn_prefix.is_empty() || version < self.from {
            return None;
        }
        let (len, txn_id) = crate::writeset::header_prefix(body)?;
        txn_id.starts_with(&self.txn_prefix).then_some(len)
    }
}

pub(crate) fn stream(inner: Arc<Inner>, from: Version, elide: Elide) -> FrameStream {
    let (tx, rx) = mpsc::channel(CHANNEL_FRAMES);
    let out = Outbox {
        tx,
        bytes: Arc::new(Semaphore::new(CHANNEL_BYTES)),
    };
    tokio::spawn(async move {
        let _counted = tashkent_metrics::GaugeGuard::new(&inner.metrics.subscribers);
        let r = tokio::select! {
            r = run(&inner, from, &elide, &out) => r,
            // The client went away.
            () = out.tx.closed() => Ok(()),
            // A raft node cut off from its group gets no new versions: the
            // subscriber should find one that does (see `contact`).
            lost = async {
                match &inner.node {
                    Some(n) => (n, n.contact.lost_for(STREAM_GRACE).await),
                    None => std::future::pending().await,
                }
            } => Err(lost.0.streams_refused(lost.1.why)),
        };
        if let Err(e) = r {
            let _ = out.send(Err(e.into())).await;
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|(frame, _permit)| (frame, rx))
    }))
}

async fn run(
    inner: &Inner,
    from: Version,
    elide: &Elide,
    tx: &Outbox,
) -> Result<(), CertifierError> {
    let mut durable_rx = inner.durable.subscribe();
    let frame_max = inner
        .limits
        .max_message_bytes
        .saturating_sub(FRAME_OVERHEAD)
        .clamp(1, FRAME_BYTES);
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
            // On a raft node `durable` runs ahead of this log's fdatasync
            // (see `raft::versions`): what the tail lacks is read once written.
            if next > inner.wal.durable_lsn() {
                inner.wal.wait_durable(next).await?;
            }
            let written = durable.min(inner.wal.durable_lsn());
            batch = read_wal(inner, next, written).await?;
        }
        for (version, rec) in batch {
            if version != next {
                return Err(CertifierError::CorruptRecord {
                    version,
                    reason: format!("expected version {next}"),
                });
            }
            let body = record::body(version, &rec)?;
            if record::is_spooled(&rec) {
                send_spooled(inner, tx, version, body, frame_max).await?;
            } else if let Some(len) = elide
                .header_len(version, &body)
                .filter(|_| body.len() <= frame_max)
            {
                let frame = SubscribeFrame {
                    version,
                    // A copy: the outbox counts a frame by its length,
                    // and a slice would hold the whole record.
                    data: Bytes::copy_from_slice(&body[..len]),
                    last: true,
                    elided: true,
                };
                if !tx.send(Ok(frame)).await {
                    return Ok(());
                }
            } else {
                send_record(tx, version, body, frame_max, true).await?;
            }
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

/// Streams a spooled version: its header, then its chunks from the spool
/// log (read on a blocking thread, one at a time).
async fn send_spooled(
    inner: &Inner,
    tx: &Outbox,
    version: Version,
    body: Bytes,
    frame_max: usize,
) -> Result<(), CertifierError> {
    let ws = crate::proto::Writeset::decode(body).map_err(|e| CertifierError::CorruptRecord {
        version,
        reason: format!("undecodable spooled record: {e}"),
    })?;
    let Some(spool) = ws.spool else {
        return Err(CertifierError::CorruptRecord {
            version,
            reason: "spooled record without its spool reference".into(),
        });
    };
    let header = crate::proto::Writeset {
        format_version: ws.format_version,
        txn_id: ws.txn_id,
        origin: ws.origin,
        snapshot: ws.snapshot,
        ..Default::default()
    };
    send_record(tx, version, header.encode_to_vec().into(), frame_max, false).await?;
    let (chunk_tx, mut chunks) = mpsc::channel::<Result<Bytes, CertifierError>>(1);
    let s = inner.spool.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let chunks = match s.chunks(&spool) {
            Ok(c) => c,
            Err(e) => {
                let _ = chunk_tx.blocking_send(Err(e));
                return;
            }
        };
        for c in chunks {
            if chunk_tx.blocking_send(c).is_err() {
                return;
            }
        }
    });
    let mut sent = 0u64;
    // One chunk behind: the last one's last frame completes the version.
    let mut pending: Option<Bytes> = None;
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk.map_err(|e| match e {
            CertifierError::CorruptRecord { reason, .. } => {
                CertifierError::CorruptRecord { version, reason }
            }
            e => e,
        })?;
        sent += chunk.len() as u64;
        if let Some(p) = pending.replace(chunk) {
            send_record(tx, version, p, frame_max, false).await?;
        }
    }
    send_record(tx, version, pending.unwrap_or_default(), frame_max, true).await?;
    let _ = reader.await;
    if sent != spool.bytes {
        return Err(CertifierError::CorruptRecord {
            version,
            reason: format!("{sent} bytes spooled where {} were certified", spool.bytes),
        });
    }
    Ok(())
}

/// Sends `body` as frames of at most `frame_max` bytes; the last one
/// completes the version if `ends`.
async fn send_record(
    tx: &Outbox,
    version: Version,
    body: Bytes,
    frame_max: usize,
    ends: bool,
) -> Result<(), CertifierError> {
    let mut rest = body;
    loop {
        let data = rest.split_to(rest.len().min(frame_max));
        let last = rest.is_empty() && ends;
        let frame = SubscribeFrame {
            version,
            data,
            last,
            elided: false,
        };
        if !tx.send(Ok(frame)).await {
            // Client gone: the select in `stream` ends the task.
            return Ok(());
        }
        if rest.is_empty() {
            return Ok(());
        }
    }
}
