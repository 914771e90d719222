//! Consistency levels in a session (`proxy::consistency`): the proxy's
//! own settings (`SET [LOCAL] tashkent.consistency`, `..._timeout`,
//! `tashkent.lock_conflicts`), the
//! wait before a transaction takes its snapshot, `SELECT
//! tashkent.wait_for(v)` and what `SHOW tashkent.*` tells of them.

use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::proxy::consistency::{Level, Setting};

/// Longest a retry under `eventual` waits for the version it lost to.
const RETRY_WAIT: Duration = Duration::from_secs(2);

impl Session {
    /// The settings the next (or open) transaction runs under.
    pub(super) fn freshness(&self) -> Consistency {
        self.txn_consistency.unwrap_or(self.consistency)
    }

    /// `SET [LOCAL] tashkent.<name> = value` (None: the default).
    pub(super) fn set_proxy_setting(
        &mut self,
        name: &str,
        value: Option<&str>,
        local: bool,
    ) -> std::result::Result<(), ErrorResponse> {
        let mut c = if local {
            self.freshness()
        } else {
            self.consistency
        };
        match Setting::parse(name, value)? {
            Setting::Level(l) => c.level = l.unwrap_or(self.shared.cfg.consistency),
            Setting::Timeout(t) => c.timeout = t.unwrap_or(self.shared.cfg.consistency_timeout),
            Setting::LockConflicts(b) => {
                c.lock_conflicts = b.unwrap_or(self.shared.cfg.lock_conflicts)
            }
        }
        if local {
            // Outside a transaction SET LOCAL does nothing (PostgreSQL
            // warns); a level raised inside one must still come first.
            let Some(txn) = &self.txn else {
                return Ok(());
            };
            if c.level != self.freshness().level && txn.snapshot().is_some() {
                return Err(errors::snapshot_already_taken(
                    "SET LOCAL tashkent.consistency",
                ));
            }
            self.txn_consistency = Some(c);
        } else {
            // As in PostgreSQL, a plain SET also overrides an earlier SET
            // LOCAL of the open transaction.
            self.consistency = c;
            self.txn_consistency = None;
        }
        Ok(())
    }

