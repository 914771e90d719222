//! Conversion between a transaction's captured lines (see `capture.sql`)
//! and the certifier's `Writeset`.
//!
//! One captured line (one statement's effect on one table) becomes one
//! certifier item: its first conflict key is the item's key, the others its
//! unique keys, an UPDATE's vanished keys its `old_unique_keys`, and its
//! foreign-key references `ParentRef`s. TRUNCATE and DDL lines become `Ddl`
//! entries (table-level conflicts) at their position among the items. The
//! line itself travels as the item's row image (or the DDL's text), so the
//! applier rebuilds exactly the text `tashkent.apply` takes, in order.

use bytes::Bytes;
use tashkent_certifier::{Ddl, Item, Op, ParentRef, Version, Writeset, WRITESET_FORMAT_VERSION};

use crate::capture::{self, ChangeOp};
use crate::error::Result;

/// Builds the writeset of a transaction from its captured text (`None`
/// when nothing was captured: a read-only transaction).
pub fn build(
    txn_id: Bytes,
    origin: u32,
    snapshot: Version,
    captured: &str,
) -> Result<Option<Writeset>> {
    let changes = capture::parse(captured)?;
    if changes.is_empty() {
        return Ok(None);
    }
    let mut items = Vec::with_capacity(changes.len());
    let mut ddl = Vec::new();
    for change in changes {
        let op = match change.op {
            ChangeOp::Insert => Op::Insert,
            ChangeOp::Update => Op::Update,
            ChangeOp::Delete => Op::Delete,
            ChangeOp::Truncate | ChangeOp::Ddl => {
                // DDL on no table (CREATE SCHEMA, CREATE FUNCTION …)
                // conflicts with other such DDL through the line's own
                // placeholder table.
                let tables = if change.tables.is_empty() {
                    vec![change.table]
                } else {
                    change.tables
                };
                ddl.push(Ddl {
                    sql: change.line,
                    tables,
                    before_item: items.len() as u64,
                });
                continue;
            }
        };
        let mut keys = change.keys.into_iter().map(Bytes::from);
        // Rows of a table without a primary key (INSERT only) have no
        // conflict key; a key unique to this item keeps the certifier's
        // "every item has a key" rule without creating conflicts.
        let key = keys.next().unwrap_or_else(|| {
            let mut k = b"\0row ".to_vec();
            k.extend_from_slice(&txn_id);
            k.extend_from_slice(format!(" {}", items.len()).as_bytes());
            Bytes::from(k)
        });
        let references = change
            .refs
            .into_iter()
            .map(|r| ParentRef {
                table: key_table(&r).to_string(),
                key: Bytes::from(r),
            })
            .collect();
        let old_unique_keys = if op == Op::Update {
            change.gone.into_iter().map(Bytes::from).collect()
        } else {
            Vec::new()
        };
        items.push(Item {
            table: change.table,
            op: op as i32,
            key,
            old_key: None,
            row: Bytes::from(change.line),
            unique_keys: keys.collect(),
            old_unique_keys,
            references,
        });
    }
    Ok(Some(Writeset {
        format_version: WRITESET_FORMAT_VERSION,
        txn_id,
        origin,
        snapshot,
        items,
        ddl,
    }))
}

/// The captured lines of a committed writeset, in their original order:
/// the text `tashkent.apply` replays.
pub fn apply_text(ws: &Writeset) -> String {
    let len: usize = ws.items.iter().map(|i| i.row.len() + 1).sum::<usize>()
        + ws.ddl.iter().map(|d| d.sql.len() + 1).sum::<usize>();
    let mut text = String::with_capacity(len);
    let mut ddl = ws.ddl.iter().peekable();
    for (i, item) in ws.items.iter().enumerate() {
        while let Some(d) = ddl.next_if(|d| d.before_item <= i as u64) {
            text.push_str(&d.sql);
            text.push('\n');
        }
        text.push_str(&String::from_utf8_lossy(&item.row));
        text.push('\n');
    }
    for d in ddl {
        text.push_str(&d.sql);
        text.push('\n');
    }
    text
}

/// The table part of a conflict key `"<schema>.<table> <index> [values]"`:
/// everything up to the first space outside double quotes.
pub fn key_table(key: &str) -> &str {
    let mut quoted = false;
    for (i, c) in key.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => return &key[..i],
            _ => {}
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINES: &str = concat!(
        r#"{"t": "public.c", "op": "I", "keys": ["public.c c_pkey [1]", "public.c c_code_key [\"x\"]"], "refs": ["public.\"my p\" \"p key\" [7]"], "rows": [{"id": 1}]}"#,
        "\n",
        r#"{"t": "public.b", "op": "T"}"#,
        "\n",
        r#"{"t": "public.a", "op": "U", "keys": ["public.a a_pkey [2]", "public.a a_pkey [1]"], "gone": ["public.a a_pkey [1]"], "del": [{"id": 1}], "rows": [{"id": 2}]}"#,
        "\n",
        r#"{"t": "public.n", "op": "I", "rows": [{"v": 1}]}"#,
        "\n",
        r#"{"t": "public.a", "op": "X", "sql": "ALTER TABLE a ADD c int", "tables": ["public.a"]}"#,
        "\n",
    );

    #[test]
    fn lines_become_items_and_ddl_and_come_back_in_order() {
        let ws = build(Bytes::from_static(b"t1"), 2, 9, LINES)
            .unwrap()
            .unwrap();
        assert_eq!((ws.origin, ws.snapshot), (2, 9));
        assert_eq!(ws.items.len(), 3);
        assert_eq!(ws.ddl.len(), 2);
        let c = &ws.items[0];
        assert_eq!(c.key, &b"public.c c_pkey [1]"[..]);
        assert_eq!(
            c.unique_keys,
            vec![Bytes::from_static(b"public.c c_code_key [\"x\"]")]
        );
        assert_eq!(c.references[0].table, "public.\"my p\"");
        let a = &ws.items[1];
        assert_eq!(a.op, Op::Update as i32);
        assert_eq!(
            a.old_unique_keys,
            vec![Bytes::from_static(b"public.a a_pkey [1]")]
        );
        assert_eq!(ws.ddl[0].before_item, 1);
        assert_eq!(ws.ddl[0].tables, vec!["public.b"]);
        assert_eq!(ws.ddl[1].before_item, 3);
        assert!(ws.items[2].key.starts_with(b"\0row t1"));
        tashkent_certifier::writeset::validate(&ws).unwrap();
        assert_eq!(apply_text(&ws), LINES);
    }

    #[test]
    fn nothing_captured_is_no_writeset() {
        assert!(build(Bytes::from_static(b"t"), 1, 0, "").unwrap().is_none());
    }

    #[test]
    fn key_table_respects_quotes() {
        assert_eq!(key_table("public.a a_pkey [1]"), "public.a");
        assert_eq!(key_table("\"s p\".\"t q\" i [1]"), "\"s p\".\"t q\"");
    }
}
