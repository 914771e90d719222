//! Fair turns on hot rows: a session that keeps losing certification on
//! the same row is queued for it, and gets it in its turn.
//!
//! First committer wins is unfair on a hot row: whoever reaches the row
//! first with a fresh snapshot wins again and again, and a session whose
//! replica applies others' writes a moment late, or that is merely unlucky,
//! can lose every try (issue 15: one side of two pgbench runs gave up on
//! 14–17 % of its transactions after 20 tries). So, on the single
//! certifier and on a replicated certifier's leader:
//!
//! - A transaction of session `S` that aborts on a conflict over write key
//!   `k`, after `S` has already lost [`QUEUE_AFTER_LOSSES`] transactions in a
//!   row, queues `S` on `k` (the answer names `k`: `Aborted.turn_key`).
//! - The head of a key's queue has the turn: while it does, a transaction
//!   of another session that writes `k` aborts (as a conflict), and that
//!   session queues behind (it would otherwise retry at once and be refused
//!   again, its local row locks in the head's way). The head's retry, having
//!   waited for the turn and for its replica to apply the newest write of
//!   `k`, does not lose on `k` to a session taking part in turns — unless
//!   that session has the turn on another row the retry also writes (see
//!   [`Turns::admit`]).
//! - The turn passes on when the head commits a transaction (writing `k`
//!   or not: its retry is over), or has one aborted that does not keep
//!   its place on `k` (`Turns::aborted`: a turn lasts while the head's
//!   tries write `k` and lose on a write conflict),
//!   when it does not claim it (`AwaitTurn`, or a certification) within
//!   [`CLAIM`] of getting it, or [`HOLD`] after it claimed it, or when it
//!   leaves (`LeaveTurn`: the proxy's transaction with the turn ended
//!   without certifying, or the client went away). Lapses run on
//!   the clock, looked at or not: after a head lapses, the next one's time
//!   starts at that instant. A session that went away holds a row up for
//!   [`CLAIM`] once it comes to the head, and a queue holds at most
//!   [`MAX_QUEUE`] sessions.
//! - A session is in one queue at most: queued on a row, it leaves every
//!   other queue, and a turn it had there passes on (`Turns::leave_others`).
//!   So no session that waits for a turn holds one, and turns cannot wait
//!   for each other in a cycle.
//! - Transactions without a session (a proxy with `fair_retries` off,
//!   another client) take no part: never queued, never refused.
//!
//! A turn never makes a transaction commit that the rule would abort; it
//! only aborts more. Turns are soft state, never logged: lost on restart
//! and when a raft leader fails. A leader that steps down forgets them
//! (sessions waiting on it are told they are not queued, and their
//! proxies go on to the next leader), and a planned hand-over carries
//! them to the next leader ([`TurnsImage`], `raft::transfer`), each
//! queue as it stood (a claimed turn keeps its clock, see
//! [`Turns::adopt`]). On a replicated certifier the leader keeps
//! them and decides a refusal before proposing (its nodes certify as a
//! deterministic state machine, and a turn depends on time); the refusal
//! itself is then proposed as an entry of its own
//! (`raft::Command::Refuse`), so that a resend of an attempt already in the
//! log gets that attempt's decision. Memory is bounded: at most
//! [`MAX_KEYS`] queues of at most [`MAX_QUEUE`] sessions; beyond that a
//! loser is simply not queued.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::rule::{self, Abort};
use crate::window::ConflictWindow;
use crate::Version;

/// The abort a transaction with `snapshot` gets for writing the row `key`
/// that another session has its turn on (`window`: the certifier's).
pub fn refusal(window: &ConflictWindow, key: u64, snapshot: Version) -> Abort {
    refusal_after(rule::last_write(window, key), snapshot)
}

/// [`refusal`] where `last` is the newest version that wrote the row.
/// What a raft leader logs (`raft::Command::Refuse`): the version the
/// abort names, so the entry does not depend on how a build fingerprints
/// keys (`rule.rs`).
pub fn refusal_after(last: Version, snapshot: Version) -> Abort {
    Abort {
        code: crate::proto::AbortCode::Conflict,
        reason: format!(
            "could not serialize access due to concurrent update: another session lost on a \
             row this transaction writes (version {last} wrote it last) and has its turn on it \
             (fair turns)"
        ),
        conflict_version: if last > snapshot { last } else { 0 },
    }
}

