//! Property test: the `Certifier` against a brute-force model that keeps the
//! whole history and applies the rule of ARCHITECTURE.md literally, over random
//! histories of certifications, retries and replica reports.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use bytes::Bytes;
use proptest::prelude::*;
use tashkent_certifier::proto::ParentRef;
use tashkent_certifier::{
    AbortCode, Certifier, ConflictSet, Ddl, Decision, Item, Limits, Op, WindowLimits, Writeset,
    WRITESET_FORMAT_VERSION,
};

type RowKey = (String, Vec<u8>);

/// The conflict-relevant sets of one writeset, computed from the items
/// directly (independently of `rule.rs`).
struct Sets {
    write: HashSet<RowKey>,
    removed: HashSet<RowKey>,
    refs: HashSet<RowKey>,
    tables: HashSet<String>,
    ddl: HashSet<String>,
}

fn sets(ws: &Writeset) -> Sets {
    let mut s = Sets {
        write: HashSet::new(),
        removed: HashSet::new(),
        refs: HashSet::new(),
        tables: HashSet::new(),
        ddl: HashSet::new(),
    };
    for it in &ws.items {
        let k = |b: &Bytes| (it.table.clone(), b.to_vec());
        let op = Op::try_from(it.op).unwrap();
        s.tables.insert(it.table.clone());
        s.write.insert(k(&it.key));
        s.write.extend(it.unique_keys.iter().map(k));
        s.write.extend(it.old_unique_keys.iter().map(k));
        s.removed.extend(it.old_unique_keys.iter().map(k));
        if let Some(old) = &it.old_key {
            s.write.insert(k(old));
            s.removed.insert(k(old));
        }
        if op == Op::Delete {
            s.removed.insert(k(&it.key));
            s.removed.extend(it.unique_keys.iter().map(k));
        }
        s.refs.extend(
            it.references
                .iter()
                .map(|r| (r.table.clone(), r.key.to_vec())),
        );
    }
    for d in &ws.ddl {
        s.ddl.extend(d.tables.iter().cloned());
    }
    s
}

fn conflicts(a: &Sets, b: &Sets) -> bool {
    !a.write.is_disjoint(&b.write)
        || !a.refs.is_disjoint(&b.removed)
        || !a.removed.is_disjoint(&b.refs)
        || !a.tables.is_disjoint(&b.ddl)
        || !a.ddl.is_disjoint(&b.tables)
        || !a.ddl.is_disjoint(&b.ddl)
}

struct Model {
    history: Vec<Sets>,
    entries: Vec<usize>,
    horizon: u64,
    reports: BTreeMap<u32, u64>,
    limits: WindowLimits,
    answers: HashMap<Bytes, Result<u64, AbortCode>>,
}

impl Model {
    fn latest(&self) -> u64 {
        self.history.len() as u64
    }

    fn certify(&mut self, ws: &Writeset) -> Result<u64, AbortCode> {
        if let Some(a) = self.answers.get(&ws.txn_id) {
            return *a;
        }
        let answer = if ws.snapshot < self.horizon {
            Err(AbortCode::SnapshotTooOld)
        } else {
            let mine = sets(ws);
            let hit = self.history[ws.snapshot as usize..]
                .iter()
                .any(|theirs| conflicts(&mine, theirs));
            if hit {
                Err(AbortCode::Conflict)
            } else {
                self.history.push(mine);
                self.entries.push(ConflictSet::of(ws).len());
                // Memory bound: keep the longest suffix within the limits.
                let latest = self.latest();
                let (mut h, mut sum) = (latest, 0);
                while h > self.horizon {
                    let n = self.entries[h as usize - 1];
                    if sum + n > self.limits.max_entries
                        || (latest - h + 1) as usize > self.limits.max_versions
                    {
                        break;
                    }
                    sum += n;
                    h -= 1;
                }
                self.horizon = h;
                Ok(latest)
            }
        };
        self.answers.insert(ws.txn_id.clone(), answer);
        answer
    }

    fn report(&mut self, replica: u32, oldest: u64) {
        self.reports.insert(replica, oldest);
        let min = *self.reports.values().min().unwrap();
        self.horizon = self.horizon.max(min);
    }
}

