//! The writer thread: drains the queue, writes each group of appends with
//! one write and ONE `fdatasync` (via the backend), then acknowledges
//! everyone in the group. While it is busy with a group's I/O, new
//! submissions pile up in the queue and form the next group, so the group
//! size adapts to the load by itself (classic group commit). With
//! `Durability::Deferred` it lets appends wait in the queue and writes and
//! syncs them in rounds, when asked or when due (`deferred_until`).
//!
//! It also runs `truncate_after`, `purge_below` and `restart_at` in queue order, so they
//! see exactly the appends submitted before them. Any failed write, fsync or
//! segment operation poisons the log: the failing group gets the error,
//! everything queued or submitted later gets `WalError::Poisoned`, and no
//! acknowledgement is ever sent again (retrying an fsync can lie).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::backend::IoBackend;
use crate::error::IoContext;
use crate::format::{self, SEGMENT_HEADER_LEN};
use crate::segment::{self, ActiveSegment, SegmentInfo};
use crate::shared::{AppendReply, Op, Shared};
use crate::{fault, Durability, Lsn, WalError};

/// Groups larger than this are split (bounds the copy buffer; a single
/// larger record still goes in a group of its own).
const MAX_GROUP_BYTES: usize = 16 << 20;
/// `Durability::Deferred`: a round starts at once when this many ops are
/// queued (bounds the queue's memory between rounds).
const DEFERRED_ROUND_OPS: usize = 4096;
/// The group buffer is shrunk back to this after a huge record.
const KEEP_BUF_BYTES: usize = 4 << 20;

