//! The simple-query protocol: statement by statement, each its own Query
//! on the replica, transaction control answered by the proxy.

use super::*;

impl Session {
    pub(super) async fn simple_query(&mut self, msg: &Message, sql: &str) -> Result<()> {
        let statements = split_statements(sql);
        if statements.is_empty() {
            self.backend.push(msg);
            self.relay().await?;
            return self.ready().await;
        }
        let n = statements.len();
        for (i, stmt) in statements.into_iter().enumerate() {
            if self.statement(stmt, i + 1 == n).await? == Flow::Stop {
                break;
            }
        }
        if self.txn.as_ref().is_some_and(|t| !t.explicit()) {
            self.end_implicit().await?;
        }
        self.ready().await
    }

    pub(super) async fn end_implicit(&mut self) -> Result<()> {
        if self.txn.as_ref().is_some_and(Txn::failed) {
            return self.rollback().await;
        }
        if let Err(e) = self.commit().await? {
            self.client.push(&e.message());
        }
        Ok(())
    }

    pub(super) async fn statement(&mut self, stmt: &str, last: bool) -> Result<Flow> {
        let kind = classify(stmt);
        if !self.admits(Some(&kind)) {
            let e = self.failed_txn_error();
            self.client.push(&e.message());
            return Ok(Flow::Stop);
        }
        match kind {
            Kind::Refused { message, hint } => {
                self.client
                    .push(&errors::feature_not_supported(message, hint).message());
                self.fail_txn();
                Ok(Flow::Stop)
            }
            Kind::Begin { read_only } => {
                if self.txn.is_none() {
                    if let Some(e) = self.wait_fresh().await? {
                        self.client.push(&e.message());
                        return Ok(Flow::Stop);
                    }
                }
                self.begin(read_only);
                Ok(Flow::Continue)
            }
            Kind::ProxySet { name, value, local } => {
                match self.proxy_set(&name, value.as_deref(), local).await? {
                    Ok(()) => {
                        self.client.push(&command_complete("SET"));
                        Ok(Flow::Continue)
                    }
                    Err(e) => {
                        self.client.push(&e.message());
                        self.fail_txn();
                        Ok(Flow::Stop)
                    }
                }
            }
            Kind::ProxyWaitFor { version } => match self.wait_for(version).await {
                Ok(()) => Ok(Flow::Continue),
                Err(e) => {
                    self.client.push(&e.message());
                    self.fail_txn();
                    Ok(Flow::Stop)
                }
            },
            Kind::Commit { chain } => {
                let ok = self.end_explicit(true).await?;
                if chain && ok {
                    self.open_txn(true, false);
                }
                Ok(if ok { Flow::Continue } else { Flow::Stop })
            }
            Kind::Rollback { chain } => {
                self.end_explicit(false).await?;
                if chain {
                    self.open_txn(true, false);
                }
                Ok(Flow::Continue)
            }
            Kind::SetTransaction => {
                self.client.push(&command_complete("SET"));
                Ok(Flow::Continue)
            }
            Kind::ProxyShow { name } => match self.proxy_show(&name) {
                Ok(()) => Ok(Flow::Continue),
                Err(e) => {
                    self.client.push(&e.message());
                    self.fail_txn();
                    Ok(Flow::Stop)
                }
            },
            Kind::LocalMaintenance | Kind::Savepoint { .. } if self.txn.is_none() => {
                self.backend.push(&query(stmt));
                if drops_prepared(stmt) {
                    self.own.forget();
                }
                let r = self.relay().await?;
                Ok(if r.error { Flow::Stop } else { Flow::Continue })
            }
            _ => {
                if self.txn.is_none() {
                    if let Some(e) = self.wait_fresh().await? {
                        self.client.push(&e.message());
                        return Ok(Flow::Stop);
                    }
                    self.open_txn(false, false);
                }
                self.rollback_to_sent = matches!(kind, Kind::Savepoint { rollback_to: true });
                self.backend.push(&query(stmt));
                if drops_prepared(stmt) {
                    // Our statements queued from here on are parsed again.
                    self.own.forget();
                }
                // Nothing may follow a COPY on the wire: it may switch the
                // connection to copy mode.
                let implicit_end =
                    last && !is_copy(stmt) && self.txn.as_ref().is_some_and(|t| !t.explicit());
                let r = self.relay_reading_ws(implicit_end).await?;
                if r.error {
                    return Ok(Flow::Stop);
                }
                if r.status == TransactionStatus::Idle {
                    // The statement ended the backend's transaction behind
                    // the proxy's back (it cannot with the refusals in
                    // place, but never report a block that is gone).
                    self.close_txn();
                }
                Ok(Flow::Continue)
            }
        }
    }

    pub(super) fn begin(&mut self, read_only: bool) {
        match &mut self.txn {
            None => self.open_txn(true, read_only),
            Some(t) if !t.explicit() => t.make_explicit(),
            Some(_) => self.client.push(&errors::already_in_transaction()),
        }
        self.client.push(&command_complete("BEGIN"));
    }

    /// COMMIT or ROLLBACK of the client; false when COMMIT failed.
    pub(super) async fn end_explicit(&mut self, commit: bool) -> Result<bool> {
        let tag = if commit { "COMMIT" } else { "ROLLBACK" };
        let Some(txn) = &self.txn else {
            self.client.push(&errors::no_transaction());
            self.client.push(&command_complete(tag));
            return Ok(true);
        };
        if !commit || txn.failed() {
            // An early abort the client has not been told of yet: its
            // COMMIT fails with it (PostgreSQL answers COMMIT of a failed
            // transaction with a plain "ROLLBACK", which only makes sense
            // after the client saw the error).
            let untold = if commit {
                self.early_abort.take()
            } else {
                None
            };
            // An early abort is counted where it happened; a failed
            // transaction was ended by the replica's error, not by the
            // client's choice.
            if untold.is_none() && !txn.doomed() {
                self.shared.metrics.aborted(if txn.failed() {
                    crate::proxy::metrics::AbortCause::StatementError
                } else {
                    crate::proxy::metrics::AbortCause::Client
                });
            }
            self.rollback().await?;
            if let Some(e) = untold {
                self.client.push(&e.message());
                return Ok(false);
            }
            self.client.push(&command_complete("ROLLBACK"));
            return Ok(true);
        }
        match self.commit().await? {
            Ok(()) => {
                self.client.push(&command_complete("COMMIT"));
                Ok(true)
            }
            Err(e) => {
                self.client.push(&e.message());
                Ok(false)
            }
        }
    }
}
