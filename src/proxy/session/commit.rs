//! COMMIT: writeset read-out, certification, and the ordered local commit
//! when the applier hands the session its turn.
//!
//! The captured entries are read as they come from the replica and built
//! into the writeset (`writeset::Builder`); a writeset larger than one
//! chunk is certified over a streamed Certify call while it is still being
//! read, so neither the proxy nor the replica's answer ever holds a whole
//! large transaction (I8).

use std::future::Future;
use std::pin::Pin;

use tashkent_certifier::{CertifierError, ChunkSender};

use super::*;
use crate::proxy::capture::entry::EntryReader;
use crate::proxy::commit_order::Place;
use crate::proxy::errors;
use crate::proxy::metrics::AbortCause;
use crate::proxy::writeset::Builder;

type Certification =
    Pin<Box<dyn Future<Output = std::result::Result<Outcome, CertifierError>> + Send>>;

/// What reading the captured entries ended with.
enum Readout {
    /// Read; the certification, if one was started while reading.
    Read(Option<(ChunkSender, Certification)>),
    /// The replica answered the read-out with an error.
    Failed(ErrorResponse),
    /// The entries could not be made into a writeset.
    Refused(ErrorResponse),
}

impl Session {
    /// Commits the open transaction; `Err` is the error for the client
    /// (the transaction is over either way).
    pub(super) async fn commit(&mut self) -> Result<std::result::Result<(), ErrorResponse>> {
        self.signal.committing.store(true, Ordering::Release);
        let outcome = self.commit_inner().await;
        self.signal.committing.store(false, Ordering::Release);
        let outcome = outcome?.map_err(|e| self.translate(e));
        if let Err(e) = &outcome {
            match e.sqlstate() {
                // Counted where the cause is known (certification, early abort).
                Some("40001") => {}
                Some("08007") => self.shared.metrics.aborted(AbortCause::UnknownOutcome),
                _ => self.shared.metrics.aborted(AbortCause::Error),
            }
        }
        Ok(outcome)
    }

    pub(super) async fn commit_inner(&mut self) -> Result<std::result::Result<(), ErrorResponse>> {
        let started = std::time::Instant::now();
        if let Some(e) = self.finish_open_quietly().await? {
            self.rollback().await?;
            return Ok(Err(e));
        }
        let Some(txn) = self.txn.as_mut() else {
            return Ok(Ok(()));
        };
        let snapshot = txn.snapshot().unwrap_or(0);
        if !txn.take_read_out() {
            self.push_readout();
        }
        let txn_id = self.shared.new_txn_id();
        // Registered before anything is certified: the applier must find
        // it when the version comes.
        let mut turn = self.shared.expect_turn(&txn_id);
        let mut builder = Builder::new(
            txn_id.clone(),
            self.shared.cfg.replica_id,
            snapshot,
            self.shared.cfg.max_writeset_bytes,
        )
        .lock_conflicts(self.freshness().lock_conflicts);
        if self.shared.cfg.fair_retries {
            builder = builder.fair_turn(self.fair_session, self.losses);
        }
        let streamed = match self.read_captured(&mut builder).await? {
            Readout::Read(streamed) => streamed,
            Readout::Failed(e) | Readout::Refused(e) => {
                self.shared.withdraw(&txn_id);
                self.rollback().await?;
                return Ok(Err(e));
            }
        };
        let rest = match builder.finish() {
            Ok(rest) => rest,
            Err(e) => {
                self.shared.withdraw(&txn_id);
                self.rollback().await?;
                return Ok(Err(writeset_error(&e)));
            }
        };
        let certify: Certification = match (streamed, rest) {
            (Some((sender, call)), Some(last)) => {
                if let Err(e) = sender.finish(last).await {
                    self.shared.withdraw(&txn_id);
                    self.rollback().await?;
                    return Ok(Err(errors::unknown_outcome(&e.to_string())));
                }
                call
            }
            (None, Some(ws)) => {
                if let Some(e) = self.refuses_writes() {
                    self.shared.withdraw(&txn_id);
                    self.rollback().await?;
                    return Ok(Err(e));
                }
                let certifier = self.shared.certifier.clone();
                Box::pin(async move { certifier.certify(ws).await })
            }
            (_, None) => {
                self.shared.withdraw(&txn_id);
                return self.commit_read_only().await;
            }
        };
        self.certified_commit(txn_id, &mut turn, certify, started)
            .await
    }

