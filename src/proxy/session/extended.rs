//! The extended-query protocol: messages collected up to Sync, then run
//! with transaction control answered by the proxy.

use super::*;

impl Session {
    /// Runs the messages collected up to (and answering) a Sync.
    ///
    /// Transaction-control statements (BEGIN, COMMIT, ROLLBACK, SET
    /// TRANSACTION) never reach the replica: their Parse, Bind, Describe
    /// and Execute are answered by the proxy, after a Sync of its own
    /// whenever earlier messages of the batch still await their answers
    /// (so answers stay in order).
    pub(super) async fn run_batch(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        let kinds = self.message_kinds(&batch);
        let mut forwarded = false;
        let mut skipping = false;
        for (i, (msg, parsed)) in batch.iter().enumerate() {
            if skipping {
                continue;
            }
            if self.txn.is_none() && needs_txn_ahead(&batch[i..], &kinds[i..]) {
                if forwarded {
                    // Answers stay in order: what went before first.
                    forwarded = false;
                    if !self.sync_point().await? {
                        skipping = true;
                        continue;
                    }
                }
                if let Some(e) = self.wait_fresh().await? {
                    self.client.push(&e.message());
                    skipping = true;
                    continue;
                }
                self.open_txn(false, false);
            }
            let kind = kinds[i].as_ref();
            let is_execute = matches!(parsed, FrontendMessage::Execute { .. });
            let control = kind.is_some_and(is_control);
            let refused = matches!(parsed, FrontendMessage::Parse { .. })
                && matches!(
                    kind,
                    Some(Kind::Refused { .. } | Kind::ProxyShow { .. } | Kind::ProxyWaitFor { .. })
                );
            let blocked = is_execute && !self.admits(kind);
            if control || refused || blocked {
                // The proxy answers: everything sent before must be answered first.
                if forwarded {
                    forwarded = false;
                    if !self.sync_point().await? {
                        skipping = true;
                        continue;
                    }
                }
            }
            if blocked {
                let e = self.failed_txn_error();
                self.client.push(&e.message());
                skipping = true;
                continue;
            }
            match parsed {
                FrontendMessage::Parse { statement, .. } => {
                    let kind = match kind.cloned().unwrap_or(Kind::Other) {
                        Kind::ProxyShow { .. } => Kind::Refused {
                            message:
                                "SHOW tashkent.* is answered over the simple query protocol only"
                                    .into(),
                            hint: "Send it as a plain query (psql does).".into(),
                        },
                        Kind::ProxyWaitFor { .. } => Kind::Refused {
                            message: "tashkent.wait_for is answered over the simple query \
                                      protocol only"
                                .into(),
                            hint: "Send it as a plain query (psql does).".into(),
                        },
                        k => k,
                    };
                    if let Kind::Refused { message, hint } = &kind {
                        self.client.push(
                            &errors::feature_not_supported(message.clone(), hint.clone()).message(),
                        );
                        self.fail_txn();
                        skipping = true;
                        continue;
                    }
                    if let FrontendMessage::Parse { sql, .. } = parsed {
                        if drops_prepared(sql) {
                            self.dropping.statements.insert(statement.clone());
                        } else {
                            self.dropping.statements.remove(statement);
                        }
                        if is_copy(sql) {
                            self.copy_statements.insert(statement.clone());
                        } else {
                            self.copy_statements.remove(statement);
                        }
                    }
                    self.statements.insert(statement.clone(), kind);
                    if control {
                        self.client.push(&Message::new(b'1', Bytes::new()));
                        continue;
                    }
                }
                FrontendMessage::Bind { portal, statement } => {
                    self.portals
                        .insert(portal.clone(), kind.cloned().unwrap_or(Kind::Other));
                    if self.dropping.statements.contains(statement) {
                        self.dropping.portals.insert(portal.clone());
                    } else {
                        self.dropping.portals.remove(portal);
                    }
                    if control {
                        self.client.push(&Message::new(b'2', Bytes::new()));
                        continue;
                    }
                }
                FrontendMessage::Describe { target, .. } if control => {
                    if *target == crate::proxy::wire::Describe::Statement {
                        self.client
                            .push(&Message::new(b't', Bytes::from_static(&[0, 0])));
                    }
                    self.client.push(&Message::new(b'n', Bytes::new()));
                    continue;
                }
                FrontendMessage::Close { target, name } => {
                    match target {
                        crate::proxy::wire::Describe::Statement => self.statements.remove(name),
                        crate::proxy::wire::Describe::Portal => self.portals.remove(name),
                    };
                }
                FrontendMessage::Execute { .. } if control => {
                    if let Some(kind) = kind {
                        if !self.control(kind).await? {
                            skipping = true;
                        }
                    }
                    continue;
                }
                _ => {}
            }
            if is_execute && matches!(kind, Some(Kind::Savepoint { rollback_to: true })) {
                self.rollback_to_sent = true;
            }
            self.backend.push(msg);
            forwarded = true;
            if let FrontendMessage::Execute { portal, .. } = parsed {
                if self.dropping.portals.contains(portal) {
                    // Our statements queued from here on are parsed again.
                    self.own.forget();
                }
            }
        }
        // The client's Sync.
        let has_copy = batch.iter().any(|(_, m)| match m {
            FrontendMessage::Bind { statement, .. } => self.copy_statements.contains(statement),
            _ => false,
        });
        let implicit_end = !has_copy
            && self
                .txn
                .as_ref()
                .is_some_and(|t| !t.explicit() && !t.failed());
        if forwarded {
            self.backend.push(&Message::new(b'S', Bytes::new()));
            self.relay_reading_ws(implicit_end).await?;
        }
        if self.txn.as_ref().is_some_and(|t| !t.explicit()) {
            self.end_implicit().await?;
        }
        self.ready().await
    }

