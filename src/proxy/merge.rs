//! Catch-up replay: the captured lines of consecutive versions, merged so
//! that `tashkent.apply` runs one upsert per run of rows of a table instead
//! of one per line.
//!
//! `tashkent.apply` executes one dynamic statement per line, which costs
//! about ten times what the row change itself costs; a replica replaying
//! the log after recovery applies thousands of one-row lines per second.
//! When the applier commits several versions in one replica transaction
//! (see `applier::commit_batch`), their lines are concatenated in version
//! order and [`merge_upserts`] folds each run of consecutive upsert lines
//! of one table into a single line:
//!
//! - a line is merged only if it is an insert or update (`op` I or U)
//!   without deleted keys (`del`) and carries exactly one conflict key per
//!   row: then every key is the row's primary key, and no row of it holds a
//!   non-NULL value of another unique constraint, so the rows of the run do
//!   not interact through constraints and the order in which they are
//!   applied does not matter;
//! - a line with a key already in the run starts a new run (an upsert may
//!   not touch one row twice, and the newer image must win);
//! - any other line (deletes, re-keying updates, rows with unique values,
//!   tables without a primary key, TRUNCATE, DDL) ends the run and is kept
//!   as it is, in its place.

use std::collections::HashSet;

use serde_json::{Map, Value};

/// The merged form of `text` (captured lines, one JSON object per line).
pub fn merge_upserts(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = Run::default();
    for line in text.lines().filter(|l| !l.is_empty()) {
        match mergeable(line) {
            Some((table, keys, rows)) => {
                if run.table.as_deref() != Some(table.as_str())
                    || keys.iter().any(|k| run.keys.contains(k))
                {
                    run.flush(&mut out);
                    run.table = Some(table);
                }
                run.keys.extend(keys);
                run.rows.extend(rows);
            }
            None => {
                run.flush(&mut out);
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    run.flush(&mut out);
    out
}

#[derive(Default)]
struct Run {
    table: Option<String>,
    rows: Vec<Value>,
    keys: HashSet<String>,
}

impl Run {
    fn flush(&mut self, out: &mut String) {
        let Some(table) = self.table.take() else {
            return;
        };
        let mut keys: Vec<String> = std::mem::take(&mut self.keys).into_iter().collect();
        keys.sort_unstable();
        let rows = std::mem::take(&mut self.rows);
        let mut line = Map::new();
        line.insert("t".into(), Value::String(table));
        line.insert("op".into(), Value::String("U".into()));
        line.insert(
            "keys".into(),
            Value::Array(keys.into_iter().map(Value::String).collect()),
        );
        line.insert("rows".into(), Value::Array(rows));
        out.push_str(&Value::Object(line).to_string());
        out.push('\n');
    }
}

/// The table, keys and rows of a line that may join a run (see the module
/// docs), `None` otherwise.
fn mergeable(line: &str) -> Option<(String, Vec<String>, Vec<Value>)> {
    let Value::Object(mut o) = serde_json::from_str(line).ok()? else {
        return None;
    };
    if !matches!(o.get("op").and_then(Value::as_str), Some("I" | "U")) {
        return None;
    }
    if !o.get("del").is_none_or(Value::is_null) {
        return None;
    }
    let table = o.get("t")?.as_str()?.to_string();
    let Some(Value::Array(keys)) = o.remove("keys") else {
        return None;
    };
    let Some(Value::Array(rows)) = o.remove("rows") else {
        return None;
    };
    if rows.is_empty() || keys.len() != rows.len() {
        return None;
    }
    let keys: Vec<String> = keys
        .into_iter()
        .map(|k| match k {
            Value::String(s) => Some(s),
            _ => None,
        })
        .collect::<Option<_>>()?;
    // Every row has its primary key among the line's (distinct) keys: as
    // many keys as rows means no row has any other.
    let distinct: HashSet<&str> = keys.iter().map(String::as_str).collect();
    if distinct.len() != keys.len() {
        return None;
    }
    Some((table, keys, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(id: u32, val: u32) -> String {
        format!(
            r#"{{"t": "public.a", "op": "U", "del": null, "gone": null, "keys": ["public.a a_pkey [{id}]"], "refs": null, "rows": [{{"id": {id}, "val": {val}}}]}}"#
        )
    }

    fn parse(text: &str) -> Vec<Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn runs_of_one_table_become_one_line_and_a_repeated_key_starts_a_new_one() {
        let text = [up(1, 10), up(2, 20), up(3, 30), up(1, 11), up(4, 40)].join("\n") + "\n";
        let merged = parse(&merge_upserts(&text));
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0]["t"], "public.a");
        assert_eq!(
            merged[0]["rows"],
            serde_json::json!([{"id": 1, "val": 10}, {"id": 2, "val": 20}, {"id": 3, "val": 30}])
        );
        assert_eq!(merged[0]["keys"].as_array().unwrap().len(), 3);
        assert_eq!(
            merged[1]["rows"],
            serde_json::json!([{"id": 1, "val": 11}, {"id": 4, "val": 40}])
        );
    }

    #[test]
    fn other_lines_end_runs_and_stay_in_place() {
        let delete =
            r#"{"t": "public.a", "op": "D", "del": [{"id": 2}], "keys": ["public.a a_pkey [2]"]}"#;
        let unique = r#"{"t": "public.a", "op": "U", "keys": ["public.a a_pkey [4]", "public.a a_u_key [\"x\"]"], "rows": [{"id": 4, "u": "x"}]}"#;
        let rekey = r#"{"t": "public.a", "op": "U", "del": [{"id": 5}], "keys": ["public.a a_pkey [6]"], "rows": [{"id": 6}]}"#;
        let other =
            r#"{"t": "public.b", "op": "I", "keys": ["public.b b_pkey [1]"], "rows": [{"id": 1}]}"#;
        let nokey = r#"{"t": "public.n", "op": "I", "rows": [{"v": 1}]}"#;
        let lines = [
            up(1, 1),
            up(2, 2),
            delete.to_string(),
            up(2, 3),
            unique.to_string(),
            rekey.to_string(),
            other.to_string(),
            nokey.to_string(),
            up(1, 4),
        ];
        let merged = merge_upserts(&(lines.join("\n") + "\n"));
        let got = parse(&merged);
        let ops: Vec<(&str, &str, usize)> = got
            .iter()
            .map(|l| {
                (
                    l["t"].as_str().unwrap(),
                    l["op"].as_str().unwrap(),
                    l["rows"].as_array().map_or(0, Vec::len),
                )
            })
            .collect();
        assert_eq!(
            ops,
            vec![
                ("public.a", "U", 2),
                ("public.a", "D", 0),
                ("public.a", "U", 1),
                ("public.a", "U", 1),
                ("public.a", "U", 1),
                ("public.b", "U", 1),
                ("public.n", "I", 1),
                ("public.a", "U", 1),
            ]
        );
        // Lines that are not merged are kept byte for byte.
        assert!(merged.contains(delete) && merged.contains(unique) && merged.contains(nokey));
    }

    #[test]
    fn empty_and_unreadable_text() {
        assert_eq!(merge_upserts(""), "");
        assert_eq!(merge_upserts("not json\n"), "not json\n");
    }
}
