//! Every experiment's report: the throughput comparison ([`Report`]) and
//! the recovery-time experiment ([`RecoveryReport`]) render through the
//! same writers here — an aligned text table, JSON, and line plots drawn by
//! [`plot`] — so a figure looks the same whichever experiment made it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

mod plot;
mod recovery;
mod throughput;
mod tpcc;

pub use recovery::{RecoveryReport, RecoveryRow};
pub use throughput::{Report, ResultRow};

/// Writes each `(name, text)` into `dir` (created if missing); returns the
/// paths written, in order.
pub fn write_files(dir: &Path, files: Vec<(String, String)>) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// Writes an aligned text table: the header, a rule of dashes, the rows.
/// Columns are right-aligned (figures), except the first when
/// `first_left` (a name); lines carry no trailing spaces.
pub fn write_table<R: AsRef<[String]>>(
    out: &mut String,
    header: &[&str],
    rows: &[R],
    first_left: bool,
) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row.as_ref()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut String, row: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, &w)) in row.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            if i == 0 && first_left {
                let _ = write!(text, "{cell:<w$}");
            } else {
                let _ = write!(text, "{cell:>w$}");
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(out, &mut header.iter().copied());
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(out, &mut rule.iter().map(String::as_str));
    for row in rows {
        line(out, &mut row.as_ref().iter().map(String::as_str));
    }
}
