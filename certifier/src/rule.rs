//! The GSI certification rule, as pure code: which conflict keys a writeset
//! has and whether a transaction conflicts with what committed after its
//! snapshot.
//!
//! A transaction `T` with snapshot `s` conflicts with a committed `T'` of
//! version `v' > s` iff
//! - they share a **write key** (primary key, old primary key of a re-key,
//!   any unique-constraint value, old or new, and the primary key of a row
//!   locked `FOR UPDATE` / `FOR NO KEY UPDATE`: an `OP_LOCK` item) of the
//!   same table; or
//! - one **references** a parent key (foreign key) that the other
//!   **removes** (DELETE of the parent, or UPDATE that changes the parent's
//!   primary key or the referenced unique value); or
//! - one runs **DDL/TRUNCATE** on a table the other writes rows of or runs
//!   DDL on.
//!
//! Two children of one parent do not conflict, nor does a child insert with a
//! parent update that keeps the parent's keys. Reads are not tracked: this is
//! snapshot isolation, not serializability (write skew commits).
//!
//! Keys are reduced to 64-bit fingerprints of `(table, key bytes)`; each kind
//! of use (write, removed parent, reference, rows of a table, DDL on a table)
//! gets its own derived fingerprint so the window keeps them apart.

use std::hash::{BuildHasher, Hash, Hasher};

use crate::proto::{AbortCode, Ddl, Item, Op, Writeset};
use crate::window::ConflictWindow;
use crate::Version;

/// Which use of a key a window entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
enum Space {
    Write = 1,
    Removed = 2,
    Reference = 3,
    TableRows = 4,
    TableDdl = 5,
}

/// A conflict key's base fingerprint and where it came from (index of the
/// item, or of the DDL statement for `ddl`), for the abort reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub fp: u64,
    pub src: u32,
}

/// The conflict keys of one writeset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConflictSet {
    pub write: Vec<Key>,
    pub removed: Vec<Key>,
    pub references: Vec<Key>,
    /// Tables whose rows are written (deduplicated).
    pub tables: Vec<Key>,
    /// Tables DDL runs on (deduplicated).
    pub ddl: Vec<Key>,
}

/// The fingerprint function: foldhash (quality variant) under one fixed
/// seed, the same in every process. A replicated certifier's nodes each
/// certify every committed entry and must decide alike (`raft`), so a key's
/// fingerprint cannot depend on the process; a collision (~2^-64 per key
/// pair) then gives the same spurious abort on every node. A public seed
/// lets someone craft colliding keys, which buys nothing a client cannot
/// already do by writing the row itself; crafting keys that share a
/// bucket in the window's table is defeated there (`window.rs` keys its
/// table per process). Fingerprints are never stored, so only nodes
/// running builds with different foldhash versions could disagree.
/// SipHash cost a tenth of the certification time; this costs a fraction
/// of that.
static FINGERPRINTS: foldhash::quality::FixedState =
    foldhash::quality::FixedState::with_seed(0x7461_7368_6b65_6e74);

type FpHasher = foldhash::quality::FoldHasher<'static>;

/// Hasher state that has absorbed a row key's table: cloned per key so the
/// table name is hashed once per item, not once per key. Length prefixes
/// (from `Hash for str`/`[u8]`) keep ("ab","c") and ("a","bc") apart.
fn row_hasher(table: &str) -> FpHasher {
    let mut h = FINGERPRINTS.build_hasher();
    0u8.hash(&mut h);
    table.hash(&mut h);
    h
}

fn row_fp(table: &FpHasher, key: &[u8]) -> u64 {
    let mut h = table.clone();
    key.hash(&mut h);
    h.finish()
}

fn table_fp(table: &str) -> u64 {
    let mut h = FINGERPRINTS.build_hasher();
    1u8.hash(&mut h);
    table.hash(&mut h);
    h.finish()
}

