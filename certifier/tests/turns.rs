//! Fair turns through a real certifier over gRPC (see `turns`): a session
//! that keeps losing on a row is queued for it, others writing the row
//! abort while it has its turn, turns go in the order sessions lost, and an
//! unclaimed turn lapses. The order of turns, and that a turn is for one
//! try, are checked on the single certifier and on three raft nodes, whose
//! leader keeps the turns and hands them over with its leadership.

use std::time::Duration;

use bytes::Bytes;
use tashkent_certifier::turns::{CLAIM, HOLD, QUEUE_AFTER_LOSSES};
use tashkent_certifier::writeset::item;
use tashkent_certifier::{
    AbortCode, CertifierClient, CertifierConfig, Item, Op, Outcome, RunningCertifier, WalBackend,
    Writeset, WRITESET_FORMAT_VERSION,
};
use tempfile::TempDir;

mod raft_common;

async fn start(dir: &TempDir) -> (RunningCertifier, CertifierClient) {
    let cfg = CertifierConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        wal_dir: dir.path().join("wal"),
        wal_backend: WalBackend::Auto,
        wal_segment_bytes: 1 << 20,
        ..CertifierConfig::default()
    };
    let running = tashkent_certifier::start(cfg).await.unwrap();
    let client = CertifierClient::connect(running.local_addr().to_string())
        .await
        .unwrap();
    (running, client)
}

/// A transaction of `session` (after `losses` lost in a row) writing `key`.
fn txn(id: &str, snapshot: u64, key: &str, session: u64, losses: u32) -> Writeset {
    Writeset {
        format_version: WRITESET_FORMAT_VERSION,
        txn_id: Bytes::copy_from_slice(id.as_bytes()),
        origin: 1,
        snapshot,
        items: vec![Item {
            row: Bytes::from(format!("{key} by {id}")),
            ..item("branches", Op::Update, key.as_bytes().to_vec())
        }],
        session,
        losses,
        ..Writeset::default()
    }
}

fn committed(o: Outcome) -> u64 {
    match o {
        Outcome::Committed { version } => version,
        o => panic!("expected a commit, got {o:?}"),
    }
}

