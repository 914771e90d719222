//! The session's side of the replica connection: opening the transaction,
//! relaying answers, COPY FROM STDIN, and the proxy's own queries.

use super::*;

impl Session {
    /// Queues the transaction's opening query (sent with what follows),
    /// behind a query that absorbs the applier's outstanding cancels if
    /// there are any (see `coordination::Cancels`).
    pub(super) fn open_txn(&mut self, explicit: bool, read_only: bool) {
        if std::mem::take(&mut self.lost_txn) {
            self.losses = self.losses.saturating_add(1);
        }
        let requested = self.signal.cancels.lock().requested;
        let absorb = (requested > self.cancels_settled).then_some(requested);
        if absorb.is_some() {
            self.backend.push(&query("SELECT 1"));
            self.absorb_after = absorb;
        }
        let begin = if read_only {
            OwnStatement::BeginReadOnly
        } else {
            OwnStatement::Begin
        };
        self.push_own(&[(begin, &[]), (OwnStatement::Snapshot, &[])]);
        // Counted before the opening goes out (see `Txn`'s invariants).
        let floor = *self.shared.applied.borrow();
        self.shared.open_snapshot(floor);
        self.txn = Some(Txn::opening(explicit, absorb, floor));
    }

    /// Reads the answers of the outstanding opening query (and of the
    /// absorbing query before it): `None` if none is outstanding, else the
    /// snapshot's version or the (untranslated) error.
    async fn read_opening(
        &mut self,
    ) -> Result<Option<std::result::Result<Version, ErrorResponse>>> {
        let Some(absorb) = self.txn.as_mut().and_then(Txn::take_opening) else {
            return Ok(None);
        };
        if let Some(requested) = absorb {
            // Whatever it answers, every cancel up to `requested` has now
            // landed or been dropped.
            self.own_answer().await?;
            self.cancels_settled = self.cancels_settled.max(requested);
        }
        let answer = self.own_answer().await?;
        let version = answer
            .value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<Version>().ok());
        Ok(Some(match (answer.error, version) {
            (None, Some(v)) => {
                self.shared.open_snapshot(v);
                if let Some(floor) = self.txn.as_mut().and_then(|t| t.opened_at(v)) {
                    self.shared.close_snapshot(floor);
                }
                let mut c = self.signal.cancels.lock();
                c.txn_open = true;
                // A doom meant for an earlier transaction is stale.
                self.signal.doomed.store(false, Ordering::Release);
                Ok(v)
            }
            (Some(e), _) => Err(e),
            (None, None) => Err(errors::internal(
                "could not read the replica's applied version",
            )),
        }))
    }

    /// Reads the opening query's answer if it is outstanding; false when
    /// it failed (its error is then reported to the client).
    pub(super) async fn finish_open(&mut self) -> Result<bool> {
        match self.read_opening().await? {
            None | Some(Ok(_)) => Ok(true),
            Some(Err(e)) => {
                // A cancel the applier sent a doomed transaction may land
                // on the next one's opening query: an early abort too.
                let e = self.translate(e);
                self.client.push(&e.message());
                self.fail_txn();
                Ok(false)
            }
        }
    }

    pub(super) async fn backend_read(&mut self) -> Result<Message> {
        if !self.backend.has_buffered_message() || self.client.pending_output() > (256 << 10) {
            self.client.flush().await.map_err(SessionError::Client)?;
        }
        self.backend.read().await.map_err(SessionError::Backend)
    }

    pub(super) async fn flush_backend(&mut self) -> Result<()> {
        if let Some(requested) = self.absorb_after.take() {
            // The absorbing query must run after the cancels were sent: a
            // cancel still on its way could hit BEGIN. Rather end the
            // session (closing the connection rolls back) than risk that.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while self.signal.cancels.lock().delivered < requested {
                if std::time::Instant::now() >= deadline {
                    return Err(SessionError::Backend(ConnError::Io(std::io::Error::other(
                        "an early-abort cancel of the applier was not delivered in 10 s",
                    ))));
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        self.backend.flush().await.map_err(SessionError::Backend)
    }

    /// Relays the backend's answer to the client up to ReadyForQuery
    /// (which is kept: the proxy reports its own transaction status).
    pub(super) async fn relay(&mut self) -> Result<Relayed> {
        self.flush_backend().await?;
        if !self.finish_open().await? {
            // What followed the failed opening query ran in an aborted
            // transaction: its errors would only repeat the first one.
            self.own_answer().await?;
            return Ok(Relayed {
                status: TransactionStatus::Failed,
                error: true,
            });
        }
        let mut error = false;
        loop {
            let m = self.backend_read().await?;
            match m.tag() {
                b'Z' => {
                    let status = TransactionStatus::parse(&m)
                        .map_err(|e| SessionError::Backend(ConnError::Protocol(e)))?;
                    let rolled_back_to = std::mem::take(&mut self.rollback_to_sent)
                        && !error
                        && status == TransactionStatus::InBlock;
                    if error || status == TransactionStatus::Failed {
                        self.fail_txn();
                    } else if rolled_back_to {
                        if let Some(t) = &mut self.txn {
                            t.rolled_back_to();
                        }
                    }
                    return Ok(Relayed { status, error });
                }
                b'E' => {
                    error = true;
                    match ErrorResponse::parse(&m) {
                        Ok(e) if e.sqlstate() == Some("57014") => {
                            let e = self.translate(e);
                            self.client.push(&e.message());
                        }
                        Ok(e) => {
                            // The replica's own serialization failures
                            // (REPEATABLE READ) are losses too.
                            self.note_loss(&e);
                            self.client.push(&m);
                        }
                        Err(_) => self.client.push(&m),
                    }
                }
                b'G' => {
                    self.client.push(&m);
                    self.client.flush().await.map_err(SessionError::Client)?;
                    self.copy_in().await?;
                }
                _ => self.client.push(&m),
            }
        }
    }

    /// `relay`, with the read-out of the captured entries sent right
    /// behind what is relayed when `read_ws` (the transaction ends there):
    /// one round trip fewer per commit. COMMIT reads its answer.
    pub(super) async fn relay_reading_ws(&mut self, read_ws: bool) -> Result<Relayed> {
        if read_ws {
            self.push_readout();
        }
        let r = self.relay().await?;
        if read_ws {
            let kept = !r.error && self.txn.as_mut().is_some_and(Txn::read_out_sent);
            if !kept {
                self.own_answer().await?;
            }
        }
        Ok(r)
    }

    /// Queues the read-out of the captured entries: binary results, so
    /// the chunks come as bytea bytes (no hex, no client_encoding).
    pub(super) fn push_readout(&mut self) {
        self.push_own(&[(OwnStatement::ReadOut, &[])]);
    }

    /// Reads and drops an outstanding read-out answer.
    pub(super) async fn drain_readout(&mut self) -> Result<()> {
        if self.txn.as_mut().is_some_and(Txn::take_read_out) {
            self.own_answer().await?;
        }
        Ok(())
    }

    /// COPY FROM STDIN: the client's data goes to the backend until it ends.
    pub(super) async fn copy_in(&mut self) -> Result<()> {
        loop {
            let m = self.client.read().await.map_err(SessionError::Client)?;
            self.backend.push(&m);
            let end = matches!(m.tag(), b'c' | b'f');
            if end && self.in_batch {
                // In extended mode the server waits for a Sync after the
                // copy; the client's own Sync follows and is not answered
                // twice.
                self.backend.push(&Message::new(b'S', Bytes::new()));
                self.swallow_sync = true;
            }
            if end || self.backend.pending_output() > (256 << 10) {
                self.flush_backend().await?;
            }
            if end {
                return Ok(());
            }
        }
    }

    /// Reads the answer to one of the proxy's own queries (not relayed,
    /// except notifications and parameter changes).
    pub(super) async fn own_answer(&mut self) -> Result<Answer> {
        self.flush_backend().await?;
        let mut answer = Answer {
            error: None,
            value: None,
        };
        let mut first_row = true;
        loop {
            let m = self.backend.read().await.map_err(SessionError::Backend)?;
            match m.tag() {
                b'Z' => return Ok(answer),
                b'E' if answer.error.is_none() => {
                    answer.error = ErrorResponse::parse(&m).ok();
                    // Our statements are gone from the backend (26000), or
                    // a Parse of one after the failed statement was skipped.
                    self.own.forget();
                }
                b'D' if first_row => {
                    first_row = false;
                    answer.value = first_column(m.body());
                }
                b'A' | b'S' => self.client.push(&m),
                _ => {}
            }
        }
    }

    /// Queues the proxy's own statements as one flight (one Sync).
    pub(super) fn push_own(&mut self, statements: &[(OwnStatement, &[Option<&str>])]) {
        let mut out = Vec::with_capacity(4 + 2 * statements.len());
        for (stmt, params) in statements {
            self.own.execute(*stmt, params, &mut out);
        }
        out.push(own::sync());
        for m in &out {
            self.backend.push(m);
        }
    }

    /// Runs the proxy's own statements as one flight and reads the answer.
    pub(super) async fn own_flight(
        &mut self,
        statements: &[(OwnStatement, &[Option<&str>])],
    ) -> Result<Answer> {
        self.push_own(statements);
        self.own_answer().await
    }

    pub(super) async fn rollback(&mut self) -> Result<()> {
        self.finish_open_quietly().await?;
        self.drain_readout().await?;
        self.rollback_backend().await?;
        self.close_txn();
        Ok(())
    }

    /// ROLLBACK on the backend. A late cancel landing on it leaves the
    /// transaction block open (aborted): then once more.
    pub(super) async fn rollback_backend(&mut self) -> Result<()> {
        self.drain_readout().await?;
        for _ in 0..3 {
            match self
                .own_flight(&[(OwnStatement::Rollback, &[])])
                .await?
                .error
            {
                None => return Ok(()),
                Some(e) => {
                    self.translate(e);
                }
            }
        }
        // The session ends; closing the connection rolls back.
        Err(SessionError::Backend(ConnError::Io(std::io::Error::other(
            "the replica refused ROLLBACK three times",
        ))))
    }

    /// Reads an outstanding opening answer without reporting it; returns
    /// its error (translated), if it failed.
    pub(super) async fn finish_open_quietly(&mut self) -> Result<Option<ErrorResponse>> {
        Ok(match self.read_opening().await? {
            Some(Err(e)) => Some(self.translate(e)),
            None | Some(Ok(_)) => None,
        })
    }
}
