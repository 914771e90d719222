//! `tashkent bench` as a user runs it: the real binary, a short run of both
//! workloads on every system at 1 and 2 replicas, and the files it writes.
//! Timings are not asserted, only that every figure is there.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};

use tashkent_tpcb::{Report, Workload};

const BIN: &str = env!("CARGO_BIN_EXE_tashkent");

const SYSTEMS: [(&str, &[u32]); 6] = [
    ("postgres-fsync", &[1]),
    ("postgres-nofsync", &[1]),
    ("postgres-rr", &[1]),
    ("base", &[1, 2]),
    ("tashkent-api", &[1, 2]),
    ("tashkent-mw", &[1, 2]),
];

/// Runs `tashkent bench args… --results-dir results --work-dir work`;
/// its stdout, after asserting it succeeded.
pub(crate) fn run_bench(args: &[&str], results: &Path, work: &Path) -> String {
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .arg("--results-dir")
        .arg(results)
        .arg("--work-dir")
        .arg(work)
        .stdin(Stdio::null())
        .output()
        .expect("running tashkent bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tashkent bench {} failed ({}):\n{stdout}\n{stderr}",
        args.join(" "),
        out.status
    );
    stdout
}

/// Runs `tashkent bench args…` on small tables (500 rows per scale unit),
/// 3 clients, 2 s measured; its stdout, after asserting it succeeded.
fn bench(args: &[&str], results: &Path, work: &Path) -> String {
    // 2 s of load: the windows are short, and the machine is shared with
    // other tests. Contended TPC-B through the middleware used to end
    // nothing for a whole second now and then (fair turns waiting for each
    // other until they lapsed; fixed, see `certifier/src/turns.rs`). Every
    // row must show commits.
    let small = [
        "--rows-per-scale",
        "500",
        "--clients",
        "3",
        "--duration",
        "2",
    ];
    run_bench(&[args, &small[..]].concat(), results, work)
}

