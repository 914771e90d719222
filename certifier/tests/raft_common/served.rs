//! A served raft cluster in this process: nodes started as `tashkent
//! certifier --node-id N --peers ...` would be (`tashkent_certifier::start`
//! with `node_id`/`peers`), over loopback.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tashkent_certifier::proto::StatusResponse;
use tashkent_certifier::{
    CertifierClient, CertifierConfig, ClientOptions, ClientTls, RunningCertifier,
};
use tempfile::TempDir;

/// How long the tests wait for an election or a catch-up.
pub const WAIT: Duration = Duration::from_secs(20);

/// Free loopback ports, one per node (bound and released: another test
/// could take one in between, which these tests accept).
pub fn ports(n: usize) -> Vec<String> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect()
}

pub struct Nodes {
    pub addrs: BTreeMap<u64, String>,
    pub peers: String,
    /// `raft_snapshot_entries` of every node.
    pub snapshot_entries: u64,
    /// `tail_cache_bytes` of every node.
    pub tail_bytes: usize,
    /// `purge_replica_timeout_ms` of every node.
    pub purge_timeout_ms: u64,
    pub dirs: BTreeMap<u64, TempDir>,
    pub running: BTreeMap<u64, RunningCertifier>,
    /// `wal_segment_bytes` of every node.
    pub segment_bytes: u64,
    /// The certificate and key every node serves (and trusts its peers
    /// by), in the directory that holds them; `None`: plaintext.
    pub tls: Option<(PathBuf, PathBuf, TempDir)>,
    /// `peer_routes` of a node, when it has them (`1=host:port,...`).
    pub routes: BTreeMap<u64, String>,
    /// `max_writeset_bytes` of every node restarted from now on (`None`:
    /// the default).
    pub max_writeset_bytes: Option<u64>,
    /// `hand_over_on_stop` of every node (re)started from now on.
    pub hand_over_on_stop: bool,
}

impl Nodes {
    pub async fn start(n: u64) -> Nodes {
        Nodes::start_snapshotting(n, CertifierConfig::default().raft_snapshot_entries).await
    }

    /// Nodes whose leader, stopped, leaves the others to elect one after
    /// its lease, as after a crash (`hand_over_on_stop` off).
    pub async fn start_without_hand_over(n: u64) -> Nodes {
        let defaults = CertifierConfig::default();
        let (snapshots, purge) = (
            defaults.raft_snapshot_entries,
            defaults.purge_replica_timeout_ms,
        );
        Nodes::start_all(n, snapshots, purge, 1 << 20, None, false).await
    }

    pub async fn start_snapshotting(n: u64, snapshot_entries: u64) -> Nodes {
        let purge_timeout_ms = CertifierConfig::default().purge_replica_timeout_ms;
        Nodes::start_all(n, snapshot_entries, purge_timeout_ms, 1 << 20, None, true).await
    }

    /// Nodes that purge `purge_timeout_ms` after they start (once a
    /// checkpoint allows it), their logs in segments of `segment_bytes`
    /// (the smallest, 4 KiB, make a checkpoint purge whole segments of
    /// small records).
    pub async fn start_purging(
        n: u64,
        snapshot_entries: u64,
        purge_timeout_ms: u64,
        segment_bytes: u64,
    ) -> Nodes {
        Nodes::start_all(
            n,
            snapshot_entries,
            purge_timeout_ms,
            segment_bytes,
            None,
            true,
        )
        .await
    }

    /// [`Nodes::start_purging`], over TLS to and between the nodes (one
    /// certificate for 127.0.0.1, which every node shows and trusts).
    pub async fn start_purging_over_tls(
        n: u64,
        snapshot_entries: u64,
        purge_timeout_ms: u64,
        segment_bytes: u64,
    ) -> Nodes {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = super::certificate(dir.path(), "node", &["127.0.0.1"]);
        let tls = Some((cert, key, dir));
        Nodes::start_all(
            n,
            snapshot_entries,
            purge_timeout_ms,
            segment_bytes,
            tls,
            true,
        )
        .await
    }

    async fn start_all(
        n: u64,
        snapshot_entries: u64,
        purge_timeout_ms: u64,
        segment_bytes: u64,
        tls: Option<(PathBuf, PathBuf, TempDir)>,
        hand_over_on_stop: bool,
    ) -> Nodes {
        let mut nodes = Nodes::prepared(n);
        nodes.snapshot_entries = snapshot_entries;
        nodes.purge_timeout_ms = purge_timeout_ms;
        nodes.segment_bytes = segment_bytes;
        nodes.tls = tls;
        nodes.hand_over_on_stop = hand_over_on_stop;
        for id in 1..=n {
            nodes.restart(id).await;
        }
        nodes
    }

    /// `n` nodes' ports and directories, with the default settings, none
    /// started.
    pub fn prepared(n: u64) -> Nodes {
        let defaults = CertifierConfig::default();
        let addrs: BTreeMap<u64, String> = (1..=n).zip(ports(n as usize)).collect();
        let peers = tashkent_certifier::config::format_peers(addrs.values());
        Nodes {
            addrs,
            peers,
            snapshot_entries: defaults.raft_snapshot_entries,
            tail_bytes: defaults.tail_cache_bytes,
            purge_timeout_ms: defaults.purge_replica_timeout_ms,
            dirs: (1..=n)
                .map(|id| (id, tempfile::tempdir().unwrap()))
                .collect(),
            running: BTreeMap::new(),
            segment_bytes: 1 << 20,
            tls: None,
            routes: BTreeMap::new(),
            max_writeset_bytes: None,
            hand_over_on_stop: true,
        }
    }

