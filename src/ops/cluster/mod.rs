//! A whole tashkent cluster on this machine: N PostgreSQL replicas the
//! harness initialises, the certifier, and one proxy per replica. The
//! one orchestrator of the code base: `tashkent up` runs the certifier and
//! the proxies in its own process ([`Placement::InProcess`]); the tests,
//! the soak and the bench run each as a child process of the tashkent
//! binary ([`Placement::Processes`]), so that any part can be SIGKILLed,
//! restarted and measured on its own.
//!
//! State lives in one directory, kept across runs so a second start
//! resumes the same cluster (its layout: `state_dir`). The cluster file's
//! `[proxy]` and `[certifier]` sections are the templates of every proxy
//! and of the certifier (their addresses are the cluster's own).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tashkent_certifier::{CertifierConfig, RunningCertifier};

use crate::error::{Error, Result};
use crate::ops::certifier::CertifierTarget;
use crate::ops::config::ConfigFile;
use crate::ops::pg::{PgConfig, PgServer};
use crate::ops::process::{free_loopback_port, ChildProcess};
use crate::ops::state_dir::{CertifierHeld, Ports, SeededVersions, StateDir};
use crate::ops::{checkpoint, recover};
use crate::proxy::{ProxyConfig, RunningProxy};

mod config;
mod nodes;
mod seed;
mod tls;

pub use config::{ClusterConfig, DurabilityMode};
use tls::{certifier_tls, tls_certificate};

/// Where the certifier and the proxies run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Tasks of this process (`tashkent up`).
    InProcess,
    /// Child processes of the tashkent binary `exe` (`tashkent certifier
    /// --config`, `tashkent proxy --config` with files in the state
    /// directory).
    Processes { exe: PathBuf },
}

/// The certifier or a proxy, wherever it runs.
enum Part<T> {
    InProcess(T),
    Process(ChildProcess),
}

/// A running local cluster; `shutdown` (or drop) stops everything.
///
/// Invariants: `replicas[i]` is replica `i + 1` (its proxy is
/// `proxies[i]`, `None` while stopped) and lives under the state
/// directory unless a test moved it; a proxy always starts from
/// `config.proxy` with the cluster's own addresses filled in, so a
/// restarted proxy is the proxy that ran before; the certifier keeps its
/// address and its log across restarts.
pub struct LocalCluster {
    pub replicas: Vec<PgServer>,
    proxies: Vec<Option<Part<RunningProxy>>>,
    certifier: Option<Part<RunningCertifier>>,
    /// Where the certifier listens (kept across its restarts).
    certifier_listen: SocketAddr,
    /// A replicated certifier's nodes (`[cluster] certifiers` > 1), node
    /// 1 first (`None` while stopped); `certifier` is then unused.
    nodes: Vec<Option<Part<RunningCertifier>>>,
    /// Where each node listens (kept across restarts).
    node_listen: Vec<SocketAddr>,
    /// Each node's `peer_routes`, when a test routes its links (see
    /// `route_certifier_node`).
    node_routes: Vec<Option<String>>,
    /// Where each node serves metrics (kept across restarts; unused when
    /// metrics are off).
    node_metrics: Vec<SocketAddr>,
    /// Where each proxy listens (kept across its restarts).
    proxy_listen: Vec<SocketAddr>,
    /// Where the certifier and each proxy serve metrics (kept likewise;
    /// unused when metrics are off).
    certifier_metrics: SocketAddr,
    proxy_metrics: Vec<SocketAddr>,
    placement: Placement,
    state: StateDir,
    /// The versions node 1 was seeded with from a single certifier's log
    /// (`seed.rs`), while not every node is known to hold them.
    seeded: Option<SeededVersions>,
    /// The configuration it was started with (recovery rebuilds replicas
    /// and proxies from it).
    config: ConfigFile,
}