struct Pending {
    lsn: Lsn,
    payload: Bytes,
    reply: Option<AppendReply>,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    backend: Box<dyn IoBackend>,
    active: ActiveSegment,
    /// Frames of the group being written (reused across groups).
    buf: Vec<u8>,
    /// Swapped with the shared queue so both allocations are reused.
    spare: Vec<Op>,
    /// `Durability::Deferred`: appends of this round written and not yet
    /// synced (payloads dropped), oldest first, and their bytes.
    unsynced: Vec<Pending>,
    unsynced_bytes: usize,
    /// `Durability::Deferred`: when the queued appends are due.
    round_due: Option<Instant>,
    /// Holds the directory lock for as long as the writer runs.
    _lock: File,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        backend: Box<dyn IoBackend>,
        active: ActiveSegment,
        lock: File,
    ) -> Writer {
        Writer {
            shared,
            backend,
            active,
            buf: Vec::new(),
            spare: Vec::new(),
            unsynced: Vec::new(),
            unsynced_bytes: 0,
            round_due: None,
            _lock: lock,
        }
    }

    /// Runs until the log is closed and the queue is empty. Returns the
    /// poison cause if the log failed.
    pub(crate) fn run(mut self) -> Result<(), WalError> {
        // Size and duration of the previous group, for the group-fill wait.
        let mut last_group = 1usize;
        let mut last_cost = Duration::ZERO;
        'outer: loop {
            {
                let mut st = self.shared.state.lock();
                let mut deadline: Option<Instant> = None;
                loop {
                    if st.queue.is_empty() {
                        if st.closed {
                            break 'outer;
                        }
                        st.wake_at = 1;
                        deadline = None;
                        self.shared.wake.wait(&mut st);
                        continue;
                    }
                    if let Some(due) = deferred_until(&self.shared, &st, &mut self.round_due) {
                        // Deferred: the first append woke us; the next
                        // ones wait in the queue for the round that writes
                        // and syncs them all.
                        st.wake_at = DEFERRED_ROUND_OPS;
                        self.shared.wake.wait_until(&mut st, due);
                        continue;
                    }
                    // Group-fill wait (an adaptive commit_delay). When the
                    // previous group was larger than what is queued now, its
                    // appenders are most likely just resubmitting; waiting a
                    // fraction of a group's cost for them turns alternating
                    // big/small groups into uniformly big ones. With a single
                    // appender last_group is 1 and there is never a wait.
                    let max_wait = self.shared.opts.max_group_wait;
                    if st.closed || st.queue.len() >= last_group || max_wait.is_zero() {
                        break;
                    }
                    let dl = *deadline
                        .get_or_insert_with(|| Instant::now() + (last_cost / 2).min(max_wait));
                    st.wake_at = last_group;
                    if self.shared.wake.wait_until(&mut st, dl).timed_out() {
                        break;
                    }
                }
                // Busy from here on: submitters need not wake us.
                st.wake_at = usize::MAX;
                st.urgent = false;
                std::mem::swap(&mut st.queue, &mut self.spare);
            }
            let mut ops = std::mem::take(&mut self.spare);
            last_group = ops.len();
            let started = Instant::now();
            self.process(&mut ops);
            // Deferred: a round happens when its records are due.
            self.sync_deferred();
            self.round_due = None;
            last_cost = started.elapsed();
            self.spare = ops;
        }
        self.sync_deferred();
        match &self.shared.state.lock().poisoned {
            Some(cause) => Err(self.shared.poison_error(cause)),
            None => Ok(()),
        }
    }

    fn process(&mut self, ops: &mut Vec<Op>) {
        let max_records = self.shared.opts.max_group_records.max(1);
        let mut group: Vec<Pending> = Vec::new();
        let mut group_bytes = 0usize;
        for op in ops.drain(..) {
            match op {
                Op::Append {
                    lsn,
                    payload,
                    reply,
                } => {
                    let flen = format::frame_len(payload.len());
                    if !group.is_empty()
                        && (group.len() >= max_records || group_bytes + flen > MAX_GROUP_BYTES)
                    {
                        self.commit_group(&mut group);
                        group_bytes = 0;
                    }
                    group_bytes += flen;
                    group.push(Pending {
                        lsn,
                        payload,
                        reply,
                    });
                }
                Op::Truncate { lsn, reply } => {
                    self.commit_group(&mut group);
                    self.sync_deferred();
                    group_bytes = 0;
                    let r = self.guarded(|w| w.truncate(lsn), true);
                    let _ = reply.send(r);
                }
                Op::Purge { lsn, reply } => {
                    self.commit_group(&mut group);
                    self.sync_deferred();
                    group_bytes = 0;
                    // A failed purge leaves a consistent log (some old
                    // segments deleted), so it does not poison.
                    let r = self.guarded(|w| w.purge(lsn), false);
                    let _ = reply.send(r);
                }
                Op::Restart { next_lsn, reply } => {
                    self.commit_group(&mut group);
                    self.sync_deferred();
                    group_bytes = 0;
                    let r = self.guarded(|w| w.restart(next_lsn), true);
                    let _ = reply.send(r);
                }
            }
        }
        self.commit_group(&mut group);
    }

    /// Runs a non-append op unless the log is poisoned; poisons on failure
    /// if `fatal`.
    fn guarded(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), WalError>,
        fatal: bool,
    ) -> Result<(), WalError> {
        if let Some(e) = self.shared.poisoned() {
            return Err(e);
        }
        self.shared.busy();
        let r = f(self);
        self.shared.idle();
        if let (Err(e), true) = (&r, fatal) {
            self.poison(e.clone());
        }
        r
    }

    /// Writes `group` (possibly across a segment roll), one fdatasync per
    /// segment touched, and acknowledges it. Empties `group`.
    fn commit_group(&mut self, group: &mut Vec<Pending>) {
        if group.is_empty() {
            return;
        }
        // `poisoned` releases the state lock before the replies below
        // (`submit_then` callbacks) run.
        if let Some(err) = self.shared.poisoned() {
            // The stall watchdog fails the log from its own thread: what
            // was written before this group is answered first.
            self.fail_unsynced();
            for p in group.drain(..) {
                if let Some(r) = p.reply {
                    r.send(Err(err.clone()));
                }
            }
            return;
        }
        if let Err(e) = self.write_group(group) {
            // The records written before this group (unsynced) are
            // answered first, in LSN order; then this group's entries
            // still holding their reply, which were not acknowledged.
            self.poison(e.clone());
            for p in group.iter_mut() {
                if let Some(r) = p.reply.take() {
                    r.send(Err(e.clone()));
                }
            }
        }
        group.clear();
        if self.buf.capacity() > KEEP_BUF_BYTES {
            self.buf = Vec::new();
        }
    }

    fn write_group(&mut self, group: &mut [Pending]) -> Result<(), WalError> {
        self.buf.clear();
        // Every frame of this write records what was durable before it.
        let mut synced = self.shared.durable.load(Ordering::Acquire);
        let mut start = 0;
        for i in 0..group.len() {
            let flen = format::frame_len(group[i].payload.len()) as u64;
            if self.active.write_pos + self.buf.len() as u64 + flen > self.active.capacity {
                if i > start {
                    self.flush(&mut group[start..i])?;
                    start = i;
                }
                // Recovery wants every segment but the last complete.
                self.sync_unsynced()?;
                synced = self.shared.durable.load(Ordering::Acquire);
                self.roll(group[i].lsn, flen)?;
            }
            format::append_frame(&mut self.buf, group[i].lsn, synced, &group[i].payload);
        }
        self.flush(&mut group[start..])
    }

    /// Writes and syncs `self.buf` (the frames of `entries`), publishes the
    /// new positions and acknowledges `entries`.
    fn flush(&mut self, entries: &mut [Pending]) -> Result<(), WalError> {
        let Some(last) = entries.last().map(|p| p.lsn) else {
            return Ok(());
        };
        let shared = &self.shared;
        let started = std::time::Instant::now();
        let sync = shared.opts.durability == Durability::EveryGroup;
        let end = self.active.write_pos + self.buf.len() as u64;
        shared.busy();
        let written = self.active.zero_ahead(end, self.buf.len()).and_then(|()| {
            self.backend.write_and_sync(
                &self.active.file,
                &self.active.path,
                self.active.write_pos,
                &self.buf,
                &mut || shared.written.store(last, Ordering::Release),
                sync,
            )
        });
        // Before acknowledging: the stall watchdog times I/O only.
        shared.idle();
        written?;
        self.active.write_pos += self.buf.len() as u64;
        if !sync {
            self.unsynced_bytes += self.buf.len();
            self.unsynced.extend(entries.iter_mut().map(|p| Pending {
                lsn: p.lsn,
                payload: Bytes::new(),
                reply: p.reply.take(),
            }));
            self.buf.clear();
            return Ok(());
        }
        self.acknowledge(entries, self.buf.len(), started);
        self.buf.clear();
        Ok(())
    }

    /// Syncs the deferred records, if any, and acknowledges them; a
    /// failure poisons the log.
    fn sync_deferred(&mut self) {
        if let Err(e) = self.sync_unsynced() {
            self.poison(e);
        }
    }

    fn sync_unsynced(&mut self) -> Result<(), WalError> {
        if self.unsynced.is_empty() {
            return Ok(());
        }
        if let Some(e) = self.shared.poisoned() {
            return Err(e);
        }
        let started = Instant::now();
        self.shared.busy();
        let synced = self.backend.write_and_sync(
            &self.active.file,
            &self.active.path,
            self.active.write_pos,
            &[],
            &mut || {},
            true,
        );
        self.shared.idle();
        synced?;
        let mut entries = std::mem::take(&mut self.unsynced);
        let bytes = std::mem::take(&mut self.unsynced_bytes);
        self.acknowledge(&mut entries, bytes, started);
        // Kept for the next ones: growing it afresh each time faulted in
        // new pages at every sync.
        entries.clear();
        self.unsynced = entries;
        Ok(())
    }

    /// `entries` (`bytes` of frames, written since `started`) are durable:
    /// counts them, publishes the durable LSN and acknowledges them.
    fn acknowledge(&self, entries: &mut [Pending], bytes: usize, started: Instant) {
        let Some(last) = entries.last().map(|p| p.lsn) else {
            return;
        };
        if let Some(observe) = self.shared.observer.get() {
            observe(crate::GroupSync {
                records: entries.len(),
                bytes,
                duration: started.elapsed(),
            });
        }
        let stats = &self.shared.stats;
        stats.groups.fetch_add(1, Ordering::Relaxed);
        stats
            .appends
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        // Durable before acknowledging: whoever gets an ack sees
        // durable_lsn() >= their LSN.
        let answer = self.published(last);
        for p in entries.iter_mut() {
            if let Some(r) = p.reply.take() {
                r.send(answer.clone().map(|()| p.lsn));
            }
        }
    }

    /// Starts a new segment whose first record is `first_lsn` (a frame of
    /// `frame_len` bytes that did not fit). A record larger than the segment
    /// size gets a segment of exactly its size.
    fn roll(&mut self, first_lsn: Lsn, frame_len: u64) -> Result<(), WalError> {
        // A group's first part may have found the log failed by the stall
        // watchdog (and been answered so): no more I/O for the rest.
        if self.shared.stalled.load(Ordering::Acquire) {
            return Err(self.poisoned_error());
        }
        let size = self
            .shared
            .opts
            .segment_size
            .max(SEGMENT_HEADER_LEN as u64 + frame_len);
        let replaces_empty = self.active.write_pos == SEGMENT_HEADER_LEN as u64;
        self.shared.busy();
        let seg = segment::create_segment(&self.shared.dir, first_lsn, size);
        self.shared.idle();
        let seg = seg?;
        if !replaces_empty {
            // An empty active segment has this very name and was just
            // atomically replaced by a bigger one; otherwise it is sealed.
            self.shared.segments.write().push(SegmentInfo {
                first_lsn,
                path: seg.path.clone(),
            });
        }
        self.active = seg;
        Ok(())
    }

    /// Drops every record > `lsn`: deletes later segments newest-first
    /// (syncing the directory after each, so a crash leaves a prefix, never
    /// a hole), then zeroes the cut segment's tail backwards.
    fn truncate(&mut self, lsn: Lsn) -> Result<(), WalError> {
        let segs = self.shared.segments.read().clone();
        let Some(k) = segs.iter().rposition(|s| s.first_lsn <= lsn + 1) else {
            return Err(WalError::InvalidLsn {
                lsn,
                reason: "below the oldest retained segment".into(),
            });
        };
        for (i, s) in segs[k + 1..].iter().rev().enumerate() {
            if i > 0 {
                if let Some(e) = fault::injected("wal::truncate_step") {
                    return Err(WalError::io(&s.path, e));
                }
            }
            self.shared.segments.write().pop();
            self.shared.busy();
            remove_if_exists(&s.path)?;
            segment::sync_dir(&self.shared.dir)?;
        }
        let target = &segs[k];
        if target.first_lsn != self.active.first_lsn {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&target.path)
                .ctx(&target.path)?;
            let capacity = file.metadata().ctx(&target.path)?.len();
            // At its end until the cut is found below.
            self.active = ActiveSegment::new(
                target.first_lsn,
                target.path.clone(),
                file,
                capacity,
                capacity,
            );
        }
        let (cut, end) = {
            let map = segment::map_file(&self.active.file, &self.active.path)?;
            let buf: &[u8] = map.as_deref().unwrap_or(&[]);
            find_cut(buf, self.active.first_lsn, lsn + 1)
        };
        segment::zero_range_backwards(&self.active.file, &self.active.path, cut, end)?;
        self.active.write_pos = cut;
        // Written up to `end` now (zeroes); beyond it, maybe not.
        self.active.zeroed_to = end.max(cut);
        self.shared.written.store(lsn, Ordering::Release);
        self.shared.idle();
        self.published(lsn)
    }

    /// Deletes the oldest segments while every record in them is < `lsn`,
    /// oldest first, syncing the directory after each deletion. A crash
    /// therefore only ever leaves a shorter prefix missing. The active
    /// segment is never deleted.
    fn purge(&mut self, lsn: Lsn) -> Result<(), WalError> {
        let mut deleted = 0usize;
        loop {
            let victim = {
                let segs = self.shared.segments.read();
                match (segs.first(), segs.get(1)) {
                    (Some(s0), Some(s1)) if s1.first_lsn <= lsn => Some(s0.clone()),
                    _ => None,
                }
            };
            let Some(victim) = victim else { break };
            if deleted > 0 {
                if let Some(e) = fault::injected("wal::purge_between") {
                    return Err(WalError::io(&victim.path, e));
                }
            }
            {
                // Hide it from new readers first; open readers keep their map.
                let mut segs = self.shared.segments.write();
                segs.remove(0);
                if let Some(s) = segs.first() {
                    self.shared.first.store(s.first_lsn, Ordering::Release);
                }
            }
            self.shared.busy();
            remove_if_exists(&victim.path)?;
            segment::sync_dir(&self.shared.dir)?;
            deleted += 1;
        }
        Ok(())
    }

    /// Deletes every segment, oldest first with a directory sync after
    /// each (so a crash leaves a suffix of the old log, as purge does), then
    /// creates an empty segment starting at `next_lsn`. Deleting first is
    /// what keeps recovery's rule intact: a new segment next to old ones
    /// would be a gap or an overlap.
    fn restart(&mut self, next_lsn: Lsn) -> Result<(), WalError> {
        let segs = self.shared.segments.read().clone();
        for (i, s) in segs.iter().enumerate() {
            if i > 0 {
                if let Some(e) = fault::injected("wal::restart_between") {
                    return Err(WalError::io(&s.path, e));
                }
            }
            self.shared
                .segments
                .write()
                .retain(|x| x.first_lsn != s.first_lsn);
            self.shared.busy();
            remove_if_exists(&s.path)?;
            segment::sync_dir(&self.shared.dir)?;
        }
        self.shared.busy();
        let seg =
            segment::create_segment(&self.shared.dir, next_lsn, self.shared.opts.segment_size)?;
        *self.shared.segments.write() = vec![SegmentInfo {
            first_lsn: next_lsn,
            path: seg.path.clone(),
        }];
        self.active = seg;
        self.shared.first.store(next_lsn, Ordering::Release);
        self.shared.written.store(next_lsn - 1, Ordering::Release);
        self.shared.idle();
        self.published(next_lsn - 1)
    }

    /// What an append of the failed log is answered (its poison).
    fn poisoned_error(&self) -> WalError {
        self.shared.poisoned().unwrap_or(WalError::Closed)
    }

    /// Publishes `lsn` as durable (after a group's fdatasync, a truncate
    /// or a restart), unless the stall watchdog failed the log while that
    /// I/O was stuck.
    fn published(&self, lsn: Lsn) -> Result<(), WalError> {
        match self.shared.publish_durable(lsn) {
            true => Ok(()),
            false => Err(self.poisoned_error()),
        }
    }

    /// Marks the log failed and answers, in LSN order, the records written
    /// and not yet synced, then whoever waits for durability. Operations
    /// still queued are not answered here: the loop takes them after the
    /// ones it already drained (`process`), and `commit_group` and
    /// `guarded` answer each with the poison then, so every append's
    /// answer comes in LSN order (a `submit_then` caller may rely on it).
    fn poison(&mut self, err: WalError) {
        let cause = Arc::new(err);
        let waiters = {
            let mut st = self.shared.state.lock();
            if st.poisoned.is_none() {
                st.poisoned = Some(cause.clone());
            }
            std::mem::take(&mut st.waiters)
        };
        tracing::error!(error = %cause, "WAL poisoned; no further appends will be acknowledged");
        self.fail_unsynced();
        let err = self.shared.poison_error(&cause);
        for (_, reply) in waiters {
            let _ = reply.send(Err(err.clone()));
        }
    }

    /// Answers the records written and not yet synced with the poison of
    /// the failed log, in LSN order.
    fn fail_unsynced(&mut self) {
        let unsynced = std::mem::take(&mut self.unsynced);
        self.unsynced_bytes = 0;
        if unsynced.is_empty() {
            return;
        }
        let err = self.poisoned_error();
        for p in unsynced {
            if let Some(r) = p.reply {
                r.send(Err(err.clone()));
            }
        }
    }
}

