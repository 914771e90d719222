//! A Certify stream of several chunks on a raft node: each chunk goes to
//! the group as it arrives, cut into `Command::Chunk` entries
//! (`raft::chunks`), and the last one certifies the writeset. Neither
//! this node nor any other holds the writeset's rows in memory: each node
//! spools them as it applies the chunks.

use tonic::Streaming;

use super::service::CertifierService;
use crate::error::CertifierError;
use crate::outcome::Outcome;
use crate::proto::Writeset;
use crate::raft::chunks;
use crate::raft::parts::PART_BYTES;
use crate::turns::Turn;
use crate::writeset;

impl CertifierService {
    /// Certifies the writeset of a Certify stream (`first`, then the rest
    /// of `rest` up to the chunk marked last) through raft, chunk by
    /// chunk. It takes no part in fair turns (as a writeset over one entry
    /// does not), but its end ends its session's turn.
    pub(crate) async fn certify_in_chunks(
        &self,
        first: Writeset,
        rest: &mut Streaming<Writeset>,
    ) -> Result<Outcome, CertifierError> {
        let inner = &*self.inner;
        inner.poisoned()?;
        let node = self.node().ok_or_else(|| {
            CertifierError::Protocol("certifying in chunks through raft needs a raft node".into())
        })?;
        writeset::validate_header(&first)?;
        let _stream_permit = node.stream_permit().await?;
        let turn = Turn::from(&first);
        let tag: u64 = rand::random();
        let (mut bytes, mut any) = (0u64, false);
        // Only the header is kept for the stream's life (see `header_of`).
        let header = writeset::header_of(&first);
        let mut next = Some(first);
        let mut later = false;
        let outcome = loop {
            let mut chunk = self
                .next_checked_chunk(&header, &mut next, rest, &mut bytes)
                .await?;
            any |= !chunk.items.is_empty() || !chunk.ddl.is_empty();
            let last = chunk.last_chunk;
            if last && !any {
                return Err(CertifierError::InvalidArgument(
                    "empty writeset: read-only transactions are not certified".into(),
                ));
            }
            if later {
                // The header goes with the first chunk only.
                chunk = Writeset {
                    items: chunk.items,
                    ddl: chunk.ddl,
                    ..Writeset::default()
                };
            }
            later = true;
            let proposed = node
                .propose_chunks(tag, chunks::pieces(chunk, PART_BYTES), last)
                .await;
            match proposed {
                Ok(None) => {}
                Ok(Some(outcome)) => break outcome,
                Err(e) => return Err(super::log_watch::certify_failed(inner, e)),
            }
        };
        self.large_decided(turn, &outcome);
        Ok(outcome)
    }
}
