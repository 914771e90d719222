//! Property test: applying decisions taken at proposal (`raft::decided`)
//! builds the state certifying at apply builds, answer for answer.
//!
//! Two raft state machines apply the same random history of
//! certifications (retries of earlier transaction ids among them), fair-
//! turns refusals and replica reports, under a small window so its memory
//! bound moves the horizon: one gets today's entries, certified at apply;
//! the other gets a leader's decided entries, decided with the proposal
//! table its state machine builds (`raft::decider`), or now and then an
//! entry certified at apply, after which the leader waits for the table
//! built after its next base. Every answer, the certifier image and the version
//! records must be equal; a decided entry appended in a term other than
//! its own, or on another latest version, or whose version is not the
//! next, must change nothing.

use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use proptest::prelude::*;
use tashkent_certifier::raft::decided::Item;
use tashkent_certifier::raft::decider::{decide, Proposal, TableSlot};
use tashkent_certifier::raft::types::Entry;
use tashkent_certifier::raft::{Command, Response, StateMachine};
use tashkent_certifier::{
    record, Certifier, Limits, Op, WindowLimits, Writeset, WRITESET_FORMAT_VERSION,
};

const TERM: u64 = 3;
const ME: u64 = 1;

#[derive(Debug, Clone)]
enum Step {
    /// Certify transaction `txn` (an id reused is a retry) writing `keys`,
    /// `back` versions behind the latest; `at_apply`: as an entry
    /// certified at apply on both.
    Certify {
        txn: u8,
        back: u64,
        keys: Vec<u8>,
        at_apply: bool,
    },
    /// Refuse transaction `txn` for fair turns.
    Refuse { txn: u8, back: u64, keys: Vec<u8> },
    /// Replica `replica` reports its oldest snapshot `back` behind.
    Report { replica: u32, back: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0..24u8, 0..4u64, prop::collection::vec(0..10u8, 1..4), prop::bool::weighted(0.1))
            .prop_map(|(txn, back, keys, at_apply)| Step::Certify { txn, back, keys, at_apply }),
        1 => (0..24u8, 0..4u64, prop::collection::vec(0..10u8, 1..3))
            .prop_map(|(txn, back, keys)| Step::Refuse { txn, back, keys }),
        1 => (0..2u32, 0..6u64).prop_map(|(replica, back)| Step::Report { replica, back }),
    ]
}

fn record_of(txn: u8, snapshot: u64, keys: &[u8]) -> Bytes {
    let ws = Writeset {
        format_version: WRITESET_FORMAT_VERSION,
        txn_id: Bytes::from(vec![b't', txn]),
        snapshot,
        origin: 1,
        items: keys
            .iter()
            .map(|k| tashkent_certifier::Item {
                table: "t".into(),
                op: Op::Update as i32,
                key: Bytes::from(vec![*k]),
                row: Bytes::from(vec![*k; 3]),
                ..tashkent_certifier::Item::default()
            })
            .collect(),
        ..Writeset::default()
    };
    record::encode(&ws).freeze()
}

fn limits() -> Limits {
    Limits {
        window: WindowLimits {
            max_entries: 6,
            max_versions: 4,
        },
        max_dedupe: 8,
    }
}

fn entry(term: u64, index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, ME), index),
        payload: EntryPayload::Normal(cmd),
    }
}

async fn apply(sm: &mut StateMachine, e: Entry) -> Response {
    let mut answers = sm.apply([e]).await.expect("apply");
    assert_eq!(answers.len(), 1);
    answers.remove(0)
}

/// The one answer of a decided entry.
fn single(r: Response) -> Response {
    match r {
        Response::Batch(mut v) if v.len() == 1 => v.remove(0),
        other => panic!("a decided entry of one answered {other:?}"),
    }
}

/// `d` with its commit's version one too far, if it commits.
fn shifted(d: &Command) -> Option<Command> {
    let mut d = d.clone();
    let Command::Decided { items, .. } = &mut d else {
        return None;
    };
    match std::sync::Arc::make_mut(items).first_mut()? {
        Item::Commit { version, .. } => *version += 1,
        _ => return None,
    }
    Some(d)
}