    pub async fn restart(&mut self, id: u64) {
        let r = self.try_start(id, |_| {}).await.unwrap();
        assert_eq!(r.local_addr().to_string(), self.addrs[&id]);
        self.running.insert(id, r);
    }

    /// Starts node `id` with its settings changed by `edit`; the node
    /// started or why not.
    pub async fn try_start(
        &self,
        id: u64,
        edit: impl FnOnce(&mut CertifierConfig),
    ) -> Result<RunningCertifier, tashkent_certifier::CertifierError> {
        let mut cfg = CertifierConfig {
            wal_dir: self.dirs[&id].path().join("wal"),
            wal_segment_bytes: self.segment_bytes,
            node_id: Some(id),
            peers: Some(self.peers.clone()),
            raft_snapshot_entries: self.snapshot_entries,
            tail_cache_bytes: self.tail_bytes,
            purge_replica_timeout_ms: self.purge_timeout_ms,
            tls_cert: self.tls.as_ref().map(|(cert, _, _)| cert.clone()),
            tls_key: self.tls.as_ref().map(|(_, key, _)| key.clone()),
            peer_routes: self.routes.get(&id).cloned(),
            max_writeset_bytes: self
                .max_writeset_bytes
                .unwrap_or(CertifierConfig::default().max_writeset_bytes),
            hand_over_on_stop: self.hand_over_on_stop,
            ..CertifierConfig::default()
        };
        edit(&mut cfg);
        tashkent_certifier::start(cfg).await
    }

    /// Shuts node `id` down (its directory stays).
    pub async fn stop(&mut self, id: u64) {
        self.running.remove(&id).unwrap().shutdown().await.unwrap();
    }

    /// Shuts every running node down (their directories stay).
    pub async fn stop_all(&mut self) {
        for (_, r) in std::mem::take(&mut self.running) {
            r.shutdown().await.unwrap();
        }
    }

    /// Stops node `id` and removes its WAL directory: its disk is lost.
    pub async fn wipe(&mut self, id: u64) {
        self.stop(id).await;
        std::fs::remove_dir_all(self.dirs[&id].path().join("wal")).unwrap();
    }

    /// The two nodes of three other than `id`.
    pub fn others(&self, id: u64) -> (u64, u64) {
        let mut others = self.addrs.keys().copied().filter(|other| *other != id);
        let pair = (others.next().unwrap(), others.next().unwrap());
        assert!(others.next().is_none(), "more than three nodes");
        pair
    }

    pub async fn client(&self, id: u64) -> CertifierClient {
        CertifierClient::connect_with(&self.addrs[&id], self.client_options())
            .await
            .unwrap()
    }

    /// Every node's address, `a,b,c`, as clients and operators give them.
    pub fn all_addrs(&self) -> String {
        self.addrs.values().cloned().collect::<Vec<_>>().join(",")
    }

    /// A client given every node (it follows the leader).
    pub async fn client_of_all(&self) -> CertifierClient {
        CertifierClient::connect_with(&self.all_addrs(), self.client_options())
            .await
            .unwrap()
    }

    fn client_options(&self) -> ClientOptions {
        ClientOptions {
            tls: self
                .tls
                .as_ref()
                .map(|(cert, _, _)| ClientTls::from_ca_file(cert).unwrap()),
            ..ClientOptions::default()
        }
    }

    /// Node `id`'s status once `ready` holds of it; fails, saying `what`
    /// was awaited, if that takes longer than [`WAIT`].
    pub async fn status_when(
        &self,
        id: u64,
        what: &str,
        ready: impl Fn(&StatusResponse) -> bool,
    ) -> StatusResponse {
        let c = self.client(id).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let s = c.status().await.unwrap();
            if ready(&s) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {id}: {what}: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The leader every running node names, once they agree.
    pub async fn leader(&self) -> u64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut seen = std::collections::BTreeSet::new();
            for id in self.running.keys() {
                let s = self.client(*id).await.status().await.unwrap();
                seen.insert((s.leader_id, s.role == "leader" && s.node_id == s.leader_id));
            }
            let leaders: Vec<_> = seen
                .iter()
                .map(|(l, _)| *l)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            if let [l] = leaders[..] {
                if l != 0 && self.running.contains_key(&l) {
                    return l;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Sends node `addr` a peer's `Elect` request with `data` (JSON): its
/// answer, the term it leads in or why not.
pub async fn elect(addr: &str, data: Vec<u8>) -> Result<Result<u64, String>, tonic::Status> {
    use tashkent_certifier::raft::proto::{raft_client::RaftClient, RaftMessage};
    let mut c = RaftClient::connect(format!("http://{addr}")).await.unwrap();
    let msg = RaftMessage {
        data: data.into(),
        entries: Vec::new(),
    };
    let answer = c.elect(msg).await?.into_inner();
    Ok(serde_json::from_slice(&answer.data).unwrap())
}
