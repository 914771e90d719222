//! A replicated certifier in a local cluster (`[cluster] certifiers` > 1,
//! `tashkent up --certifiers 3`): one raft node per certifier, each with
//! its own directory (`StateDir::certifier_node_dir`) and port (chosen at
//! the first start, kept in `ports.json`), started, SIGKILLed and
//! restarted one by one; the proxies are given every node's address.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tashkent_certifier::{CertifierConfig, RunningCertifier};

use super::{
    local, part_addr, part_metrics_addr, part_port, path_arg, write_section, ClusterConfig,
    LocalCluster, Part, Placement,
};
use crate::error::{Error, Result};
use crate::ops::certifier::CertifierTarget;
use crate::ops::process::ChildProcess;

/// How many raft nodes `certifiers` means (none for a single certifier).
pub(super) fn count(certifiers: u32) -> usize {
    if certifiers <= 1 {
        0
    } else {
        certifiers as usize
    }
}

/// Where `certifiers` nodes listen: the ports `kept` from the first start,
/// else chosen ones (`part_port`; none for a single certifier). Raft needs
/// every address before any node starts, so they cannot be chosen by
/// binding port 0.
pub(super) fn listen_addrs(certifiers: u32, kept: &[u16]) -> Result<Vec<SocketAddr>> {
    if count(certifiers) == 0 {
        return Ok(Vec::new());
    }
    // All kept, or all chosen afresh.
    let kept: &[u16] = if kept.len() == certifiers as usize {
        kept
    } else {
        &[]
    };
    (0..certifiers as usize)
        .map(|i| part_port(true, kept.get(i).copied().unwrap_or(0)).map(local))
        .collect()
}

/// Where the nodes of `cfg` serve metrics: the ports `kept` from the
/// first start, else chosen ones when metrics are on (`part_port`).
pub(super) fn metrics_addrs(cfg: &ClusterConfig, kept: &[u16]) -> Result<Vec<SocketAddr>> {
    (0..count(cfg.certifiers))
        .map(|i| part_port(cfg.metrics, kept.get(i).copied().unwrap_or(0)))
        .map(|p| p.map(local))
        .collect()
}

impl LocalCluster {
    /// Whether the certifier is replicated (several nodes).
    pub(super) fn replicated(&self) -> bool {
        !self.node_listen.is_empty()
    }

    /// How many certifier nodes there are (1: the single certifier).
    pub fn certifier_nodes(&self) -> usize {
        self.node_listen.len().max(1)
    }

    /// Where each certifier node listens, node 1 first (also while one is
    /// stopped); a single certifier: its address, if it runs.
    pub fn certifier_node_addrs(&self) -> Vec<SocketAddr> {
        if self.replicated() {
            self.node_listen.clone()
        } else {
            self.certifier_addr().into_iter().collect()
        }
    }

    /// Where each node serves metrics, node 1 first (None: metrics are
    /// off, or the certifier is not replicated).
    pub fn certifier_node_metrics_addrs(&self) -> Option<Vec<SocketAddr>> {
        (self.replicated() && self.config.cluster.metrics).then(|| self.node_metrics.clone())
    }

    /// `1=host:port,2=...`: the `peers` of every node.
    pub(super) fn peers(&self) -> String {
        tashkent_certifier::config::format_peers(&self.node_listen)
    }

