//! The public handle: `Wal`, `AppendTicket` and `WalStats`. Everything here
//! is non-blocking bookkeeping around the queue; the I/O happens on the
//! writer thread (`writer.rs`).

use std::fs;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::oneshot;

use crate::error::IoContext;
use crate::reader::WalReader;
use crate::shared::{AppendReply, Callback, Counters, Op, Shared, State};
use crate::writer::Writer;
use crate::{backend, format, recovery, segment, Backend, Durability, Lsn, WalError, WalOptions};

/// A handle to an open log. Cheap to clone; all clones share one writer.
/// The writer stops when `close` is called on any clone or the last clone
/// is dropped (after finishing everything already submitted).
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    backend: Backend,
    thread: parking_lot::Mutex<Option<JoinHandle<()>>>,
    done: parking_lot::Mutex<Option<oneshot::Receiver<Result<(), WalError>>>>,
}

/// Counters for benchmarks and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalStats {
    /// The backend actually in use (what `Auto` resolved to).
    pub backend: Backend,
    /// Records written and synced since open.
    pub appends: u64,
    /// Groups written since open; each cost exactly one fdatasync.
    pub groups: u64,
    /// Frame bytes written since open.
    pub bytes: u64,
}

/// The LSN assigned to a submitted record, and a future that resolves with
/// it once the record is durable (or with the error that prevents it).
#[derive(Debug)]
#[must_use = "the record is only known to be durable once the ticket resolves"]
pub struct AppendTicket {
    pub lsn: Lsn,
    rx: oneshot::Receiver<Result<Lsn, WalError>>,
}

