//! The chunks of a Certify stream, kept on disk while a client given
//! several certifier nodes sends them: the leader may change under the
//! call, and then the whole stream goes again to the next leader. Held in
//! memory, a transaction's chunks cost the client as much memory as the
//! transaction's changes; in an unnamed temporary file (deleted when the
//! last handle closes) they cost one chunk at a time. A reader follows the
//! file as it grows, so the first attempt streams the chunks to the
//! leader while they are produced.
//!
//! ```text
//! file := ( u32 length, little-endian   protobuf Writeset ) *
//! ```

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use futures::Stream;
use prost::Message;
use tokio::sync::watch;

use crate::error::CertifierError;
use crate::proto::Writeset;

/// Chunks written one after the other, read back as often as needed, also
/// while more are written.
pub(crate) struct Spill {
    file: Arc<File>,
    written: watch::Sender<Written>,
}

/// How much of a spill is written.
#[derive(Debug, Clone, Copy, Default)]
struct Written {
    /// Bytes.
    len: u64,
    /// No more will come (the last chunk is written, or its writer gave up).
    done: bool,
}

fn io(what: &str, e: std::io::Error) -> CertifierError {
    CertifierError::Io(std::io::Error::new(
        e.kind(),
        format!("{what} the chunks kept to resend: {e}"),
    ))
}

impl Spill {
    /// An empty spill in the temporary directory (`TMPDIR`).
    pub(crate) fn new() -> Result<Spill, CertifierError> {
        let file = tempfile::tempfile().map_err(|e| io("creating a file for", e))?;
        Ok(Spill {
            file: Arc::new(file),
            written: watch::channel(Written::default()).0,
        })
    }

    /// Appends `chunk` (blocking work in a blocking thread); one writer at
    /// a time.
    pub(crate) async fn push(&self, chunk: &Writeset) -> Result<(), CertifierError> {
        let mut buf = Vec::with_capacity(4 + chunk.encoded_len());
        buf.extend_from_slice(&(chunk.encoded_len() as u32).to_le_bytes());
        chunk
            .encode(&mut buf)
            .map_err(|e| CertifierError::Protocol(format!("chunk not encodable: {e}")))?;
        let at = self.written.borrow().len;
        let (file, n) = (self.file.clone(), buf.len() as u64);
        tokio::task::spawn_blocking(move || file.write_all_at(&buf, at))
            .await
            .map_err(|e| io("writing", std::io::Error::other(e)))?
            .map_err(|e| io("writing", e))?;
        let last = chunk.last_chunk;
        self.written.send_modify(|w| {
            w.len += n;
            w.done |= last;
        });
        Ok(())
    }

    /// No more chunks will come.
    pub(crate) fn close(&self) {
        self.written.send_modify(|w| w.done = true);
    }

    /// The chunks from the first, read as they are sent (waiting for the
    /// ones not written yet), and where a read that failed says so. Such a
    /// read ends the stream early, without its last chunk, so the
    /// certifier refuses this attempt; the caller must not take that
    /// refusal for the outcome (an earlier attempt may have committed):
    /// see [`ReadBack::failed`].
    pub(crate) fn replay(&self) -> (impl Stream<Item = Writeset> + Send + 'static, ReadBack) {
        let file = self.file.clone();
        let failed = ReadBack::default();
        let noted = failed.clone();
        let start = (0u64, self.written.subscribe());
        let stream = futures::stream::unfold(start, move |(at, mut written)| {
            let file = file.clone();
            let noted = noted.clone();
            async move {
                loop {
                    let w = *written.borrow_and_update();
                    if at < w.len {
                        break;
                    }
                    if w.done || written.changed().await.is_err() {
                        return None;
                    }
                }
                let read =
                    tokio::task::spawn_blocking(move || -> std::io::Result<(Writeset, u64)> {
                        let mut n = [0u8; 4];
                        file.read_exact_at(&mut n, at)?;
                        let n = u32::from_le_bytes(n);
                        let mut buf = vec![0u8; n as usize];
                        file.read_exact_at(&mut buf, at + 4)?;
                        let chunk = Writeset::decode(&buf[..]).map_err(std::io::Error::other)?;
                        Ok((chunk, at + 4 + u64::from(n)))
                    })
                    .await;
                let e = match read {
                    Ok(Ok((chunk, next))) => return Some((chunk, (next, written))),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                tracing::warn!("reading back the chunks kept to resend: {e}");
                *noted.0.lock() = Some(e);
                None
            }
        });
        (stream, failed)
    }
}

/// Whether reading a [`Spill`] back failed, and why.
#[derive(Clone, Default)]
pub(crate) struct ReadBack(Arc<parking_lot::Mutex<Option<String>>>);

impl ReadBack {
    /// The attempt's result `r` unless the read failed: then the outcome is
    /// not known (this attempt was refused, an earlier one may have
    /// committed).
    pub(crate) fn failed<T>(&self, r: Result<T, CertifierError>) -> Result<T, CertifierError> {
        match self.0.lock().take() {
            Some(e) => Err(CertifierError::OutcomeUnknown(format!(
                "reading back the chunks kept to resend failed: {e}"
            ))),
            None => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn chunks_read_back_as_written_as_often_as_asked() {
        let chunks: Vec<Writeset> = (0..5u8)
            .map(|i| Writeset {
                txn_id: bytes::Bytes::from(vec![i; 1 + i as usize * 1000]),
                last_chunk: i == 4,
                ..Writeset::default()
            })
            .collect();
        let spill = Arc::new(Spill::new().unwrap());
        // A reader that starts before the chunks are written follows them.
        let (early, _) = spill.replay();
        let early = tokio::spawn(early.collect::<Vec<_>>());
        for c in &chunks {
            spill.push(c).await.unwrap();
        }
        assert_eq!(early.await.unwrap(), chunks);
        for _ in 0..2 {
            let (stream, read) = spill.replay();
            let got = read.failed(Ok(stream.collect::<Vec<_>>().await)).unwrap();
            assert_eq!(got, chunks);
        }
        // A read that fails: the attempt's answer is not the outcome.
        spill.file.set_len(10).unwrap();
        let (stream, read) = spill.replay();
        assert!(stream.collect::<Vec<_>>().await.len() < chunks.len());
        let r: Result<(), _> = read.failed(Err(CertifierError::InvalidArgument("refused".into())));
        assert!(matches!(r, Err(CertifierError::OutcomeUnknown(_))), "{r:?}");
    }
}