/// The fingerprint of `base` in `space`: a bijective mix (splitmix64
/// finaliser), so distinct (base, space) pairs only collide by chance.
#[inline]
fn in_space(base: u64, space: Space) -> u64 {
    let mut z = base ^ (space as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn push_unique(v: &mut Vec<Key>, k: Key) {
    if !v.iter().any(|x| x.fp == k.fp) {
        v.push(k);
    }
}

impl ConflictSet {
    /// The conflict keys of a (validated) writeset.
    pub fn of(ws: &Writeset) -> ConflictSet {
        let mut cs = ConflictSet {
            write: Vec::with_capacity(ws.items.len()),
            ..ConflictSet::default()
        };
        cs.add(&ws.items, &ws.ddl, 0, 0);
        cs
    }

    /// Adds the keys of a part of a writeset (a chunk): `items` are items
    /// `item_base..` of the whole, `ddl` its statements `ddl_base..`.
    pub fn add(&mut self, items: &[Item], ddl: &[Ddl], item_base: usize, ddl_base: usize) {
        self.add_items(items.iter(), item_base);
        for (i, d) in ddl.iter().enumerate() {
            let src = u32::try_from(ddl_base + i).unwrap_or(u32::MAX);
            for t in &d.tables {
                push_unique(
                    &mut self.ddl,
                    Key {
                        fp: table_fp(t),
                        src,
                    },
                );
            }
        }
    }

    /// Adds the keys of `items`, items `item_base..` of a writeset: decoded
    /// ones, or views of them in a record (`record_view.rs`), which must
    /// give the same keys.
    pub(crate) fn add_items<'a, I: ItemKeys<'a>>(
        &mut self,
        items: impl Iterator<Item = I>,
        item_base: usize,
    ) {
        let cs = self;
        // (table name, its row hasher, its table fingerprint) of the
        // previous item: consecutive items mostly share a table.
        let mut cur: Option<(&str, FpHasher, u64)> = None;
        for (i, item) in items.enumerate() {
            let src = u32::try_from(item_base + i).unwrap_or(u32::MAX);
            let t = item.table();
            if cur.as_ref().is_none_or(|(name, _, _)| *name != t) {
                cur = Some((t, row_hasher(t), table_fp(t)));
            }
            let Some((_, hasher, tfp)) = &cur else {
                continue;
            };
            let key = |k: &[u8]| Key {
                fp: row_fp(hasher, k),
                src,
            };
            let pk = key(item.key());
            cs.write.push(pk);
            let uniques_start = cs.write.len();
            for u in item.unique_keys() {
                cs.write.push(key(u));
            }
            let uniques_end = cs.write.len();
            for u in item.old_unique_keys() {
                let k = key(u);
                cs.write.push(k);
                cs.removed.push(k);
            }
            match Op::try_from(item.op()) {
                Ok(Op::Delete) => {
                    cs.removed.push(pk);
                    cs.removed
                        .extend_from_slice(&cs.write[uniques_start..uniques_end]);
                }
                Ok(Op::Update) => {
                    if let Some(old) = item.old_key() {
                        let k = key(old);
                        cs.write.push(k);
                        cs.removed.push(k);
                    }
                }
                _ => {}
            }
            for (table, k) in item.references() {
                cs.references.push(Key {
                    fp: row_fp(&row_hasher(table), k),
                    src,
                });
            }
            push_unique(&mut cs.tables, Key { fp: *tfp, src });
        }
    }

    /// Number of window entries a commit of this set adds.
    pub fn len(&self) -> usize {
        self.write.len()
            + self.removed.len()
            + self.references.len()
            + self.tables.len()
            + self.ddl.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The window fingerprints a commit of this set records.
    pub fn window_entries(&self) -> impl Iterator<Item = u64> + '_ {
        fn s(v: &[Key], sp: Space) -> impl Iterator<Item = u64> + '_ {
            v.iter().map(move |k| in_space(k.fp, sp))
        }
        s(&self.write, Space::Write)
            .chain(s(&self.removed, Space::Removed))
            .chain(s(&self.references, Space::Reference))
            .chain(s(&self.tables, Space::TableRows))
            .chain(s(&self.ddl, Space::TableDdl))
    }
}

/// What the conflict keys of one item are made of: a decoded [`Item`], or
/// a view of one in a record's bytes (`record_view.rs`).
pub(crate) trait ItemKeys<'a> {
    fn table(&self) -> &'a str;
    /// The `Op`, as the decoded item's `op` field holds it.
    fn op(&self) -> i32;
    fn key(&self) -> &'a [u8];
    fn old_key(&self) -> Option<&'a [u8]>;
    fn unique_keys(&self) -> impl Iterator<Item = &'a [u8]>;
    fn old_unique_keys(&self) -> impl Iterator<Item = &'a [u8]>;
    /// (table, key) of each parent referenced.
    fn references(&self) -> impl Iterator<Item = (&'a str, &'a [u8])>;
}

impl<'a> ItemKeys<'a> for &'a Item {
    fn table(&self) -> &'a str {
        &self.table
    }
    fn op(&self) -> i32 {
        self.op
    }
    fn key(&self) -> &'a [u8] {
        &self.key
    }
    fn old_key(&self) -> Option<&'a [u8]> {
        self.old_key.as_deref()
    }
    fn unique_keys(&self) -> impl Iterator<Item = &'a [u8]> {
        self.unique_keys.iter().map(|k| &k[..])
    }
    fn old_unique_keys(&self) -> impl Iterator<Item = &'a [u8]> {
        self.old_unique_keys.iter().map(|k| &k[..])
    }
    fn references(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        self.references
            .iter()
            .map(|r| (r.table.as_str(), &r.key[..]))
    }
}

/// Names the tables of a writeset's items and statements, for abort
/// reasons.
pub trait Names {
    /// The table of item `i`.
    fn item_table(&self, i: usize) -> String;
    /// The tables of statement `i`.
    fn ddl_tables(&self, i: usize) -> String;
}

