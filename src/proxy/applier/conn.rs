//! The applier's sessions on its replica: the one that applies
//! versions (its items, DDL, and commits in their turn, pipelined) and a
//! second that watches for local transactions blocking it and aborts
//! them (early abort, ARCHITECTURE.md step 7).

use tashkent_certifier::Version;
use tokio_postgres::{Client, Statement};

use crate::error::{Error, Result};
use crate::proxy::capture::{
    self,
    apply::{Apply, Planned},
};
use crate::proxy::coordination::Shared;
use crate::proxy::ProxyConfig;

/// How long an apply may wait on locks before blocking local transactions
/// are aborted.
const BLOCKED_CHECK: std::time::Duration = std::time::Duration::from_millis(20);

/// A session of the proxy's own on its replica.
pub async fn connect_admin(cfg: &ProxyConfig) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(&cfg.admin_conninfo(), tokio_postgres::NoTls)
        .await
        .map_err(Error::sql(format!(
            "connecting to the replica at {}:{}",
            cfg.pg_host, cfg.pg_port
        )))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The applier's session, a second one that watches for local
/// transactions blocking it, and its prepared statements.
pub struct ApplierConn {
    pub(super) client: Client,
    pub(super) pid: i32,
    pub(super) monitor: Client,
    pub(super) apply: Apply,
    /// `tashkent.take_turns($1, $2)` and `tashkent.wait_turn($1, $2)`.
    pub(super) take_turns: Statement,
    pub(super) wait_turn: Statement,
    /// The first version of the transaction being applied.
    pub(super) applying: Version,
}

impl ApplierConn {
    /// Applies an item, aborting local transactions that block it.
    pub(super) async fn item(
        &mut self,
        shared: &Shared,
        item: &tashkent_certifier::Item,
    ) -> Result<()> {
        unblocked(
            shared,
            &self.monitor,
            self.pid,
            self.applying,
            self.apply.item(&self.client, item),
        )
        .await
    }

    /// Runs a statement, aborting local transactions that block it.
    pub(super) async fn ddl(&mut self, shared: &Shared, d: &tashkent_certifier::Ddl) -> Result<()> {
        unblocked(
            shared,
            &self.monitor,
            self.pid,
            self.applying,
            self.apply.ddl(&self.client, d),
        )
        .await
    }

    /// Applies what is gathered.
    pub(super) async fn finish(&mut self, shared: &Shared) -> Result<()> {
        unblocked(
            shared,
            &self.monitor,
            self.pid,
            self.applying,
            self.apply.finish(&self.client),
        )
        .await
    }

    /// Opens the transaction of versions `first..=last` and takes their
    /// turn in the commit order (in one round trip).
    pub(super) async fn begin(
        &mut self,
        shared: &Shared,
        first: Version,
        last: Version,
    ) -> Result<()> {
        self.applying = first;
        let (begun, turn) = futures::join!(
            self.client.batch_execute("BEGIN"),
            take_turn(&self.client, &self.take_turns, shared, first, last)
        );
        begun.map_err(Error::sql("opening the applier's transaction"))?;
        turn
    }

    /// Versions `first..=last` whose row changes are `planned`, in one
    /// pipeline: BEGIN, the turn, the rows, sequences moved past rows of
    /// this replica's own (`own_tables`), the wait for the predecessor
    /// (transaction `prev_xid`) and COMMIT ([`Self::run_steps`]).
    pub(super) async fn commit_planned(
        &mut self,
        shared: &Shared,
        first: Version,
        last: Version,
        prev_xid: Option<u64>,
        own_tables: &[String],
        planned: &[Planned],
    ) -> Result<()> {
        self.applying = first;
        let advance =
            (!own_tables.is_empty()).then(|| capture::advance_sequences_sql(Some(own_tables)));
        let prev_xid = prev_xid.map(|x| x.to_string());
        let client = &self.client;
        let mut steps: Vec<Step<'_>> = Vec::with_capacity(planned.len() + 5);
        steps.push(Box::pin(async {
            client
                .batch_execute("BEGIN")
                .await
                .map_err(Error::sql("opening the applier's transaction"))
        }));
        steps.push(Box::pin(take_turn(
            client,
            &self.take_turns,
            shared,
            first,
            last,
        )));
        for p in planned {
            steps.push(Box::pin(p.execute(client)));
        }
        self.push_commit(&mut steps, first, prev_xid.as_deref(), advance.as_deref());
        self.run_steps(shared, first, last, steps).await
    }

    /// Waits for the predecessor of `first` (transaction `prev_xid`) to
    /// commit, moves sequences past rows of this replica's own that came
    /// from the log (`own_tables`), and commits, in one pipeline.
    pub(super) async fn end(
        &mut self,
        shared: &Shared,
        first: Version,
        last: Version,
        prev_xid: Option<u64>,
        own_tables: &[String],
    ) -> Result<()> {
        let advance =
            (!own_tables.is_empty()).then(|| capture::advance_sequences_sql(Some(own_tables)));
        let prev_xid = prev_xid.map(|x| x.to_string());
        let mut steps: Vec<Step<'_>> = Vec::with_capacity(3);
        self.push_commit(&mut steps, first, prev_xid.as_deref(), advance.as_deref());
        self.run_steps(shared, first, last, steps).await
    }