/// (table, op, key, old key, unique keys, old unique keys, references).
type GenItem = (u8, u8, u8, Option<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

#[derive(Debug, Clone)]
enum Step {
    Certify {
        back: u64,
        items: Vec<GenItem>,
        ddl: Vec<u8>,
    },
    Retry(usize),
    Report {
        replica: u32,
        back: u64,
    },
}

const TABLES: [&str; 3] = ["a", "b", "c"];

fn step() -> impl Strategy<Value = Step> {
    let item = (
        0..3u8,                                  // table
        1..4u8,                                  // op
        0..5u8,                                  // key
        proptest::option::weighted(0.2, 0..5u8), // old key (UPDATE only)
        proptest::collection::vec(0..3u8, 0..2), // unique keys
        proptest::collection::vec(0..3u8, 0..2), // old unique keys
        proptest::collection::vec(0..5u8, 0..2), // references to table a
    );
    prop_oneof![
        8 => (0..6u64, proptest::collection::vec(item, 0..4), proptest::collection::vec(0..3u8, 0..2))
            .prop_map(|(back, items, ddl)| Step::Certify { back, items, ddl }),
        1 => (0..100usize).prop_map(Step::Retry),
        2 => (0..3u32, 0..8u64).prop_map(|(replica, back)| Step::Report { replica, back }),
    ]
}

fn build(id: usize, snapshot: u64, items: &[GenItem], ddl: &[u8]) -> Writeset {
    let b = |p: &str, x: u8| Bytes::from(format!("{p}{x}").into_bytes());
    let mut ws = Writeset {
        format_version: WRITESET_FORMAT_VERSION,
        txn_id: Bytes::from(format!("txn{id}").into_bytes()),
        origin: 1,
        snapshot,
        items: items
            .iter()
            .map(|(t, op, key, old, uk, ouk, refs)| {
                let op = Op::try_from(i32::from(*op)).unwrap();
                Item {
                    table: TABLES[*t as usize].into(),
                    op: op as i32,
                    key: b("k", *key),
                    old_key: old.filter(|_| op == Op::Update).map(|o| b("k", o)),
                    row: Bytes::new(),
                    unique_keys: uk.iter().map(|u| b("u", *u)).collect(),
                    old_unique_keys: if op == Op::Insert {
                        vec![]
                    } else {
                        ouk.iter().map(|u| b("u", *u)).collect()
                    },
                    references: refs
                        .iter()
                        .map(|r| ParentRef {
                            table: "a".into(),
                            key: b("k", *r),
                        })
                        .collect(),
                }
            })
            .collect(),
        ddl: ddl
            .iter()
            .map(|t| Ddl {
                sql: "ALTER TABLE".into(),
                tables: vec![TABLES[*t as usize].into()],
                before_item: 0,
            })
            .collect(),
        last_chunk: false,
        spool: None,
        session: 0,
        losses: 0,
    };
    if ws.items.is_empty() && ws.ddl.is_empty() {
        ws.items.push(tashkent_certifier::writeset::item(
            "c",
            Op::Update,
            b"k0".to_vec(),
        ));
    }
    ws
}

fn run(steps: Vec<Step>, limits: WindowLimits) -> Result<(), TestCaseError> {
    let mut c = Certifier::new(Limits {
        window: limits,
        max_dedupe: 100_000,
    });
    let mut m = Model {
        history: vec![],
        entries: vec![],
        horizon: 0,
        reports: BTreeMap::new(),
        limits,
        answers: HashMap::new(),
    };
    let mut sent: Vec<Writeset> = vec![];
    let now = Instant::now();
    for (i, s) in steps.into_iter().enumerate() {
        let ws = match s {
            Step::Certify { back, items, ddl } => {
                let snap = m.latest().saturating_sub(back);
                build(i, snap, &items, &ddl)
            }
            Step::Retry(j) if !sent.is_empty() => sent[j % sent.len()].clone(),
            Step::Retry(_) => continue,
            Step::Report { replica, back } => {
                let oldest = m.latest().saturating_sub(back);
                let h = c.report(replica, m.latest(), oldest, now).unwrap();
                m.report(replica, oldest);
                prop_assert_eq!(h, m.horizon);
                continue;
            }
        };
        let want = m.certify(&ws);
        let got = match c.certify(&ws).unwrap() {
            Decision::Commit(v) => Ok(v),
            Decision::Abort(a) => Err(a.code),
        };
        prop_assert_eq!(got, want, "step {} snapshot {} {:?}", i, ws.snapshot, ws);
        prop_assert_eq!(c.latest(), m.latest());
        prop_assert_eq!(c.window().horizon(), m.horizon);
        sent.push(ws);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn certifier_matches_the_brute_force_model(steps in proptest::collection::vec(step(), 1..120)) {
        run(steps, WindowLimits { max_entries: 1 << 20, max_versions: 1 << 20 })?;
    }

    #[test]
    fn certifier_matches_the_model_under_memory_pressure(
        steps in proptest::collection::vec(step(), 1..120),
        max_entries in 8..40usize,
        max_versions in 2..10usize,
    ) {
        run(steps, WindowLimits { max_entries, max_versions })?;
    }
}
