//! A whole tashkent cluster for integration tests: N PostgreSQL replicas
//! (the harness), one certifier in this process, and one `tashkent proxy`
//! child process per replica. Everything is torn down on drop.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tashkent::ops::pg::{PgConfig, PgServer};
use tashkent_certifier::{CertifierClient, CertifierConfig, RunningCertifier};
use tokio_postgres::Client;

use super::{connect, connect_str, shared_tempdir};

pub struct Cluster {
    pub replicas: Vec<PgServer>,
    pub proxies: Vec<Option<ProxyProcess>>,
    pub certifier: Option<RunningCertifier>,
    pub certifier_addr: String,
    /// The certifier as a `tashkent certifier` child process (instead of
    /// `certifier`), see [`Cluster::start_with_certifier_process`].
    pub certifier_process: Option<CertifierProcess>,
    /// Flags every proxy started from now on gets.
    pub proxy_args: Vec<String>,
    _dir: tempfile::TempDir,
}

/// A `tashkent certifier` child process, SIGKILLed on drop.
pub struct CertifierProcess {
    pub child: Child,
    pub addr: String,
    pub wal_dir: std::path::PathBuf,
}

impl CertifierProcess {
    /// Starts `tashkent certifier --listen <listen> --wal-dir <wal_dir>`
    /// (plus `extra` flags) and waits for its `listening on ADDR` line.
    pub fn spawn(wal_dir: &std::path::Path, listen: &str, extra: &[&str]) -> CertifierProcess {
        let (child, addr) = spawn_listening(
            Command::new(env!("CARGO_BIN_EXE_tashkent"))
                .args(["certifier", "--listen", listen, "--wal-dir"])
                .arg(wal_dir)
                .args(extra),
            "certifier",
        );
        CertifierProcess {
            child,
            addr,
            wal_dir: wal_dir.to_path_buf(),
        }
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CertifierProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `tashkent proxy` child process, SIGKILLed on drop.
pub struct ProxyProcess {
    pub child: Child,
    pub addr: String,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cluster {
    /// Like [`Cluster::start`], with the in-process certifier's
    /// configuration adjusted by `adjust`.
    pub async fn start_with(n: usize, adjust: impl FnOnce(&mut CertifierConfig)) -> Cluster {
        let dir = shared_tempdir();
        let mut cfg = CertifierConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            wal_dir: dir.path().join("wal"),
            ..CertifierConfig::default()
        };
        adjust(&mut cfg);
        let certifier = tashkent_certifier::start(cfg)
            .await
            .expect("starting the certifier");
        let addr = certifier.local_addr().to_string();
        Cluster::assemble(n, dir, Some(certifier), None, addr)
    }

    /// Like [`Cluster::start`], with the certifier as a `tashkent
    /// certifier` child process (so that it can be SIGKILLed).
    pub async fn start_with_certifier_process(n: usize) -> Cluster {
        let dir = shared_tempdir();
        let process = CertifierProcess::spawn(&dir.path().join("wal"), "127.0.0.1:0", &[]);
        let addr = process.addr.clone();
        Cluster::assemble(n, dir, None, Some(process), addr)
    }

    fn assemble(
        n: usize,
        dir: tempfile::TempDir,
        certifier: Option<RunningCertifier>,
        certifier_process: Option<CertifierProcess>,
        certifier_addr: String,
    ) -> Cluster {
        let replicas: Vec<PgServer> = (0..n)
            .map(|_| PgServer::start(PgConfig::default()).expect("starting a replica"))
            .collect();
        let mut cluster = Cluster {
            replicas,
            proxies: Vec::new(),
            proxy_args: Vec::new(),
            certifier,
            certifier_addr,
            certifier_process,
            _dir: dir,
        };
        for i in 0..n {
            let p = cluster.spawn_proxy(i);
            cluster.proxies.push(Some(p));
        }
        cluster
    }

    /// The cluster's temporary directory (world-traversable).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// SIGKILLs the certifier child process and starts it again on the
    /// same address and WAL.
    pub fn restart_certifier_process(&mut self) {
        let mut old = self
            .certifier_process
            .take()
            .expect("the certifier runs as a child process");
        old.kill();
        let wal_dir = old.wal_dir.clone();
        drop(old);
        self.certifier_process = Some(CertifierProcess::spawn(&wal_dir, &self.certifier_addr, &[]));
    }

    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, |_| {}).await
    }

    /// Starts the proxy of replica `i` (0-based) as a child process.
    pub fn spawn_proxy(&self, i: usize) -> ProxyProcess {
        let pg = &self.replicas[i];
        let (child, addr) = spawn_listening(
            Command::new(env!("CARGO_BIN_EXE_tashkent"))
                .args(["proxy", "--listen", "127.0.0.1:0", "--pg-host", pg.host()])
                .args(["--pg-port", &pg.port().to_string()])
                .args(["--replica-id", &(i + 1).to_string()])
                .args(["--replicas", &self.replicas.len().to_string()])
                .args(["--certifier", &self.certifier_addr])
                .args(&self.proxy_args),
            &format!("proxy {}", i + 1),
        );
        ProxyProcess { child, addr }
    }