    /// A proxy setting from a client's statement: set, and when `SET
    /// LOCAL` raised the level of a transaction that has not taken its
    /// snapshot yet, the wait for it.
    pub(super) async fn proxy_set(
        &mut self,
        name: &str,
        value: Option<&str>,
        local: bool,
    ) -> Result<std::result::Result<(), ErrorResponse>> {
        let before = self.freshness();
        if let Err(e) = self.set_proxy_setting(name, value, local) {
            return Ok(Err(e));
        }
        let opening = self.txn.as_ref().is_some_and(|t| t.snapshot().is_none());
        if opening && self.freshness().level != before.level {
            if let Some(e) = self.wait_fresh().await? {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }

    /// What `SHOW tashkent.<name>` answers for the freshness settings.
    pub(super) fn freshness_show(&self, name: &str) -> Option<String> {
        let c = self.freshness();
        Some(match name {
            "consistency" => c.level.name().to_string(),
            "consistency_timeout" => format!("{}ms", c.timeout.as_millis()),
            "lock_conflicts" => if c.lock_conflicts { "on" } else { "off" }.to_string(),
            "last_commit_version" => self.last_commit.to_string(),
            _ => return None,
        })
    }

    /// Before a transaction takes its snapshot: waits until the replica
    /// has applied what the level asks for. `Some(error)` when it did not
    /// in time (nothing was sent to the replica).
    ///
    /// After a transaction lost (40001), the next one also waits for the
    /// version it lost to, at any level: its retry then sees that write
    /// and does not lose to it again, which keeps a replica whose apply
    /// trails from losing every race on a hot row. Under `eventual` that
    /// wait is best effort: when it runs out the transaction goes on.
    pub(super) async fn wait_fresh(&mut self) -> Result<Option<ErrorResponse>> {
        let c = self.freshness();
        // The wait for a fair turn has its own bound; the level's timeout
        // starts after it.
        let retry = match std::mem::take(&mut self.retry_floor) {
            v if self.shared.cfg.fair_retries => v.max(self.await_fair_turn(c.timeout).await),
            _ => 0,
        };
        let started = Instant::now();
        let deadline = started + c.timeout;
        let (what, wanted) = match c.level {
            Level::Eventual => {
                if retry > *self.shared.applied.borrow() {
                    // Best effort, and short: a replica whose applier is
                    // stuck must not hold every retry for the whole timeout.
                    let wait = c.timeout.min(RETRY_WAIT);
                    let _ = self
                        .wait_applied("a retry", retry, started + wait, wait)
                        .await;
                }
                return Ok(None);
            }
            Level::Causal => ("consistency causal", self.causal_floor),
            Level::Strong => {
                let asked = tokio::time::timeout_at(deadline, async {
                    // The certifier restarting is no reason to give up
                    // before the timeout.
                    loop {
                        match self.shared.acknowledged().await {
                            Ok(v) => return Ok(v),
                            Err(e) if Instant::now() + Duration::from_millis(50) < deadline => {
                                tracing::debug!("asking the certifier what it acknowledged: {e}");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                })
                .await;
                match asked {
                    Ok(Ok(v)) => ("consistency strong", v.max(self.causal_floor)),
                    Ok(Err(e)) => {
                        return Ok(Some(errors::acknowledged_unknown(
                            &e.to_string(),
                            c.timeout,
                        )))
                    }
                    Err(_) => {
                        return Ok(Some(errors::acknowledged_unknown("no answer", c.timeout)))
                    }
                }
            }
        };
        Ok(self
            .wait_applied(what, wanted.max(retry), deadline, c.timeout)
            .await)
    }

    /// After a loss the certifier queued this session on a row for (see
    /// the certifier's `turns`): waits for the session's turn on it, at
    /// most `timeout` (then goes on: a turn is for fairness, not
    /// correctness). The newest version that wrote the row, which the
    /// retry must see (0: none known).
    async fn await_fair_turn(&mut self, timeout: Duration) -> Version {
        let key = std::mem::take(&mut self.fair_key);
        if key == 0 {
            return 0;
        }
        let asked = self.shared.certifier.await_turn(self.fair_session, key);
        match tokio::time::timeout(timeout, asked).await {
            Ok(Ok((version, granted))) => {
                if granted {
                    self.held_turn = key;
                }
                version
            }
            Ok(Err(e)) => {
                tracing::debug!("waiting for a fair turn: {e}");
                0
            }
            Err(_) => {
                self.leave_turn_later(key);
                0
            }
        }
    }

    /// Gives up this session's place on `key` at the certifier, in the
    /// background (best effort: a turn left behind lapses anyway).
    pub(super) fn leave_turn_later(&self, key: u64) {
        let certifier = self.shared.certifier.clone();
        let session = self.fair_session;
        tokio::spawn(async move {
            let left = certifier.leave_turn(session, key);
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), left).await {
                tracing::debug!("leaving a fair turn: {e}");
            }
        });
    }

    /// `SELECT tashkent.wait_for(v)`: answers one row (the replica's
    /// applied version) once the replica has applied `v`; raises the
    /// session's causal floor to `v`.
    pub(super) async fn wait_for(&mut self, v: Version) -> std::result::Result<(), ErrorResponse> {
        if self.txn.as_ref().is_some_and(|t| t.snapshot().is_some()) {
            return Err(errors::snapshot_already_taken("tashkent.wait_for"));
        }
        let timeout = self.freshness().timeout;
        let deadline = Instant::now() + timeout;
        if let Some(e) = self
            .wait_applied("tashkent.wait_for", v, deadline, timeout)
            .await
        {
            return Err(e);
        }
        self.causal_floor = self.causal_floor.max(v);
        let applied = self.shared.applied.borrow().to_string();
        self.push_one_row("wait_for", &applied, "SELECT 1");
        Ok(())
    }

    /// Waits until the replica has applied `wanted`, at most until
    /// `deadline`.
    async fn wait_applied(
        &self,
        what: &str,
        wanted: Version,
        deadline: Instant,
        timeout: Duration,
    ) -> Option<ErrorResponse> {
        let mut rx = self.shared.applied.subscribe();
        let reached = tokio::time::timeout_at(deadline, rx.wait_for(|&a| a >= wanted)).await;
        match reached {
            Ok(Ok(_)) => None,
            _ => Some(errors::consistency_timeout(
                what,
                self.shared.cfg.replica_id,
                wanted,
                *self.shared.applied.borrow(),
                timeout,
            )),
        }
    }

    /// The session committed `v`.
    pub(super) fn committed_version(&mut self, v: Version) {
        self.losses = 0;
        self.lost_txn = false;
        self.last_commit = self.last_commit.max(v);
        self.causal_floor = self.causal_floor.max(v);
    }
}