/// `Durability::Deferred` with appends queued: until when they may
/// wait, or `None` when the round must run now (they are due, the log
/// failed and they get its poison, someone waits for durability, a log
/// operation or close is queued, or the queue is long).
fn deferred_until(
    shared: &Shared,
    st: &crate::shared::State,
    round_due: &mut Option<Instant>,
) -> Option<Instant> {
    let Durability::Deferred { max_delay } = shared.opts.durability else {
        return None;
    };
    let durable = shared.durable.load(Ordering::Acquire);
    if st.closed
        || st.urgent
        || st.poisoned.is_some()
        || st.sync_wanted > durable
        || st.queue.len() >= DEFERRED_ROUND_OPS
    {
        return None;
    }
    let now = Instant::now();
    let due = *round_due.get_or_insert(now + max_delay);
    (now < due).then_some(due)
}

/// In a segment starting at `first_lsn`, the offset of record `target` (or
/// of the end of the chain if it is not there) and the end of the chain.
fn find_cut(buf: &[u8], first_lsn: Lsn, target: Lsn) -> (u64, u64) {
    let mut pos = SEGMENT_HEADER_LEN;
    let mut lsn = first_lsn;
    let mut cut = None;
    while let Ok(f) = format::decode_frame(buf, pos) {
        if f.lsn != lsn {
            break;
        }
        if lsn == target {
            cut = Some(pos);
        }
        lsn += 1;
        pos = f.next;
    }
    let end = pos.min(buf.len()) as u64;
    (cut.map_or(end, |c| c as u64), end)
}

fn remove_if_exists(path: &std::path::Path) -> Result<(), WalError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r.ctx(path),
    }
}