impl Future for AppendTicket {
    type Output = Result<Lsn, WalError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(r)) => Poll::Ready(r),
            // The writer went away without answering (it only does so
            // after close); never report that as success.
            Poll::Ready(Err(_)) => Poll::Ready(Err(WalError::Closed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Wal {
    /// Opens (creating if absent) the log in `dir`: locks it, runs the
    /// recovery scan and starts the writer thread. Blocking.
    pub fn open(dir: impl AsRef<Path>, opts: WalOptions) -> Result<Wal, WalError> {
        let dir = dir.as_ref().to_path_buf();
        validate(&opts)?;
        if !dir.exists() {
            fs::create_dir_all(&dir).ctx(&dir)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                segment::sync_dir(parent)?;
            }
        }
        let lock = segment::lock_dir(&dir)?;
        let backend = backend::open(opts.backend, &dir)?;
        let backend_kind = backend.kind();
        let rec = recovery::recover(&dir, opts.segment_size)?;
        let last = rec.next_lsn - 1;
        let first = rec.segments.first().map_or(rec.next_lsn, |s| s.first_lsn);
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            opts,
            state: Mutex::new(State {
                next_lsn: rec.next_lsn,
                queue: Vec::new(),
                closed: false,
                poisoned: None,
                waiters: Vec::new(),
                purge_floor: first,
                wake_at: 1,
                sync_wanted: 0,
                urgent: false,
            }),
            wake: Condvar::new(),
            written: AtomicU64::new(last),
            durable: AtomicU64::new(last),
            last: AtomicU64::new(last),
            first: AtomicU64::new(first),
            segments: RwLock::new(rec.segments),
            stats: Counters::default(),
            observer: std::sync::OnceLock::new(),
            busy_since: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            stalled: std::sync::atomic::AtomicBool::new(false),
            stall_seen: tokio::sync::Notify::new(),
            writer_done: std::sync::atomic::AtomicBool::new(false),
        });
        let writer = Writer::new(shared.clone(), backend, rec.active, lock);
        let (done_tx, done_rx) = oneshot::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tashkent-wal-writer".into())
            .spawn(move || {
                let r = writer.run();
                thread_shared.writer_done.store(true, Ordering::Release);
                // Nothing can make these durable any more.
                let waiters = std::mem::take(&mut thread_shared.state.lock().waiters);
                for (_, w) in waiters {
                    let _ = w.send(Err(WalError::Closed));
                }
                let _ = done_tx.send(r);
            })
            .ctx(&dir)?;
        if let Some(timeout) = shared.opts.stall_timeout {
            crate::stall::watch(Arc::downgrade(&shared), timeout).ctx(&dir)?;
        }
        tracing::debug!(dir = %dir.display(), backend = ?backend_kind, next_lsn = last + 1, "WAL open");
        Ok(Wal {
            inner: Arc::new(Handle {
                shared,
                backend: backend_kind,
                thread: parking_lot::Mutex::new(Some(thread)),
                done: parking_lot::Mutex::new(Some(done_rx)),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Queues `payload` as the next record and returns its LSN at once; the
    /// ticket resolves when it is durable. Never waits for I/O.
    pub fn submit(&self, payload: impl Into<Bytes>) -> Result<AppendTicket, WalError> {
        let (reply, rx) = oneshot::channel();
        let lsn = self.enqueue_append(payload.into(), || AppendReply::Ticket(reply))?;
        Ok(AppendTicket { lsn, rx })
    }

    /// Queues `payload` as the next record and returns its LSN at once;
    /// `done` is called with the outcome a ticket would resolve to, on the
    /// writer's thread, right after the fdatasync that made the record
    /// durable (or with the error that means it never will be; also when
    /// the log closes first). It must be quick and must not block: it
    /// holds up the acknowledgement of the records after it. It must not
    /// panic (that would end the writer thread) and must not own the
    /// log's last handle (dropping it there would join the writer from
    /// itself). When this returns an error, `done` is dropped uncalled.
    ///
    /// Why: a caller that only passes the outcome on (a raft log's flush
    /// callback) saves the task that would await a ticket, one hand-off
    /// between threads per append.
    pub fn submit_then(
        &self,
        payload: impl Into<Bytes>,
        done: impl FnOnce(Result<Lsn, WalError>) + Send + 'static,
    ) -> Result<Lsn, WalError> {
        self.enqueue_append(payload.into(), || AppendReply::Call(Callback::new(done)))
    }

    /// Queues an append answered by `reply()`, made only once it is
    /// queued (a refused append answers nobody).
    fn enqueue_append(
        &self,
        payload: Bytes,
        reply: impl FnOnce() -> AppendReply,
    ) -> Result<Lsn, WalError> {
        self.check_size(&payload)?;
        let mut st = self.shared().state.lock();
        check_open(self.shared(), &st)?;
        let lsn = st.next_lsn;
        st.next_lsn += 1;
        self.shared().last.store(lsn, Ordering::Release);
        self.shared().enqueue(
            &mut st,
            Op::Append {
                lsn,
                payload,
                reply: Some(reply()),
            },
        );
        Ok(lsn)
    }

    /// Queues `payloads` as the next records, in order, under one lock and
    /// without a ticket each (for a caller that follows durability with
    /// [`Wal::durable_lsn`] or [`Wal::wait_durable`]), and returns the LSN
    /// of the first. Nothing is queued if one of them is too large.
    pub fn submit_many(&self, payloads: Vec<Bytes>) -> Result<Lsn, WalError> {
        payloads.iter().try_for_each(|p| self.check_size(p))?;
        let mut st = self.shared().state.lock();
        check_open(self.shared(), &st)?;
        let first = st.next_lsn;
        for payload in payloads {
            let lsn = st.next_lsn;
            st.next_lsn += 1;
            self.shared().enqueue(
                &mut st,
                Op::Append {
                    lsn,
                    payload,
                    reply: None,
                },
            );
        }
        self.shared().last.store(st.next_lsn - 1, Ordering::Release);
        Ok(first)
    }

    /// A record over `max_record_size` is refused before it is queued.
    fn check_size(&self, payload: &Bytes) -> Result<(), WalError> {
        let max = self.shared().opts.max_record_size;
        if payload.len() as u64 > max {
            return Err(WalError::RecordTooLarge {
                size: payload.len() as u64,
                max,
            });
        }
        Ok(())
    }

    /// Appends a record and waits until it is durable; returns its LSN.
    pub async fn append(&self, payload: impl Into<Bytes>) -> Result<Lsn, WalError> {
        self.submit(payload)?.await
    }

    /// Highest LSN handed to the OS (written, maybe not yet synced).
    pub fn written_lsn(&self) -> Lsn {
        self.shared().written.load(Ordering::Acquire)
    }

    /// Highest LSN covered by an fdatasync.
    pub fn durable_lsn(&self) -> Lsn {
        self.shared().durable.load(Ordering::Acquire)
    }

    /// Highest LSN assigned (0 if none). After `truncate_after(n)` this is
    /// `n` at once, while written/durable follow when the writer gets there.
    pub fn last_lsn(&self) -> Lsn {
        self.shared().last.load(Ordering::Acquire)
    }

    /// Oldest LSN still retained; `last_lsn() + 1` when no record is.
    pub fn first_lsn(&self) -> Lsn {
        self.shared().first.load(Ordering::Acquire)
    }

    /// The backend in use and write counters.
    pub fn stats(&self) -> WalStats {
        let s = &self.shared().stats;
        WalStats {
            backend: self.inner.backend,
            appends: s.appends.load(Ordering::Relaxed),
            groups: s.groups.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
        }
    }

    /// Has `observer` told of every group the writer syncs from now on
    /// (called on the writer thread, so it must be quick). One observer
    /// per log: a second call is ignored and returns false.
    pub fn observe_syncs(&self, observer: crate::SyncObserver) -> bool {
        self.shared().observer.set(observer).is_ok()
    }

    /// The failure that poisoned this log, if one did: no record is
    /// acknowledged any more.
    pub fn poison_cause(&self) -> Option<std::sync::Arc<WalError>> {
        self.shared().state.lock().poisoned.clone()
    }

    /// The directory of this log.
    pub fn dir(&self) -> &Path {
        &self.shared().dir
    }

    /// Resolves once every record up to `lsn` is durable. `lsn` must have
    /// been assigned already. A waiter for an LSN removed by
    /// `truncate_after` resolves when a new record reaches that LSN.
    pub async fn wait_durable(&self, lsn: Lsn) -> Result<(), WalError> {
        let rx = {
            let mut st = self.shared().state.lock();
            if lsn <= self.durable_lsn() {
                return Ok(());
            }
            check_open(self.shared(), &st)?;
            if lsn >= st.next_lsn {
                return Err(WalError::InvalidLsn {
                    lsn,
                    reason: format!("not assigned yet (last LSN is {})", st.next_lsn - 1),
                });
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push((lsn, tx));
            if let Durability::Deferred { .. } = self.shared().opts.durability {
                // The writer lets deferred appends wait: wake it.
                st.sync_wanted = st.sync_wanted.max(lsn);
                self.shared().wake.notify_one();
            }
            rx
        };
        rx.await.unwrap_or(Err(WalError::Closed))
    }

    /// A reader of durable records from `from` on. `from` may be
    /// `last_lsn() + 1` to follow the tail; below `first_lsn()` is
    /// `WalError::Purged`.
    pub fn read_from(&self, from: Lsn) -> Result<WalReader, WalError> {
        let first = self.first_lsn();
        let last = self.last_lsn();
        if from == 0 || from > last + 1 {
            return Err(WalError::InvalidLsn {
                lsn: from,
                reason: format!("readable range is {first}..={}", last + 1),
            });
        }
        if from < first {
            return Err(WalError::Purged { lsn: from, first });
        }
        Ok(WalReader::new(self.inner.shared.clone(), from))
    }

    /// Removes every record with LSN > `lsn` (Raft's conflicting-suffix
    /// truncation); the next record gets `lsn + 1`. Runs after everything
    /// submitted before it, and is durable when it returns. `lsn` must be
    /// between `max(first_lsn(), any purge_below argument) - 1` and
    /// `last_lsn()`. A failure poisons the log.
    pub async fn truncate_after(&self, lsn: Lsn) -> Result<(), WalError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared().state.lock();
            check_open(self.shared(), &st)?;
            let last = st.next_lsn - 1;
            if lsn > last {
                return Err(WalError::InvalidLsn {
                    lsn,
                    reason: format!("beyond the last LSN {last}"),
                });
            }
            if lsn + 1 < st.purge_floor {
                return Err(WalError::InvalidLsn {
                    lsn,
                    reason: format!(
                        "records below {} are purged or being purged",
                        st.purge_floor
                    ),
                });
            }
            st.next_lsn = lsn + 1;
            self.shared().last.store(lsn, Ordering::Release);
            st.wake_at = 1; // not worth waiting for a group
            self.shared()
                .enqueue(&mut st, Op::Truncate { lsn, reply: tx });
        }
        rx.await.unwrap_or(Err(WalError::Closed))
    }

    /// Deletes every whole segment whose records are all < `lsn` (the
    /// segment being appended to is never deleted), crash-safely: oldest
    /// first, directory synced after each. Afterwards `first_lsn()` is the
    /// first LSN of the oldest remaining segment (<= `lsn`).
    pub async fn purge_below(&self, lsn: Lsn) -> Result<(), WalError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared().state.lock();
            check_open(self.shared(), &st)?;
            st.purge_floor = st.purge_floor.max(lsn);
            st.wake_at = 1;
            self.shared().enqueue(&mut st, Op::Purge { lsn, reply: tx });
        }
        rx.await.unwrap_or(Err(WalError::Closed))
    }

    /// Removes every record and makes the next one get `next_lsn` (>= 1,
    /// below or above the current end). This is what a Raft log needs when
    /// a snapshot moves it past its last entry: openraft purges beyond the
    /// end and appends from the snapshot's index on, and LSNs must stay
    /// dense within the log. Runs after everything submitted before it and
    /// is durable when it returns; `first_lsn()` is `next_lsn` afterwards.
    /// A crash in the middle leaves a suffix of the old records (possibly
    /// none, and then an empty log starts at LSN 1 again): the caller, which
    /// knows it asked for a restart, repeats it. A failure poisons the log.
    pub async fn restart_at(&self, next_lsn: Lsn) -> Result<(), WalError> {
        if next_lsn == 0 {
            return Err(WalError::InvalidLsn {
                lsn: next_lsn,
                reason: "LSNs start at 1".into(),
            });
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared().state.lock();
            check_open(self.shared(), &st)?;
            st.next_lsn = next_lsn;
            // Nothing below the new start exists any more: no truncate may
            // reach under it.
            st.purge_floor = next_lsn;
            self.shared().last.store(next_lsn - 1, Ordering::Release);
            st.wake_at = 1;
            self.shared().enqueue(
                &mut st,
                Op::Restart {
                    next_lsn,
                    reply: tx,
                },
            );
        }
        rx.await.unwrap_or(Err(WalError::Closed))
    }

    /// Stops accepting work, lets the writer finish everything submitted,
    /// and waits for it. Returns the poison cause if the log had failed.
    /// Other clones of this handle see `WalError::Closed` afterwards.
    pub async fn close(self) -> Result<(), WalError> {
        self.inner.shutdown();
        // A writer stuck on a hung disk may never come back: once the
        // stall watchdog has failed the log, it is not waited for.
        let stall_seen = self.inner.shared.stall_seen.notified();
        tokio::pin!(stall_seen);
        stall_seen.as_mut().enable();
        if let Some(stalled) = self.inner.stalled() {
            return Err(stalled);
        }
        let done = self.inner.done.lock().take();
        let r = match done {
            Some(rx) => tokio::select! {
                r = rx => r.unwrap_or(Err(WalError::Closed)),
                () = stall_seen => return Err(self.inner.stalled().unwrap_or(WalError::Closed)),
            },
            None => Ok(()), // another clone is closing it
        };
        self.inner.join();
        r
    }
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.shared().dir)
            .field("backend", &self.inner.backend)
            .field("first_lsn", &self.first_lsn())
            .field("durable_lsn", &self.durable_lsn())
            .field("last_lsn", &self.last_lsn())
            .finish()
    }
}