    /// Reads the answer of the read-out into `builder`; once a chunk is
    /// full, certification starts over a streamed call and the chunks go
    /// out as they fill.
    async fn read_captured(&mut self, builder: &mut Builder) -> Result<Readout> {
        self.flush_backend().await?;
        let mut reader = EntryReader::new();
        let mut streamed: Option<(ChunkSender, Certification)> = None;
        let mut failure: Option<Readout> = None;
        loop {
            let m = self.backend.read().await.map_err(SessionError::Backend)?;
            match m.tag() {
                b'Z' => break,
                b'E' if failure.is_none() => {
                    failure = Some(Readout::Failed(ErrorResponse::parse(&m).unwrap_or_else(
                        |_| errors::internal("reading the captured writeset failed"),
                    )));
                }
                b'D' if failure.is_none() => {
                    let Some(chunk) = first_column(m.body()) else {
                        continue;
                    };
                    let built = reader
                        .push(&chunk)
                        .and_then(|entries| entries.into_iter().try_for_each(|e| builder.push(e)));
                    if let Err(e) = built {
                        failure = Some(Readout::Refused(writeset_error(&e)));
                        continue;
                    }
                    if let Some(chunk) = builder.full_chunk() {
                        if streamed.is_none() {
                            if let Some(e) = self.refuses_writes() {
                                failure = Some(Readout::Refused(e));
                                continue;
                            }
                            let (sender, call) = self.shared.certifier.certify_stream();
                            // Driven on its own: the chunks flow while this
                            // session reads on.
                            let call = tokio::spawn(call);
                            let call: Certification = Box::pin(async move {
                                call.await.unwrap_or_else(|e| {
                                    Err(CertifierError::Protocol(format!("certify task: {e}")))
                                })
                            });
                            streamed = Some((sender, call));
                        }
                        let sent = match &streamed {
                            Some((sender, _)) => sender.send(chunk).await,
                            None => Ok(()),
                        };
                        if let Err(e) = sent {
                            failure =
                                Some(Readout::Refused(errors::unknown_outcome(&e.to_string())));
                        }
                    }
                }
                b'A' | b'S' => self.client.push(&m),
                _ => {}
            }
        }
        if let Some(f) = failure {
            // Dropping the sender without its last chunk: the certifier
            // refuses the call, nothing is certified.
            return Ok(f);
        }
        if let Err(e) = reader.finish() {
            return Ok(Readout::Refused(writeset_error(&e)));
        }
        Ok(Readout::Read(streamed))
    }

    /// Why this replica takes no writes now, if it does not.
    fn refuses_writes(&self) -> Option<ErrorResponse> {
        if let Some(why) = self.shared.recovery_needed() {
            // Its turn would never come: the log it needs is gone.
            return Some(errors::recovery_needed(why));
        }
        self.shared
            .apply_stuck
            .borrow()
            .as_ref()
            .map(|s| errors::replica_cannot_apply(self.shared.cfg.replica_id, s.version, &s.cause))
    }

    /// A transaction that wrote nothing: commits locally.
    async fn commit_read_only(&mut self) -> Result<std::result::Result<(), ErrorResponse>> {
        let answer = self.own_flight(&[(OwnStatement::Commit, &[])]).await?;
        if let Some(e) = answer.error {
            // Not committed, and the block may still be open.
            self.rollback_backend().await?;
            self.close_txn();
            return Ok(Err(e));
        }
        self.close_txn();
        self.shared.metrics.committed(false, None);
        Ok(Ok(()))
    }

    /// Waits for the certification and the turn, then commits in order.
    async fn certified_commit(
        &mut self,
        txn_id: Bytes,
        turn: &mut tokio::sync::oneshot::Receiver<super::super::coordination::Turn>,
        mut certify: Certification,
        started: std::time::Instant,
    ) -> Result<std::result::Result<(), ErrorResponse>> {
        let mut certified_at = None;
        let outcome = self
            .certified_commit_inner(txn_id, turn, &mut certify, &mut certified_at)
            .await?;
        if outcome.is_ok() {
            self.shared.metrics.committed(true, Some(started.elapsed()));
        }
        Ok(outcome)
    }