/// A session is queued when its transaction loses after this many losses
/// in a row: a loss or two is ordinary contention, which a retry on a
/// fresh snapshot usually wins; a session that keeps losing is being
/// starved. Measured with `tashkent bench contention` (TPC-B at scale 1
/// through two proxies; sysbench with skewed keys through three): queued
/// after 1, 2 or 3 losses, TPC-B's sides gave up on 0.0–0.5 % of their
/// transactions either way (14–18 % without turns), while sysbench's
/// throughput was 110–133, 159–197 and 172–218 tps per proxy (245–281
/// without turns): the later a session is queued, the fewer transactions
/// its turn refuses. (Measured before lapses ran on the clock and the
/// replica's own 40001s counted as losses; README has today's figures.)
pub const QUEUE_AFTER_LOSSES: u32 = 3;
/// How long a new head has to claim its turn.
pub const CLAIM: Duration = Duration::from_millis(200);
/// How long a head keeps a claimed turn without committing on the key:
/// longer than the proxy waits for its replica to catch up after a loss
/// (2 s under `eventual`), which the turn must outlast.
pub const HOLD: Duration = Duration::from_millis(2500);
/// Keys with a queue, at most.
pub const MAX_KEYS: usize = 4096;
/// Sessions in one key's queue, at most: bounds how long sessions that went
/// away can hold a row up (each [`CLAIM`]).
pub const MAX_QUEUE: usize = 64;

/// What a certification says about turns: the client's session and how
/// many of its transactions lost in a row before this one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Turn {
    /// 0: no session (never queued, never has a turn).
    pub session: u64,
    pub losses: u32,
}

impl From<&crate::proto::Writeset> for Turn {
    /// The turn fields of a writeset (of its first chunk, when chunked).
    fn from(ws: &crate::proto::Writeset) -> Turn {
        Turn {
            session: ws.session,
            losses: ws.losses,
        }
    }
}

/// The queue of one key; its head has the turn.
#[derive(Debug)]
struct Queue {
    sessions: VecDeque<u64>,
    /// When the head got the turn, or claimed it.
    since: Instant,
    claimed: bool,
    /// Counts the turns passed on: wakes the sessions waiting for theirs.
    changed: watch::Sender<u64>,
}

impl Queue {
    fn new(head: u64, now: Instant) -> Queue {
        Queue {
            sessions: VecDeque::from([head]),
            since: now,
            claimed: false,
            changed: watch::Sender::new(0),
        }
    }

    fn head(&self) -> Option<u64> {
        self.sessions.front().copied()
    }

    /// When the head's turn lapses.
    fn deadline(&self) -> Instant {
        self.since + if self.claimed { HOLD } else { CLAIM }
    }

    /// Passes the turn on from a head whose turn lapsed, and on from each
    /// next one whose own (unclaimed) turn also lapsed since: a turn starts
    /// when the one before it lapsed, whether anyone looked then or not.
    fn expire(&mut self, now: Instant) {
        while !self.sessions.is_empty() && now >= self.deadline() {
            let lapsed_at = self.deadline();
            if self.claimed {
                // Sessions behind it waited the whole HOLD: worth seeing.
                tracing::debug!(
                    session = self.head(),
                    waiting = self.sessions.len() - 1,
                    "a claimed turn lapsed without a commit"
                );
            }
            self.next(lapsed_at);
        }
    }

    fn next(&mut self, now: Instant) {
        self.sessions.pop_front();
        self.since = now;
        self.claimed = false;
        self.changed.send_modify(|n| *n += 1);
    }

    fn enqueue(&mut self, session: u64) -> bool {
        if self.sessions.contains(&session) {
            return true;
        }
        if self.sessions.len() >= MAX_QUEUE {
            return false;
        }
        self.sessions.push_back(session);
        true
    }
}

/// Whether a session may have its turn now.
#[derive(Debug)]
pub enum Claim {
    /// It has the turn (now claimed).
    Yours,
    /// Another session has it; wait for `changed` or until `until` (when
    /// the head's turn lapses), then ask again.
    Wait {
        changed: watch::Receiver<u64>,
        until: Instant,
    },
    /// The session is not queued on the key.
    NotQueued,
}

/// The queues of every key some session waits for.
#[derive(Debug, Default)]
pub struct Turns {
    queues: HashMap<u64, Queue>,
    /// Counts the images adopted (see [`Turns::adoptions`]).
    adoptions: u64,
}

