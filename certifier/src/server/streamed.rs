//! A Certify stream of several chunks: reading and checking its chunks
//! (on a raft node too, `chunked.rs`), and on the single certifier
//! spooling them as they arrive (`spool`), so that only the writeset's
//! conflict keys stay in memory, then deciding it like any other.

use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message as _;
use tonic::Streaming;

use super::service::CertifierService;
use crate::error::CertifierError;
use crate::outcome::Outcome;
use crate::proto::Writeset;
use crate::rule::{ConflictSet, PartNames};
use crate::turns::Turn;
use crate::{record, writeset};

/// How long a Certify stream may wait for its client's next chunk. A
/// client that went silent (a partitioned link closes nothing; TCP gives
/// up only after about a quarter of an hour) would otherwise hold the
/// stream, and with it the leader's permit for streamed writesets, which
/// every other large writeset waits for. The client has its writeset at
/// hand when it streams it, so a live one is never this slow.
pub(crate) const CHUNK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Chunks of one Certify call in the spool's queue at most.
const SPOOL_IN_FLIGHT: usize = 2;

impl CertifierService {
    /// Certifies a writeset that arrives in chunks (`first`, then the rest
    /// of `rest` up to the chunk marked last): each chunk is spooled as it
    /// arrives (see `spool`), and only its conflict keys stay in memory.
    pub(crate) async fn certify_spooled(
        &self,
        first: Writeset,
        rest: &mut Streaming<Writeset>,
    ) -> Result<Outcome, CertifierError> {
        let inner = &*self.inner;
        inner.poisoned()?;
        let header = writeset::header_of(&first);
        writeset::validate_header(&header)?;
        // Unique among the calls in progress, which is all it must be: a
        // call's records are the ones after its first with its tag.
        static TAGS: AtomicU64 = AtomicU64::new(1);
        let tag = TAGS.fetch_add(1, Ordering::Relaxed);
        let spooled = self.spool_chunks(first, rest, tag).await;
        let (cs, names, spool) = match spooled {
            Ok(s) => s,
            Err(e) => {
                inner.spool.finished(tag, None);
                return Err(e);
            }
        };
        let rec = record::encode_spooled(&Writeset {
            spool: Some(spool),
            ..header.clone()
        });
        let turn = Turn::from(&header);
        let decided = self
            .decide(&header.txn_id, header.snapshot, turn, &cs, &names, rec)
            .await;
        match &decided {
            Ok((Outcome::Committed { version }, true)) => {
                inner.spool.finished(tag, Some((*version, spool.first)))
            }
            _ => inner.spool.finished(tag, None),
        }
        decided.map(|(o, _)| o)
    }

    /// The next chunk of a Certify stream, unless the server stops first
    /// or it does not come within [`CHUNK_PATIENCE`]: a stream whose
    /// client is slow must not hold a shutdown up, nor one whose client
    /// went silent (a partition) the leader's stream permit, and nothing
    /// of it is certified before its last chunk, so the client is told to
    /// retry (elsewhere, when it knows other nodes).
    pub(crate) async fn next_chunk(
        &self,
        chunks: &mut Streaming<Writeset>,
    ) -> Result<Writeset, CertifierError> {
        let mut stop = self.inner.stop_signal.subscribe();
        let next = tokio::select! {
            next = tokio::time::timeout(CHUNK_PATIENCE, chunks.message()) => match next {
                Ok(next) => next?,
                Err(_) => {
                    return Err(CertifierError::Rpc(tonic::Status::unavailable(format!(
                        "no chunk of this Certify stream came for {} s: nothing of it was \
                         certified; retry",
                        CHUNK_PATIENCE.as_secs()
                    ))))
                }
            },
            _ = stop.wait_for(|stopped| *stopped) => {
                return Err(CertifierError::Rpc(tonic::Status::unavailable(
                    "the certifier is shutting down: nothing of this Certify stream was \
                     certified; retry",
                )));
            }
        };
        next.ok_or_else(|| {
            CertifierError::InvalidArgument(
                "Certify stream ended without a chunk marked last_chunk: not certified".into(),
            )
        })
    }

