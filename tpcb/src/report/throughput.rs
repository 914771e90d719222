//! The throughput comparison's report: a text table per workload, JSON,
//! and a plot of throughput against replica count per workload.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::plot::{self, Marker, Plot, Series, XAxis};
use super::write_table;
use crate::error::{Error, Result};
use crate::stats::RunStats;
use crate::tpcc::TpccStats;
use crate::workload::Workload;

/// One measured configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub workload: Workload,
    /// What was measured, e.g. `postgres-fsync`, `base`, `tashkent-mw`.
    pub system: String,
    /// Number of replicas (1 for a standalone server).
    pub replicas: u32,
    /// All transactions together (for TPC-C: every type, `aborts` are
    /// the retries).
    pub stats: RunStats,
    /// TPC-C only: tpmC and the figures per transaction type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpcc: Option<TpccStats>,
}

/// All results of one benchmark run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub results: Vec<ResultRow>,
}

impl Report {
    /// The workloads present, in order of first appearance.
    pub fn workloads(&self) -> Vec<Workload> {
        let mut out = Vec::new();
        for r in &self.results {
            if !out.contains(&r.workload) {
                out.push(r.workload);
            }
        }
        out
    }

    /// The rows of one workload, in report order.
    pub fn rows(&self, workload: Workload) -> impl Iterator<Item = &ResultRow> {
        self.results.iter().filter(move |r| r.workload == workload)
    }

    /// An aligned text table per workload: system, replicas, throughput
    /// (tps), mean/p50/p90/p99 latency (ms) and abort rate (%); for TPC-C
    /// then, per setup, tpmC and a table per transaction type (share,
    /// mean and p90 response time, count, rollbacks, 40001 retries).
    pub fn to_table(&self) -> String {
        const HEADER: [&str; 8] = [
            "system", "replicas", "tps", "mean ms", "p50 ms", "p90 ms", "p99 ms", "abort %",
        ];
        let mut out = String::new();
        for (n, workload) in self.workloads().into_iter().enumerate() {
            let cells: Vec<[String; 8]> = self
                .rows(workload)
                .map(|r| {
                    let s = &r.stats;
                    [
                        r.system.clone(),
                        r.replicas.to_string(),
                        format!("{:.1}", s.throughput_tps),
                        format!("{:.3}", s.latency_ms.mean),
                        format!("{:.3}", s.latency_ms.p50),
                        format!("{:.3}", s.latency_ms.p90),
                        format!("{:.3}", s.latency_ms.p99),
                        format!("{:.2}", s.abort_rate * 100.0),
                    ]
                })
                .collect();
            if n > 0 {
                out.push('\n');
            }
            let _ = writeln!(out, "{}", workload.title());
            // The system name reads left to right, figures align right.
            write_table(&mut out, &HEADER, &cells, true);
            for r in self.rows(workload) {
                if let Some(tpcc) = &r.tpcc {
                    super::tpcc::write_setup(&mut out, r, tpcc);
                }
            }
        }
        out
    }

    /// The report as pretty-printed JSON, every figure included.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Reads a report written by [`Report::to_json`].
    pub fn from_json(json: &str) -> Result<Report> {
        Ok(serde_json::from_str(json)?)
    }

    /// Writes one SVG per workload into `dir` (created if missing), named
    /// `<workload>-throughput.svg`: throughput (tpmC for TPC-C) against
    /// replica count, one
    /// line per system with a marker at every measurement, so a system
    /// measured at a single replica count shows as a lone marker. Returns
    /// the files written.
    pub fn write_plot(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for workload in self.workloads() {
            let svg = self.plot_svg(workload).map_err(|message| Error::Plot {
                what: workload.name().to_owned(),
                message,
            })?;
            files.push((format!("{}-throughput.svg", workload.name()), svg));
        }
        super::write_files(dir, files)
    }

