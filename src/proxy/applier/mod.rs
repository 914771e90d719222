//! The ordered committer and applier of one replica.
//!
//! It follows the certifier's stream of committed writesets in version
//! order. For each version it either hands the turn to the local session
//! that is waiting to commit that transaction (origin = this replica), or
//! applies the writeset itself from the log: a remote transaction, a local
//! one whose session died, or one certified before this proxy restarted
//! ("crash mid-commit"). Either way the replica commits the version in the
//! same transaction that records it in `tashkent.applied` (I2). The next
//! version does not wait for that commit: commits overlap and become
//! visible in version order through the commit order (`commit_order`);
//! the outcomes of the commits handed out are settled in version order
//! ([`InFlight`]), and a failed one breaks the order, after which
//! everything from it on is applied from the log again.
//!
//! A version that fits one Subscribe frame is decoded whole; consecutive
//! such versions applied from the log share one replica transaction
//! (catching up). A larger one is applied while it streams in, in pieces
//! of bounded size inside one replica transaction (I8).
//!
//! Failures: the transaction is rolled back and the stream is opened
//! again at the version that failed, after a back-off that grows to
//! [`MAX_BACKOFF`]. A version that keeps failing is reported once in the
//! log with its cause and published in `Shared::apply_stuck`: sessions
//! refuse writes and committers waiting for a later version are told,
//! instead of hanging silently.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use tashkent_certifier::proto::SubscribeFrame;
use tashkent_certifier::writeset::{Part, StreamDecoder};
use tashkent_certifier::{
    CertifierClient, CertifierError, CommittedWriteset, Op, Version, Writeset,
};
use tokio::sync::oneshot;

use super::commit_order::Place;
use super::coordination::{ApplyStuck, Shared, Turn};
use crate::error::{Error, Result};
use crate::proxy::capture;
use prost::Message;

mod conn;
mod in_flight;

pub use conn::{connect, connect_admin, ApplierConn};
use conn::{predecessor_failed, unblocked};
use in_flight::InFlight;

/// Batches stop growing past this many bytes of writesets.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// How often the applier reports progress to the certifier at most.
const REPORT_EVERY: Duration = Duration::from_millis(100);
/// How long a report may take: the applier waits for it between batches,
/// and a certifier that does not answer (a node deposed mid-call) must not
/// stop the replica applying. A report missed is sent again.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// Versions of `tashkent.applied` rows kept behind the newest.
const APPLIED_LOG_KEEP: u64 = 1000;
/// Longest pause between attempts at a failing version.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The next frame of version `v`, which has not ended yet: another
/// version's frame, or the end of the stream, is a protocol error.
async fn frame_of(
    frames: &mut futures::stream::Peekable<Frames>,
    v: Version,
) -> std::result::Result<SubscribeFrame, CertifierError> {
    match frames.next().await {
        Some(Ok(f)) if f.version == v => Ok(f),
        Some(Ok(f)) => Err(CertifierError::Protocol(format!(
            "version {} before version {v} ended",
            f.version
        ))),
        Some(Err(e)) => Err(e),
        None => Err(CertifierError::Protocol(format!(
            "stream ended inside version {v}"
        ))),
    }
}

/// Why following the stream stopped.
enum Stop {
    /// The stream ended or broke: subscribe again.
    Stream(CertifierError),
    /// Applying `version` failed: roll back, back off, try again.
    Apply { version: Version, error: Error },
    /// The replica holds fewer versions than this proxy thought (it
    /// restarted without commits it had acknowledged; the log has them).
    Rewound(Version),
    /// The commit of this version failed after it was handed over: the
    /// commit order broke there; apply from there from the log.
    Broken(Version),
    /// This version of a local session came without its changes (elided),
    /// and no session commits it: subscribe again, with its changes.
    Refetch(Version),
}

type Frames = std::pin::Pin<
    Box<dyn Stream<Item = std::result::Result<SubscribeFrame, CertifierError>> + Send>,
>;