    /// The next chunk of a Certify stream whose first chunk is `first`
    /// (`pending`: the first itself until it is taken), checked: its header
    /// agrees with the first's, its items and statements are valid, and the
    /// stream (`bytes` so far) stays within `max_writeset_bytes`.
    pub(crate) async fn next_checked_chunk(
        &self,
        first: &Writeset,
        pending: &mut Option<Writeset>,
        rest: &mut Streaming<Writeset>,
        bytes: &mut u64,
    ) -> Result<Writeset, CertifierError> {
        let chunk = match pending.take() {
            Some(c) => c,
            None => self.next_chunk(rest).await?,
        };
        writeset::check_later_chunk(first, &chunk)?;
        *bytes = bytes.saturating_add(chunk.encoded_len() as u64);
        let max = self.inner.limits.max_writeset_bytes;
        if *bytes > max {
            return Err(CertifierError::WritesetTooLarge { max });
        }
        writeset::validate_part(&chunk)?;
        Ok(chunk)
    }

    /// Spools the chunks of one Certify call; returns their conflict keys,
    /// names, and where they are once durable.
    async fn spool_chunks(
        &self,
        first: Writeset,
        rest: &mut Streaming<Writeset>,
        tag: u64,
    ) -> Result<(ConflictSet, PartNames, crate::proto::SpoolRef), CertifierError> {
        let inner = &*self.inner;
        let mut cs = ConflictSet::default();
        let mut names = PartNames::default();
        let mut spool = crate::proto::SpoolRef {
            tag,
            ..Default::default()
        };
        let (mut items, mut ddls, mut bytes) = (0usize, 0usize, 0u64);
        // Only the header is kept for the stream's life: `first` and its
        // rows go to the spool like every other chunk.
        let header = writeset::header_of(&first);
        let mut next = Some(first);
        // Chunks handed to the spool and not yet written: bounded, so a
        // client faster than the disk waits (HTTP/2 flow control) instead
        // of filling the spool's queue.
        let mut unwritten: std::collections::VecDeque<tashkent_wal::AppendTicket> =
            Default::default();
        let ticket = loop {
            let mut chunk = self
                .next_checked_chunk(&header, &mut next, rest, &mut bytes)
                .await?;
            for d in &mut chunk.ddl {
                d.before_item += items as u64;
            }
            cs.add(&chunk.items, &chunk.ddl, items, ddls);
            names.add(&chunk.items, &chunk.ddl, items);
            let mut parts = Vec::with_capacity(chunk.encoded_len());
            writeset::encode_parts(&chunk.items, &chunk.ddl, items as u64, &mut parts);
            while unwritten.len() >= SPOOL_IN_FLIGHT {
                if let Some(t) = unwritten.pop_front() {
                    self.spooled(t).await?;
                }
            }
            let t = inner
                .spool
                .append(&mut spool, &parts)
                .map_err(|e| self.spool_failed(e))?;
            items += chunk.items.len();
            ddls += chunk.ddl.len();
            if chunk.last_chunk {
                break t;
            }
            unwritten.push_back(t);
        };
        if items == 0 && ddls == 0 {
            return Err(CertifierError::InvalidArgument(
                "empty writeset: read-only transactions are not certified".into(),
            ));
        }
        self.spooled(ticket).await?;
        Ok((cs, names, spool))
    }

    /// Waits until a chunk is in the spool, or the certifier's logs
    /// failed (the transaction's own record was not submitted: it is not
    /// committed).
    async fn spooled(&self, ticket: tashkent_wal::AppendTicket) -> Result<(), CertifierError> {
        match self.inner.unless_failed(ticket).await {
            Some(r) => r.map(drop).map_err(|e| self.spool_failed(e.into())),
            None => Err(self.refused_after_a_log_failure()),
        }
    }

    /// A spool failure loses durability like a WAL failure: poison. The
    /// transaction's own record was not submitted yet: it is not committed.
    fn spool_failed(&self, e: CertifierError) -> CertifierError {
        match e {
            CertifierError::Wal(w) => {
                self.inner.fail_log("spool", &w);
                self.refused_after_a_log_failure()
            }
            e => e,
        }
    }

    /// What a writeset whose record was not submitted is answered once a
    /// log failed: not committed.
    fn refused_after_a_log_failure(&self) -> CertifierError {
        self.inner
            .poisoned()
            .err()
            .unwrap_or(CertifierError::Protocol(
                "a log failed, and no failure is recorded".into(),
            ))
    }
}