/// A loopback address on `port`.
fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A single certifier's log that holds no record (a cluster started and
/// stopped before its certifier logged a version) is nothing to keep: a
/// start with certifier nodes empties it and is a first start. A log that
/// has held a record becomes node 1's directory (`seed.rs`): it is the
/// only durable copy of what the single certifier acknowledged.
///
/// Only a log whose one segment starts at LSN 1 may be empty (the
/// segments' names say so, nothing opened); that one is opened, which
/// locks it (a certifier still running on it keeps it, and the start is
/// refused), and emptied while locked, so no certifier started meanwhile
/// writes into files being removed. The directory itself stays, with
/// whatever else it holds (it may be a mount point): it holds no segment,
/// so it counts for nothing.
async fn forget_an_empty_single_log(
    held: CertifierHeld,
    certifiers: u32,
    state: &StateDir,
    opts: tashkent_wal::WalOptions,
) -> Result<CertifierHeld> {
    let dir = state.certifier_wal();
    if held != CertifierHeld::Single
        || certifiers == 1
        || tashkent_wal::segment_first_lsns(&dir) != [1]
    {
        return Ok(held);
    }
    let emptied = dir.clone();
    let emptied = tokio::task::spawn_blocking(move || empty_unless_logged(&emptied, opts))
        .await
        .map_err(|e| Error::Config(format!("reading {}: {e}", dir.display())))?;
    match emptied {
        Ok(true) => {
            tracing::info!(
                "{} held a single certifier's log without a record: emptied, the {certifiers} \
                 certifier nodes start afresh",
                dir.display()
            );
            state.certifier_held()
        }
        Ok(false) => Ok(held),
        Err(e) => {
            tracing::warn!(
                "{}: could not tell whether the single certifier's log holds a record \
                 (is a certifier still running on it?): {e}",
                dir.display()
            );
            Ok(held)
        }
    }
}

/// Empties the log in `dir` if it holds no record, while it is open and
/// so locked: its segment files and its spool go, nothing else in the
/// directory (its lock file stays, as any closed log's does, so a
/// certifier opening it next locks the same file); whether it did.
fn empty_unless_logged(dir: &Path, opts: tashkent_wal::WalOptions) -> Result<bool> {
    let wal = tashkent_wal::Wal::open(dir, opts).map_err(|e| Error::Certifier {
        context: format!("opening {}", dir.display()),
        source: e.into(),
    })?;
    let empty = wal.last_lsn() == 0;
    let removed = if empty { remove_log_files(dir) } else { Ok(()) };
    let closed = futures::executor::block_on(wal.close());
    removed?;
    closed.map_err(|e| Error::Certifier {
        context: format!("closing {}", dir.display()),
        source: e.into(),
    })?;
    Ok(empty)
}

/// Removes the segment files of the log in `dir` and its spool, then
/// makes that durable.
fn remove_log_files(dir: &Path) -> Result<()> {
    for first in tashkent_wal::segment_first_lsns(dir) {
        let path = dir.join(tashkent_wal::segment_file_name(first));
        std::fs::remove_file(&path).map_err(Error::io(format!("removing {}", path.display())))?;
    }
    let spool = dir.join("spool");
    if spool.exists() {
        std::fs::remove_dir_all(&spool)
            .map_err(Error::io(format!("removing {}", spool.display())))?;
    }
    crate::ops::sync_dir(dir)
}

/// Refuses a start with another certifier than the state directory holds
/// the nodes of: a single certifier over nodes' state would lack what they
/// committed (every commit then failed as ahead of the certifier), and
/// another number of nodes would choose new ports for all of them, which
/// their membership does not name. Those start in another state
/// directory. (Nodes over a single certifier's log take it over,
/// `seed.rs`; a log without a record gives way, `forget_an_empty_single_log`.)
fn same_certifier(certifiers: u32, held: CertifierHeld, state: &StateDir) -> Result<()> {
    let (held, n) = match held {
        CertifierHeld::Nodes(n) if n != certifiers => {
            (format!("a replicated certifier of {n} nodes"), n)
        }
        _ => return Ok(()),
    };
    Err(Error::Config(format!(
        "{} holds {held}: start it with `certifiers = {n}` (`tashkent up --certifiers {n}`), \
         or use another state directory (`--state-dir`) for {certifiers}: a certifier of \
         another kind or size does not take over this one's log",
        state.root().display()
    )))
}