impl Handle {
    fn shutdown(&self) {
        self.shared.state.lock().closed = true;
        self.shared.wake.notify_all();
    }

    /// The poison, if the stall watchdog failed the log.
    fn stalled(&self) -> Option<WalError> {
        if !self.shared.stalled.load(Ordering::Acquire) {
            return None;
        }
        self.shared.poisoned()
    }

    /// Waits for the writer to exit, unless it is stuck on a hung disk
    /// (then it is left behind: it exits if the disk ever returns).
    fn join(&self) {
        let Some(t) = self.thread.lock().take() else {
            return;
        };
        // Polled, not joined at once, under a stall watchdog: it may fail
        // the log while the writer finishes what was queued.
        while self.shared.opts.stall_timeout.is_some() && !t.is_finished() {
            if self.stalled().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // The writer never panics on I/O errors; if it panicked on a bug,
        // the panic was already reported and pending tickets resolved to
        // `Closed` when their senders dropped.
        let _ = t.join();
    }
}

impl Drop for Handle {
    /// Stops the writer after it has finished what was submitted. Joining
    /// cannot hang: the writer only ever waits for the disk or for work,
    /// `shutdown` wakes it, and a writer stuck on a hung disk is not
    /// waited for once the stall watchdog has failed the log.
    fn drop(&mut self) {
        self.shutdown();
        self.join();
    }
}

fn check_open(shared: &Shared, st: &State) -> Result<(), WalError> {
    if let Some(cause) = &st.poisoned {
        return Err(shared.poison_error(cause));
    }
    if st.closed {
        return Err(WalError::Closed);
    }
    Ok(())
}

fn validate(opts: &WalOptions) -> Result<(), WalError> {
    if opts.stall_timeout.is_some_and(|t| t.is_zero()) {
        return Err(WalError::Config(
            "stall_timeout must be positive (None: no watchdog)".into(),
        ));
    }
    if opts.segment_size < 4096 {
        return Err(WalError::Config(format!(
            "segment_size {} is below the minimum of 4096 bytes",
            opts.segment_size
        )));
    }
    if opts.max_record_size > format::MAX_PAYLOAD {
        return Err(WalError::Config(format!(
            "max_record_size {} exceeds the format limit of {} bytes",
            opts.max_record_size,
            format::MAX_PAYLOAD
        )));
    }
    Ok(())
}