impl Names for Writeset {
    fn item_table(&self, i: usize) -> String {
        self.items
            .get(i)
            .map(|i| i.table.clone())
            .unwrap_or_default()
    }

    fn ddl_tables(&self, i: usize) -> String {
        self.ddl
            .get(i)
            .map(|d| d.tables.join(", "))
            .unwrap_or_default()
    }
}

/// The names of a writeset seen in parts (chunks): each run of items of
/// one table once, every statement's tables.
#[derive(Debug, Default)]
pub struct PartNames {
    /// (first item, table) whenever the table changes.
    items: Vec<(usize, String)>,
    ddl: Vec<String>,
}

impl PartNames {
    /// Adds a part's items (numbered from `item_base`) and statements.
    pub fn add(&mut self, items: &[Item], ddl: &[Ddl], item_base: usize) {
        for (i, item) in items.iter().enumerate() {
            if self.items.last().is_none_or(|(_, t)| *t != item.table) {
                self.items.push((item_base + i, item.table.clone()));
            }
        }
        self.ddl.extend(ddl.iter().map(|d| d.tables.join(", ")));
    }
}

impl Names for PartNames {
    fn item_table(&self, i: usize) -> String {
        let at = self.items.partition_point(|(first, _)| *first <= i);
        at.checked_sub(1)
            .map(|at| self.items[at].1.clone())
            .unwrap_or_default()
    }

    fn ddl_tables(&self, i: usize) -> String {
        self.ddl.get(i).cloned().unwrap_or_default()
    }
}

/// The first write key of `cs` that a version after `snapshot` wrote (the
/// row a transaction lost on), as the base fingerprint [`ConflictSet`]
/// keeps in `write`.
pub fn lost_on(window: &ConflictWindow, snapshot: Version, cs: &ConflictSet) -> Option<u64> {
    cs.write
        .iter()
        .find(|k| {
            window
                .get(in_space(k.fp, Space::Write))
                .is_some_and(|v| v > snapshot)
        })
        .map(|k| k.fp)
}

/// The newest version in `window` that wrote the write key `fp` (0: none
/// it remembers).
pub fn last_write(window: &ConflictWindow, fp: u64) -> Version {
    window.get(in_space(fp, Space::Write)).unwrap_or(0)
}

/// Why a transaction aborts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abort {
    pub code: AbortCode,
    pub reason: String,
    /// The committed version it conflicts with (0 for "snapshot too old").
    pub conflict_version: Version,
}

/// Which kind of conflict was found, for the reason text.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Write,
    ParentRemoved,
    ReferencedRemoved,
    DdlOnRows,
    RowsOrDdlOnDdl,
}

/// Applies the rule: `Ok(())` if a transaction with `snapshot` and conflict
/// set `cs` may commit given `window`, the abort otherwise. `names` only
/// name the table in the reason. The caller has checked
/// `snapshot >= window.horizon()`.
pub fn check(
    window: &ConflictWindow,
    snapshot: Version,
    cs: &ConflictSet,
    names: &impl Names,
) -> Result<(), Abort> {
    let newer = |fp: u64, sp: Space| window.get(in_space(fp, sp)).filter(|&v| v > snapshot);
    let conflict = |kind: Kind, k: &Key, v: Version| {
        let table = match kind {
            Kind::RowsOrDdlOnDdl => names.ddl_tables(k.src as usize),
            _ => names.item_table(k.src as usize),
        };
        let what = match kind {
            Kind::Write => "(or locked) a row or unique key of table",
            Kind::ParentRemoved => "a parent row (deleted or re-keyed) referenced here, table",
            Kind::ReferencedRemoved => "a row removed here that it references, table",
            Kind::DdlOnRows => "DDL/TRUNCATE on table",
            Kind::RowsOrDdlOnDdl => "rows or DDL of a table this DDL changes:",
        };
        Err(Abort {
            code: AbortCode::Conflict,
            reason: format!(
                "could not serialize access due to concurrent update: version {v} \
                 (committed after snapshot {snapshot}) wrote {what} {table}"
            ),
            conflict_version: v,
        })
    };
    for k in &cs.write {
        if let Some(v) = newer(k.fp, Space::Write) {
            return conflict(Kind::Write, k, v);
        }
    }
    for k in &cs.references {
        if let Some(v) = newer(k.fp, Space::Removed) {
            return conflict(Kind::ParentRemoved, k, v);
        }
    }
    for k in &cs.removed {
        if let Some(v) = newer(k.fp, Space::Reference) {
            return conflict(Kind::ReferencedRemoved, k, v);
        }
    }
    for k in &cs.tables {
        if let Some(v) = newer(k.fp, Space::TableDdl) {
            return conflict(Kind::DdlOnRows, k, v);
        }
    }
    for k in &cs.ddl {
        let v = newer(k.fp, Space::TableDdl).max(newer(k.fp, Space::TableRows));
        if let Some(v) = v {
            return conflict(Kind::RowsOrDdlOnDdl, k, v);
        }
    }
    Ok(())
}