/// A part's port: its kept or configured one, else (a first start,
/// nothing configured) one chosen free below the ephemeral range
/// (`free_loopback_port`, which hands each out once); 0 for a part that
/// does not run (a metrics endpoint switched off: one chosen for it could
/// be taken by the time it is switched on). Not port 0 for a part that
/// runs: a part keeps its port across restarts, and one bound to port 0
/// got it from the ephemeral range, where any outgoing connection may
/// take it while the part is down (a killed proxy then could not start
/// again).
pub(super) fn part_port(runs: bool, kept: u16) -> Result<u16> {
    if kept != 0 || !runs {
        return Ok(kept);
    }
    free_loopback_port()
}

impl LocalCluster {
    /// Starts (or resumes) the cluster `file` describes, all in this
    /// process.
    pub async fn start(file: &ConfigFile) -> Result<LocalCluster> {
        LocalCluster::start_placed(file, Placement::InProcess).await
    }

    /// Starts (or resumes) the cluster `file` describes, its certifier
    /// and proxies placed as `placement` says.
    pub async fn start_placed(file: &ConfigFile, placement: Placement) -> Result<LocalCluster> {
        let cfg = &file.cluster;
        cfg.validate()?;
        let root = std::path::absolute(&cfg.state_dir)
            .map_err(Error::io(format!("resolving {}", cfg.state_dir.display())))?;
        std::fs::create_dir_all(&root)
            .map_err(Error::io(format!("creating {}", root.display())))?;
        let state = StateDir::new(&root);
        let held = state.certifier_held()?;
        let held =
            forget_an_empty_single_log(held, cfg.certifiers, &state, file.certifier.wal_options())
                .await?;
        let seeding = seed::seeds_nodes(cfg.certifiers, &state);
        if !seeding {
            same_certifier(cfg.certifiers, held, &state)?;
        }
        let ports = state.ports()?;
        let single = nodes::count(cfg.certifiers) == 0;
        let mut file = file.clone();
        tls_certificate(&mut file, &state)?;
        certifier_tls(&mut file, &state)?;
        let mut replicas = Vec::new();
        for i in 1..=cfg.replicas {
            let base = state.replica_base(i);
            let settings = cfg.pg_settings.clone();
            let durability = cfg.durability.replica_durability();
            let server = tokio::task::spawn_blocking(move || {
                PgServer::start(PgConfig {
                    base_dir: Some(base),
                    durability,
                    settings,
                    ..PgConfig::default()
                })
            })
            .await
            .map_err(|e| Error::Config(format!("starting replica {i}: {e}")))??;
            replicas.push(server);
        }
        let mut cluster = LocalCluster {
            replicas,
            proxies: Vec::new(),
            certifier: None,
            certifier_listen: local(part_port(single, ports.certifier)?),
            nodes: Vec::new(),
            node_listen: nodes::listen_addrs(cfg.certifiers, &ports.certifier_nodes)?,
            node_routes: Vec::new(),
            node_metrics: nodes::metrics_addrs(cfg, &ports.certifier_node_metrics)?,
            proxy_listen: Vec::new(),
            certifier_metrics: local(part_port(single && cfg.metrics, ports.certifier_metrics)?),
            proxy_metrics: Vec::new(),
            placement,
            state: state.clone(),
            seeded: None,
            config: file,
        };
        // Freshly chosen node ports were free when chosen, not when the
        // nodes bind them (another process may take one in between, and
        // the nodes start one after the other): in a start whose nodes
        // had never run before (a first start, or one that seeded node 1
        // just now), choose again a few times. A failed first start leaves
        // no node directory (theirs hold nothing but the membership that
        // names them), a failed seeding one the single certifier's log
        // (`unseed`).
        if seeding {
            cluster.seed_nodes_from_single_log(&ports).await?;
        } else if !single {
            cluster.seeded = state.seeded()?;
        }
        let fresh = !single && held == CertifierHeld::None;
        let mut attempts = 0;
        while let Err(e) = cluster.start_certifier().await {
            if !fresh && !seeding {
                return Err(e);
            }
            if let Err(stop) = cluster.stop_certifier().await {
                tracing::warn!("stopping the certifier nodes of a failed start: {stop}");
            }
            let undone = match seeding {
                true => cluster.unseed(),
                false => cluster.remove_node_dirs(1),
            };
            if let Err(undo) = undone {
                return Err(Error::Config(format!(
                    "{e}; then, undoing what the start began: {undo}"
                )));
            }
            attempts += 1;
            if attempts >= 3 {
                return Err(e);
            }
            tracing::info!("starting the certifier nodes again on other ports: {e}");
            cluster.node_listen = nodes::listen_addrs(cfg.certifiers, &[])?;
            cluster.node_metrics = nodes::metrics_addrs(cfg, &[])?;
            if seeding {
                cluster.seed_nodes_from_single_log(&ports).await?;
            }
        }
        // Kept at once: node directories initialized now name these ports
        // in their membership, and a start that fails later (a proxy's
        // port taken) must find them again next time. The proxies' ports
        // as they were until the proxies run.
        state.write_ports(&Ports {
            proxies: ports.proxies.clone(),
            proxy_metrics: ports.proxy_metrics.clone(),
            ..cluster.ports()
        })?;
        for i in 0..cluster.replicas.len() {
            let port = ports
                .proxies
                .get(i)
                .copied()
                .unwrap_or(if cfg.proxy_port == 0 {
                    0
                } else {
                    cfg.proxy_port + i as u16
                });
            cluster.proxy_listen.push(local(part_port(true, port)?));
            let kept_metrics = ports.proxy_metrics.get(i).copied().unwrap_or(0);
            cluster
                .proxy_metrics
                .push(local(part_port(cfg.metrics, kept_metrics)?));
            cluster.proxies.push(None);
            cluster.start_proxy(i).await?;
        }
        state.write_ports(&cluster.ports())?;
        Ok(cluster)
    }