    /// Removes the directories of nodes `from` to the last, stopped: what
    /// a start whose nodes never served left (a membership naming ports
    /// it gives up, versions copied from node 1).
    pub(super) fn remove_node_dirs(&self, from: u32) -> Result<()> {
        for id in from..=self.node_listen.len() as u32 {
            let dir = self.state.certifier_node_dir(id);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(Error::io(format!("removing {}", dir.display())))?;
            }
        }
        Ok(())
    }

    /// Starts certifier node `i` (0-based; node id `i + 1`), stopping it
    /// first if it runs, on its address and directory.
    pub async fn start_certifier_node(&mut self, i: usize) -> Result<()> {
        if !self.replicated() {
            return Err(Error::Config("the certifier is not replicated".into()));
        }
        self.stop_certifier_node(i).await?;
        let id = i as u32 + 1;
        let cfg = CertifierConfig {
            listen: self.node_listen[i],
            wal_dir: self.state.certifier_node_dir(id),
            node_id: Some(u64::from(id)),
            peers: Some(self.peers()),
            peer_routes: self.node_routes.get(i).cloned().flatten(),
            metrics_listen: self.config.cluster.metrics.then_some(self.node_metrics[i]),
            ..self.config.certifier.clone()
        };
        let name = format!("certifier {id}");
        let part = match &self.placement {
            Placement::InProcess => {
                Part::InProcess(tashkent_certifier::start(cfg).await.map_err(|source| {
                    Error::Certifier {
                        context: format!("starting {name}"),
                        source,
                    }
                })?)
            }
            Placement::Processes { exe } => {
                let file = self.state.certifier_node_config_file(id);
                write_section(&file, "certifier", &cfg)?;
                let args = vec!["certifier".into(), "--config".into(), path_arg(&file)];
                let exe = exe.clone();
                Part::Process(
                    tokio::task::spawn_blocking(move || ChildProcess::spawn(&exe, &name, &args))
                        .await
                        .map_err(|e| Error::Config(format!("starting certifier {id}: {e}")))??,
                )
            }
        };
        self.node_listen[i] = part_addr(&part, |c: &RunningCertifier| c.local_addr());
        if let Some(m) = part_metrics_addr(&part, RunningCertifier::metrics_addr) {
            self.node_metrics[i] = m;
        }
        if self.nodes.len() < self.node_listen.len() {
            self.nodes.resize_with(self.node_listen.len(), || None);
        }
        self.nodes[i] = Some(part);
        Ok(())
    }

    /// From its next start, node `i` sends its raft messages for other
    /// nodes to `routes` (`2=host:port,...`, `[certifier] peer_routes`)
    /// instead of their addresses: a test puts relays it can cut there.
    pub fn route_certifier_node(&mut self, i: usize, routes: Option<String>) {
        if self.node_routes.len() <= i {
            self.node_routes.resize(i + 1, None);
        }
        self.node_routes[i] = routes;
    }

    /// SIGKILLs certifier node `i` (a child process), or stops it (in
    /// process).
    pub async fn kill_certifier_node(&mut self, i: usize) -> Result<()> {
        self.end_certifier_node(i, true).await
    }

    /// Stops certifier node `i` gracefully (SIGTERM for a process).
    pub(super) async fn stop_certifier_node(&mut self, i: usize) -> Result<()> {
        self.end_certifier_node(i, false).await
    }

    async fn end_certifier_node(&mut self, i: usize, kill: bool) -> Result<()> {
        match self.nodes.get_mut(i).and_then(Option::take) {
            Some(part) => end_node(i, part, kill).await,
            None => Ok(()),
        }
    }

    /// Stops every certifier node gracefully: the followers first, all at
    /// once, then the leader, which finds no peer to hand over to and
    /// stops at once. In id order, the leader would hand over to the next
    /// node to stop, and that one to the last (new terms, a few hundred
    /// milliseconds, warnings); all at once, a follower not yet told to
    /// stop when the leader's request came could stand.
    pub(super) async fn stop_certifier_nodes(&mut self) -> Result<()> {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect();
        let leading = futures::future::join_all(running.iter().map(|&i| self.leads(i))).await;
        let (leaders, followers): (Vec<_>, Vec<_>) = running
            .into_iter()
            .zip(leading)
            .partition(|(_, leads)| *leads);
        for group in [followers, leaders] {
            let stops = group
                .into_iter()
                .filter_map(|(i, _)| Some(end_node(i, self.nodes[i].take()?, false)));
            futures::future::join_all(stops)
                .await
                .into_iter()
                .collect::<Result<()>>()?;
        }
        Ok(())
    }

    /// Whether node `i` says it leads (no answer within 3 s: no).
    async fn leads(&self, i: usize) -> bool {
        let ca = self.certifier_tls_ca().map(Path::to_path_buf);
        let target = CertifierTarget::new(self.node_listen[i].to_string(), ca);
        crate::ops::status::certifier_status(&target, Duration::from_secs(3))
            .await
            .role
            == "leader"
    }

    /// The process id of certifier node `i`, when it runs as a child
    /// process.
    pub fn certifier_node_pid(&self, i: usize) -> Option<u32> {
        match self.nodes.get(i)?.as_ref()? {
            Part::Process(p) => Some(p.pid()),
            Part::InProcess(_) => None,
        }
    }
}

/// SIGKILLs (`kill`) or stops certifier node `i`, run as `part`.
async fn end_node(i: usize, part: Part<RunningCertifier>, kill: bool) -> Result<()> {
    let verb = if kill { "killing" } else { "stopping" };
    match part {
        Part::Process(p) => {
            tokio::task::spawn_blocking(move || if kill { p.kill() } else { p.terminate() })
                .await
                .map_err(|e| Error::Config(format!("{verb} certifier {}: {e}", i + 1)))
        }
        Part::InProcess(c) => c.shutdown().await.map_err(|source| Error::Certifier {
            context: format!("stopping certifier {}", i + 1),
            source,
        }),
    }
}