#[test]
fn bench_prints_tables_and_writes_json_and_plots() {
    let dir = common::shared_tempdir();
    let results = dir.path().join("results");
    let work = dir.path().join("work");
    let stdout = bench(
        &[
            "--workloads",
            "allupdates,tpcb",
            "--replicas",
            "1,2",
            "--scale",
            "2",
            "--warmup",
            "0.2",
        ],
        &results,
        &work,
    );

    // The table: one section per workload, a line per system and count.
    for title in ["AllUpdates\n", "TPC-B\n"] {
        assert!(stdout.contains(title), "{title} missing:\n{stdout}");
    }
    for header in [
        "system", "replicas", "tps", "mean ms", "p50 ms", "p90 ms", "p99 ms", "abort %",
    ] {
        assert!(stdout.contains(header), "{header} missing:\n{stdout}");
    }
    for (system, counts) in SYSTEMS {
        for n in counts {
            let lines = stdout
                .lines()
                .filter(|l| {
                    let mut cells = l.split_whitespace();
                    cells.next() == Some(system) && cells.next() == Some(&n.to_string())
                })
                .count();
            assert_eq!(lines, 2, "{system} ×{n}: one line per workload:\n{stdout}");
        }
    }
    assert!(
        stdout.contains("tashkent-mw ÷ postgres-fsync, 1 replica"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tashkent-mw ÷ base, 2 replicas"),
        "{stdout}"
    );
    assert!(!stdout.contains("PROBLEMS"), "{stdout}");

    // JSON of every figure, readable as a tpcb report.
    let json_path = results.join("results.json");
    assert!(
        stdout.contains(&format!("json: {}", json_path.display())),
        "{stdout}"
    );
    let json = std::fs::read_to_string(&json_path).expect("results.json");
    let report = Report::from_json(&json).expect("results.json is a report");
    assert_eq!(
        report.workloads(),
        vec![Workload::AllUpdates, Workload::Tpcb]
    );
    for w in [Workload::AllUpdates, Workload::Tpcb] {
        let got: Vec<(String, u32)> = report
            .rows(w)
            .map(|r| (r.system.clone(), r.replicas))
            .collect();
        let want: Vec<(String, u32)> = SYSTEMS
            .iter()
            .flat_map(|(s, counts)| counts.iter().map(|n| (s.to_string(), *n)))
            .collect();
        assert_eq!(got, want, "{w}");
        for r in report.rows(w) {
            assert!(
                r.stats.committed > 0,
                "{w} {} ×{}: {r:?}",
                r.system,
                r.replicas
            );
            assert!(r.stats.throughput_tps > 0.0, "{r:?}");
            let l = r.stats.latency_ms;
            assert!(l.p50 <= l.p90 && l.p90 <= l.p99, "{r:?}");
        }
    }
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let first = &value["results"][0];
    for field in ["workload", "system", "replicas", "stats"] {
        assert!(!first[field].is_null(), "{field} missing in {json}");
    }
    for field in [
        "committed",
        "aborts",
        "unknown",
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
    assert_eq!(value["plan"]["clients"], 3, "{json}");
    assert_eq!(value["plan"]["duration_s"], 2.0, "{json}");
    assert_eq!(
        value["problems"].as_array().map(Vec::len),
        Some(0),
        "{json}"
    );
    let ratios = value["ratios"].as_array().expect("ratios");
    // Per workload: MW against the three standalone servers and against
    // Base at 1 and 2; API against Base and MW against API at 1 and 2.
    assert_eq!(ratios.len(), 18, "{json}");
    assert!(
        ratios.iter().all(|r| r["ratio"].as_f64().unwrap() > 0.0),
        "{json}"
    );

    // One SVG plot per workload with every system in it.
    for w in ["allupdates", "tpcb"] {
        let path = results.join(format!("{w}-throughput.svg"));
        assert!(
            stdout.contains(&format!("plot: {}", path.display())),
            "{stdout}"
        );
        let svg = std::fs::read_to_string(&path).expect("the plot");
        assert!(
            svg.trim_start().starts_with("<svg"),
            "{}",
            &svg[..svg.len().min(200)]
        );
        for (system, _) in SYSTEMS {
            assert!(
                svg.contains(system),
                "{system} missing from {}",
                path.display()
            );
        }
    }
    assert!(results.join("results.txt").exists());

    // Every system's temporary state is gone (servers stopped, dirs removed).
    let left: Vec<_> = std::fs::read_dir(&work)
        .expect("the work directory")
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Unmodified pgbench as the client: one process per proxy, figures cut
/// from its per-transaction logs.
#[test]
fn bench_drives_the_load_with_pgbench() {
    let dir = common::shared_tempdir();
    let results = dir.path().join("results");
    let stdout = bench(
        &[
            "--client",
            "pgbench",
            "--replicas",
            "2",
            "--systems",
            "postgres-nofsync,pgbouncer,tashkent-mw",
            "--scale",
            "1",
            "--warmup",
            "0.5",
        ],
        &results,
        &dir.path().join("work"),
    );
    let json = std::fs::read_to_string(results.join("results.json")).expect("results.json");
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["plan"]["client"], "pgbench", "{json}");
    let report = Report::from_json(&json).expect("results.json is a report");
    for w in [Workload::AllUpdates, Workload::Tpcb] {
        let got: Vec<(String, u32)> = report
            .rows(w)
            .map(|r| (r.system.clone(), r.replicas))
            .collect();
        assert_eq!(
            got,
            vec![
                ("postgres-nofsync".into(), 1),
                ("pgbouncer".into(), 1),
                ("tashkent-mw".into(), 2)
            ],
            "{w}"
        );
        for r in report.rows(w) {
            assert!(r.stats.committed > 0, "{w}: {r:?}");
            let l = r.stats.latency_ms;
            assert!(0.0 < l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99, "{r:?}");
        }
    }
    assert!(!stdout.contains("PROBLEMS"), "{stdout}");
    // The pooler's cost, measured in the same run.
    assert!(
        stdout.contains("pgbouncer ÷ postgres-nofsync, 1 replica"),
        "{stdout}"
    );
}

/// `tashkent bench contention`: sysbench through three proxies at once
/// (skewed and uniform keys), then `verify`; every proxy commits, and the
/// table and JSON carry every side and a verdict per goal.
#[test]
fn bench_contention_runs_sysbench_through_three_proxies_and_verifies() {
    let dir = common::shared_tempdir();
    let results = dir.path().join("results");
    let stdout = run_bench(
        &[
            "contention",
            "--scenarios",
            "sysbench",
            "--fairness",
            "on",
            "--duration",
            "2",
            "--table-size",
            "500",
        ],
        &results,
        &dir.path().join("work"),
    );
    let json = std::fs::read_to_string(results.join("contention.json")).expect("contention.json");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let runs = v["runs"].as_array().unwrap();
    let keys: Vec<&str> = runs.iter().map(|r| r["keys"].as_str().unwrap()).collect();
    assert_eq!(keys, ["special", "uniform"], "{json}");
    for r in runs {
        let sides = r["sides"].as_array().unwrap();
        assert_eq!(sides.len(), 3, "{json}");
        for s in sides {
            assert!(s["committed"].as_u64().unwrap() > 0, "{json}");
            assert!(s["latency_p95_ms"].as_f64().unwrap() > 0.0, "{json}");
        }
    }
    assert_eq!(v["verdicts"].as_array().unwrap().len(), 1, "{json}");
    assert!(v["problems"].as_array().unwrap().is_empty(), "{json}");
    assert!(stdout.contains("skewed p95"), "{stdout}");
}

#[test]
fn bench_refuses_bad_flags() {
    let out = Command::new(BIN)
        .args(["bench", "--replicas", "1,2", "--max-replicas", "3"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(BIN)
        .args([
            "bench",
            "--replicas",
            "0",
            "--results-dir",
            "/nonexistent/x",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("between 1 and 16"), "{stderr}");
    let out = Command::new(BIN)
        .args(["bench", "--systems", "mysql"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// `tashkent bench recovery` as a user runs it, small: a checkpoint of
/// 1,000 rows, 200 writesets replayed batched and one by one.
#[test]
fn bench_recovery_replays_batched_and_one_by_one() {
    let dir = common::shared_tempdir();
    let results = dir.path().join("results");
    run_bench(
        &[
            "recovery",
            "--rows",
            "1000",
            "--log",
            "200",
            "--baseline-log",
            "200",
        ],
        &results,
        &dir.path().join("work"),
    );
    let table = std::fs::read_to_string(results.join("recovery-table.txt")).expect("the table");
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.trim_start().starts_with("1000 "))
        .collect();
    assert_eq!(rows.len(), 2, "a batched and a one-by-one replay:\n{table}");
    assert!(results.join("recovery.json").exists());
}