    /// The ports the parts started so far listen on, to keep for the
    /// next start.
    fn ports(&self) -> Ports {
        Ports {
            certifier: self.certifier_listen.port(),
            proxies: self.proxy_listen.iter().map(|a| a.port()).collect(),
            certifier_metrics: self.certifier_metrics.port(),
            proxy_metrics: self.proxy_metrics.iter().map(|a| a.port()).collect(),
            certifier_nodes: self.node_listen.iter().map(|a| a.port()).collect(),
            certifier_node_metrics: match self.replicated() {
                true => self.node_metrics.iter().map(|a| a.port()).collect(),
                false => Vec::new(),
            },
        }
    }

    /// Starts the certifier (again) on its address with its log; a
    /// replicated certifier: every node.
    pub async fn start_certifier(&mut self) -> Result<()> {
        self.stop_certifier().await?;
        if self.replicated() {
            // Node 1 initializes the group and asks the others for votes
            // at once: started last, it finds them listening.
            for i in (0..self.node_listen.len()).rev() {
                self.start_certifier_node(i).await?;
            }
            return Ok(());
        }
        let cfg = CertifierConfig {
            listen: self.certifier_listen,
            wal_dir: self.state.certifier_wal(),
            metrics_listen: self
                .config
                .cluster
                .metrics
                .then_some(self.certifier_metrics),
            ..self.config.certifier.clone()
        };
        let part = match &self.placement {
            Placement::InProcess => {
                Part::InProcess(tashkent_certifier::start(cfg).await.map_err(|source| {
                    Error::Certifier {
                        context: "starting the certifier".into(),
                        source,
                    }
                })?)
            }
            Placement::Processes { exe } => {
                let file = self.state.certifier_config_file();
                write_section(&file, "certifier", &cfg)?;
                let args = vec!["certifier".into(), "--config".into(), path_arg(&file)];
                let exe = exe.clone();
                Part::Process(
                    tokio::task::spawn_blocking(move || {
                        ChildProcess::spawn(&exe, "certifier", &args)
                    })
                    .await
                    .map_err(|e| Error::Config(format!("starting the certifier: {e}")))??,
                )
            }
        };
        self.certifier_listen = part_addr(&part, |c: &RunningCertifier| c.local_addr());
        if let Some(m) = part_metrics_addr(&part, RunningCertifier::metrics_addr) {
            self.certifier_metrics = m;
        }
        self.certifier = Some(part);
        Ok(())
    }

