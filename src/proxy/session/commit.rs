//! COMMIT: writeset read-out, certification, and the ordered local commit
//! when the applier hands the session its turn.

use super::*;

impl Session {
    /// Commits the open transaction; `Err` is the error for the client
    /// (the transaction is over either way).
    pub(super) async fn commit(&mut self) -> Result<std::result::Result<(), ErrorResponse>> {
        self.signal.committing.store(true, Ordering::Release);
        let outcome = self.commit_inner().await;
        self.signal.committing.store(false, Ordering::Release);
        Ok(outcome?.map_err(|e| self.translate(e)))
    }

    pub(super) async fn commit_inner(&mut self) -> Result<std::result::Result<(), ErrorResponse>> {
        if let Some(e) = self.finish_open_quietly().await? {
            self.rollback().await?;
            return Ok(Err(e));
        }
        let Some(txn) = self.txn.as_mut() else {
            return Ok(Ok(()));
        };
        let snapshot = txn.snapshot.unwrap_or(0);
        let captured = match txn.prefetched_ws.take() {
            Some(Ok(text)) => text,
            Some(Err(e)) => {
                self.rollback().await?;
                return Ok(Err(e));
            }
            None => {
                let answer = self.own_query(READ_WS_SQL).await?;
                if let Some(e) = answer.error {
                    self.rollback().await?;
                    return Ok(Err(e));
                }
                text_of(answer.value)
            }
        };
        let txn_id = self.shared.new_txn_id();
        let ws = match writeset::build(
            txn_id.clone(),
            self.shared.cfg.replica_id,
            snapshot,
            &captured,
        ) {
            Ok(ws) => ws,
            Err(e) => {
                self.rollback().await?;
                return Ok(Err(ErrorResponse::error(
                    "XX000",
                    format!("reading the writeset: {e}"),
                )));
            }
        };
        let Some(ws) = ws else {
            let answer = self.own_query("COMMIT").await?;
            if let Some(e) = answer.error {
                // Not committed, and the block may still be open.
                self.rollback_backend().await?;
                self.close_txn();
                return Ok(Err(e));
            }
            self.close_txn();
            return Ok(Ok(()));
        };
        if let Some(why) = self.shared.recovery_needed() {
            // Its turn would never come: the log it needs is gone.
            self.rollback().await?;
            return Ok(Err(ErrorResponse::error("55000", why).with_hint(
                "This replica must be rebuilt from a checkpoint (`tashkent recover`); \
                 connect to another replica meanwhile.",
            )));
        }
        let mut turn = self.shared.expect_turn(&txn_id);
        let certifier = self.shared.certifier.clone();
        let certify = certifier.certify(ws);
        tokio::pin!(certify);
        let mut certified = false;
        let mut version = None;
        // Gave its locks up for the applier: the writeset is applied from
        // the log, this session only waits for the outcome.
        let mut released = false;
        let turn = loop {
            tokio::select! {
                biased;
                t = &mut turn, if !released => match t {
                    Ok(t) => break t,
                    // The applier took the hand-off and then dropped it:
                    // it applies the writeset itself.
                    Err(_) => {
                        self.rollback().await?;
                        return Ok(Err(unknown_outcome("the replica's committer went away")));
                    }
                },
                outcome = &mut certify, if !certified => match outcome {
                    Ok(Outcome::Committed { version: v }) => {
                        if released {
                            return Ok(self.applied_from_log(v).await);
                        }
                        certified = true;
                        version = Some(v);
                    }
                    Ok(Outcome::Aborted { reason, .. }) => {
                        if released {
                            self.close_txn();
                        } else {
                            self.shared.withdraw(&txn_id);
                            self.rollback().await?;
                        }
                        return Ok(Err(ErrorResponse::error(
                            "40001",
                            "could not serialize access: the transaction conflicts with a concurrently committed one",
                        )
                        .with_detail(reason)
                        .with_hint("Retry the transaction.")));
                    }
                    Err(e) => {
                        if released {
                            self.close_txn();
                            return Ok(Err(unknown_outcome(&e.to_string())));
                        }
                        if self.shared.withdraw(&txn_id) {
                            self.rollback().await?;
                            return Ok(Err(unknown_outcome(&e.to_string())));
                        }
                        // Already handed to us by the applier: committed.
                        certified = true;
                    }
                },
                // The applier waits for a lock this transaction holds (one
                // its writeset does not show, e.g. SELECT FOR UPDATE), to
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
        let answer = self
            .own_query(&format!("{}; COMMIT", capture::record_applied_sql(v)))
            .await?;
        let ok = answer.error.is_none();
        if !ok {
            // The writeset is certified and durable: the applier applies
            // it from the log, and the client's COMMIT stands.
            self.rollback_backend().await?;
        }
        let _ = turn.done.send(ok);
        self.close_txn();
        if !ok {
            self.shared.wait_applied(v).await;
        }
        Ok(Ok(()))
    }

    /// The committed writeset `v` of this session, whose locks it gave
    /// up, is applied by the applier from the log: the COMMIT stands once
    /// the replica has it.
    async fn applied_from_log(&mut self, v: Version) -> std::result::Result<(), ErrorResponse> {
        self.close_txn();
        self.shared.wait_applied(v).await;
        Ok(())
    }
}