impl Turns {
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Expires lapsed turns on `keys` and forgets their emptied queues;
    /// the first of them whose turn is `session`'s (claimed now), if any.
    fn own_turn(&mut self, session: u64, keys: &[u64], now: Instant) -> Option<u64> {
        let mut own = None;
        for key in keys {
            let Some(q) = self.queues.get_mut(key) else {
                continue;
            };
            q.expire(now);
            match q.head() {
                None => {
                    self.queues.remove(key);
                }
                Some(head) if head == session && session != 0 => {
                    if !q.claimed {
                        q.claimed = true;
                        q.since = now;
                    }
                    own.get_or_insert(*key);
                }
                Some(_) => {}
            }
        }
        own
    }

    /// Before a commit of `turn`'s transaction writing `keys`: the first
    /// key another session has the turn on (the transaction must abort), and
    /// whether its session is now queued behind; or `None`.
    ///
    /// A session with its turn on any of `keys` is not refused for the
    /// others' turns: were it refused, a session waiting on a key it writes
    /// could wait for it in turn (with the teller and branch rows of TPC-B,
    /// they did), and both would hold their rows up until their turns
    /// lapsed. Two such heads are ordered by the rule alone. A refused
    /// session queues, losing or not: left to retry at once it is refused
    /// again and again, and its retries' row locks on the replica hold up
    /// the head's (measured: TPC-B at scale 1 ran at two thirds of the
    /// throughput). One without a session is never refused.
    pub fn admit(&mut self, turn: Turn, keys: &[u64], now: Instant) -> Option<(u64, bool)> {
        if turn.session == 0
            || self.queues.is_empty()
            || self.own_turn(turn.session, keys, now).is_some()
        {
            return None;
        }
        let key = keys.iter().copied().find(|k| self.queues.contains_key(k))?;
        let q = self.queues.get_mut(&key)?;
        let queued = q.enqueue(turn.session);
        if queued {
            self.leave_others(turn.session, key, now);
        }
        Some((key, queued))
    }

    /// `turn`'s transaction (conflict keys `cs`, read at `snapshot`) was
    /// aborted for a conflict in `window`: [`Turns::lost`] on the row it
    /// lost on. The key its session waits on, 0 for none. Callers hold
    /// the certifier's state (`window`) first, then the turns.
    pub fn lost_conflict(
        &mut self,
        window: &ConflictWindow,
        turn: Turn,
        snapshot: Version,
        cs: &rule::ConflictSet,
        now: Instant,
    ) -> u64 {
        rule::lost_on(window, snapshot, cs)
            .and_then(|key| self.lost(turn, key, &write_keys(cs), now))
            .unwrap_or(0)
    }

    /// `turn`'s transaction, writing `keys`, lost on `key`: queues its
    /// session there if it has been losing. The key the session waits for
    /// its turn on: one of `keys` it already has the turn on, however few
    /// its losses (it stays first there, for its next try of the same
    /// rows; queued elsewhere it could wait for a session waiting for it),
    /// else `key`; `None` when not queued.
    pub fn lost(&mut self, turn: Turn, key: u64, keys: &[u64], now: Instant) -> Option<u64> {
        if turn.session == 0 {
            return None;
        }
        if let Some(own) = self.own_turn(turn.session, keys, now) {
            return Some(own);
        }
        if turn.losses < QUEUE_AFTER_LOSSES {
            return None;
        }
        if let Some(q) = self.queues.get_mut(&key) {
            q.expire(now);
            if q.head().is_some() {
                let queued = q.enqueue(turn.session);
                if queued {
                    self.leave_others(turn.session, key, now);
                }
                return queued.then_some(key);
            }
        }
        self.leave_others(turn.session, key, now);
        if self.queues.len() >= MAX_KEYS && !self.queues.contains_key(&key) {
            self.sweep(now);
            if self.queues.len() >= MAX_KEYS {
                return None;
            }
        }
        self.queues.insert(key, Queue::new(turn.session, now));
        Some(key)
    }

    /// A transaction of `session` committed: the turn it has passes on,
    /// whatever rows it wrote. A turn is for the session's retry, and that
    /// is over; a client whose retry writes other rows (sysbench draws new
    /// ones) would otherwise hold the row until its turn lapsed.
    pub fn committed(&mut self, session: u64, now: Instant) {
        if self.queues.is_empty() || session == 0 {
            return;
        }
        self.queues.retain(|_, q| {
            if q.head() == Some(session) {
                q.next(now);
            }
            !q.sessions.is_empty()
        });
    }