/// The abort's (conflict version, turn key).
fn aborted(o: Outcome) -> (u64, u64) {
    match o {
        Outcome::Aborted {
            code: AbortCode::Conflict,
            conflict_version,
            turn_key,
            ..
        } => (conflict_version, turn_key),
        o => panic!("expected a conflict, got {o:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_losing_session_gets_its_turn_before_others_in_the_order_they_lost() {
    let dir = TempDir::new().unwrap();
    let (server, c) = start(&dir).await;
    turns_in_the_order_sessions_lost(&c).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_leader_keeps_turns_in_the_order_sessions_lost() {
    let mut nodes = raft_common::served::Nodes::start(3).await;
    nodes.leader().await;
    let c = nodes.client_of_all().await;
    turns_in_the_order_sessions_lost(&c).await;
    // Refusals are logged and decided in log order: while session 6 has
    // the turn, a resend of session 2's committed transaction is refused
    // by the leader, yet answered with its version, and a resend of a
    // refused one with its refusal.
    let (_, key) = aborted(c.certify(txn("c", 1, "b1", 3, 0)).await.unwrap());
    assert_eq!(
        committed(c.certify(txn("b'", 2, "b1", 2, 9)).await.unwrap()),
        3
    );
    // Session 2 was queued by that refusal; its commit took it out.
    assert_eq!(c.await_turn(2, key).await.unwrap(), (6, false));
    nodes.stop_all().await;
}

/// A planned hand-over (`tashkent certifier transfer-leader`) carries the
/// leader's fair turns to the next leader: session 2, which has the turn,
/// keeps it there (session 5, writing the row on the new leader, is
/// refused, and 2's retry commits), and session 3, behind it, has its turn
/// next. Session 3, waiting for its turn on the old leader, is told at the
/// step-down that it is not queued there any more (its proxy goes on to
/// the new leader), not when 2's turn lapses ([`HOLD`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_leader_hands_its_turns_over_with_its_leadership() {
    let mut nodes = raft_common::served::Nodes::start(3).await;
    let first = nodes.leader().await;
    let (target, _) = nodes.others(first);
    let c = nodes.client_of_all().await;
    let key = session_2_queued(&c).await;
    assert_eq!(
        aborted(c.certify(txn("c", 1, "b1", 3, 0)).await.unwrap()),
        (0, key),
        "3 is refused and queued behind 2"
    );
    assert_eq!(c.await_turn(2, key).await.unwrap(), (1, true));
    let claimed = std::time::Instant::now();
    let on_first = nodes.client(first).await;
    let waiting = tokio::spawn(async move { on_first.await_turn(3, key).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "3 waits while 2 has the turn");

    let all = nodes.all_addrs();
    let handed = tashkent_certifier::raft::transfer::request(&all, None, target)
        .await
        .unwrap();
    assert_eq!(handed.leader, target);
    let (_, granted) = tokio::time::timeout(Duration::from_secs(1), waiting)
        .await
        .expect("3's wait on the old leader ends when it steps down")
        .unwrap();
    assert!(!granted, "the old leader gives no turns");
    let e = c.certify(txn("e", 1, "b1", 5, 0)).await.unwrap();
    // Decided before it was answered: while 2's claimed turn held (HOLD
    // from its claim, on any leader), unless the machine was that slow.
    let took = claimed.elapsed();
    if took >= HOLD {
        eprintln!("2's turn lapsed before 5's try was answered ({took:?}): not checked");
        nodes.stop_all().await;
        return;
    }
    assert_eq!(
        aborted(e),
        (0, key),
        "2 still has the turn, on the new leader"
    );
    assert_eq!(c.status().await.unwrap().node_id, target);
    // 3 asks the new leader, and gets its turn when 2 commits.
    let c3 = c.clone();
    let third = tokio::spawn(async move { c3.await_turn(3, key).await.unwrap() });
    let retry = txn("b'", 1, "b1", 2, QUEUE_AFTER_LOSSES + 1);
    assert_eq!(committed(c.certify(retry).await.unwrap()), 2);
    let third = tokio::time::timeout(Duration::from_secs(5), third).await;
    assert_eq!(third.expect("3 woken").unwrap(), (2, true), "3's turn");
    nodes.stop_all().await;
}

/// An `Elect` request that reaches the node that leads (late, from a leader
/// deposed since) changes nothing: no election, and the turns it carries
/// do not replace the leader's own (session 2 keeps its turn: session 5 is
/// refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_elect_to_the_leader_leaves_its_turns() {
    let mut nodes = raft_common::served::Nodes::start(3).await;
    let leader = nodes.leader().await;
    let (other, _) = nodes.others(leader);
    let c = nodes.client_of_all().await;
    let key = session_2_queued(&c).await;
    assert_eq!(c.await_turn(2, key).await.unwrap(), (1, true));
    let claimed = std::time::Instant::now();
    let term = c.status().await.unwrap().term;
    let asked = format!(r#"{{"from":{other},"turns":{{"queues":[]}}}}"#);
    let answer = raft_common::served::elect(&nodes.addrs[&leader], asked.into_bytes()).await;
    assert_eq!(answer.unwrap(), Ok(term));
    let e = c.certify(txn("e", 1, "b1", 5, 0)).await.unwrap();
    if claimed.elapsed() < HOLD {
        assert_eq!(aborted(e), (0, key), "2 keeps its turn");
    }
    let s = c.status().await.unwrap();
    assert_eq!((s.node_id, s.term), (leader, term));
    nodes.stop_all().await;
}

/// Sessions 2, 3 and 5 lose on one row and get their turns in that order;
/// others are refused meanwhile, other rows are free, and a transaction
/// without a session takes no part.
async fn turns_in_the_order_sessions_lost(c: &CertifierClient) {
    let losing = QUEUE_AFTER_LOSSES;
    assert_eq!(
        committed(c.certify(txn("a", 0, "b1", 1, 0)).await.unwrap()),
        1
    );
    // A first loss is ordinary contention: not queued.
    let (v, key) = aborted(c.certify(txn("e", 0, "b1", 5, 0)).await.unwrap());
    assert_eq!((v, key), (1, 0));
    // Session 2 has been losing: queued on the row, and has the turn.
    let (v, key) = aborted(c.certify(txn("b", 0, "b1", 2, losing)).await.unwrap());
    assert_eq!(v, 1);
    assert_ne!(key, 0, "session 2 is queued");
    // Session 3 sees version 1 and would commit, but it is 2's turn:
    // refused, and queued behind 2 on the same row.
    let (v, key3) = aborted(c.certify(txn("c", 1, "b1", 3, 0)).await.unwrap());
    assert_eq!((v, key3), (0, key), "nothing it has not seen; the same row");
    // Other rows are free.
    assert_eq!(
        committed(c.certify(txn("o", 1, "b2", 3, 0)).await.unwrap()),
        2
    );

    let c3 = c.clone();
    let third = tokio::spawn(async move { c3.await_turn(3, key).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!third.is_finished(), "3 waits while 2 has the turn");
    assert_eq!(c.await_turn(2, key).await.unwrap(), (1, true));
    let retry = txn("b'", 2, "b1", 2, losing + 1);
    assert_eq!(committed(c.certify(retry).await.unwrap()), 3);
    // 2 committed on the row: 3's turn, and 3 must see version 3.
    let (v, granted) = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("3 woken when 2 committed")
        .unwrap();
    assert_eq!((v, granted), (3, true));
    // Session 5 sees version 3 but it is 3's turn.
    let (_, key5) = aborted(c.certify(txn("e'", 3, "b1", 5, losing)).await.unwrap());
    assert_eq!(key5, key);
    assert_eq!(
        committed(c.certify(txn("c'", 3, "b1", 3, losing)).await.unwrap()),
        4
    );
    assert_eq!(c.await_turn(5, key).await.unwrap(), (4, true));
    assert_eq!(
        committed(c.certify(txn("e''", 4, "b1", 5, losing)).await.unwrap()),
        5
    );
    // Nobody is queued any more.
    assert_eq!(c.await_turn(2, key).await.unwrap(), (5, false));

    // A transaction without a session takes no part: not refused while
    // session 6 has the turn, where session 7 is.
    aborted(c.certify(txn("f", 0, "b1", 6, losing)).await.unwrap());
    assert_eq!(
        committed(c.certify(txn("n", 5, "b1", 0, 0)).await.unwrap()),
        6
    );
    aborted(c.certify(txn("g", 6, "b1", 7, 0)).await.unwrap());
}

/// Session 1 commits version 1 on row b1; session 2, losing to it, is
/// queued and has the turn. The row's key.
async fn session_2_queued(c: &CertifierClient) -> u64 {
    assert_eq!(
        committed(c.certify(txn("a", 0, "b1", 1, 0)).await.unwrap()),
        1
    );
    let lost = c.certify(txn("b", 0, "b1", 2, QUEUE_AFTER_LOSSES)).await;
    let (_, key) = aborted(lost.unwrap());
    assert_ne!(key, 0);
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_nobody_claims_lapses() {
    let dir = TempDir::new().unwrap();
    let (server, c) = start(&dir).await;
    let key = session_2_queued(&c).await;
    assert_ne!(key, 0);
    // Session 2 went away; 3 is refused and queued behind it, and goes
    // away too. Both turns lapse unclaimed...
    aborted(c.certify(txn("c", 1, "b1", 3, 0)).await.unwrap());
    tokio::time::sleep(CLAIM * 2 + Duration::from_millis(100)).await;
    // ...and the row is free.
    assert_eq!(
        committed(c.certify(txn("d", 1, "b1", 4, 0)).await.unwrap()),
        2
    );
    assert_eq!(c.await_turn(2, key).await.unwrap(), (2, false));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_leaves_passes_its_turn_on_at_once() {
    let dir = TempDir::new().unwrap();
    let (server, c) = start(&dir).await;
    let key = session_2_queued(&c).await;
    assert_eq!(c.await_turn(2, key).await.unwrap(), (1, true));
    // 3 is refused and waits behind 2, which then ends its transaction
    // without certifying (read only, say) and leaves.
    aborted(c.certify(txn("c", 1, "b1", 3, 0)).await.unwrap());
    let c3 = c.clone();
    let third = tokio::spawn(async move { c3.await_turn(3, key).await.unwrap() });
    c.leave_turn(2, key).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("3 woken when 2 left")
        .unwrap();
    assert_eq!(got, (1, true));
    assert_eq!(
        committed(c.certify(txn("c'", 1, "b1", 3, 1)).await.unwrap()),
        2
    );
    // Leaving what one is not queued on changes nothing.
    c.leave_turn(9, key).await.unwrap();
    c.leave_turn(9, 12345).await.unwrap();
    server.shutdown().await.unwrap();
}

/// A session whose `AwaitTurn` the certifier ends unanswered (after 5 s,
/// twice [`HOLD`]) is told "not yours" and goes on without the turn, so
/// the certifier takes it out of the queue: a place kept would hold the
/// row against those behind it once it reached the head. Sessions 2, 3
/// and 4 are ahead of 5, and each claims its turn when it comes, so 5 is
/// still behind one of them when its wait ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_wait_ends_unanswered_leaves_the_queue() {
    let dir = TempDir::new().unwrap();
    let (server, c) = start(&dir).await;
    let key = session_2_queued(&c).await;
    for (id, s) in [("c", 3), ("d", 4), ("e", 5)] {
        assert_eq!(
            aborted(c.certify(txn(id, 1, "b1", s, 0)).await.unwrap()).1,
            key
        );
    }
    assert_eq!(c.await_turn(2, key).await.unwrap(), (1, true));
    let c2 = c.clone();
    let ahead = tokio::spawn(async move {
        // 3 gets the turn when 2's lapses (HOLD), 4 when 3's does.
        assert_eq!(c2.await_turn(3, key).await.unwrap(), (1, true));
        assert_eq!(c2.await_turn(4, key).await.unwrap(), (1, true));
    });
    let asked = std::time::Instant::now();
    assert_eq!(c.await_turn(5, key).await.unwrap(), (1, false));
    assert!(asked.elapsed() >= 2 * HOLD, "{:?}", asked.elapsed());
    tokio::time::timeout(Duration::from_secs(10), ahead)
        .await
        .expect("4 got its turn")
        .unwrap();
    for s in [3, 4] {
        c.leave_turn(s, key).await.unwrap();
    }
    // Nobody is left ahead of 5, and 5 is not queued either: before, it
    // kept its place and now had the turn.
    assert_eq!(c.await_turn(5, key).await.unwrap(), (1, false));
    assert_eq!(
        committed(c.certify(txn("f", 1, "b1", 6, 0)).await.unwrap()),
        2,
        "the row is free"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_passes_on_at_once_when_its_holder_moves_on() {
    let dir = TempDir::new().unwrap();
    let (server, c) = start(&dir).await;
    holder_moves_on(&c, "p", 10, 0).await;
    holder_moves_on(&c, "q", 20, QUEUE_AFTER_LOSSES + 1).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_leader_passes_the_turn_on_when_its_holder_moves_on() {
    let mut nodes = raft_common::served::Nodes::start(3).await;
    nodes.leader().await;
    let c = nodes.client_of_all().await;
    holder_moves_on(&c, "p", 10, 0).await;
    holder_moves_on(&c, "q", 20, QUEUE_AFTER_LOSSES + 1).await;
    nodes.stop_all().await;
}

/// Session `s + 2` has its turn on row `{tag}1` and `s + 3` waits behind
/// it; `s + 2`'s try, on other rows (TPC-B draws a new branch), loses on
/// `{tag}2` after `losses` losses: queued there if that is enough, else
/// nowhere. Either way its turn on `{tag}1` passes on at once, not when it
/// lapses ([`HOLD`]): before, with enough losses it waited on `{tag}2`,
/// maybe behind a session waiting for `{tag}1`, and both stood still until
/// the turns lapsed; with fewer it held `{tag}1` while its client went on.
async fn holder_moves_on(c: &CertifierClient, tag: &str, s: u64, losses: u32) {
    let (row1, row2) = (format!("{tag}1"), format!("{tag}2"));
    let id = |name: &str| format!("{tag}-{name}");
    let (winner, holder, waiter, other) = (s + 1, s + 2, s + 3, s + 4);
    let v1 = committed(c.certify(txn(&id("a"), 0, &row1, winner, 0)).await.unwrap());
    let lost = txn(&id("b"), v1 - 1, &row1, holder, QUEUE_AFTER_LOSSES);
    let (_, key1) = aborted(c.certify(lost).await.unwrap());
    assert_ne!(key1, 0, "the holder is queued");
    let (_, behind) = aborted(
        c.certify(txn(&id("c"), v1, &row1, waiter, 0))
            .await
            .unwrap(),
    );
    assert_eq!(behind, key1, "refused, queued behind the holder");
    let claimed = std::time::Instant::now();
    assert_eq!(c.await_turn(holder, key1).await.unwrap(), (v1, true));
    let c3 = c.clone();
    let waiting = tokio::spawn(async move { c3.await_turn(waiter, key1).await.unwrap() });
    let v2 = committed(c.certify(txn(&id("x"), v1, &row2, other, 0)).await.unwrap());
    let elsewhere = txn(&id("b'"), v1, &row2, holder, losses);
    let (v, key2) = aborted(c.certify(elsewhere).await.unwrap());
    assert_eq!(v, v2);
    let got = tokio::time::timeout(HOLD * 2, waiting)
        .await
        .expect("the waiter gets the turn")
        .unwrap();
    assert_eq!(got, (v1, true));
    assert!(
        claimed.elapsed() < HOLD,
        "the waiter got the turn {:?} after the holder claimed it: it waited for it to lapse",
        claimed.elapsed()
    );
    assert_eq!(c.await_turn(holder, key1).await.unwrap(), (v1, false));
    if losses >= QUEUE_AFTER_LOSSES {
        assert!(key2 != 0 && key2 != key1, "queued on the second row");
        assert_eq!(c.await_turn(holder, key2).await.unwrap(), (v2, true));
    } else {
        assert_eq!(key2, 0, "too few losses to be queued");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_abort_takes_the_session_out_of_its_queue() {
    let dir = TempDir::new().unwrap();
    let (server, c) = start(&dir).await;
    let key = session_2_queued(&c).await;
    // The resend is answered from the dedupe table, without a turn key:
    // the session waits for no turn, so it must hold no place either.
    let resent = c.certify(txn("b", 0, "b1", 2, QUEUE_AFTER_LOSSES)).await;
    assert_eq!(aborted(resent.unwrap()), (1, 0));
    assert_eq!(c.await_turn(2, key).await.unwrap(), (1, false));
    assert_eq!(
        committed(c.certify(txn("c", 1, "b1", 3, 0)).await.unwrap()),
        2,
        "nobody has the row's turn"
    );
    server.shutdown().await.unwrap();
}