    /// Stops every proxy and starts them again with `args` added.
    pub fn restart_proxies_with(&mut self, args: &[&str]) {
        self.proxy_args = args.iter().map(|a| a.to_string()).collect();
        for i in 0..self.proxies.len() {
            drop(self.proxies[i].take());
            self.proxies[i] = Some(self.spawn_proxy(i));
        }
    }

    /// Peak resident memory (kB) of the proxy of replica `i` and of the
    /// certifier process, from /proc (VmHWM).
    pub fn peak_rss_kb(&self, pid: u32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    /// libpq connection string of proxy `i`.
    pub fn proxy_conninfo(&self, i: usize) -> String {
        let addr = &self.proxies[i].as_ref().expect("proxy running").addr;
        let (host, port) = addr.rsplit_once(':').unwrap();
        format!("host={host} port={port} user=postgres dbname=postgres")
    }

    /// A client connected through proxy `i`.
    pub async fn client(&self, i: usize) -> Client {
        connect_str(&self.proxy_conninfo(i)).await
    }

    /// A client connected straight to replica `i` (for checks only).
    pub async fn replica(&self, i: usize) -> Client {
        connect(&self.replicas[i], "postgres").await
    }

    /// Waits until every replica has applied everything the certifier
    /// made durable.
    pub async fn wait_converged(&self) {
        let cert = CertifierClient::connect(&self.certifier_addr)
            .await
            .unwrap();
        let target = cert.status().await.unwrap().durable_version;
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..self.replicas.len() {
            let c = self.replica(i).await;
            loop {
                let v = tashkent::proxy::capture::applied_version(&c).await.unwrap();
                if v >= target {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "replica {} stuck at version {v} of {target}",
                    i + 1
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// The replicas as `tashkent verify` targets.
    pub fn verify_targets(&self) -> Vec<tashkent::ops::verify::Target> {
        self.replicas
            .iter()
            .enumerate()
            .map(|(i, r)| tashkent::ops::verify::Target {
                name: format!("replica {}", i + 1),
                conninfo: r.conninfo("postgres"),
            })
            .collect()
    }

    /// Waits for convergence, then asserts with `tashkent verify` that
    /// every replica holds the same tables with the same contents; returns
    /// each table's rows and checksum.
    pub async fn assert_identical(&self) -> BTreeMap<String, (i64, String)> {
        self.wait_converged().await;
        let report = tashkent::ops::verify::verify(
            &self.verify_targets(),
            &tashkent::ops::verify::Options::default(),
        )
        .await
        .expect("running verify");
        assert!(report.identical(), "{}", report.verdict());
        assert!(report.verdict().contains("identical"));
        report.tables
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Proxies first (they hold connections to the replicas).
        self.proxies.clear();
    }
}

/// Spawns a tashkent server process (logging at warn) and waits for its
/// `listening on ADDR` line; the rest of its stdout is drained in the
/// background so it never blocks on a full pipe.
pub fn spawn_listening(cmd: &mut Command, what: &str) -> (Child, String) {
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning the {what}: {e}"));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(a) = line.strip_prefix("listening on ") {
                    break a.trim().to_string();
                }
            }
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} ended before listening: {other:?}");
            }
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

/// Runs the `tashkent` binary (logging at warn); success and output.
pub fn tashkent(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tashkent"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Blocking work inside a multi-threaded test runtime.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl Cluster {
    /// Takes a checkpoint of replica `i` into `dir` with `tashkent
    /// checkpoint` (reporting it to the certifier); returns its output.
    pub fn checkpoint_cli(&self, i: usize, dir: &std::path::Path) -> String {
        let port = self.replicas[i].port().to_string();
        let id = (i + 1).to_string();
        let (ok, text) = blocking(|| {
            tashkent(&[
                "checkpoint",
                "--pg-port",
                &port,
                "--replica",
                &id,
                "--dir",
                dir.to_str().unwrap(),
                "--certifier",
                &self.certifier_addr,
            ])
        });
        assert!(ok, "tashkent checkpoint failed:\n{text}");
        text
    }

    /// Rebuilds replica `i` (its proxy must be stopped) with `tashkent
    /// recover` into a new base directory, then starts its server there
    /// and its proxy, which replays the log. Returns the recover command's
    /// output.
    pub async fn rebuild_replica(
        &mut self,
        i: usize,
        ckpt_dir: &std::path::Path,
        tag: &str,
    ) -> String {
        let cluster = self;
        blocking(|| cluster.replicas[i].kill()).unwrap();
        let base: std::path::PathBuf = cluster.dir().join(format!("replica-{}-{tag}", i + 1));
        let replicas = cluster.replicas.len().to_string();
        let id = (i + 1).to_string();
        let (ok, text) = blocking(|| {
            tashkent(&[
                "recover",
                "--base-dir",
                base.to_str().unwrap(),
                "--dir",
                ckpt_dir.to_str().unwrap(),
                "--replica",
                &id,
                "--replicas",
                &replicas,
                "--certifier",
                &cluster.certifier_addr,
            ])
        });
        assert!(ok, "tashkent recover failed:\n{text}");
        cluster.replicas[i] = blocking(|| {
            PgServer::start(PgConfig {
                base_dir: Some(base),
                ..PgConfig::default()
            })
        })
        .unwrap();
        cluster.proxies[i] = Some(cluster.spawn_proxy(i));
        text
    }
}