    /// A transaction of `session` was aborted, and the session is now
    /// queued on `key` (0: nowhere): it leaves every other queue, and a
    /// turn it had there passes on. The proxy waits only for the key the
    /// abort names, so a turn kept would hold its row until it lapsed
    /// (`HOLD`), for every session waiting behind, while this one's client
    /// went on to other rows, or went idle. A head whose try wrote its row
    /// and lost keeps the turn: [`Turns::lost`] names that row again.
    pub fn aborted(&mut self, session: u64, key: u64, now: Instant) {
        if session != 0 && !self.queues.is_empty() {
            self.leave_others(session, key, now);
        }
    }

    /// `session` leaves `key`'s queue; if it had the turn, the turn passes
    /// on now.
    pub fn leave(&mut self, session: u64, key: u64, now: Instant) {
        let Some(q) = self.queues.get_mut(&key) else {
            return;
        };
        if q.head() == Some(session) {
            q.next(now);
        } else {
            q.sessions.retain(|&s| s != session);
        }
        if q.sessions.is_empty() {
            self.queues.remove(&key);
        }
    }

    /// `session`, now queued on `key`, leaves every other queue; a turn it
    /// had there passes on now. A session waits in one queue at most: its
    /// proxy waits for one key (the last the certifier named), and a head
    /// queued elsewhere would hold its row while it waits, possibly for a
    /// session waiting for that row. With TPC-B's branch rows that cycle
    /// formed (a head's next transaction drew the other branch and was
    /// refused there, behind a session waiting for the first): every
    /// client of the run then stood still until the turns lapsed (`HOLD`).
    fn leave_others(&mut self, session: u64, key: u64, now: Instant) {
        self.queues.retain(|k, q| {
            if *k != key {
                if q.head() == Some(session) {
                    q.next(now);
                } else {
                    q.sessions.retain(|&s| s != session);
                }
            }
            !q.sessions.is_empty()
        });
    }

    /// Whether `session` has its turn on `key` now (claiming it if so).
    pub fn claim(&mut self, session: u64, key: u64, now: Instant) -> Claim {
        let Some(q) = self.queues.get_mut(&key) else {
            return Claim::NotQueued;
        };
        q.expire(now);
        match q.head() {
            None => {
                self.queues.remove(&key);
                Claim::NotQueued
            }
            Some(head) if head == session => {
                if !q.claimed {
                    q.claimed = true;
                    q.since = now;
                }
                Claim::Yours
            }
            Some(_) if q.sessions.contains(&session) => Claim::Wait {
                changed: q.changed.subscribe(),
                until: q.deadline(),
            },
            Some(_) => Claim::NotQueued,
        }
    }

    /// Queues whose every session's turn has lapsed go.
    fn sweep(&mut self, now: Instant) {
        self.queues.retain(|_, q| {
            q.expire(now);
            !q.sessions.is_empty()
        });
    }

    /// Keys with a queue (for status and tests).
    pub fn keys(&self) -> usize {
        self.queues.len()
    }

    /// Every queue whose turn has not lapsed by `now`, as it stands: what a
    /// leader handing over gives the next one.
    pub fn image(&mut self, now: Instant) -> TurnsImage {
        self.sweep(now);
        let queues = self
            .queues
            .iter()
            .map(|(&key, q)| QueueImage {
                key,
                sessions: q.sessions.iter().copied().collect(),
                held_ms: now.saturating_duration_since(q.since).as_millis() as u64,
                claimed: q.claimed,
            })
            .collect();
        TurnsImage { queues }
    }

