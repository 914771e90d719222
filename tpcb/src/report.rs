//! Benchmark reports: a text table, JSON and throughput plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::stats::RunStats;
use crate::workload::Workload;

/// One measured configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub workload: Workload,
    /// What was measured, e.g. `postgres-fsync`, `base`, `tashkent-mw`.
    pub system: String,
    /// Number of replicas (1 for a standalone server).
    pub replicas: u32,
    pub stats: RunStats,
}

/// All results of one benchmark run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub results: Vec<ResultRow>,
}

/// Width and height of a plot, in SVG pixels.
const PLOT_SIZE: (u32, u32) = (800, 500);

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
    /// (tps), mean/p50/p90/p99 latency (ms) and abort rate (%).
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
    /// `<workload>-throughput.svg`: throughput against replica count, one
    /// line per system with a marker at every measurement, so a system
    /// measured at a single replica count shows as a lone marker. Returns
    /// the files written.
    pub fn write_plot(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let mut written = Vec::new();
        for workload in self.workloads() {
            let svg = self.plot_svg(workload).map_err(|message| Error::Plot {
                workload: workload.name().to_owned(),
                message,
            })?;
            let path = dir.join(format!("{}-throughput.svg", workload.name()));
            std::fs::write(&path, svg).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            written.push(path);
        }
        Ok(written)
    }

    /// Renders the throughput plot of `workload` as an SVG document.
    ///
    /// Text goes into the SVG as `<text>` elements; plotters is built
    /// without its `ttf` feature, so it sizes labels with an estimate and
    /// needs no system font libraries.
    pub fn plot_svg(&self, workload: Workload) -> std::result::Result<String, String> {
        let rows: Vec<&ResultRow> = self.rows(workload).collect();
        let mut systems: Vec<&str> = Vec::new();
        for r in &rows {
            if !systems.contains(&r.system.as_str()) {
                systems.push(&r.system);
            }
        }
        let (x_lo, x_hi) = rows
            .iter()
            .map(|r| r.replicas)
            .fold((u32::MAX, 0), |(lo, hi), x| (lo.min(x), hi.max(x)));
        let (x_lo, x_hi) = if rows.is_empty() {
            (1, 1)
        } else {
            (x_lo, x_hi)
        };
        let y_max = rows
            .iter()
            .map(|r| r.stats.throughput_tps)
            .fold(0.0f64, f64::max);
        let y_top = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };

        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
            root.fill(&WHITE).map_err(|e| e.to_string())?;
            let mut chart = ChartBuilder::on(&root)
                .caption(
                    format!("{}: throughput by replica count", workload.title()),
                    ("sans-serif", 22),
                )
                .margin(15)
                .x_label_area_size(45)
                .y_label_area_size(70)
                .build_cartesian_2d((f64::from(x_lo) - 0.5)..(f64::from(x_hi) + 0.5), 0.0..y_top)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("replicas")
                .y_desc("throughput (tps)")
                .x_labels((x_hi - x_lo) as usize + 2)
                .x_label_formatter(&|x| {
                    if x.fract() == 0.0 {
                        format!("{x:.0}")
                    } else {
                        String::new()
                    }
                })
                .y_label_formatter(&|y| format!("{y:.0}"))
                .disable_x_mesh()
                .draw()
                .map_err(|e| e.to_string())?;

            for (i, system) in systems.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                let mut points: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| r.system == *system)
                    .map(|r| (f64::from(r.replicas), r.stats.throughput_tps))
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                let name = system.to_string();
                if points.len() > 1 {
                    chart
                        .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                        .map_err(|e| e.to_string())?
                        .label(name.clone())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                        });
                    chart
                        .draw_series(PointSeries::of_element(
                            points,
                            4,
                            color.filled(),
                            &|c, s, st| Circle::new(c, s, st),
                        ))
                        .map_err(|e| e.to_string())?;
                } else {
                    chart
                        .draw_series(PointSeries::of_element(
                            points,
                            5,
                            color.filled(),
                            &|c, s, st| Circle::new(c, s, st),
                        ))
                        .map_err(|e| e.to_string())?
                        .label(name)
                        .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
                }
            }
            if !systems.is_empty() {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .draw()
                    .map_err(|e| e.to_string())?;
            }
            root.present().map_err(|e| e.to_string())?;
        }
        Ok(svg)
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