    /// SIGKILLs the certifier (a child process), or stops it (in process);
    /// a replicated certifier: every node.
    pub async fn kill_certifier(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.kill_certifier_node(i).await?;
        }
        match self.certifier.take() {
            Some(Part::Process(p)) => {
                tokio::task::spawn_blocking(move || p.kill())
                    .await
                    .map_err(|e| Error::Config(format!("killing the certifier: {e}")))?;
                Ok(())
            }
            other => {
                self.certifier = other;
                self.stop_certifier().await
            }
        }
    }

    async fn stop_certifier(&mut self) -> Result<()> {
        self.stop_certifier_nodes().await?;
        match self.certifier.take() {
            None => Ok(()),
            Some(Part::InProcess(c)) => c.shutdown().await.map_err(|source| Error::Certifier {
                context: "stopping the certifier".into(),
                source,
            }),
            Some(Part::Process(p)) => tokio::task::spawn_blocking(move || p.terminate())
                .await
                .map_err(|e| Error::Config(format!("stopping the certifier: {e}"))),
        }
    }

    /// Starts the proxy of replica `i` (0-based; stopping it first if it
    /// runs) on its address, from the `[proxy]` template.
    pub async fn start_proxy(&mut self, i: usize) -> Result<()> {
        self.stop_proxy(i).await;
        let cfg = self.proxy_config(i, self.proxy_listen[i]);
        // Here rather than only in the proxy: a proxy process would say
        // why on its stderr alone.
        cfg.validate()?;
        let part = match &self.placement {
            Placement::InProcess => Part::InProcess(crate::proxy::start(cfg).await?),
            Placement::Processes { exe } => {
                let file = self.state.proxy_config_file(i as u32 + 1);
                write_section(&file, "proxy", &cfg)?;
                let args = vec!["proxy".into(), "--config".into(), path_arg(&file)];
                let exe = exe.clone();
                let name = format!("proxy {}", i + 1);
                Part::Process(
                    tokio::task::spawn_blocking(move || ChildProcess::spawn(&exe, &name, &args))
                        .await
                        .map_err(|e| Error::Config(format!("starting proxy {}: {e}", i + 1)))??,
                )
            }
        };
        self.proxy_listen[i] = part_addr(&part, |p: &RunningProxy| p.local_addr());
        if let Some(m) = part_metrics_addr(&part, RunningProxy::metrics_addr) {
            self.proxy_metrics[i] = m;
        }
        self.proxies[i] = Some(part);
        Ok(())
    }

    /// SIGKILLs the proxy of replica `i` (a child process), or stops it
    /// (in process).
    pub async fn kill_proxy(&mut self, i: usize) {
        match self.proxies[i].take() {
            Some(Part::Process(p)) => {
                let _ = tokio::task::spawn_blocking(move || p.kill()).await;
            }
            Some(Part::InProcess(p)) => p.shutdown().await,
            None => {}
        }
    }

    /// Stops the proxy of replica `i` gracefully (SIGTERM for a process).
    pub async fn stop_proxy(&mut self, i: usize) {
        match self.proxies[i].take() {
            Some(Part::Process(p)) => {
                let _ = tokio::task::spawn_blocking(move || p.terminate()).await;
            }
            Some(Part::InProcess(p)) => p.shutdown().await,
            None => {}
        }
    }

    /// Changes the `[proxy]` template; proxies started from now on use it.
    pub fn edit_proxy_template(&mut self, edit: impl FnOnce(&mut ProxyConfig)) {
        edit(&mut self.config.proxy);
    }

    /// The process id of proxy `i`, when it runs as a child process.
    pub fn proxy_pid(&self, i: usize) -> Option<u32> {
        match self.proxies[i].as_ref()? {
            Part::Process(p) => Some(p.pid()),
            Part::InProcess(_) => None,
        }
    }

    /// The process id of the certifier, when it runs as a child process.
    pub fn certifier_pid(&self) -> Option<u32> {
        match self.certifier.as_ref()? {
            Part::Process(p) => Some(p.pid()),
            Part::InProcess(_) => None,
        }
    }

    /// The settings of replica `i`'s proxy (0-based): the file's `[proxy]`
    /// section with the cluster's own addresses.
    fn proxy_config(&self, i: usize, listen: SocketAddr) -> ProxyConfig {
        let pg = &self.replicas[i];
        ProxyConfig {
            replica_id: i as u32 + 1,
            replicas: self.config.cluster.replicas,
            listen,
            // The Unix socket: cheaper per message than loopback TCP.
            pg_host: pg.socket_dir().display().to_string(),
            pg_port: pg.port(),
            database: self.config.cluster.database.clone(),
            certifier: self.certifier_addrs().unwrap_or_default(),
            metrics_listen: self.config.cluster.metrics.then_some(self.proxy_metrics[i]),
            ack_after_flush: self.config.proxy.ack_after_flush
                || self.config.cluster.durability.ack_after_flush(),
            ..self.config.proxy.clone()
        }
    }

    /// The certificate the proxies show their clients, if they do TLS.
    pub fn tls_cert(&self) -> Option<&Path> {
        self.config.proxy.tls_cert.as_deref()
    }

    pub fn state_dir(&self) -> &Path {
        self.state.root()
    }

    /// Where the certifier serves metrics (None: metrics are off, or the
    /// certifier is replicated: see `certifier_node_metrics_addrs`).
    pub fn certifier_metrics_addr(&self) -> Option<SocketAddr> {
        if self.replicated() {
            return None;
        }
        self.config
            .cluster
            .metrics
            .then_some(self.certifier_metrics)
    }

    /// Where each proxy serves metrics (None: metrics are off).
    pub fn proxy_metrics_addrs(&self) -> Option<Vec<SocketAddr>> {
        self.config
            .cluster
            .metrics
            .then(|| self.proxy_metrics.clone())
    }

    /// Where each proxy listens (also while one is stopped).
    pub fn proxy_addrs(&self) -> Vec<SocketAddr> {
        self.proxy_listen.clone()
    }

    /// The single certifier's address (None while it is stopped, and for
    /// a replicated certifier: see [`LocalCluster::certifier_addrs`]).
    pub fn certifier_addr(&self) -> Option<SocketAddr> {
        self.certifier.as_ref().map(|_| self.certifier_listen)
    }

    /// What clients are given: the single certifier's address, or every
    /// node's, `a,b,c` (None while nothing runs).
    pub fn certifier_addrs(&self) -> Option<String> {
        if !self.replicated() {
            return self.certifier_addr().map(|a| a.to_string());
        }
        if self.nodes.iter().all(Option::is_none) {
            return None;
        }
        let all: Vec<String> = self.node_listen.iter().map(|a| a.to_string()).collect();
        Some(all.join(","))
    }

    /// libpq connection string of proxy `i` (0-based).
    pub fn proxy_conninfo(&self, i: usize) -> String {
        let a = self.proxy_listen[i];
        format!(
            "host={} port={} user=postgres dbname={}",
            a.ip(),
            a.port(),
            self.config.cluster.database
        )
    }

    /// One libpq string listing every proxy, for client-side failover.
    pub fn multi_host_conninfo(&self) -> String {
        let addrs = self.proxy_addrs();
        let hosts: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
        let ports: Vec<String> = addrs.iter().map(|a| a.port().to_string()).collect();
        format!(
            "host={} port={} user=postgres dbname={}",
            hosts.join(","),
            ports.join(","),
            self.config.cluster.database
        )
    }

    /// What a checkpoint of replica `i` (0-based) reads.
    pub fn checkpoint_source(&self, i: usize) -> checkpoint::Source {
        let pg = &self.replicas[i];
        checkpoint::Source {
            host: pg.host().to_string(),
            port: pg.port(),
            user: pg.user().to_string(),
            database: self.config.cluster.database.clone(),
            replica_id: i as u32 + 1,
            binaries: pg.binaries().clone(),
        }
    }

    /// Takes a checkpoint of replica `cfg.replica` into `cfg`'s directory
    /// (under the state directory), retires old ones and lets the
    /// certifier purge its log; returns the checkpoint and the log's first
    /// version afterwards.
    pub async fn checkpoint(
        &self,
        cfg: &checkpoint::CheckpointConfig,
    ) -> Result<(checkpoint::Checkpoint, Option<u64>)> {
        cfg.validate()?;
        let i = cfg.replica as usize - 1;
        if i >= self.replicas.len() {
            return Err(Error::Config(format!(
                "checkpoint.replica {} is not a replica of this cluster",
                cfg.replica
            )));
        }
        let cert = self.certifier_client().await?;
        checkpoint::checkpoint_and_purge(
            &self.checkpoint_source(i),
            cfg,
            &self.state.checkpoints(&cfg.dir),
            Some(&cert),
        )
        .await
    }

    /// Starts automatic checkpoints if the cluster file's `[checkpoint]`
    /// section sets `interval_secs`; they stop when the handle drops.
    pub fn periodic_checkpoints(&self) -> Result<Option<checkpoint::Periodic>> {
        let cfg = self.config.checkpoint.clone();
        if cfg.interval_secs == 0 {
            return Ok(None);
        }
        let i = cfg.replica as usize - 1;
        if i >= self.replicas.len() {
            return Err(Error::Config(format!(
                "checkpoint.replica {} is not a replica of this cluster",
                cfg.replica
            )));
        }
        let dir = self.state.checkpoints(&cfg.dir);
        Ok(Some(checkpoint::periodic(
            self.checkpoint_source(i),
            cfg,
            dir,
            self.certifier_target(),
        )))
    }

    /// This cluster's certifier as its clients reach it (None while it
    /// is stopped).
    pub fn certifier_target(&self) -> Option<CertifierTarget> {
        let addr = self.certifier_addrs()?;
        Some(CertifierTarget::new(
            addr,
            self.config.proxy.certifier_tls_ca.clone(),
        ))
    }

    /// What the certifier's clients trust, when it serves TLS.
    pub fn certifier_tls_ca(&self) -> Option<&Path> {
        self.config.proxy.certifier_tls_ca.as_deref()
    }

    /// A client of this cluster's certifier.
    pub async fn certifier_client(&self) -> Result<tashkent_certifier::CertifierClient> {
        self.certifier_target()
            .ok_or_else(|| Error::Config("the certifier is not running".into()))?
            .connect()
            .await
    }

    /// Rebuilds replica `i` (0-based) while the others keep serving, as
    /// after the loss of its disk: its proxy stops, its server is killed
    /// and gets a new data directory, the newest usable checkpoint of
    /// `cfg`'s directory is restored into it, and its proxy starts again
    /// on the same port and replays the log from the checkpoint's version.
    pub async fn recover_replica(
        &mut self,
        i: usize,
        cfg: &checkpoint::CheckpointConfig,
    ) -> Result<recover::Restored> {
        self.stop_proxy(i).await;
        let first = self
            .certifier_client()
            .await?
            .status()
            .await
            .map_err(|source| Error::Certifier {
                context: "reading the certifier's status".into(),
                source,
            })?
            .first_version;
        let dir = self.state.checkpoints(&cfg.dir);
        let choice = checkpoint::newest_usable(&dir, first)?;
        let (base, port, durability) = {
            let old = &self.replicas[i];
            (old.base_dir().to_path_buf(), old.port(), old.durability())
        };
        let settings = self.config.cluster.pg_settings.clone();
        // While it is rebuilt the replica is not in the list (a failure
        // leaves the cluster without it).
        let mut old = self.replicas.remove(i);
        let server = tokio::task::spawn_blocking(move || {
            old.kill()?;
            drop(old);
            recover::rebuild(&base, Some(port), durability, settings)
        })
        .await
        .map_err(|e| Error::Recovery(format!("rebuilding replica {}: {e}", i + 1)))??;
        self.replicas.insert(i, server);
        let started = std::time::Instant::now();
        let version = recover::restore_checkpoint(
            &self.checkpoint_source(i),
            self.replicas.len() as u32,
            &choice.checkpoint,
            cfg.jobs,
        )
        .await?;
        let seconds = started.elapsed().as_secs_f64();
        self.start_proxy(i).await?;
        Ok(recover::Restored {
            checkpoint: choice.checkpoint,
            refused: choice.refused,
            version,
            seconds,
        })
    }

    /// Stops the proxies, the certifier and the replicas, in that order.
    pub async fn shutdown(mut self) -> Result<()> {
        for i in 0..self.proxies.len() {
            self.stop_proxy(i).await;
        }
        self.stop_certifier().await?;
        let replicas = std::mem::take(&mut self.replicas);
        tokio::task::spawn_blocking(move || {
            for mut r in replicas {
                r.stop()?;
            }
            Ok::<(), Error>(())
        })
        .await
        .map_err(|e| Error::Config(format!("stopping replicas: {e}")))??;
        Ok(())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Proxies first: they hold connections to the replicas and the
        // certifier. Processes are SIGKILLed, tasks stopped.
        self.proxies.clear();
        self.certifier = None;
        self.nodes.clear();
    }
}

