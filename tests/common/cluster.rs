//! A whole tashkent cluster for integration tests: the library's own
//! orchestrator (`ops::cluster::LocalCluster`) with its certifier and
//! proxies as child processes of the tashkent binary under test, in a
//! temporary state directory, plus what the tests check with. Everything
//! is torn down on drop.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::process::Command;
use std::time::{Duration, Instant};

use tashkent::ops::cluster::{ClusterConfig, LocalCluster, Placement};
use tashkent::ops::config::ConfigFile;
use tashkent::ops::pg::{PgConfig, PgServer};
use tashkent::proxy::ProxyConfig;
use tashkent_certifier::CertifierConfig;
use tokio_postgres::Client;

use super::{connect, connect_str, shared_tempdir};

pub struct Cluster {
    inner: LocalCluster,
    /// Dropped after the cluster's processes, before its directory: the
    /// mounts a test put inside it (`Cluster::hold`).
    held: Vec<Box<dyn std::any::Any + Send>>,
    _watch: super::watchdog::Watch,
    _dir: tempfile::TempDir,
}

impl Deref for Cluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.inner
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        &mut self.inner
    }
}

impl Cluster {
    /// `n` replicas, the certifier configured by `adjust`.
    pub async fn start_with(n: usize, adjust: impl FnOnce(&mut CertifierConfig)) -> Cluster {
        Cluster::start_file(n, |file| adjust(&mut file.certifier)).await
    }

    /// `n` replicas, the cluster file adjusted by `adjust` (its state
    /// directory is the test's own).
    pub async fn start_file(n: usize, adjust: impl FnOnce(&mut ConfigFile)) -> Cluster {
        let dir = shared_tempdir();
        let watch = super::watchdog::Watch::new(dir.path());
        let file = Cluster::file_in(&dir, n, adjust);
        Cluster::start_in(dir, watch, &file).await
    }

    /// Like [`Cluster::start_file`], where `adjust` also mounts file
    /// systems in the state directory (a small or a freezable disk under a
    /// certifier's log); the cluster holds them (`Cluster::hold`). If the
    /// start fails, what is left of the directory is removed once they are
    /// off (it could not be while they were on).
    pub async fn start_mounted(
        n: usize,
        adjust: impl FnOnce(&mut ConfigFile) -> Vec<super::mount::Mount>,
    ) -> Cluster {
        use futures::FutureExt;
        let dir = shared_tempdir();
        let parent = dir.path().to_path_buf();
        let watch = super::watchdog::Watch::new(dir.path());
        let mut mounted = Vec::new();
        let file = Cluster::file_in(&dir, n, |f| {
            std::fs::create_dir_all(&f.cluster.state_dir).unwrap();
            mounted = adjust(f);
        });
        let started = std::panic::AssertUnwindSafe(Cluster::start_in(dir, watch, &file))
            .catch_unwind()
            .await;
        match started {
            Ok(mut cluster) => {
                for m in mounted {
                    cluster.hold(m);
                }
                cluster
            }
            Err(panic) => {
                drop(mounted);
                let _ = std::fs::remove_dir_all(parent);
                std::panic::resume_unwind(panic);
            }
        }
    }

    /// The cluster file of `n` replicas with its state directory in
    /// `dir`, adjusted by `adjust`.
    pub fn file_in(
        dir: &tempfile::TempDir,
        n: usize,
        adjust: impl FnOnce(&mut ConfigFile),
    ) -> ConfigFile {
        let mut file = ConfigFile {
            cluster: ClusterConfig {
                state_dir: dir.path().join("state"),
                replicas: n as u32,
                ..ClusterConfig::default()
            },
            ..ConfigFile::default()
        };
        adjust(&mut file);
        file
    }

    /// Where the tests' clusters run their certifier and proxies: as
    /// processes of the binary under test.
    pub fn placement() -> Placement {
        Placement::Processes {
            exe: env!("CARGO_BIN_EXE_tashkent").into(),
        }
    }

    /// The cluster `file` describes, started (or resumed from what an
    /// earlier start left) in `dir`, which `watch` watches.
    pub async fn start_in(
        dir: tempfile::TempDir,
        watch: super::watchdog::Watch,
        file: &ConfigFile,
    ) -> Cluster {
        let inner = LocalCluster::start_placed(file, Cluster::placement())
            .await
            .expect("starting the cluster");
        Cluster {
            inner,
            held: Vec::new(),
            _watch: watch,
            _dir: dir,
        }
    }

    /// Keeps `guard` until the cluster is torn down: dropped once its
    /// processes are gone and before its directory is removed (a mount in
    /// the state directory), in the order held.
    pub fn hold(&mut self, guard: impl std::any::Any + Send) {
        self.held.push(Box::new(guard));
    }