    /// Takes the queues of `image` (a leader's, handing over to this
    /// node) in place of this node's own. A claimed turn's time runs on
    /// from where it stood ([`HOLD`] from its claim); an unclaimed one
    /// starts again: its session was told at the old leader's step-down to
    /// go on, and finds this node only once it leads. What exceeds the
    /// bounds ([`MAX_KEYS`], [`MAX_QUEUE`]), session 0, and a session
    /// already seen (here or in an earlier queue: a session waits in one
    /// queue at most) are dropped: the image comes from another process.
    pub fn adopt(&mut self, image: TurnsImage, now: Instant) {
        self.forget();
        self.adoptions += 1;
        let mut seen = HashSet::new();
        for q in image.queues {
            if self.queues.len() >= MAX_KEYS {
                break;
            }
            let mut sessions = VecDeque::new();
            for s in q.sessions {
                if sessions.len() >= MAX_QUEUE {
                    break;
                }
                if s != 0 && seen.insert(s) {
                    sessions.push_back(s);
                }
            }
            if sessions.is_empty() || self.queues.contains_key(&q.key) {
                continue;
            }
            let held = match q.claimed {
                true => Duration::from_millis(q.held_ms).min(HOLD),
                false => Duration::ZERO,
            };
            let mut queue = Queue {
                sessions,
                since: now.checked_sub(held).unwrap_or(now),
                claimed: q.claimed,
                changed: watch::Sender::new(0),
            };
            queue.expire(now);
            if !queue.sessions.is_empty() {
                self.queues.insert(q.key, queue);
            }
        }
    }

    /// Drops every queue, as a leader that steps down does: the sessions
    /// waiting for a turn are woken (their queues' senders go) and told
    /// they are not queued.
    pub fn forget(&mut self) {
        self.queues.clear();
    }

    /// How many images this node has adopted: a leader that steps down
    /// forgets its turns only if it adopted none since it began to lead
    /// (one adopted since is a newer leader's, handing back).
    pub fn adoptions(&self) -> u64 {
        self.adoptions
    }
}

/// The fair turns a leader hands over (see [`Turns::image`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnsImage {
    pub queues: Vec<QueueImage>,
}

/// One key's queue in a [`TurnsImage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueImage {
    pub key: u64,
    /// The head (which has the turn) first.
    pub sessions: Vec<u64>,
    /// How long the head has had the turn, or held it since claiming it.
    pub held_ms: u64,
    pub claimed: bool,
}

