//! State shared between the `Wal` handles, the writer thread and readers.
//!
//! Lock discipline: `state` is held only for short, non-blocking sections
//! (queueing an op, taking the queue, publishing the durable LSN to
//! waiters); no I/O ever happens under it, so `submit` never waits for the
//! disk. `segments` is written only by the writer thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::oneshot;

use crate::segment::SegmentInfo;
use crate::{Lsn, WalError, WalOptions};

pub(crate) type Reply<T> = oneshot::Sender<Result<T, WalError>>;

/// Who hears of one append's outcome.
pub(crate) enum AppendReply {
    /// An [`crate::AppendTicket`]'s sender.
    Ticket(Reply<Lsn>),
    /// A callback of [`crate::Wal::submit_then`].
    Call(Callback),
}

impl AppendReply {
    pub(crate) fn send(self, r: Result<Lsn, WalError>) {
        match self {
            // A dropped ticket is nobody's business.
            AppendReply::Ticket(t) => drop(t.send(r)),
            AppendReply::Call(c) => c.call(r),
        }
    }
}

/// A callback run on the writer's thread (it must be quick and must not
/// block), exactly once: dropped uncalled (the log closed with the
/// append still queued), it is called with [`WalError::Closed`], as a
/// ticket then resolves.
pub(crate) struct Callback(Option<AppendDone>);

type AppendDone = Box<dyn FnOnce(Result<Lsn, WalError>) + Send>;

impl Callback {
    pub(crate) fn new(f: impl FnOnce(Result<Lsn, WalError>) + Send + 'static) -> Callback {
        Callback(Some(Box::new(f)))
    }

    fn call(mut self, r: Result<Lsn, WalError>) {
        if let Some(f) = self.0.take() {
            f(r);
        }
    }
}

impl Drop for Callback {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(WalError::Closed));
        }
    }
}

/// Work for the writer thread, executed strictly in queue order.
pub(crate) enum Op {
    Append {
        lsn: Lsn,
        payload: Bytes,
        /// `None` for records of `Wal::submit_many`, which nobody awaits
        /// one by one.
        reply: Option<AppendReply>,
    },
    Truncate {
        lsn: Lsn,
        reply: Reply<()>,
    },
    Purge {
        lsn: Lsn,
        reply: Reply<()>,
    },
    /// Drop every record; the next one is `next_lsn`.
    Restart {
        next_lsn: Lsn,
        reply: Reply<()>,
    },
}

pub(crate) struct State {
    /// LSN the next `submit` assigns.
    pub next_lsn: Lsn,
    pub queue: Vec<Op>,
    /// No new ops are accepted; the writer drains the queue and exits.
    pub closed: bool,
    /// Set on the first failed write/fsync; never cleared.
    pub poisoned: Option<std::sync::Arc<WalError>>,
    /// `wait_durable` callers, resolved when the durable LSN passes them.
    pub waiters: Vec<(Lsn, Reply<()>)>,
    /// Highest LSN ever passed to `purge_below` (or the first LSN at open):
    /// `truncate_after` may not cut below it, so a queued purge and a
    /// truncate can never both apply to the same segment.
    pub purge_floor: Lsn,
    /// Submitters wake the writer only once the queue holds this many ops:
    /// `usize::MAX` while the writer is busy (it will look at the queue
    /// when done anyway, so no futex wake is spent), 1 while it idles, and
    /// the size of the previous group while it briefly waits for a group to
    /// fill (see `writer.rs`).
    pub wake_at: usize,
    /// `Durability::Deferred`: the highest LSN a `wait_durable` caller
    /// waits for; the writer syncs as soon as it is written.
    pub sync_wanted: Lsn,
    /// A truncate, purge or restart is queued: the writer runs it at once
    /// (a deferred writer lets appends wait).
    pub urgent: bool,
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub opts: WalOptions,
    pub state: Mutex<State>,
    /// Wakes the writer when the queue becomes non-empty or on close.
    pub wake: Condvar,
    pub written: AtomicU64,
    pub durable: AtomicU64,
    pub last: AtomicU64,
    pub first: AtomicU64,
    /// All segments, oldest first; the last is the one being appended to.
    pub segments: RwLock<Vec<SegmentInfo>>,
    pub stats: Counters,
    /// Told of every group written and synced (metrics), once set.
    pub observer: std::sync::OnceLock<crate::SyncObserver>,
    /// When the writer's current I/O started, in nanoseconds after
    /// `epoch` plus one; 0 while it is not doing I/O (`stall.rs` reads it).
    pub busy_since: AtomicU64,
    pub epoch: std::time::Instant,
    /// The stall watchdog failed the log (`WalError::Stalled`): whatever
    /// the writer's stuck I/O returns, it acknowledges nothing.
    pub stalled: AtomicBool,
    /// Woken when the stall watchdog fails the log (`Wal::close` stops
    /// waiting for the writer then).
    pub stall_seen: tokio::sync::Notify,
    /// The writer thread has exited (the watchdog stops watching then).
    pub writer_done: AtomicBool,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub appends: AtomicU64,
    pub groups: AtomicU64,
    pub bytes: AtomicU64,
}

impl Shared {
    /// Queues `op` and wakes the writer if it is waiting for that.
    pub fn enqueue(&self, st: &mut State, op: Op) {
        let urgent = !matches!(op, Op::Append { .. });
        st.queue.push(op);
        st.urgent |= urgent;
        if urgent || st.queue.len() >= st.wake_at {
            self.wake.notify_one();
        }
    }

    /// The writer starts I/O that may block (`idle` when done).
    pub fn busy(&self) {
        let since = self.epoch.elapsed().as_nanos() as u64 + 1;
        self.busy_since.store(since, Ordering::Release);
    }

    pub fn idle(&self) {
        self.busy_since.store(0, Ordering::Release);
    }

    /// How long the writer's current I/O has been running, if it is in one.
    pub fn busy_for(&self) -> Option<std::time::Duration> {
        let since = self.busy_since.load(Ordering::Acquire);
        let now = self.epoch.elapsed().as_nanos() as u64 + 1;
        (since != 0).then(|| std::time::Duration::from_nanos(now.saturating_sub(since)))
    }

    /// What an operation on the failed log is answered, if it failed.
    /// Takes the state lock.
    pub fn poisoned(&self) -> Option<WalError> {
        let cause = self.state.lock().poisoned.clone()?;
        Some(self.poison_error(&cause))
    }

    pub fn poison_error(&self, cause: &std::sync::Arc<WalError>) -> WalError {
        WalError::Poisoned {
            cause: cause.clone(),
        }
    }

    /// Publishes a new durable LSN and wakes the `wait_durable` callers it
    /// satisfies; false, publishing nothing, once the stall watchdog has
    /// failed the log. The store happens under `state` so a waiter
    /// registering concurrently either sees the new value or is woken
    /// here, and the watchdog (which fails the log under `state` too)
    /// either comes before, and nothing is published, or after.
    pub fn publish_durable(&self, lsn: Lsn) -> bool {
        let ready: Vec<Reply<()>> = {
            let mut st = self.state.lock();
            if self.stalled.load(Ordering::Acquire) {
                return false;
            }
            self.durable.store(lsn, Ordering::Release);
            let mut ready = Vec::new();
            let mut i = 0;
            while i < st.waiters.len() {
                if st.waiters[i].0 <= lsn {
                    ready.push(st.waiters.swap_remove(i).1);
                } else {
                    i += 1;
                }
            }
            ready
        };
        for r in ready {
            let _ = r.send(Ok(()));
        }
        true
    }
}