    /// Stops everything gracefully (`LocalCluster::shutdown`); the
    /// directory the cluster lived in, kept until dropped.
    pub async fn shutdown(self) -> tempfile::TempDir {
        let Cluster {
            inner, held, _dir, ..
        } = self;
        inner.shutdown().await.expect("stopping the cluster");
        drop(held);
        _dir
    }

    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, |_| {}).await
    }

    /// The cluster's temporary directory (world-traversable).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// The certifier's address (every node's, `a,b,c`, for a replicated
    /// certifier).
    pub fn certifier(&self) -> String {
        self.certifier_addrs().expect("the certifier runs")
    }

    /// Each certifier node's address, as the status helpers take them.
    pub fn node_addrs(&self) -> Vec<String> {
        let addrs = self.certifier_node_addrs();
        addrs.iter().map(|a| a.to_string()).collect()
    }

    /// SIGKILLs the certifier and starts it again on the same address
    /// and log.
    pub async fn restart_certifier(&mut self) {
        self.kill_certifier().await.unwrap();
        self.start_certifier()
            .await
            .expect("restarting the certifier");
    }

    /// Starts (again) the proxy of replica `i` (0-based).
    pub async fn restart_proxy(&mut self, i: usize) {
        self.start_proxy(i).await.expect("starting a proxy");
    }

    /// Stops every proxy and starts them again with `edit` applied to
    /// their settings.
    pub async fn restart_proxies_with(&mut self, edit: impl FnOnce(&mut ProxyConfig)) {
        self.edit_proxy_template(edit);
        for i in 0..self.replicas.len() {
            self.restart_proxy(i).await;
        }
    }

    /// Process id of the proxy of replica `i`.
    pub fn proxy_process(&self, i: usize) -> u32 {
        self.proxy_pid(i).expect("the proxy runs as a process")
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

    /// A client connected through proxy `i`.
    pub async fn client(&self, i: usize) -> Client {
        connect_str(&self.proxy_conninfo(i)).await
    }

    /// A client connected straight to replica `i` (for checks only).
    pub async fn replica(&self, i: usize) -> Client {
        connect(&self.replicas[i], "postgres").await
    }

    /// Holds replica `i`'s applier back at `table` until the returned
    /// connection commits: a lock taken directly (not through the proxy)
    /// that lets reads and the replica's other tables through but keeps
    /// the applier from writing `table`.
    pub async fn hold_applier(&self, i: usize, table: &str) -> Client {
        let holder = self.replica(i).await;
        holder
            .batch_execute(&format!("BEGIN; LOCK TABLE {table} IN SHARE MODE"))
            .await
            .unwrap();
        holder
    }

    /// Waits until every replica has applied everything the certifier
    /// made durable.
    pub async fn wait_converged(&self) {
        let target = self.acknowledged_version().await;
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

    /// The newest version the certifier has acknowledged: a single
    /// certifier's durable version; with raft nodes the highest version any
    /// node has committed (what a follower reports may trail the leader).
    /// Over TLS when the certifier serves it.
    pub async fn acknowledged_version(&self) -> u64 {
        if self.certifier_nodes() == 1 {
            let cert = self.certifier_client().await.unwrap();
            return cert.status().await.unwrap().durable_version;
        }
        let mut newest = None;
        for addr in self.certifier_node_addrs() {
            let node = tashkent::ops::certifier::CertifierTarget::new(
                addr.to_string(),
                self.certifier_tls_ca().map(std::path::Path::to_path_buf),
            );
            let status = tokio::time::timeout(Duration::from_secs(2), async {
                node.connect().await.ok()?.status().await.ok()
            })
            .await;
            if let Ok(Some(s)) = status {
                newest = newest.max(Some(s.committed_version));
            }
        }
        newest.expect("no certifier node answers")
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
                &self.certifier(),
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
        let certifier = cluster.certifier();
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
                &certifier,
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
        cluster.restart_proxy(i).await;
        text
    }
}

/// Waits (up to 30 s) until `query` runs on the server `replica` is
/// connected to: a cancel sent earlier would find nothing to cancel.
pub async fn until_running(replica: &Client, query: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running: i64 = replica
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
                &[&query],
            )
            .await
            .unwrap()
            .get(0);
        if running > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{query} never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `sql` (one bigint) through `client` until it returns `want`, at
/// most `within`: replication to the other replicas is asynchronous.
pub async fn eventually(client: &Client, sql: &str, want: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = client.query_one(sql, &[]).await.map(|r| r.get::<_, i64>(0));
        match got {
            Ok(v) if v == want => return,
            other => assert!(
                Instant::now() < deadline,
                "{sql}: wanted {want}, still {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