    /// Renders the throughput plot of `workload` as an SVG document.
    pub fn plot_svg(&self, workload: Workload) -> std::result::Result<String, String> {
        let rows: Vec<&ResultRow> = self.rows(workload).collect();
        let mut systems: Vec<&str> = Vec::new();
        for r in &rows {
            if !systems.contains(&r.system.as_str()) {
                systems.push(&r.system);
            }
        }
        let (lo, hi) = rows
            .iter()
            .map(|r| r.replicas)
            .fold((u32::MAX, 0), |(lo, hi), x| (lo.min(x), hi.max(x)));
        let (lo, hi) = if rows.is_empty() { (1, 1) } else { (lo, hi) };
        let series: Vec<Series> = systems
            .iter()
            .enumerate()
            .map(|(i, system)| {
                let mut points: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| r.system == *system)
                    .map(|r| (f64::from(r.replicas), plotted(r)))
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                // A system measured at one replica count is a lone marker.
                let single = points.len() < 2;
                Series {
                    label: system.to_string(),
                    color: i,
                    points,
                    line: if single { 0 } else { 2 },
                    marker: Marker::Circle,
                    marker_size: if single { 5 } else { 4 },
                    legend_marker: single,
                }
            })
            .collect();
        let caption = format!("{}: throughput by replica count", workload.title());
        let tpmc = rows.iter().any(|r| r.tpcc.is_some());
        plot::render(
            &Plot {
                caption: &caption,
                x_desc: "replicas",
                y_desc: if tpmc { "tpmC" } else { "throughput (tps)" },
                y_label_area: 70,
                x_axis: XAxis::Counts { lo, hi },
                y_decimals: 0,
            },
            &series,
        )
    }
}