    async fn certified_commit_inner(
        &mut self,
        txn_id: Bytes,
        turn: &mut tokio::sync::oneshot::Receiver<super::super::coordination::Turn>,
        certify: &mut Certification,
        certified_at: &mut Option<std::time::Instant>,
    ) -> Result<std::result::Result<(), ErrorResponse>> {
        let mut certified = false;
        let mut version = None;
        // Gave its locks up for the applier: the writeset is applied from
        // the log, this session only waits for the outcome.
        let mut released = false;
        let mut stuck = self.shared.apply_stuck.subscribe();
        // Looked at once certified, even if it was set before.
        stuck.mark_changed();
        let turn = loop {
            tokio::select! {
                biased;
                t = &mut *turn, if !released => match t {
                    Ok(t) => break t,
                    // The applier took the hand-off and then dropped it:
                    // it applies the writeset itself.
                    Err(_) => {
                        self.rollback().await?;
                        return Ok(Err(errors::unknown_outcome("the replica's committer went away")));
                    }
                },
                outcome = &mut *certify, if !certified => match outcome {
                    // Certified either way: a turn held was used (and, on
                    // an abort, is waited for again as `fair_key`).
                    Ok(Outcome::Committed { version: v }) => {
                        self.held_turn = 0;
                        *certified_at = Some(std::time::Instant::now());
                        if released {
                            return Ok(self.applied_from_log(v).await);
                        }
                        certified = true;
                        version = Some(v);
                    }
                    Ok(Outcome::Aborted {
                        reason,
                        conflict_version,
                        turn_key,
                        ..
                    }) => {
                        self.shared.metrics.aborted(AbortCause::Certification);
                        self.retry_floor = self.retry_floor.max(conflict_version);
                        self.fair_key = turn_key;
                        self.held_turn = 0;
                        if released {
                            self.close_txn();
                        } else {
                            self.shared.withdraw(&txn_id);
                            self.rollback().await?;
                        }
                        return Ok(Err(errors::certification_conflict(reason)));
                    }
                    Err(e) => {
                        if released {
                            self.close_txn();
                            return Ok(Err(errors::certification_failed(&e)));
                        }
                        if self.shared.withdraw(&txn_id) {
                            self.rollback().await?;
                            return Ok(Err(match e {
                                CertifierError::WritesetTooLarge { .. } => {
                                    writeset_error(&crate::error::Error::WritesetTooLarge {
                                        max: self.shared.cfg.max_writeset_bytes,
                                    })
                                }
                                e => errors::certification_failed(&e),
                            }));
                        }
                        // Already handed to us by the applier: committed.
                        certified = true;
                    }
                },
                // The applier cannot apply a version up to ours: our turn
                // does not come while that lasts. The transaction is (or
                // will be) committed in the global order; say so.
                _ = stuck.changed(), if certified && !released => {
                    let s = stuck.borrow_and_update().clone();
                    if s.as_ref().is_none_or(|s| version.is_none_or(|v| s.version > v)) {
                        continue;
                    }
                    let Some(v) = version else { continue };
                    if !self.shared.withdraw(&txn_id) {
                        continue;
                    }
                    self.rollback_backend().await?;
                    self.close_txn();
                    let (sv, cause) = s.map(|s| (s.version, s.cause)).unwrap_or_default();
                    return Ok(Err(errors::committed_elsewhere(
                        v,
                        self.shared.cfg.replica_id,
                        sv,
                        &cause,
                    )));
                }
                // The applier waits for a lock this transaction holds (one
                // its writeset does not show, e.g. SELECT FOR SHARE, or FOR
                // UPDATE with tashkent.lock_conflicts off), to
                // apply a version below ours: waiting for our turn would
                // deadlock. Give the locks up, unless the turn is ours
                // already (then the applier is past that version).
                () = self.signal.wake.notified(), if !released => {
                    if self.signal.doomed.swap(false, Ordering::AcqRel)
                        && self.shared.withdraw(&txn_id)
                    {
                        self.rollback_backend().await?;
                        released = true;
                        if let Some(v) = version {
                            return Ok(self.applied_from_log(v).await);
                        }
                    }
                }
            }
        };
        let v = turn.version;
        let (ok, lsn) = self.commit_in_order(v, *certified_at).await?;
        let _ = turn.done.send(ok);
        self.close_txn();
        if !ok {
            // The writeset is certified and durable: the applier applies
            // it from the log, and the client's COMMIT stands.
            if let Err(e) = self.applied_or_stuck(v).await {
                return Ok(Err(e));
            }
        }
        if let Err(e) = self.durable(v, lsn).await {
            return Ok(Err(e));
        }
        self.committed_version(v);
        Ok(Ok(()))
    }