/// Runs until the proxy shuts down.
pub async fn run(shared: Arc<Shared>) {
    let mut conn: Option<ApplierConn> = None;
    let mut last_report = std::time::Instant::now() - REPORT_EVERY;
    // The log stream gets an HTTP/2 connection of its own: while catching
    // up, its backlog fills the connection's flow-control window, and the
    // answers of other calls on that connection (the progress reports this
    // loop awaits) could not arrive until this loop reads on: a deadlock.
    let mut subscriber: Option<CertifierClient> = None;
    let mut failures = 0u32;
    let mut inflight = InFlight::default();
    let mut verify = true;
    // This process's own transactions come without their changes (their
    // sessions hold them), from this version on.
    let mut elide_from: Version = 0;
    // Streams that ended in an error in a row without applying anything:
    // the pause before the next grows, and the log says it at powers of two.
    let mut stream_errors: u32 = 0;
    loop {
        let from = *shared.applied.borrow() + 1;
        let sub = match &subscriber {
            Some(s) => s.clone(),
            None => match shared.certifier.connect_again().await {
                Ok(c) => subscriber.insert(c).clone(),
                Err(e) => {
                    tracing::warn!(
                        "connecting to the certifier at {}: {e}",
                        shared.cfg.certifier
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let frames = match sub
            .subscribe_frames_eliding(from, shared.txn_prefix(), elide_from)
            .await
        {
            Ok(s) => s,
            Err(e) if e.is_purged() => {
                needs_recovery(&shared, &e);
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            Err(e) => {
                tracing::warn!("subscribing to the certifier from version {from}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut f = Follower {
            shared: &shared,
            inflight: &mut inflight,
            conn: &mut conn,
            frames: frames.peekable(),
            verify,
            last_report: &mut last_report,
            failures: &mut failures,
        };
        let stop = f.follow().await;
        drop(f);
        // Before the stream starts again: every commit handed out must be
        // over, or a version still being committed by its session would
        // be applied from the log as well.
        inflight.drain(&shared).await;
        verify = false;
        match stop {
            Stop::Broken(v) => {
                tracing::debug!(
                    "the commit of version {v} failed: applying from there from the log"
                );
                continue;
            }
            Stop::Refetch(v) => {
                tracing::debug!("version {v} is this proxy's, but no session commits it");
                elide_from = elide_from.max(v + 1);
                continue;
            }
            Stop::Stream(e) if e.is_purged() => needs_recovery(&shared, &e),
            Stop::Stream(e) => {
                if *shared.applied.borrow() >= from {
                    stream_errors = 0;
                }
                stream_errors += 1;
                if stream_errors.is_power_of_two() {
                    tracing::warn!("certifier stream ({stream_errors} time(s) in a row): {e}");
                } else {
                    tracing::debug!("certifier stream: {e}");
                }
                let pause = Duration::from_millis(50u64 << (stream_errors - 1).min(5));
                tokio::time::sleep(pause).await;
                continue;
            }
            Stop::Rewound(db) => {
                tracing::warn!(
                    "the replica restarted at version {db}, below {}: replaying from version {}",
                    *shared.applied.borrow(),
                    db + 1
                );
                shared.applied.send_replace(db);
                shared.order.reset(db);
                continue;
            }
            Stop::Apply { version, error } => {
                failures += 1;
                verify = true;
                stuck(&shared, version, &error, failures);
                let pause = Duration::from_millis(50u64.saturating_mul(1 << failures.min(7)))
                    .min(MAX_BACKOFF);
                tokio::time::sleep(pause).await;
                continue;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A version failed `failures` times in a row: the second failure makes
/// it loud (log once per cause; writes refused while it lasts).
fn stuck(shared: &Shared, version: Version, error: &Error, failures: u32) {
    let cause = error.to_string();
    if failures < 2 {
        tracing::warn!("applying version {version} failed (retrying): {cause}");
        return;
    }
    let s = ApplyStuck { version, cause };
    let changed = shared.apply_stuck.send_if_modified(|cur| {
        if cur.as_ref() == Some(&s) {
            return false;
        }
        *cur = Some(s.clone());
        true
    });
    if changed {
        tracing::error!(
            "replica {} cannot apply version {}: {}; writes are refused here until it can \
             (retrying every {:?} at most)",
            shared.cfg.replica_id,
            s.version,
            s.cause,
            MAX_BACKOFF
        );
    }
}

/// The log no longer holds what this replica needs: say so once, loudly,
/// and make sessions refuse writes (they could never commit).
fn needs_recovery(shared: &Shared, e: &CertifierError) {
    let why = format!("replica {} cannot catch up: {e}", shared.cfg.replica_id);
    if shared.set_recovery_needed(why.clone()) {
        tracing::error!("{why}");
    }
}

/// Reports the replica's progress (also called by the idle ticker).
pub async fn report(shared: &Shared) {
    if shared.recovery_needed().is_some() {
        // Silent, so that the certifier's log purge does not wait for a
        // replica that will be rebuilt from a checkpoint anyway.
        return;
    }
    let applied = *shared.applied.borrow();
    let oldest = shared.oldest_snapshot();
    let reported = shared
        .certifier
        .report_applied(shared.cfg.replica_id, applied, oldest);
    match tokio::time::timeout(REPORT_TIMEOUT, reported).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!("reporting progress: {e}"),
        Err(_) => tracing::debug!(
            "reporting progress: no answer in {} s",
            REPORT_TIMEOUT.as_secs()
        ),
    }
}

struct Follower<'a> {
    shared: &'a Shared,
    /// Versions handed to sessions (or committed here) whose commits have
    /// not all been seen to finish, in version order.
    inflight: &'a mut InFlight,
    conn: &'a mut Option<ApplierConn>,
    frames: futures::stream::Peekable<Frames>,
    /// After a failure: read the replica's applied version before applying
    /// (an attempt whose answer was lost may have committed).
    verify: bool,
    last_report: &'a mut std::time::Instant,
    failures: &'a mut u32,
}

impl Follower<'_> {
    async fn follow(&mut self) -> Stop {
        let mut carry: Option<CommittedWriteset> = None;
        loop {
            let first = match carry.take() {
                Some(c) => Whole(c),
                None => match self.next_frame().await {
                    Err(stop) => return stop,
                    Ok(frame) if frame.last => match decode(frame) {
                        Ok(c) => Whole(c),
                        Err(e) => return e,
                    },
                    Ok(frame) => Streamed(frame),
                },
            };
            let v = match &first {
                Whole(c) => c.version,
                Streamed(f) => f.version,
            };
            if let Err(stop) = self.ensure_connected(v).await {
                return stop;
            }
            let done = self.inflight.last().max(*self.shared.applied.borrow());
            match first {
                Whole(c) if c.version <= done => continue,
                Streamed(f) if f.version <= done => {
                    if let Err(stop) = self.skip_rest(f.version).await {
                        return stop;
                    }
                    continue;
                }
                Whole(c) => {
                    let mut batch = vec![c];
                    if self.batchable(&batch[0]) {
                        carry = self.gather(&mut batch);
                    }
                    if let Err(stop) = self.commit_whole(batch).await {
                        return stop;
                    }
                }
                Streamed(f) => {
                    if let Err(stop) = self.commit_streamed(f).await {
                        return stop;
                    }
                }
            };
            let last = self.inflight.last();
            if last / APPLIED_LOG_KEEP > done / APPLIED_LOG_KEEP {
                self.prune(last).await;
            }
            if self.last_report.elapsed() >= REPORT_EVERY {
                *self.last_report = std::time::Instant::now();
                report(self.shared).await;
            }
        }
    }

    /// The next frame of the stream; meanwhile, commits that finish move
    /// the applied version on.
    async fn next_frame(&mut self) -> std::result::Result<SubscribeFrame, Stop> {
        loop {
            if let Some(failed) = self.inflight.settle_ready(self.shared) {
                return Err(Stop::Broken(failed));
            }
            let frame = tokio::select! {
                biased;
                f = self.frames.next() => f,
                failed = self.inflight.settle_next(self.shared), if self.inflight.waiting() => {
                    match failed {
                        Some(failed) => return Err(Stop::Broken(failed)),
                        None => continue,
                    }
                }
            };
            return match frame {
                None => Err(Stop::Stream(CertifierError::Protocol(
                    "stream ended".into(),
                ))),
                Some(Err(e)) => Err(Stop::Stream(e)),
                Some(Ok(f)) => {
                    let applied = *self.shared.applied.borrow();
                    self.shared.metrics.received(f.version, applied);
                    Ok(f)
                }
            };
        }
    }

    /// Waits for the place of `first` in the commit order: the transaction
    /// id of its predecessor (`None`: committed). Meanwhile, sessions'
    /// commits that finish are settled: one that failed without breaking
    /// the order (its session went away) must not leave this waiting.
    async fn place(&mut self, first: Version) -> std::result::Result<Option<u64>, Stop> {
        loop {
            if let Some(failed) = self.inflight.settle_ready(self.shared) {
                return Err(Stop::Broken(failed));
            }
            tokio::select! {
                p = self.shared.order.wait_place(first) => return match p {
                    Place::Go { prev_xid } => Ok(prev_xid),
                    Place::Broken(b) => Err(Stop::Broken(b)),
                },
                failed = self.inflight.settle_next(self.shared), if self.inflight.waiting() => {
                    if let Some(failed) = failed {
                        return Err(Stop::Broken(failed));
                    }
                }
            }
        }
    }

    /// A version the applier commits itself went through.
    fn committed_here(&mut self, first: Version, last: Version) {
        self.shared
            .metrics
            .applied_batch((last - first + 1) as usize);
        self.inflight.push(first, last, None);
        *self.failures = 0;
        if self.shared.apply_stuck.borrow().is_some() {
            self.shared.apply_stuck.send_replace(None);
            tracing::info!("replica {} applies again", self.shared.cfg.replica_id);
        }
    }

    /// Consecutive single-frame versions already received that can share
    /// `batch`'s replica transaction; returns one read but not batchable.
    fn gather(&mut self, batch: &mut Vec<CommittedWriteset>) -> Option<CommittedWriteset> {
        let mut bytes = 0;
        while batch.len() < self.shared.cfg.max_apply_batch && bytes < MAX_BATCH_BYTES {
            let next = std::pin::Pin::new(&mut self.frames)
                .next_if(|r| matches!(r, Ok(f) if f.last && !f.elided))
                .now_or_never();
            let Some(Some(Ok(frame))) = next else {
                break;
            };
            bytes += frame.data.len();
            let Ok(c) = decode(frame) else {
                // Undecodable: leave it to the next round, which reports it.
                break;
            };
            if !self.batchable(&c) {
                return Some(c);
            }
            batch.push(c);
        }
        None
    }

    /// True for a version the applier applies from the log that may share
    /// a replica transaction with others: not a local session's (which
    /// commits it itself when its turn comes), with its changes (not
    /// elided), and without DDL or TRUNCATE.
    fn batchable(&self, c: &CommittedWriteset) -> bool {
        !c.elided
            && c.writeset.ddl.is_empty()
            && !self.local_pending(&c.writeset.txn_id, c.writeset.origin)
    }

    fn local_pending(&self, txn_id: &[u8], origin: u32) -> bool {
        origin == self.shared.cfg.replica_id && self.shared.is_pending(txn_id)
    }

    /// Connects the applier's sessions if they are not (first use, or the
    /// replica's PostgreSQL went away), and after a reconnect or a failure
    /// reads the replica's applied version back: below `v - 1`, the server
    /// restarted without commits it had acknowledged (fsync and
    /// synchronous_commit are off; the certifier's log is what is durable).
    async fn ensure_connected(&mut self, v: Version) -> std::result::Result<(), Stop> {
        let fresh = self
            .conn
            .as_ref()
            .is_none_or(|c| c.client.is_closed() || c.monitor.is_closed());
        if !fresh && !self.verify {
            return Ok(());
        }
        if fresh && !self.inflight.is_empty() {
            // What the replica holds is read back once the commits in
            // flight are over.
            return Err(Stop::Apply {
                version: v,
                error: Error::Recovery("the applier's connection to the replica was lost".into()),
            });
        }
        if fresh {
            *self.conn = Some(
                connect(self.shared)
                    .await
                    .map_err(|error| Stop::Apply { version: v, error })?,
            );
        }
        let conn = self.conn.as_ref().expect("connected above");
        let db = capture::applied_version(&conn.client)
            .await
            .map_err(|error| Stop::Apply { version: v, error })?;
        self.verify = false;
        if db + 1 < v {
            return Err(Stop::Rewound(db));
        }
        if db >= v && db > *self.shared.applied.borrow() {
            // Committed by an attempt whose answer was lost.
            self.shared.applied.send_replace(db);
            self.shared.order.reset(db);
        }
        Ok(())
    }

    /// Commits whole versions: a local session's by handing it the turn,
    /// the rest applied from the log in one replica transaction.
    async fn commit_whole(
        &mut self,
        batch: Vec<CommittedWriteset>,
    ) -> std::result::Result<(), Stop> {
        let (first, last) = (batch[0].version, batch[batch.len() - 1].version);
        if batch.len() == 1 {
            let c = &batch[0];
            if self.local_pending(&c.writeset.txn_id, c.writeset.origin) {
                if let Some(done) = hand_turn(self.shared, &c.writeset.txn_id, first) {
                    self.inflight.push(first, first, Some(done));
                    return Ok(());
                }
            }
            if c.elided {
                return Err(Stop::Refetch(first));
            }
        }
        let own = own_tables(self.shared, batch.iter().map(|c| &c.writeset));
        let prev_xid = self.place(first).await?;
        let shared = self.shared;
        let conn = self.conn.as_mut().expect("connected");
        if batch.iter().all(|c| c.writeset.ddl.is_empty()) {
            let r = async {
                for c in &batch {
                    check_format(&c.writeset, c.version)?;
                }
                let items = batch.iter().flat_map(|c| c.writeset.items.iter());
                // Preparing a table's statements locks the table.
                let plan = conn.apply.plan(&conn.client, items);
                let planned = unblocked(shared, &conn.monitor, conn.pid, first, plan).await?;
                conn.commit_planned(shared, first, last, prev_xid, &own, &planned)
                    .await
            }
            .await;
            self.settle(r, first).await?;
            self.committed_here(first, last);
            return Ok(());
        }
        let r = async {
            conn.begin(shared, first, last).await?;
            for c in &batch {
                check_format(&c.writeset, c.version)?;
                let mut ddl = c.writeset.ddl.iter().peekable();
                for (i, item) in c.writeset.items.iter().enumerate() {
                    while let Some(d) = ddl.next_if(|d| d.before_item <= i as u64) {
                        conn.ddl(shared, d).await?;
                    }
                    conn.item(shared, item).await?;
                }
                for d in ddl {
                    conn.ddl(shared, d).await?;
                }
            }
            conn.finish(shared).await?;
            conn.end(shared, first, last, prev_xid, &own).await
        }
        .await;
        self.settle(r, first).await?;
        self.committed_here(first, last);
        Ok(())
    }

    /// Applies (or hands over) a version that spans several frames, while
    /// it streams in.
    async fn commit_streamed(&mut self, first: SubscribeFrame) -> std::result::Result<(), Stop> {
        let v = first.version;
        let mut decoder = StreamDecoder::new(self.shared.cfg.max_writeset_bytes as usize);
        let fail = |e: CertifierError| Stop::Apply {
            version: v,
            error: certifier_error(e),
        };
        let mut parts = decoder.push(&first.data).map_err(fail)?;
        // A spooled writeset's first frame holds only its header: read on
        // until the first part.
        let mut done = false;
        while parts.is_empty() && !done {
            let frame = frame_of(&mut self.frames, v).await.map_err(Stop::Stream)?;
            done = frame.last;
            parts = decoder.push(&frame.data).map_err(fail)?;
        }
        if parts.is_empty() {
            // Header only: nothing is certified like that.
            return Err(Stop::Apply {
                version: v,
                error: Error::Capture {
                    reason: format!("writeset {v} holds no rows and no statements"),
                },
            });
        }
        let mut parts = parts.into_iter().peekable();
        let Some(Part::Header(header)) = parts.next() else {
            return Err(Stop::Apply {
                version: v,
                error: Error::Capture {
                    reason: format!("writeset {v} does not start with its header"),
                },
            });
        };
        if !tashkent_certifier::writeset::readable_format(header.format_version) {
            return Err(Stop::Apply {
                version: v,
                error: format_error(header.format_version, v),
            });
        }
        if self.local_pending(&header.txn_id, header.origin) {
            if !done {
                self.skip_rest(v).await?;
            }
            if let Some(done) = hand_turn(self.shared, &header.txn_id, v) {
                self.inflight.push(v, v, Some(done));
                return Ok(());
            }
            // The session could not commit it: apply it from the log,
            // whose frames are gone by now.
            return Err(Stop::Stream(CertifierError::Protocol(format!(
                "version {v} is applied from the log after its session gave up"
            ))));
        }
        let own_origin = header.origin == self.shared.cfg.replica_id;
        let prev_xid = self.place(v).await?;
        let shared = self.shared;
        let conn = self.conn.as_mut().expect("connected");
        let mut tables: Vec<String> = Vec::new();
        let frames = &mut self.frames;
        let r = async {
            conn.begin(shared, v, v).await?;
            let mut pending: Vec<Part> = parts.collect();
            loop {
                for part in pending.drain(..) {
                    match part {
                        Part::Header(_) => {}
                        Part::Ddl(d) => conn.ddl(shared, &d).await?,
                        Part::Item(item) => {
                            if own_origin
                                && item.op != Op::Lock as i32
                                && !tables.contains(&item.table)
                            {
                                tables.push(item.table.clone());
                            }
                            conn.item(shared, &item).await?
                        }
                    }
                }
                if done {
                    break;
                }
                let frame = frame_of(frames, v).await.map_err(certifier_error)?;
                done = frame.last;
                pending = decoder.push(&frame.data).map_err(certifier_error)?;
                if done {
                    decoder.finish().map_err(certifier_error)?;
                }
            }
            conn.finish(shared).await?;
            conn.end(shared, v, v, prev_xid, &tables).await
        }
        .await;
        self.settle(r, v).await?;
        self.committed_here(v, v);
        Ok(())
    }

    /// Rolls a failed attempt back.
    async fn settle(&mut self, r: Result<()>, v: Version) -> std::result::Result<(), Stop> {
        match r {
            Ok(()) => Ok(()),
            Err(error) => {
                if let Some(conn) = self.conn.as_mut() {
                    let _ = conn.client.batch_execute("ROLLBACK").await;
                    conn.apply.forget_tables();
                }
                if predecessor_failed(&error) {
                    // The commit before this one failed (its committer
                    // breaks the order too): apply both from the log.
                    self.shared.order.break_at(v);
                    return Err(Stop::Broken(v));
                }
                Err(Stop::Apply { version: v, error })
            }
        }
    }

    /// Reads and drops the remaining frames of version `v`.
    async fn skip_rest(&mut self, v: Version) -> std::result::Result<(), Stop> {
        loop {
            if frame_of(&mut self.frames, v)
                .await
                .map_err(Stop::Stream)?
                .last
            {
                return Ok(());
            }
        }
    }

    /// Keeps `tashkent.applied` short: local commits add rows too.
    async fn prune(&mut self, last: Version) {
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        let keep_from =
            (last / APPLIED_LOG_KEEP * APPLIED_LOG_KEEP).saturating_sub(APPLIED_LOG_KEEP);
        if keep_from == 0 {
            return;
        }
        if let Err(e) = conn
            .client
            .batch_execute(&capture::prune_applied_sql(keep_from))
            .await
        {
            tracing::debug!("pruning tashkent.applied: {e}");
        }
    }
}

enum First {
    Whole(CommittedWriteset),
    Streamed(SubscribeFrame),
}
use First::{Streamed, Whole};

fn decode(frame: SubscribeFrame) -> std::result::Result<CommittedWriteset, Stop> {
    let v = frame.version;
    Writeset::decode(frame.data)
        .map(|writeset| CommittedWriteset {
            version: v,
            writeset,
            elided: frame.elided,
        })
        .map_err(|e| Stop::Apply {
            version: v,
            error: Error::Capture {
                reason: format!("undecodable writeset {v}: {e}"),
            },
        })
}

fn certifier_error(e: CertifierError) -> Error {
    Error::Certifier {
        context: "reading a writeset from the log".into(),
        source: e,
    }
}

fn format_error(format: u32, v: Version) -> Error {
    Error::Capture {
        reason: format!(
            "writeset {v} has format {format}; this proxy applies formats {}..={} (a log \
             written by another tashkent release)",
            tashkent_certifier::writeset::OLDEST_FORMAT_VERSION,
            tashkent_certifier::WRITESET_FORMAT_VERSION
        ),
    }
}

fn check_format(ws: &Writeset, v: Version) -> Result<()> {
    if tashkent_certifier::writeset::readable_format(ws.format_version) {
        Ok(())
    } else {
        Err(format_error(ws.format_version, v))
    }
}

/// Hands version `v` to the local session waiting for it, which commits
/// it and says on the returned channel whether it did; `None` when no
/// session takes it (the applier applies it from the log).
fn hand_turn(shared: &Shared, txn_id: &[u8], v: Version) -> Option<oneshot::Receiver<bool>> {
    let turn = shared.take_pending(txn_id)?;
    let (done, committed) = oneshot::channel();
    turn.send(Turn { version: v, done }).ok()?;
    Some(committed)
}

/// Tables this replica's own transactions wrote in `batch`. Applied from
/// the log they restore rows whose serial values this replica drew (a
/// rebuild, or a crash mid-commit): its sequences must move past them.
fn own_tables<'a>(shared: &Shared, batch: impl Iterator<Item = &'a Writeset>) -> Vec<String> {
    let mut tables: Vec<String> = batch
        .filter(|ws| ws.origin == shared.cfg.replica_id)
        .flat_map(|ws| ws.items.iter().filter(|i| i.op != Op::Lock as i32))
        .map(|i| i.table.clone())
        .collect();
    tables.sort_unstable();
    tables.dedup();
    tables
}
