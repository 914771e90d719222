//! The recovery-time experiment's report: restore and replay time of each
//! rebuilt replica against the length of the log it replayed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::plot::{self, Marker, Plot, Series, XAxis};
use super::write_table;
use crate::error::{Error, Result};

/// One rebuilt replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryRow {
    /// AllUpdates rows in the database.
    pub rows: u64,
    /// `pg_database_size` of the source.
    pub db_bytes: u64,
    /// Size of the checkpoint's dump.
    pub dump_bytes: u64,
    /// How long taking the checkpoint took (pg_dump).
    pub checkpoint_s: f64,
    /// Writesets replayed.
    pub log_length: u64,
    /// The replaying proxy's `max_apply_batch` (1: a replica transaction
    /// and a `tashkent.apply` call per version).
    pub apply_batch: usize,
    /// pg_restore, reconfiguration and ANALYZE.
    pub restore_s: f64,
    /// From the proxy's start until the replica applied the whole log.
    pub replay_s: f64,
    /// `log_length / replay_s`.
    pub replay_per_s: f64,
}

/// All rows of one experiment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecoveryReport {
    pub results: Vec<RecoveryRow>,
}

impl RecoveryReport {
    /// An aligned text table, one line per rebuilt replica.
    pub fn to_table(&self) -> String {
        const HEADER: [&str; 9] = [
            "rows",
            "db MB",
            "dump MB",
            "ckpt s",
            "log",
            "batch",
            "restore s",
            "replay s",
            "replay/s",
        ];
        let cells: Vec<[String; 9]> = self
            .results
            .iter()
            .map(|r| {
                [
                    r.rows.to_string(),
                    format!("{:.1}", r.db_bytes as f64 / 1e6),
                    format!("{:.1}", r.dump_bytes as f64 / 1e6),
                    format!("{:.2}", r.checkpoint_s),
                    r.log_length.to_string(),
                    r.apply_batch.to_string(),
                    format!("{:.2}", r.restore_s),
                    format!("{:.2}", r.replay_s),
                    format!("{:.0}", r.replay_per_s),
                ]
            })
            .collect();
        let mut out = String::from("Recovery: restore a checkpoint, replay the log\n");
        write_table(&mut out, &HEADER, &cells, false);
        out
    }

    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Writes `recovery-table.txt`, `recovery.json` and
    /// `recovery-time.svg` into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let svg = self.plot_svg().map_err(|message| Error::Plot {
            what: "recovery".into(),
            message,
        })?;
        super::write_files(
            dir,
            vec![
                ("recovery-table.txt".into(), self.to_table()),
                ("recovery.json".into(), self.to_json()?),
                ("recovery-time.svg".into(), svg),
            ],
        )
    }

    /// Restore and replay time (s) against log length (log scale), one
    /// colour per database size and batch: replay a thick line with
    /// circles, restore a thin one with triangles.
    pub fn plot_svg(&self) -> std::result::Result<String, String> {
        let mut sizes: Vec<(u64, usize)> = self
            .results
            .iter()
            .map(|r| (r.rows, r.apply_batch))
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        let logs = self.results.iter().map(|r| r.log_length.max(1) as f64);
        let (lo, hi) = logs
            .clone()
            .fold((f64::MAX, 1.0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
        let (lo, hi) = if self.results.is_empty() {
            (1.0, 10.0)
        } else {
            (lo / 1.5, hi * 1.5)
        };
        let mut series = Vec::new();
        for (i, &(rows, batch)) in sizes.iter().enumerate() {
            let mut pts: Vec<&RecoveryRow> = self
                .results
                .iter()
                .filter(|r| r.rows == rows && r.apply_batch == batch)
                .collect();
            pts.sort_by_key(|r| r.log_length);
            let phase = |f: fn(&RecoveryRow) -> f64| {
                pts.iter()
                    .map(|r| (r.log_length.max(1) as f64, f(r)))
                    .collect::<Vec<_>>()
            };
            series.push(Series {
                label: format!("replay, {rows} rows, batch {batch}"),
                color: i,
                points: phase(|r| r.replay_s),
                line: 2,
                marker: Marker::Circle,
                marker_size: 4,
                legend_marker: false,
            });
            series.push(Series {
                label: format!("restore, {rows} rows, batch {batch}"),
                color: i,
                points: phase(|r| r.restore_s),
                line: 1,
                marker: Marker::Triangle,
                marker_size: 5,
                legend_marker: true,
            });
        }
        plot::render(
            &Plot {
                caption: "Recovery time by log length (restore + replay)",
                x_desc: "writesets to replay",
                y_desc: "seconds",
                y_label_area: 60,
                x_axis: XAxis::Log { lo, hi },
                y_decimals: 1,
            },
            &series,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_json_and_plot() {
        let row = |rows, log, replay_s| RecoveryRow {
            rows,
            db_bytes: rows * 150,
            dump_bytes: rows * 20,
            checkpoint_s: 0.5,
            log_length: log,
            apply_batch: 500,
            restore_s: 1.5,
            replay_s,
            replay_per_s: log as f64 / replay_s,
        };
        let r = RecoveryReport {
            results: vec![
                row(100_000, 10_000, 1.0),
                row(100_000, 100_000, 9.0),
                row(1_000_000, 10_000, 1.2),
            ],
        };
        let t = r.to_table();
        assert!(t.contains("replay/s"), "{t}");
        assert!(t.contains("11111"), "{t}");
        let back: RecoveryReport = serde_json::from_str(&r.to_json().unwrap()).unwrap();
        assert_eq!(back, r);
        let svg = r.plot_svg().unwrap();
        assert!(svg.contains("<svg") && svg.contains("replay, 100000 rows, batch 500"));
        assert!(svg.contains("restore, 1000000 rows, batch 500"));
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(r.write(dir.path()).unwrap().len(), 3);
    }
}