fn part_addr<T>(part: &Part<T>, in_process: impl Fn(&T) -> SocketAddr) -> SocketAddr {
    match part {
        Part::InProcess(t) => in_process(t),
        Part::Process(p) => p.addr(),
    }
}

fn part_metrics_addr<T>(
    part: &Part<T>,
    in_process: impl Fn(&T) -> Option<SocketAddr>,
) -> Option<SocketAddr> {
    match part {
        Part::InProcess(t) => in_process(t),
        Part::Process(p) => p.metrics_addr(),
    }
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// Writes `value` as the TOML section `[name]` of a file of its own.
fn write_section<T: Serialize>(path: &Path, name: &str, value: &T) -> Result<()> {
    let mut table = toml::Table::new();
    table.insert(
        name.to_owned(),
        toml::Value::try_from(value)
            .map_err(|e| Error::Config(format!("writing [{name}] settings: {e}")))?,
    );
    std::fs::write(path, table.to_string())
        .map_err(Error::io(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes `dir` hold a log: its first segment file.
    fn with_log(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(tashkent_wal::segment_file_name(1)), "").unwrap();
    }

    #[test]
    fn a_start_keeps_the_certifier_its_state_holds() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let held = || state.certifier_held().unwrap();
        // Directories made for mounts before a first start hold no log.
        std::fs::create_dir(state.certifier_wal()).unwrap();
        std::fs::create_dir(state.certifier_node_dir(1)).unwrap();
        assert_eq!(held(), CertifierHeld::None);
        same_certifier(1, held(), &state).unwrap();
        same_certifier(3, held(), &state).unwrap();
        std::fs::remove_dir(state.certifier_node_dir(1)).unwrap();
        with_log(&state.certifier_wal());
        assert_eq!(held(), CertifierHeld::Single);
        same_certifier(1, held(), &state).unwrap();
        assert!(!seed::seeds_nodes(1, &state));
        assert!(seed::seeds_nodes(3, &state), "nodes take the log over");
        with_log(&state.certifier_node_dir(2));
        assert!(!seed::seeds_nodes(3, &state), "a node's log is no seed's");
        std::fs::remove_dir_all(state.certifier_node_dir(2)).unwrap();
        std::fs::remove_dir_all(state.certifier_wal()).unwrap();
        // Node 1's directory wiped: the highest one still tells.
        for id in 2..=3 {
            with_log(&state.certifier_node_dir(id));
        }
        std::fs::write(state.certifier_node_config_file(7), "").unwrap();
        assert_eq!(held(), CertifierHeld::Nodes(3));
        same_certifier(3, held(), &state).unwrap();
        for other in [1, 5] {
            let e = same_certifier(other, held(), &state)
                .unwrap_err()
                .to_string();
            assert!(e.contains("certifiers = 3"), "{other}: {e}");
        }
        // The kept ports are the membership.
        state
            .write_ports(&Ports {
                certifier_nodes: vec![7401, 7402, 7403, 7404, 7405],
                ..Ports::default()
            })
            .unwrap();
        assert_eq!(held(), CertifierHeld::Nodes(5));
        with_log(&state.certifier_wal());
        assert_eq!(held(), CertifierHeld::Both(5));
        same_certifier(1, held(), &state).unwrap();
    }

    #[test]
    fn the_ports_of_a_start_are_kept_or_chosen_distinct() {
        assert_eq!(part_port(true, 7400).unwrap(), 7400, "kept");
        assert_eq!(part_port(false, 0).unwrap(), 0, "a part that does not run");
        let chosen: Vec<u16> = (0..40).map(|_| part_port(true, 0).unwrap()).collect();
        assert!(chosen.iter().all(|p| *p != 0));
        let mut distinct = chosen.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), chosen.len(), "{chosen:?}");
    }
}
