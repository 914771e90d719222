//! The stall watchdog (`WalOptions::stall_timeout`).
//!
//! A hung disk (a dead device, a frozen filesystem, a stuck network
//! volume) blocks the writer in a write or an fdatasync inside the kernel,
//! where nothing can cancel it, and until it returns nobody is answered.
//! Without a bound, a log owner that could hand its work to someone else
//! (a raft node to the other nodes) goes on looking alive. This thread
//! fails such a log as a failed fdatasync would: it poisons it with
//! [`WalError::Stalled`], so new appends are refused at once and durability
//! waiters are answered. What the stuck writer holds (its group, the queue
//! behind it) is answered by the writer when the disk returns, with the
//! poison and in LSN order (`writer.rs`), never as acknowledged: the
//! owner was told the log failed, and may have acted on it.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::shared::Shared;
use crate::WalError;

/// Starts the watchdog of the log behind `shared`; it ends when the log is
/// closed or dropped, or once it has failed the log.
pub(crate) fn watch(shared: Weak<Shared>, timeout: Duration) -> io::Result<()> {
    // A stall is noticed within a quarter of the timeout after it.
    let period = (timeout / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
    std::thread::Builder::new()
        .name("tashkent-wal-stall".into())
        .spawn(move || loop {
            std::thread::sleep(period);
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if !watched(&shared, timeout) {
                return;
            }
        })
        .map(drop)
}

/// Whether to go on watching: false once the log's writer has exited
/// (a closed log's writer still drains its queue first) or the log failed.
/// Fails it if its writer has been in one I/O for `timeout`. Under the
/// state lock, as the writer publishes what its I/O made durable
/// (`Shared::publish_durable`): either that comes first, or nothing of
/// that I/O is ever acknowledged.
fn watched(shared: &Shared, timeout: Duration) -> bool {
    let (cause, waiters) = {
        let mut st = shared.state.lock();
        if st.poisoned.is_some() {
            return false;
        }
        let busy = match shared.busy_for() {
            Some(busy) if busy >= timeout => busy,
            Some(_) => return true,
            None => return !shared.writer_done.load(Ordering::Acquire),
        };
        let cause = Arc::new(WalError::Stalled {
            dir: shared.dir.clone(),
            after: busy,
        });
        st.poisoned = Some(cause.clone());
        shared.stalled.store(true, Ordering::Release);
        (cause, std::mem::take(&mut st.waiters))
    };
    shared.stall_seen.notify_waiters();
    let err = shared.poison_error(&cause);
    for (_, reply) in waiters {
        let _ = reply.send(Err(err.clone()));
    }
    // Last, and not under the lock: the process's log may be on the hung
    // disk too, and whoever waits is answered by now.
    tracing::error!(error = %cause, "WAL poisoned; no further appends will be acknowledged");
    false
}
