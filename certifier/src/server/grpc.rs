//! The tonic service: each RPC of `Certifier` handed to the part that
//! serves it (certification in `service`, the pipeline, Subscribe).

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::service::CertifierService;
use super::{pipeline, subscribe};
use crate::error::CertifierError;
use crate::proto::{self, CertifyResponse, Writeset};
use crate::writeset::Assembler;

#[tonic::async_trait]
impl proto::certifier_server::Certifier for CertifierService {
    async fn certify(
        &self,
        request: Request<Streaming<Writeset>>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let mut chunks = request.into_inner();
        let Some(first) = chunks.message().await? else {
            return Err(
                CertifierError::InvalidArgument("Certify stream had no chunk".into()).into(),
            );
        };
        let outcome = if first.last_chunk {
            let mut asm = Assembler::new(self.inner.limits.max_writeset_bytes);
            asm.push(first)?;
            CertifierService::certify(self, asm.finish()?).await?
        } else if self.node().is_some() {
            // Replicated chunk by chunk, spooled on every node.
            self.certify_in_chunks(first, &mut chunks).await?
        } else {
            self.certify_spooled(first, &mut chunks).await?
        };
        Ok(Response::new(outcome.into()))
    }

    type CertifyPipelineStream =
        Pin<Box<dyn Stream<Item = Result<proto::PipelineResponse, Status>> + Send + 'static>>;

    async fn certify_pipeline(
        &self,
        request: Request<Streaming<proto::PipelineRequest>>,
    ) -> Result<Response<Self::CertifyPipelineStream>, Status> {
        Ok(Response::new(pipeline::serve(
            self.clone(),
            request.into_inner(),
        )))
    }

    type SubscribeStream =
        Pin<Box<dyn Stream<Item = Result<proto::SubscribeFrame, Status>> + Send + 'static>>;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        let from = request.from_version.max(1);
        let elide = subscribe::Elide {
            txn_prefix: request.elide_txn_prefix,
            from: request.elide_from,
        };
        if let Some(node) = self.node() {
            if let Some(lost) = node.contact.lost() {
                if lost.since.elapsed() >= super::contact::STREAM_GRACE {
                    return Err(node.streams_refused(lost.why).into());
                }
            }
        }
        let latest = self.inner.state.lock().latest();
        // A raft node may lag behind the version a subscriber saw
        // elsewhere: the stream waits until it gets there.
        if from > latest + 1 && self.node().is_none() {
            return Err(CertifierError::InvalidArgument(format!(
                "cannot subscribe from version {from}: the latest version is {latest}"
            ))
            .into());
        }
        if from < self.inner.wal.first_lsn() {
            return Err(CertifierError::Purged {
                from,
                first: self.inner.wal.first_lsn(),
            }
            .into());
        }
        Ok(Response::new(subscribe::stream(
            self.inner.clone(),
            from,
            elide,
        )))
    }

    async fn report_applied(
        &self,
        request: Request<proto::ReportAppliedRequest>,
    ) -> Result<Response<proto::ReportAppliedResponse>, Status> {
        let r = request.into_inner();
        let horizon = self
            .report(r.replica_id, r.applied_version, r.oldest_snapshot)
            .await?;
        Ok(Response::new(proto::ReportAppliedResponse { horizon }))
    }

    async fn report_checkpoint(
        &self,
        request: Request<proto::ReportCheckpointRequest>,
    ) -> Result<Response<proto::ReportCheckpointResponse>, Status> {
        let (purge_below, first_version) =
            CertifierService::report_checkpoint(self, request.into_inner().version).await?;
        Ok(Response::new(proto::ReportCheckpointResponse {
            purge_below,
            first_version,
        }))
    }

    async fn status(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        Ok(Response::new(CertifierService::status(self)))
    }

    async fn await_turn(
        &self,
        request: Request<proto::TurnRequest>,
    ) -> Result<Response<proto::AwaitTurnResponse>, Status> {
        let r = request.into_inner();
        let (version, granted) = CertifierService::await_turn(self, r.session, r.key).await;
        Ok(Response::new(proto::AwaitTurnResponse { version, granted }))
    }

    async fn leave_turn(
        &self,
        request: Request<proto::TurnRequest>,
    ) -> Result<Response<proto::LeaveTurnResponse>, Status> {
        let r = request.into_inner();
        CertifierService::leave_turn(self, r.session, r.key);
        Ok(Response::new(proto::LeaveTurnResponse {}))
    }

    async fn acknowledged(
        &self,
        _request: Request<proto::AcknowledgedRequest>,
    ) -> Result<Response<proto::AcknowledgedResponse>, Status> {
        Ok(Response::new(proto::AcknowledgedResponse {
            version: self.acknowledged(),
        }))
    }
}