    /// With `ack_after_flush` (Tashkent-API): waits until the replica's
    /// WAL is flushed past the commit of `v` (its LSN when this session
    /// committed it, else past every commit made so far: the applier's).
    async fn durable(
        &mut self,
        v: Version,
        lsn: Option<u64>,
    ) -> std::result::Result<(), ErrorResponse> {
        let Some(flusher) = self.shared.flusher.clone() else {
            return Ok(());
        };
        let epoch = flusher.epoch();
        let waited = std::time::Instant::now();
        let out = flusher
            .durable(epoch, lsn)
            .await
            .map_err(|e| errors::not_durable(v, self.shared.cfg.replica_id, &e.0));
        self.shared.metrics.waited_for_flush(waited.elapsed());
        out
    }

    /// Commits version `v` in the replica's commit order (`commit_order`):
    /// once its predecessor took its turn, one flight takes this
    /// version's turn, waits for the predecessor's commit and commits.
    /// False when it did not commit (the applier applies it from the log).
    async fn commit_in_order(
        &mut self,
        v: Version,
        certified_at: Option<std::time::Instant>,
    ) -> Result<(bool, Option<u64>)> {
        // Any way out of here that does not commit (an error, or this
        // future dropped with the client) breaks the order at `v`, so that
        // no later committer waits for a turn that never comes.
        let since = std::time::Instant::now();
        let mut guard = BreakOnDrop {
            shared: self.shared.clone(),
            v,
            armed: true,
        };
        self.signal.commit_version.store(v, Ordering::Release);
        let place = loop {
            tokio::select! {
                p = self.shared.order.wait_place(v) => break p,
                // The applier needs a lock this transaction holds, for a
                // version before ours: give the locks up.
                () = self.signal.wake.notified() => {
                    if self.signal.doomed.swap(false, Ordering::AcqRel) {
                        break Place::Broken(v);
                    }
                }
            }
        };
        // The turn may come before the certifier's answer: then the wait
        // starts here.
        self.shared
            .metrics
            .waited_for_turn(certified_at.unwrap_or(since).elapsed());
        let prev_xid = match place {
            Place::Go { prev_xid } => prev_xid.map(|x| x.to_string()),
            Place::Broken(_) => {
                self.signal.commit_version.store(0, Ordering::Release);
                self.shared.order.break_at(v);
                self.rollback_backend().await?;
                return Ok((false, None));
            }
        };
        let (version, prev) = (v.to_string(), (v - 1).to_string());
        let mut out = Vec::with_capacity(12);
        self.own
            .execute(OwnStatement::TakeTurn, &[Some(&version)], &mut out);
        out.push(own::flush());
        if let Some(prev_xid) = prev_xid.as_deref() {
            self.own.execute(
                OwnStatement::WaitTurn,
                &[Some(&prev), Some(prev_xid)],
                &mut out,
            );
        }
        self.own.execute(OwnStatement::Commit, &[], &mut out);
        if self.shared.flusher.is_some() {
            // Where the WAL ends right after the commit record: the flush
            // the client's answer waits for.
            self.own.execute(OwnStatement::WalInsertLsn, &[], &mut out);
        }
        out.push(own::sync());
        for m in &out {
            self.backend.push(m);
        }
        let read = self.read_commit_flight(v).await;
        self.signal.commit_version.store(0, Ordering::Release);
        let (error, lsn) = read?;
        if let Some(e) = error {
            tracing::debug!(
                "committing version {v} in order failed: {} ({})",
                e.message_text().unwrap_or_default(),
                e.sqlstate().unwrap_or_default()
            );
            // A cancel of the applier's that landed here is settled.
            self.translate(e);
            self.shared.order.break_at(v);
            self.rollback_backend().await?;
            return Ok((false, None));
        }
        guard.armed = false;
        self.shared.order.committed(v);
        Ok((true, lsn))
    }