    /// The end of the transaction of `first..`: the sequences moved
    /// (`advance`), the wait for the predecessor (transaction `prev_xid`;
    /// none when it is known committed) and COMMIT.
    pub(super) fn push_commit<'a>(
        &'a self,
        steps: &mut Vec<Step<'a>>,
        first: Version,
        prev_xid: Option<&'a str>,
        advance: Option<&'a str>,
    ) {
        let client = &self.client;
        if let Some(sql) = advance {
            steps.push(Box::pin(async move {
                client
                    .batch_execute(sql)
                    .await
                    .map_err(Error::sql("advancing sequences past replayed rows"))
            }));
        }
        if let Some(prev_xid) = prev_xid {
            let prev = first as i64 - 1;
            let wait_turn = &self.wait_turn;
            steps.push(Box::pin(async move {
                client
                    .execute(wait_turn, &[&prev, &prev_xid])
                    .await
                    .map(drop)
                    .map_err(Error::sql(format!("waiting for version {prev} to commit")))
            }));
        }
        steps.push(Box::pin(async move {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(Error::sql(format!("committing version {first}")))
        }));
    }

    /// Sends `steps` in one pipeline (each is sent when first polled, in
    /// order) while watching for local transactions that block them. A
    /// statement that fails aborts the transaction, so the COMMIT behind
    /// it rolls back: the first error is the outcome.
    pub(super) async fn run_steps(
        &self,
        shared: &Shared,
        first: Version,
        last: Version,
        steps: Vec<Step<'_>>,
    ) -> Result<()> {
        let results = unblocked(
            shared,
            &self.monitor,
            self.pid,
            first,
            futures::future::join_all(steps),
        )
        .await;
        let r: Result<()> = results.into_iter().collect();
        if r.is_ok() {
            shared.order.committed(last);
        }
        r
    }
}

/// One statement of a pipelined replica transaction.
pub(super) type Step<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>;

/// `wait_turn`'s error: the predecessor did not commit.
pub(super) fn predecessor_failed(e: &Error) -> bool {
    matches!(e, Error::Sql { source, .. }
        if source.code().map(|c| c.code()) == Some(capture::PREDECESSOR_FAILED))
}

/// Takes the turn of versions `first..=last` in the open transaction
/// (`take_turns`, the prepared `tashkent.take_turns`) and says so to the
/// commit order.
pub(super) async fn take_turn(
    client: &Client,
    take_turns: &Statement,
    shared: &Shared,
    first: Version,
    last: Version,
) -> Result<()> {
    let (f, l) = (first as i64, last as i64);
    let xid: String = client
        .query_one(take_turns, &[&f, &l])
        .await
        .map_err(Error::sql(format!("taking the turn of version {first}")))?
        .get(0);
    let xid = xid.parse().map_err(|_| Error::Capture {
        reason: format!("take_turns answered the transaction id {xid:?}"),
    })?;
    if shared.order.took_turn(first, last, xid) {
        Ok(())
    } else {
        Err(Error::Capture {
            reason: format!("versions {first}..={last} took their turn out of order"),
        })
    }
}

/// Connects the applier's sessions to the replica.
pub async fn connect(shared: &Shared) -> Result<ApplierConn> {
    let client = connect_admin(&shared.cfg).await?;
    let monitor = connect_admin(&shared.cfg).await?;
    capture::become_applier(&client).await?;
    // The applier must never be the victim of a deadlock with a local
    // transaction: with a longer timeout the other side's check fires
    // first and aborts the local transaction.
    client
        .batch_execute(
            "SET deadlock_timeout = '10s'; SET standard_conforming_strings = on; \
             SET statement_timeout = 0",
        )
        .await
        .map_err(Error::sql("preparing the applier session"))?;
    let pid = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .map_err(Error::sql("reading the applier's backend pid"))?
        .get(0);
    let take_turns = client
        .prepare("SELECT tashkent.take_turns($1, $2)::text")
        .await
        .map_err(Error::sql("preparing the applier's statements"))?;
    let wait_turn = client
        .prepare("SELECT tashkent.wait_turn($1, $2::text::xid8)")
        .await
        .map_err(Error::sql("preparing the applier's statements"))?;
    Ok(ApplierConn {
        client,
        pid,
        monitor,
        apply: Apply::new(),
        take_turns,
        wait_turn,
        applying: 0,
    })
}

/// Early abort (ARCHITECTURE.md, step 7): local transactions that hold locks the
/// applier waits for and are not being certified are doomed and their
/// statements cancelled.
pub(super) async fn release_blockers(
    shared: &Shared,
    monitor: &Client,
    pid: i32,
    applying: Version,
) {
    let Ok(rows) = monitor
        .query("SELECT unnest(pg_blocking_pids($1))", &[&pid])
        .await
    else {
        return;
    };
    for row in rows {
        let pid: i32 = row.get(0);
        if let Some(session) = shared.doom(pid, applying) {
            tracing::debug!("aborting local transaction on backend {pid}: it blocks the applier");
            let _ = monitor
                .execute("SELECT pg_cancel_backend($1)", &[&pid])
                .await;
            session.cancel_delivered();
        }
    }
}

/// Runs `fut` (a statement of the applier) while aborting local
/// transactions that block it.
pub(super) async fn unblocked<T>(
    shared: &Shared,
    monitor: &Client,
    pid: i32,
    applying: Version,
    fut: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(fut);
    let mut check =
        tokio::time::interval_at(tokio::time::Instant::now() + BLOCKED_CHECK, BLOCKED_CHECK);
    loop {
        tokio::select! {
            r = &mut fut => return r,
            _ = check.tick() => release_blockers(shared, monitor, pid, applying).await,
        }
    }
}