/// The fingerprints of the rows a transaction writes: how turns know
/// rows.
pub(crate) fn write_keys(cs: &rule::ConflictSet) -> Vec<u64> {
    cs.write.iter().map(|k| k.fp).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn losing(session: u64) -> Turn {
        Turn {
            session,
            losses: QUEUE_AFTER_LOSSES,
        }
    }

    #[test]
    fn a_first_loss_is_not_queued() {
        let mut t = Turns::default();
        let now = Instant::now();
        let first = Turn {
            session: 1,
            losses: 0,
        };
        assert!(t.lost(first, 7, &[7], now).is_none());
        assert!(
            t.lost(losing(0), 7, &[7], now).is_none(),
            "no session, no turn"
        );
        assert!(t.is_empty());
        assert_eq!(t.admit(Turn::default(), &[7], now), None);
        assert!(t.lost(losing(1), 7, &[7], now).is_some());
        assert_eq!(
            t.admit(Turn::default(), &[7], now),
            None,
            "no session: not refused either"
        );
    }

    #[test]
    fn turns_go_in_the_order_sessions_lost() {
        let mut t = Turns::default();
        let now = Instant::now();
        assert!(t.lost(losing(1), 7, &[7], now).is_some());
        // 2 writes 7 without having lost: refused, and queued behind 1.
        let t2 = Turn {
            session: 2,
            losses: 0,
        };
        assert_eq!(t.admit(t2, &[5, 7], now), Some((7, true)));
        assert!(t.lost(losing(3), 7, &[7], now).is_some());
        // Keys nobody waits for are free.
        assert_eq!(t.admit(t2, &[5], now), None);
        assert!(matches!(t.claim(2, 7, now), Claim::Wait { .. }));
        assert!(matches!(t.claim(1, 7, now), Claim::Yours));
        assert_eq!(t.admit(losing(1), &[7], now), None);
        t.committed(1, now);
        assert!(matches!(t.claim(1, 7, now), Claim::NotQueued));
        assert_eq!(
            t.admit(losing(3), &[7], now),
            Some((7, true)),
            "2 lost first"
        );
        assert!(matches!(t.claim(2, 7, now), Claim::Yours));
        t.committed(2, now);
        assert!(matches!(t.claim(3, 7, now), Claim::Yours));
        t.committed(3, now);
        assert!(t.is_empty());
    }

    #[test]
    fn a_session_with_a_turn_is_not_refused_for_another_and_stays_first() {
        let mut t = Turns::default();
        let now = Instant::now();
        // 1 waits on the branch row 7, 2 on the teller row 8; each
        // transaction writes both.
        assert_eq!(t.lost(losing(1), 7, &[7, 8], now), Some(7));
        assert_eq!(t.lost(losing(2), 8, &[7, 8], now), Some(8));
        assert_eq!(t.admit(losing(1), &[7, 8], now), None);
        assert_eq!(t.admit(losing(2), &[7, 8], now), None);
        // 1 committed first, so 2 lost on 7: it keeps its turn on 8 and
        // waits there, not behind 7.
        t.committed(1, now);
        assert_eq!(t.lost(losing(2), 7, &[7, 8], now), Some(8));
        assert!(matches!(t.claim(2, 8, now), Claim::Yours));
        // Session 3, first on neither, is refused.
        assert_eq!(t.admit(losing(3), &[7, 8], now), Some((8, true)));
    }

    #[test]
    fn a_turn_lapses_unclaimed_after_claim_and_claimed_after_hold() {
        let mut t = Turns::default();
        let t0 = Instant::now();
        assert!(t.lost(losing(1), 7, &[7], t0).is_some());
        assert!(t.lost(losing(2), 7, &[7], t0).is_some());
        assert!(t.lost(losing(3), 7, &[7], t0).is_some());
        // 1 never claims: 2's turn after CLAIM.
        let t1 = t0 + CLAIM;
        let Claim::Wait { until, .. } = t.claim(3, 7, t0) else {
            panic!("3 waits");
        };
        assert_eq!(until, t1);
        assert!(matches!(t.claim(2, 7, t1), Claim::Yours));
        // 2 claimed at t1: it keeps the turn until t1 + HOLD.
        let almost = t1 + HOLD - Duration::from_millis(1);
        assert_eq!(t.admit(losing(3), &[7], almost), Some((7, true)));
        assert!(matches!(t.claim(3, 7, t1 + HOLD), Claim::Yours));
        // The last one lapses too, and the key is forgotten.
        assert_eq!(t.admit(losing(9), &[7], t1 + HOLD + HOLD), None);
        assert!(t.is_empty());
    }

    #[test]
    fn turns_lapse_on_the_clock_when_nobody_looks() {
        let mut t = Turns::default();
        let t0 = Instant::now();
        for s in 1..=3 {
            assert!(t.lost(losing(s), 7, &[7], t0).is_some());
        }
        // Two unclaimed turns have run out by now: 3's started when 2's
        // lapsed (t0 + 2 CLAIM), not when someone looked.
        let now = t0 + CLAIM * 2 + CLAIM / 2;
        assert!(matches!(t.claim(3, 7, now), Claim::Yours));
        // 3 claimed at `now`: HOLD from then.
        assert_eq!(t.admit(losing(4), &[7], now + HOLD / 2), Some((7, true)));
        // 3's HOLD, then 4's CLAIM, lapse unseen: the row is free.
        assert_eq!(t.admit(losing(5), &[7], now + HOLD + CLAIM), None);
        assert!(t.is_empty());
    }

    #[test]
    fn a_waiting_session_is_woken_when_the_turn_passes() {
        let mut t = Turns::default();
        let now = Instant::now();
        assert!(t.lost(losing(1), 7, &[7], now).is_some());
        assert!(t.lost(losing(2), 7, &[7], now).is_some());
        let Claim::Wait { mut changed, .. } = t.claim(2, 7, now) else {
            panic!("2 waits");
        };
        assert!(!changed.has_changed().unwrap());
        t.committed(1, now);
        assert!(changed.has_changed().unwrap(), "woken");
        assert!(matches!(t.claim(2, 7, now), Claim::Yours));
        let _ = changed.borrow_and_update();
    }

    #[test]
    fn a_session_that_leaves_passes_its_turn_on_at_once() {
        let mut t = Turns::default();
        let now = Instant::now();
        for s in 1..=3 {
            assert!(t.lost(losing(s), 7, &[7], now).is_some());
        }
        t.leave(2, 7, now);
        assert!(matches!(t.claim(2, 7, now), Claim::NotQueued));
        let Claim::Wait { changed, .. } = t.claim(3, 7, now) else {
            panic!("3 waits for 1");
        };
        t.leave(1, 7, now);
        assert!(changed.has_changed().unwrap(), "woken");
        assert!(matches!(t.claim(3, 7, now), Claim::Yours));
        t.leave(3, 7, now);
        t.leave(3, 8, now);
        assert!(t.is_empty());
    }

    #[test]
    fn a_commit_of_the_head_passes_its_turn_on_whatever_it_wrote() {
        let mut t = Turns::default();
        let now = Instant::now();
        assert!(t.lost(losing(1), 7, &[7], now).is_some());
        assert!(t.lost(losing(2), 7, &[7], now).is_some());
        assert!(t.lost(losing(3), 8, &[8], now).is_some());
        // 1 claims 7 and its retry, on new random rows, writes neither.
        assert!(matches!(t.claim(1, 7, now), Claim::Yours));
        t.committed(1, now);
        assert!(matches!(t.claim(2, 7, now), Claim::Yours));
        t.committed(2, now);
        assert_eq!(t.keys(), 1, "7 had nobody else; 8 stays 3's");
    }

    #[test]
    fn a_session_queued_on_a_row_leaves_its_other_queues() {
        let mut t = Turns::default();
        let now = Instant::now();
        // 1 has the turn on branch 7, 2 on branch 8; each queued behind
        // the other's row, as TPC-B's next transactions draw new branches.
        assert_eq!(t.lost(losing(1), 7, &[7], now), Some(7));
        assert_eq!(t.lost(losing(2), 8, &[8], now), Some(8));
        assert!(matches!(t.claim(1, 7, now), Claim::Yours));
        assert!(matches!(t.claim(2, 8, now), Claim::Yours));
        // 1's next transaction writes only 8: refused, queued behind 2,
        // and its turn on 7 is gone (nobody else wanted 7).
        assert_eq!(t.admit(losing(1), &[8], now), Some((8, true)));
        assert_eq!(t.keys(), 1);
        // 2's next writes only 7: nobody's turn there now, so it is not
        // refused and nobody waits for anybody holding a turn.
        assert_eq!(t.admit(losing(2), &[7], now), None);
        // A loss queues the same way: 3 heads 9, then loses on 8.
        assert_eq!(t.lost(losing(3), 9, &[9], now), Some(9));
        assert!(matches!(t.claim(3, 9, now), Claim::Yours));
        assert!(t.lost(losing(4), 9, &[9], now).is_some());
        assert_eq!(t.lost(losing(3), 8, &[8], now), Some(8));
        assert!(
            matches!(t.claim(4, 9, now), Claim::Yours),
            "3 left 9, so 4 has it at once"
        );
        assert!(matches!(t.claim(3, 9, now), Claim::NotQueued));
    }

    #[test]
    fn a_turn_lasts_while_the_heads_tries_write_its_row() {
        let mut t = Turns::default();
        let now = Instant::now();
        assert!(t.lost(losing(1), 7, &[7], now).is_some());
        assert!(t.lost(losing(2), 7, &[7], now).is_some());
        assert!(matches!(t.claim(1, 7, now), Claim::Yours));
        // 1's try lost on another row and was not queued again (its
        // client may go idle now): 2 need not wait for 1's HOLD.
        t.aborted(1, 0, now);
        assert!(matches!(t.claim(2, 7, now), Claim::Yours));
        // 2's try wrote 7 and lost (on 7 to a session without turns, say):
        // it keeps its turn for its next try of the same rows, however
        // few its losses (it was queued by a refusal, losing none).
        let fresh = Turn {
            session: 2,
            losses: 0,
        };
        assert_eq!(t.lost(fresh, 7, &[7], now), Some(7));
        t.aborted(2, 7, now);
        assert_eq!(t.admit(losing(3), &[7], now), Some((7, true)));
        assert!(matches!(t.claim(2, 7, now), Claim::Yours));
        // A session without turns changes nothing.
        t.aborted(0, 0, now);
        t.aborted(9, 0, now);
        assert!(matches!(t.claim(2, 7, now), Claim::Yours));
    }

    #[test]
    fn queues_are_bounded() {
        let mut t = Turns::default();
        let now = Instant::now();
        for s in 1..=MAX_QUEUE as u64 {
            assert!(t.lost(losing(s), 7, &[7], now).is_some());
        }
        assert!(t.lost(losing(10_000), 7, &[7], now).is_none(), "queue full");
        for k in 1..MAX_KEYS as u64 {
            let s = 100_000 + k;
            assert!(t.lost(losing(s), 100 + k, &[100 + k], now).is_some());
        }
        assert_eq!(t.keys(), MAX_KEYS);
        assert!(
            t.lost(losing(50_000), 1, &[1], now).is_none(),
            "keys full, none lapsed"
        );
        // Once turns lapse, room is made.
        let later = now + CLAIM * (MAX_QUEUE as u32 + 1);
        assert!(t.lost(losing(50_000), 1, &[1], later).is_some());
    }

    #[test]
    fn an_adopted_image_holds_the_queues_and_their_clocks() {
        let mut old = Turns::default();
        let t0 = Instant::now();
        assert!(old.lost(losing(1), 7, &[7], t0).is_some());
        assert!(old.lost(losing(2), 7, &[7], t0).is_some());
        assert!(old.lost(losing(3), 9, &[9], t0).is_some());
        assert!(matches!(old.claim(1, 7, t0), Claim::Yours));
        let t1 = t0 + Duration::from_millis(100);
        let image = old.image(t1);
        assert_eq!(image.queues.len(), 2);

        // Another node, another clock: what counts is how long each head
        // has held its turn.
        let mut new = Turns::default();
        assert!(new.lost(losing(8), 8, &[8], t1).is_some());
        let n0 = t1 + Duration::from_secs(60);
        new.adopt(image.clone(), n0);
        assert_eq!(new.keys(), 2, "its own queue gave way to the image");
        assert!(matches!(new.claim(8, 8, n0), Claim::NotQueued));
        // 1 claimed its turn on 7 100 ms before: it keeps it for the rest
        // of HOLD, and 2 waits behind.
        assert_eq!(new.admit(losing(4), &[7], n0), Some((7, true)));
        let Claim::Wait { until, .. } = new.claim(2, 7, n0) else {
            panic!("2 waits");
        };
        assert_eq!(until, n0 + HOLD - Duration::from_millis(100));
        // 3 never claimed its turn on 9 (100 ms before): it has CLAIM
        // again from the adoption.
        let lapse = n0 + CLAIM;
        assert!(matches!(
            new.claim(3, 9, lapse - Duration::from_millis(1)),
            Claim::Yours
        ));
        let mut lapsing = Turns::default();
        lapsing.adopt(image, n0);
        assert!(
            matches!(lapsing.claim(3, 9, lapse), Claim::NotQueued),
            "lapsed"
        );
    }

    #[test]
    fn an_adopted_image_is_held_to_the_bounds() {
        let session = |key: u64, i: u64| key * 1_000 + i + 1;
        // Session 0, a repeat, a session of an earlier queue and some
        // over the bound, in every queue.
        let queue = |key: u64| QueueImage {
            key,
            sessions: [0, session(key, 0), session(key.saturating_sub(1), 0)]
                .into_iter()
                .chain((0..MAX_QUEUE as u64 + 10).map(|i| session(key, i)))
                .collect(),
            held_ms: u64::MAX,
            claimed: true,
        };
        let queues = [queue(0), queue(0)] // a key twice
            .into_iter()
            .chain((1..MAX_KEYS as u64 + 10).map(queue))
            .collect();
        let mut t = Turns::default();
        // Long claimed turns lapse at once: HOLD is the most they held.
        let now = Instant::now();
        t.adopt(TurnsImage { queues }, now);
        assert_eq!(t.keys(), MAX_KEYS);
        let mut seen = HashSet::new();
        for (key, q) in &t.queues {
            assert!(!q.sessions.contains(&0));
            assert!(q.sessions.len() < MAX_QUEUE, "key {key}: one lapsed");
            assert!(q.sessions.iter().all(|s| s / 1_000 == *key), "key {key}");
            assert!(q.sessions.iter().all(|s| seen.insert(*s)), "one queue each");
        }
        assert_eq!(t.adoptions(), 1);
    }

    #[test]
    fn forgotten_turns_wake_those_waiting() {
        let mut t = Turns::default();
        let now = Instant::now();
        assert!(t.lost(losing(1), 7, &[7], now).is_some());
        assert!(t.lost(losing(2), 7, &[7], now).is_some());
        let Claim::Wait { changed, .. } = t.claim(2, 7, now) else {
            panic!("2 waits");
        };
        t.forget();
        assert!(changed.has_changed().is_err(), "the sender went");
        assert!(matches!(t.claim(2, 7, now), Claim::NotQueued));
        assert!(t.is_empty());
    }
}