/// What a row's plot shows: tpmC for TPC-C, else transactions per second.
fn plotted(r: &ResultRow) -> f64 {
    match &r.tpcc {
        Some(t) => t.tpmc,
        None => r.stats.throughput_tps,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use plotters::style::{Color, Palette, Palette99};

    use super::*;
    use crate::stats::LatencySummary;

    fn stats(tps: f64, aborts: u64, seed: f64) -> RunStats {
        RunStats {
            committed: (tps * 10.0) as u64,
            aborts,
            unknown: 1,
            elapsed: Duration::from_millis(10_000),
            throughput_tps: tps,
            latency_ms: LatencySummary {
                mean: 1.25 + seed,
                p50: 1.125 + seed,
                p90: 2.5 + seed,
                p99: 7.75 + seed,
            },
            abort_rate: aborts as f64 / ((tps * 10.0) + aborts as f64),
        }
    }

    fn row(workload: Workload, system: &str, replicas: u32, s: RunStats) -> ResultRow {
        ResultRow {
            workload,
            system: system.into(),
            replicas,
            stats: s,
            tpcc: None,
        }
    }

    fn sample() -> Report {
        Report {
            results: vec![
                row(
                    Workload::AllUpdates,
                    "postgres-fsync",
                    1,
                    stats(4100.5, 0, 0.0),
                ),
                row(Workload::AllUpdates, "base", 1, stats(3900.0, 0, 0.1)),
                row(Workload::AllUpdates, "base", 3, stats(4500.0, 12, 0.2)),
                row(
                    Workload::AllUpdates,
                    "tashkent-mw",
                    1,
                    stats(9000.25, 3, 0.3),
                ),
                row(
                    Workload::AllUpdates,
                    "tashkent-mw",
                    2,
                    stats(15000.0, 40, 0.4),
                ),
                row(
                    Workload::AllUpdates,
                    "tashkent-mw",
                    3,
                    stats(21000.0, 77, 0.5),
                ),
                row(Workload::Tpcb, "postgres-fsync", 1, stats(1500.0, 0, 0.6)),
                row(Workload::Tpcb, "tashkent-mw", 2, stats(2500.0, 250, 0.7)),
            ],
        }
    }

    #[test]
    fn table_holds_every_system_and_figure() {
        let report = sample();
        let table = report.to_table();
        assert!(table.contains("AllUpdates\n"), "{table}");
        assert!(table.contains("TPC-B\n"), "{table}");
        for header in [
            "system", "replicas", "tps", "mean ms", "p50 ms", "p90 ms", "p99 ms", "abort %",
        ] {
            assert!(table.contains(header), "{header} missing:\n{table}");
        }
        for r in &report.results {
            let s = &r.stats;
            let line = table
                .lines()
                .find(|l| {
                    let mut cells = l.split_whitespace();
                    cells.next() == Some(r.system.as_str())
                        && cells.next() == Some(r.replicas.to_string().as_str())
                        && cells.next() == Some(format!("{:.1}", s.throughput_tps).as_str())
                })
                .unwrap_or_else(|| panic!("no line for {r:?}:\n{table}"));
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(
                cells[3..],
                [
                    format!("{:.3}", s.latency_ms.mean),
                    format!("{:.3}", s.latency_ms.p50),
                    format!("{:.3}", s.latency_ms.p90),
                    format!("{:.3}", s.latency_ms.p99),
                    format!("{:.2}", s.abort_rate * 100.0),
                ],
                "{table}"
            );
        }
        // Aligned: every data line of a section as long as its header line
        // (figures are right-aligned to the header's end).
        for section in table.split("\n\n") {
            let lines: Vec<&str> = section.lines().skip(1).collect();
            let width = lines[0].chars().count();
            for l in &lines {
                assert_eq!(l.chars().count(), width, "{section}");
            }
        }
    }

    #[test]
    fn json_round_trips_every_field() {
        let report = sample();
        let json = report.to_json().unwrap();
        assert_eq!(Report::from_json(&json).unwrap(), report);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let first = &value["results"][0];
        assert_eq!(first["workload"], "allupdates");
        assert_eq!(first["system"], "postgres-fsync");
        assert_eq!(first["replicas"], 1);
        for field in [
            "committed",
            "aborts",
            "unknown",
            "elapsed",
            "throughput_tps",
            "latency_ms",
            "abort_rate",
        ] {
            assert!(
                !first["stats"][field].is_null(),
                "{field} missing in {json}"
            );
        }
        for p in ["mean", "p50", "p90", "p99"] {
            assert!(first["stats"]["latency_ms"][p].is_number(), "{p} in {json}");
        }
        assert_eq!(value["results"][7]["workload"], "tpcb");
    }

    #[test]
    fn plots_one_svg_per_workload_with_a_series_per_system() {
        let report = sample();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("plots");
        let files = report.write_plot(&out).unwrap();
        assert_eq!(
            files,
            vec![
                out.join("allupdates-throughput.svg"),
                out.join("tpcb-throughput.svg")
            ]
        );
        for (file, workload) in files.iter().zip(Workload::ALL) {
            let svg = std::fs::read_to_string(file).unwrap();
            let head = svg.trim_start();
            assert!(head.starts_with("<svg") || head.starts_with("<?xml"));
            assert!(svg.trim_end().ends_with("</svg>"));
            assert!(svg.contains(workload.title()));
            let systems: Vec<&str> = {
                let mut v: Vec<&str> = Vec::new();
                for r in report.rows(workload) {
                    if !v.contains(&r.system.as_str()) {
                        v.push(&r.system);
                    }
                }
                v
            };
            for (i, system) in systems.iter().enumerate() {
                // The legend names the system...
                assert!(
                    svg.contains(&format!(">{system}<"))
                        || svg.contains(&format!(">\n{system}\n<")),
                    "{system} not in the legend of {}",
                    file.display()
                );
                // ...and the series is drawn in the system's own colour: a
                // line (and its legend glyph) when measured at several
                // replica counts, a marker per measurement, and a marker
                // as the legend glyph of a single-point system.
                let c = Palette99::pick(i).to_rgba();
                let hex = format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2);
                let points = report
                    .rows(workload)
                    .filter(|r| &r.system == system)
                    .count();
                let lines = svg
                    .lines()
                    .filter(|l| {
                        l.starts_with("<polyline") && l.contains(&format!("stroke=\"{hex}\""))
                    })
                    .count();
                let markers = svg
                    .lines()
                    .filter(|l| l.starts_with("<circle") && l.contains(&format!("fill=\"{hex}\"")))
                    .count();
                if points > 1 {
                    assert_eq!((lines, markers), (2, points), "{system} in {svg}");
                } else {
                    assert_eq!((lines, markers), (0, 2), "{system} in {svg}");
                }
            }
            // Nothing else is drawn in colour.
            let coloured = svg
                .lines()
                .filter(|l| l.starts_with("<polyline") && !l.contains("stroke=\"#000000\""))
                .count();
            let multi = systems
                .iter()
                .filter(|s| report.rows(workload).filter(|r| &r.system == *s).count() > 1)
                .count();
            assert_eq!(coloured, 2 * multi, "{svg}");
        }
    }

    #[test]
    fn empty_report_renders() {
        let report = Report::default();
        assert_eq!(report.to_table(), "");
        let dir = tempfile::tempdir().unwrap();
        assert!(report.write_plot(dir.path()).unwrap().is_empty());
        assert_eq!(
            Report::from_json(&report.to_json().unwrap()).unwrap(),
            report
        );
    }
}
