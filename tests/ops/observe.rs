//! Watching a running cluster as an operator does: the Prometheus metrics
//! of the certifier and of every proxy, `tashkent status` (table and
//! JSON), and what `tashkent up` prints.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tashkent_metrics::Scrape;

use crate::common::cluster::{tashkent, Cluster};
use crate::common::{self, connect_str};

async fn scrape(addr: std::net::SocketAddr) -> Scrape {
    tashkent_metrics::fetch(&addr.to_string(), Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("scraping {addr}: {e}"))
}

/// Scrapes until `ok` holds (a gauge read when scraped may trail a commit
/// by one applier step).
async fn scrape_until(addr: std::net::SocketAddr, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = scrape(addr).await;
        if ok(&s) || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_commits_aborts_and_apply_and_status_reports_each_replica() {
    let mut cluster = Cluster::start(2).await;
    let proxies = cluster.proxy_metrics_addrs().expect("metrics are on");
    let certifier = cluster.certifier_metrics_addr().expect("metrics are on");
    let a = cluster.client(0).await;
    let b = cluster.client(1).await;
    a.batch_execute("CREATE TABLE m (k int PRIMARY KEY, v int)")
        .await
        .unwrap();
    for k in 0..20 {
        a.execute("INSERT INTO m VALUES ($1, 0)", &[&k])
            .await
            .unwrap();
    }
    cluster.wait_converged().await;
    // A client's ROLLBACK, and a certification conflict: both replicas
    // update row 1 from the same snapshot, the second COMMIT loses.
    a.batch_execute("BEGIN; UPDATE m SET v = 5 WHERE k = 2; ROLLBACK")
        .await
        .unwrap();
    a.batch_execute("BEGIN; UPDATE m SET v = 1 WHERE k = 1")
        .await
        .unwrap();
    b.batch_execute("BEGIN; UPDATE m SET v = 2 WHERE k = 1")
        .await
        .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    let lost = b.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(
        lost.code().map(|c| c.code()),
        Some("40001"),
        "the second commit of row 1 fails certification: {lost}"
    );
    cluster.wait_converged().await;

    // The gauge of what proxy 1 applied moves after its local commits.
    let p1 = scrape_until(proxies[0], |s| {
        s.value("tashkent_proxy_apply_lag_versions", &[]) == Some(0.0)
    })
    .await;
    let updates = p1.value("tashkent_proxy_commits_total", &[("kind", "update")]);
    // CREATE TABLE, 20 inserts, the winning update.
    assert!(updates >= Some(22.0), "update commits: {updates:?}");
    assert_eq!(
        p1.value("tashkent_proxy_aborts_total", &[("cause", "client")]),
        Some(1.0)
    );
    assert!(p1.value("tashkent_proxy_commit_seconds_count", &[]) >= updates);
    assert!(p1.value("tashkent_proxy_turn_wait_seconds_count", &[]) >= updates);
    assert_eq!(
        p1.value("tashkent_proxy_client_connections", &[]),
        Some(1.0),
        "one client is connected to proxy 1"
    );
    assert_eq!(
        p1.value("tashkent_proxy_state", &[("state", "serving")]),
        Some(1.0)
    );

    let p2 = scrape_until(proxies[1], |s| {
        s.value("tashkent_proxy_apply_lag_versions", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(
        p2.value("tashkent_proxy_aborts_total", &[("cause", "certification")]),
        Some(1.0)
    );
    // Replica 2 applied replica 1's 22 versions itself.
    assert!(p2.sum("tashkent_proxy_apply_batch_versions_sum", &[]) >= 22.0);
    assert_eq!(
        p2.value("tashkent_proxy_apply_lag_versions", &[]),
        Some(0.0)
    );
    assert_eq!(
        p2.value("tashkent_proxy_version", &[("kind", "applied")]),
        p1.value("tashkent_proxy_version", &[("kind", "applied")]),
    );

    let c = scrape(certifier).await;
    assert!(
        c.value(
            "tashkent_certifier_certifications_total",
            &[("outcome", "committed")]
        ) >= Some(22.0)
    );
    assert_eq!(
        c.value(
            "tashkent_certifier_certifications_total",
            &[("outcome", "aborted")]
        ),
        Some(1.0)
    );
    assert_eq!(c.value("tashkent_certifier_subscribers", &[]), Some(2.0));
    let syncs = c.value("tashkent_certifier_wal_sync_seconds_count", &[]);
    assert!(syncs >= Some(1.0), "{syncs:?}");
    assert_eq!(
        c.value("tashkent_certifier_wal_group_records_sum", &[]),
        c.value("tashkent_certifier_version", &[("kind", "durable")]),
        "every durable version was counted in one group"
    );

    // `tashkent status --json`, from the state directory.
    let state = cluster.state_dir().display().to_string();
    let (ok, out) =
        // A generous answer time: every part must read "up" here.
        common::cluster::blocking(|| {
            tashkent(&["status", "--state-dir", &state, "--json", "--timeout", "30"])
        });
    assert!(ok, "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(json["certifier"]["state"], "up", "{out}");
    let durable = json["certifier"]["durable_version"].as_u64().unwrap();
    assert!(durable >= 22, "{out}");
    let replicas = json["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2, "{out}");
    for r in replicas {
        assert_eq!(r["state"], "serving", "{out}");
        assert_eq!(r["applied_version"].as_u64(), Some(durable), "{out}");
    }

    // A proxy that is gone shows as down, and the others still report.
    cluster.kill_proxy(1).await;
    let (ok, out) = common::cluster::blocking(|| tashkent(&["status", "--state-dir", &state]));
    assert!(ok, "{out}");
    let row = |id: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .unwrap_or_else(|| panic!("no row for replica {id}: {out}"))
            .to_string()
    };
    assert!(row("1").contains("serving"), "{out}");
    assert!(row("2").contains("down"), "{out}");
    assert!(out.contains("newest checkpoint: none"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn up_prints_connect_metrics_and_status_lines_without_notices_or_colour() {
    let dir = common::shared_tempdir();
    let state = dir.path().join("state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tashkent"))
        .args(["up", "--replicas", "2", "--state-dir"])
        .arg(&state)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // Reads stdout until the last line `up` prints once it is up.
    let (tx, rx) = std::sync::mpsc::channel();
    let out_reader = std::thread::spawn(move || {
        let mut all = String::new();
        let mut buf = [0u8; 4096];
        let mut told = false;
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
            if !told && all.contains("Ctrl-C stops it.") {
                told = true;
                let _ = tx.send(all.clone());
            }
        }
        all
    });
    let printed = common::cluster::blocking(|| rx.recv_timeout(Duration::from_secs(120)));
    let Ok(printed) = printed else {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = child.wait();
        panic!("up printed: {}", out_reader.join().unwrap());
    };
    let metrics_line = printed
        .lines()
        .find(|l| l.starts_with("metrics: http://"))
        .unwrap_or_else(|| panic!("no metrics line: {printed}"));
    let status_line = printed
        .lines()
        .find_map(|l| l.strip_prefix("status: "))
        .unwrap_or_else(|| panic!("no status line: {printed}"));
    // Every printed metrics URL answers.
    let urls: Vec<&str> = metrics_line
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches(',').strip_prefix("http://"))
        .collect();
    assert_eq!(urls.len(), 3, "{metrics_line}");
    for u in &urls {
        let addr = u.trim_end_matches("/metrics");
        tashkent_metrics::fetch(addr, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{u}: {e}"));
    }
    // The status command it prints runs as printed.
    let args: Vec<&str> = status_line.split_whitespace().collect();
    assert_eq!(args[0], "tashkent", "{status_line}");
    let (ok, out) = common::cluster::blocking(|| tashkent(&args[1..]));
    assert!(ok && out.contains("serving"), "{out}");
    let client = connect_str(
        printed
            .lines()
            .find_map(|l| l.strip_prefix("connect: psql \""))
            .unwrap()
            .trim_end_matches('"'),
    )
    .await;
    client.batch_execute("SELECT 1").await.unwrap();
    drop(client);

    kill(pid, Signal::SIGINT).unwrap();
    let status = common::cluster::blocking(|| child.wait()).unwrap();
    assert!(status.success(), "{status}");
    let out = out_reader.join().unwrap();
    let err = err_reader.join().unwrap();
    for text in [&out, &err] {
        assert!(!text.contains("NOTICE"), "PostgreSQL notices: {text}");
        assert!(!text.contains('\x1b'), "escape codes: {text:?}");
    }
}