    /// Reads the answer of the commit flight of `v`: the turn is taken at
    /// the first CommandComplete (the Flush behind it brings it at once);
    /// the error, if any statement failed; the WAL's insert LSN after the
    /// COMMIT, if the flight asked for it (the last row, `pg_lsn` text).
    async fn read_commit_flight(
        &mut self,
        v: Version,
    ) -> Result<(Option<ErrorResponse>, Option<u64>)> {
        self.flush_backend().await?;
        let mut xid: Option<u64> = None;
        let mut turn_taken = false;
        let mut error = None;
        let mut lsn = None;
        loop {
            let m = self.backend.read().await.map_err(SessionError::Backend)?;
            match m.tag() {
                b'D' if !turn_taken => {
                    xid = first_column(m.body())
                        .and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok());
                }
                b'D' => {
                    lsn = first_column(m.body()).and_then(|b| {
                        crate::proxy::flush::parse_lsn(std::str::from_utf8(&b).ok()?)
                    });
                }
                b'C' if !turn_taken => {
                    turn_taken = true;
                    let in_order = xid.is_some_and(|x| self.shared.order.took_turn(v, v, x));
                    if !in_order {
                        error = Some(errors::internal(
                            "taking the turn in the commit order failed",
                        ));
                    }
                }
                b'E' => {
                    // The backend skipped the rest of the flight, Parses too.
                    self.own.forget();
                    if error.is_none() {
                        error =
                            Some(ErrorResponse::parse(&m).unwrap_or_else(|_| {
                                errors::internal("committing in order failed")
                            }));
                    }
                }
                b'Z' => return Ok((error, lsn)),
                b'A' | b'S' => self.client.push(&m),
                _ => {}
            }
        }
    }

    /// The committed writeset `v` of this session, whose locks it gave
    /// up, is applied by the applier from the log: the COMMIT stands once
    /// the replica has it.
    async fn applied_from_log(&mut self, v: Version) -> std::result::Result<(), ErrorResponse> {
        self.close_txn();
        self.applied_or_stuck(v).await?;
        self.durable(v, None).await?;
        self.committed_version(v);
        Ok(())
    }

    /// Waits until the replica has applied the certified version `v`;
    /// should the applier be stuck below or at `v`, says that `v` is
    /// committed in the global order but not here yet.
    async fn applied_or_stuck(&self, v: Version) -> std::result::Result<(), ErrorResponse> {
        let mut stuck = self.shared.apply_stuck.subscribe();
        stuck.mark_changed();
        loop {
            tokio::select! {
                () = self.shared.wait_applied(v) => return Ok(()),
                changed = stuck.changed() => {
                    if changed.is_err() {
                        self.shared.wait_applied(v).await;
                        return Ok(());
                    }
                    let s = stuck.borrow_and_update().clone();
                    if let Some(s) = s.filter(|s| s.version <= v) {
                        return Err(errors::committed_elsewhere(
                            v,
                            self.shared.cfg.replica_id,
                            s.version,
                            &s.cause,
                        ));
                    }
                }
            }
        }
    }
}

/// The client's error for a writeset that cannot be built.
fn writeset_error(e: &crate::error::Error) -> ErrorResponse {
    match e {
        crate::error::Error::WritesetTooLarge { max } => errors::writeset_too_large(*max),
        e => errors::internal(format!("reading the writeset: {e}")),
    }
}

/// Breaks the commit order at `v` when dropped armed.
struct BreakOnDrop {
    shared: std::sync::Arc<crate::proxy::coordination::Shared>,
    v: Version,
    armed: bool,
}

impl Drop for BreakOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.shared.order.break_at(self.v);
        }
    }
}