async fn run(steps: Vec<Step>) {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut at_apply = StateMachine::open(dirs.0.path(), limits()).unwrap();
    let slot = Arc::new(TableSlot::default());
    let mut decided = StateMachine::open(dirs.1.path(), limits())
        .unwrap()
        .deciding_for(ME, slot.clone());
    // The leader's base: its table is built after it.
    let mut index = 1;
    let base = entry(TERM, index, Command::Base);
    decided.apply([base.clone()]).await.unwrap();
    at_apply.apply([base]).await.unwrap();
    let mut table: Certifier = slot
        .take(TERM, index)
        .expect("a table after the base")
        .certifier;

    for s in steps {
        index += 1;
        let latest = at_apply.certifier().latest();
        let (cmd, proposal) = match s {
            Step::Certify {
                txn,
                back,
                keys,
                at_apply,
            } => {
                let rec = record_of(txn, latest.saturating_sub(back), &keys);
                let cmd = Command::Certify {
                    record: rec.clone(),
                };
                (cmd, (!at_apply).then_some(Proposal::Certify(rec)))
            }
            Step::Refuse { txn, back, keys } => {
                let rec = record_of(txn, latest.saturating_sub(back), &keys);
                let last = latest;
                let cmd = Command::Refuse {
                    last,
                    record: rec.clone(),
                };
                (cmd, Some(Proposal::Refuse { last, record: rec }))
            }
            Step::Report { replica, back } => {
                let oldest = latest.saturating_sub(back);
                let cmd = Command::Report {
                    replica,
                    applied: latest,
                    oldest_snapshot: oldest,
                };
                let _ = table.report(replica, latest, oldest, std::time::Instant::now());
                let want = apply(&mut at_apply, entry(TERM, index, cmd.clone())).await;
                let got = apply(&mut decided, entry(TERM, index, cmd)).await;
                assert_eq!(got, want, "report");
                continue;
            }
        };
        let want = apply(&mut at_apply, entry(TERM, index, cmd.clone())).await;
        let got = match proposal {
            Some(p) => match decide(&mut table, p) {
                Ok(item) => {
                    let d = Command::Decided {
                        term: TERM,
                        latest,
                        items: std::sync::Arc::new(vec![item]),
                    };
                    // Appended in a later term, or with its version
                    // shifted, it must change nothing.
                    let image = decided.certifier().image();
                    let stale =
                        single(apply(&mut decided, entry(TERM + 1, index, d.clone())).await);
                    assert!(matches!(stale, Response::Lost { .. }), "{stale:?}");
                    if let Some(shifted) = shifted(&d) {
                        let r = single(apply(&mut decided, entry(TERM, index, shifted)).await);
                        assert!(matches!(r, Response::Lost { .. }), "{r:?}");
                    }
                    let mut elsewhere = d.clone();
                    if let Command::Decided { latest, .. } = &mut elsewhere {
                        *latest += 1;
                    }
                    let r = single(apply(&mut decided, entry(TERM, index, elsewhere)).await);
                    assert!(matches!(r, Response::Lost { .. }), "{r:?}");
                    assert_eq!(decided.certifier().image(), image);
                    single(apply(&mut decided, entry(TERM, index, d)).await)
                }
                Err(e) => Response::Rejected {
                    reason: e.to_string(),
                },
            },
            None => {
                // Certified at apply (rebuilding the conflict keys the
                // decisions left out); the leader then decides with the
                // table built after its next base.
                let r = apply(&mut decided, entry(TERM, index, cmd)).await;
                index += 1;
                let base = entry(TERM, index, Command::Base);
                decided.apply([base.clone()]).await.unwrap();
                at_apply.apply([base]).await.unwrap();
                table = slot
                    .take(TERM, index)
                    .expect("a table after a base")
                    .certifier;
                r
            }
        };
        assert_eq!(got, want, "answer at index {index}");
        assert_eq!(decided.certifier().latest(), at_apply.certifier().latest());
    }
    let image = at_apply.certifier().image();
    assert_eq!(decided.certifier().image(), image, "applied state");
    assert_eq!(table.image(), image, "the leader's table");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn decisions_applied_build_the_state_certifying_builds(
        steps in prop::collection::vec(step(), 1..80)
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(steps));
    }
}