    /// Sends a Sync of the proxy's own so the messages so far are answered;
    /// false when one of them failed.
    pub(super) async fn sync_point(&mut self) -> Result<bool> {
        self.backend.push(&Message::new(b'S', Bytes::new()));
        let r = self.relay().await?;
        Ok(!r.error)
    }

    /// Executes a transaction-control portal; false when it failed.
    pub(super) async fn control(&mut self, kind: &Kind) -> Result<bool> {
        match kind {
            Kind::Begin { read_only } => {
                if self.txn.is_none() {
                    if let Some(e) = self.wait_fresh().await? {
                        self.client.push(&e.message());
                        return Ok(false);
                    }
                }
                self.begin(*read_only);
                Ok(true)
            }
            Kind::ProxySet { name, value, local } => {
                match self.proxy_set(name, value.as_deref(), *local).await? {
                    Ok(()) => {
                        self.client.push(&command_complete("SET"));
                        Ok(true)
                    }
                    Err(e) => {
                        self.client.push(&e.message());
                        self.fail_txn();
                        Ok(false)
                    }
                }
            }
            Kind::Commit { chain } => {
                let ok = self.end_explicit(true).await?;
                if *chain && ok {
                    self.open_txn(true, false);
                }
                Ok(ok)
            }
            Kind::Rollback { chain } => {
                self.end_explicit(false).await?;
                if *chain {
                    self.open_txn(true, false);
                }
                Ok(true)
            }
            _ => {
                self.client.push(&command_complete("SET"));
                Ok(true)
            }
        }
    }

    /// For each message of `batch`, the kind of statement it concerns
    /// (Parse: the statement parsed; Bind, Describe, Execute, Close: the
    /// statement or portal named), following the batch's own Parses and
    /// Binds.
    pub(super) fn message_kinds(&self, batch: &[(Message, FrontendMessage)]) -> Vec<Option<Kind>> {
        let mut statements: HashMap<&str, Kind> = HashMap::new();
        let mut portals: HashMap<&str, Kind> = HashMap::new();
        let statement_kind = |statements: &HashMap<&str, Kind>, name: &str| {
            statements
                .get(name)
                .or_else(|| self.statements.get(name))
                .cloned()
                .unwrap_or(Kind::Other)
        };
        let portal_kind = |portals: &HashMap<&str, Kind>, name: &str| {
            portals
                .get(name)
                .or_else(|| self.portals.get(name))
                .cloned()
                .unwrap_or(Kind::Other)
        };
        batch
            .iter()
            .map(|(_, m)| match m {
                FrontendMessage::Parse { statement, sql, .. } => {
                    let kind = classify(sql);
                    statements.insert(statement, kind.clone());
                    Some(kind)
                }
                FrontendMessage::Bind { portal, statement } => {
                    let kind = statement_kind(&statements, statement);
                    portals.insert(portal, kind.clone());
                    Some(kind)
                }
                FrontendMessage::Describe { target, name }
                | FrontendMessage::Close { target, name } => Some(match target {
                    crate::proxy::wire::Describe::Statement => statement_kind(&statements, name),
                    crate::proxy::wire::Describe::Portal => portal_kind(&portals, name),
                }),
                FrontendMessage::Execute { portal, .. } => Some(portal_kind(&portals, portal)),
                _ => None,
            })
            .collect()
    }
}

fn is_control(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Begin { .. }
            | Kind::Commit { .. }
            | Kind::Rollback { .. }
            | Kind::SetTransaction
            | Kind::ProxySet { .. }
    )
}

/// True when an Execute before the next transaction-control Execute needs
/// a transaction.
fn needs_txn_ahead(batch: &[(Message, FrontendMessage)], kinds: &[Option<Kind>]) -> bool {
    for ((_, m), k) in batch.iter().zip(kinds) {
        let (FrontendMessage::Execute { .. }, Some(k)) = (m, k) else {
            continue;
        };
        match k {
            k if is_control(k) => return false,
            Kind::LocalMaintenance | Kind::Refused { .. } => {}
            _ => return true,
        }
    }
    false
}
