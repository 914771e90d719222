//! `tashkent status`: one look at a running cluster — the certifier (its
//! own Status call; each node of a replicated one, with its role), each replica as its proxy sees it (the proxy's
//! metrics endpoint) and the newest checkpoint. A part that does not
//! answer is reported as down, never as an error of the whole look.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tashkent_certifier::CertifierClient;

use crate::error::Result;
use crate::ops::certifier::CertifierTarget;
use crate::ops::checkpoint;
use crate::ops::state_dir::StateDir;

/// Where to look.
#[derive(Debug, Clone)]
pub struct Targets {
    pub certifier: CertifierTarget,
    /// Each replica's proxy: (client address, metrics address).
    pub proxies: Vec<(String, Option<String>)>,
    /// The checkpoint directory, if known.
    pub checkpoints: Option<std::path::PathBuf>,
}

impl Targets {
    /// The addresses a local cluster's state directory records (and the
    /// certifier's CA, when it serves TLS).
    pub fn of_state_dir(state: &StateDir, checkpoint_dir: &Path) -> Result<Targets> {
        let ports = state.ports()?;
        let certifier = CertifierTarget::of_state_dir(state)?;
        let proxies = ports
            .proxies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let metrics = ports
                    .proxy_metrics
                    .get(i)
                    .filter(|&&m| m != 0)
                    .map(|m| format!("127.0.0.1:{m}"));
                (format!("127.0.0.1:{p}"), metrics)
            })
            .collect();
        Ok(Targets {
            certifier,
            proxies,
            checkpoints: Some(state.checkpoints(checkpoint_dir)),
        })
    }
}

/// What one look found.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// The certifier; of a replicated one, the leader (else the first
    /// node that answered, else the first).
    pub certifier: CertifierStatus,
    /// Every node of a replicated certifier, node 1 first (empty for a
    /// single certifier).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certifier_nodes: Vec<CertifierStatus>,
    pub replicas: Vec<ReplicaStatus>,
    pub newest_checkpoint: Option<CheckpointStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertifierStatus {
    pub address: String,
    /// Whether it was asked over TLS.
    pub tls: bool,
    /// "up", "poisoned" (its log failed: nothing commits) or "down".
    pub state: String,
    /// Why it is down or poisoned, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub latest_version: u64,
    pub durable_version: u64,
    /// Oldest version still in its log.
    pub first_version: u64,
    pub checkpoint_version: u64,
    /// A replicated certifier's node: its id, role ("leader", "follower",
    /// "candidate", "learner"; "stopped" once its log failed), raft term,
    /// the leader it knows (0: none) and the highest version applied from
    /// committed entries (a single certifier: 0, empty, 0, 0 and the
    /// durable version).
    pub node_id: u64,
    pub role: String,
    pub term: u64,
    pub leader_id: u64,
    pub committed_version: u64,
    /// A node that installed a snapshot newer than its versions log: the
    /// snapshot's newest version, through which it fills that log (copied
    /// from a peer, or skipped if none holds the versions), applying
    /// nothing meanwhile (0: no gap).
    pub copying_through: u64,
    /// Peers whose answer to this node's last request did not come, and
    /// peers that refused it; only a leader or candidate sends to its
    /// peers, so a follower's are empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreachable_peers: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refusing_peers: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaStatus {
    pub replica_id: u32,
    pub proxy: String,
    /// serving, catching_up, apply_stuck, needs_rebuild; "down" when its
    /// proxy does not answer, "unknown" without a metrics address.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub applied_version: Option<u64>,
    pub lag_versions: Option<u64>,
    pub lag_seconds: Option<f64>,
    pub connections: Option<u64>,
    pub commits: Option<u64>,
    pub aborts: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointStatus {
    pub version: u64,
    pub replica_id: u32,
    pub created_unix_ms: u64,
    pub age_seconds: f64,
    pub dir: String,
}

/// Looks at every part, each within `timeout`.
pub async fn gather(targets: &Targets, timeout: Duration) -> ClusterStatus {
    let nodes: Vec<&str> = targets.certifier.addr.split(',').map(str::trim).collect();
    let mut certifier_nodes = Vec::new();
    if nodes.len() > 1 {
        for addr in nodes {
            let t = CertifierTarget::new(addr, targets.certifier.tls_ca.clone());
            certifier_nodes.push(certifier_status(&t, timeout).await);
        }
    }
    let certifier = match certifier_nodes
        .iter()
        .find(|n| n.role == "leader")
        .or_else(|| certifier_nodes.iter().find(|n| n.state != "down"))
        .or(certifier_nodes.first())
    {
        Some(n) => n.clone(),
        None => certifier_status(&targets.certifier, timeout).await,
    };
    let mut replicas = Vec::new();
    for (i, (proxy, metrics)) in targets.proxies.iter().enumerate() {
        replicas.push(replica_status(i as u32 + 1, proxy, metrics.as_deref(), timeout).await);
    }
    let newest_checkpoint = targets.checkpoints.as_deref().and_then(newest_checkpoint);
    ClusterStatus {
        certifier,
        certifier_nodes,
        replicas,
        newest_checkpoint,
    }
}

impl CertifierStatus {
    /// A certifier at `address` that has not answered (yet).
    pub(crate) fn down(address: &str, tls: bool) -> CertifierStatus {
        CertifierStatus {
            address: address.to_owned(),
            tls,
            state: "down".into(),
            error: None,
            latest_version: 0,
            durable_version: 0,
            first_version: 0,
            checkpoint_version: 0,
            node_id: 0,
            role: String::new(),
            term: 0,
            leader_id: 0,
            committed_version: 0,
            copying_through: 0,
            unreachable_peers: Vec::new(),
            refusing_peers: Vec::new(),
        }
    }
}

pub(crate) async fn certifier_status(
    target: &CertifierTarget,
    timeout: Duration,
) -> CertifierStatus {
    // The errors as the client says them: the line names the certifier.
    let asked = tokio::time::timeout(timeout, async {
        let opts = target.options().map_err(|e| e.to_string())?;
        let client = CertifierClient::connect_with(&target.addr, opts)
            .await
            .map_err(|e| e.to_string())?;
        client.status().await.map_err(|e| e.to_string())
    })
    .await;
    let mut s = CertifierStatus::down(&target.addr, target.tls());
    match asked {
        Err(_) => s.error = Some(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => s.error = Some(e),
        Ok(Ok(r)) => {
            s.state = if r.poisoned { "poisoned" } else { "up" }.into();
            if r.poisoned {
                s.error = Some(r.poison_cause.clone());
            }
            s.latest_version = r.latest_version;
            s.durable_version = r.durable_version;
            s.first_version = r.first_version;
            s.checkpoint_version = r.checkpoint_version;
            s.node_id = r.node_id;
            s.role = r.role;
            s.term = r.term;
            s.leader_id = r.leader_id;
            s.committed_version = r.committed_version;
            s.copying_through = r.copying_through;
            s.unreachable_peers = r.unreachable_peers;
            s.refusing_peers = r.refusing_peers;
        }
    }
    s
}

async fn replica_status(
    id: u32,
    proxy: &str,
    metrics: Option<&str>,
    timeout: Duration,
) -> ReplicaStatus {
    let mut s = ReplicaStatus {
        replica_id: id,
        proxy: proxy.to_string(),
        state: "unknown".into(),
        error: None,
        applied_version: None,
        lag_versions: None,
        lag_seconds: None,
        connections: None,
        commits: None,
        aborts: None,
    };
    let Some(metrics) = metrics else {
        s.error = Some("its proxy serves no metrics".into());
        return s;
    };
    let scrape = match tashkent_metrics::fetch(metrics, timeout).await {
        Ok(scrape) => scrape,
        Err(e) => {
            s.state = "down".into();
            s.error = Some(e.to_string());
            return s;
        }
    };
    let count = |name: &str, labels: &[(&str, &str)]| scrape.value(name, labels).map(|v| v as u64);
    s.state = ["serving", "catching_up", "apply_stuck", "needs_rebuild"]
        .into_iter()
        .find(|st| scrape.value("tashkent_proxy_state", &[("state", st)]) == Some(1.0))
        .unwrap_or("unknown")
        .into();
    s.applied_version = count("tashkent_proxy_version", &[("kind", "applied")]);
    s.lag_versions = count("tashkent_proxy_apply_lag_versions", &[]);
    s.lag_seconds = scrape.value("tashkent_proxy_apply_lag_seconds", &[]);
    s.connections = count("tashkent_proxy_client_connections", &[]);
    s.commits = Some(scrape.sum("tashkent_proxy_commits_total", &[]) as u64);
    s.aborts = Some(scrape.sum("tashkent_proxy_aborts_total", &[]) as u64);
    s
}

fn newest_checkpoint(dir: &Path) -> Option<CheckpointStatus> {
    let listed = checkpoint::list(dir).ok()?;
    let c = listed.into_iter().find_map(|l| l.checked.ok())?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Some(CheckpointStatus {
        version: c.manifest.version,
        replica_id: c.manifest.replica_id,
        created_unix_ms: c.manifest.created_unix_ms,
        age_seconds: now_ms.saturating_sub(c.manifest.created_unix_ms) as f64 / 1000.0,
        dir: c.dir.display().to_string(),
    })
}

impl ClusterStatus {
    /// A replicated certifier: one line per node.
    fn render_nodes(&self) -> String {
        let mut out = format!(
            "{:<10} {:<22} {:<9} {:<10} {:>5} {:>10} {:>10} {:>10} {:>9}\n",
            "certifier",
            "address",
            "state",
            "role",
            "term",
            "committed",
            "durable",
            "log from",
            "leader"
        );
        for (i, n) in self.certifier_nodes.iter().enumerate() {
            let id = if n.node_id == 0 {
                i as u64 + 1
            } else {
                n.node_id
            };
            out.push_str(&format!(
                "{:<10} {:<22} {:<9} {:<10} {:>5} {:>10} {:>10} {:>10} {:>9}\n",
                format!("node {id}"),
                n.address,
                n.state,
                if n.role.is_empty() { "-" } else { &n.role },
                n.term,
                n.committed_version,
                n.durable_version,
                n.first_version,
                n.leader_id,
            ));
            if let Some(e) = &n.error {
                out.push_str(&format!("           ({e})\n"));
            }
            for (peers, what) in [
                (&n.unreachable_peers, "gets no answer from"),
                (&n.refusing_peers, "is refused by"),
            ] {
                if !peers.is_empty() {
                    let list: Vec<String> = peers.iter().map(|p| format!("node {p}")).collect();
                    out.push_str(&format!("           (it {what} {})\n", list.join(", ")));
                }
            }
            if n.copying_through > 0 {
                out.push_str(&format!(
                    "           (filling its versions log through {}: copied from a peer, or \
                     skipped after 10 s if none holds them; applies nothing until then)\n",
                    n.copying_through
                ));
            }
        }
        out
    }

    /// The one screen `tashkent status` prints.
    pub fn render(&self) -> String {
        let c = &self.certifier;
        let address = if c.tls {
            format!("{} (TLS)", c.address)
        } else {
            c.address.clone()
        };
        let mut out = if !self.certifier_nodes.is_empty() {
            self.render_nodes()
        } else {
            match &c.error {
            Some(e) => format!("certifier {address}: {} ({e})\n", c.state),
            None => format!(
                "certifier {address}: {}, latest version {}, durable {}, log from {}, checkpoint {}\n",
                c.state,
                c.latest_version,
                c.durable_version,
                c.first_version,
                c.checkpoint_version
            ),
        }
        };
        out.push_str(&format!(
            "{:<8} {:<22} {:<14} {:>10} {:>10} {:>8} {:>6} {:>10} {:>8}\n",
            "replica", "proxy", "state", "applied", "lag", "lag s", "conns", "commits", "aborts"
        ));
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        for r in &self.replicas {
            out.push_str(&format!(
                "{:<8} {:<22} {:<14} {:>10} {:>10} {:>8} {:>6} {:>10} {:>8}\n",
                r.replica_id,
                r.proxy,
                r.state,
                opt(r.applied_version),
                opt(r.lag_versions),
                r.lag_seconds.map_or("-".to_string(), |s| format!("{s:.1}")),
                opt(r.connections),
                opt(r.commits),
                opt(r.aborts),
            ));
            if let Some(e) = &r.error {
                out.push_str(&format!("         ({e})\n"));
            }
        }
        match &self.newest_checkpoint {
            Some(k) => out.push_str(&format!(
                "newest checkpoint: version {} of replica {}, {:.0} s old ({})\n",
                k.version, k.replica_id, k.age_seconds, k.dir
            )),
            None => out.push_str("newest checkpoint: none\n"),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_filling_its_versions_gap_says_so() {
        let node = |id: u64, role: &str, copying: u64| CertifierStatus {
            state: "up".into(),
            node_id: id,
            role: role.into(),
            term: 3,
            committed_version: 200,
            copying_through: copying,
            ..CertifierStatus::down(&format!("127.0.0.1:{id}"), false)
        };
        let s = ClusterStatus {
            certifier: node(1, "leader", 0),
            certifier_nodes: vec![node(1, "leader", 0), node(2, "follower", 198)],
            replicas: vec![],
            newest_checkpoint: None,
        };
        let out = s.render();
        let copying: Vec<_> = out.lines().filter(|l| l.contains("filling")).collect();
        assert_eq!(
            copying,
            [
                "           (filling its versions log through 198: copied from a peer, or skipped \
                 after 10 s if none holds them; applies nothing until then)"
            ],
            "{out}"
        );
        let below = out.lines().skip_while(|l| !l.starts_with("node 2")).nth(1);
        assert_eq!(below, copying.first().copied(), "under its node: {out}");
    }

    #[test]
    fn a_node_names_the_peers_that_do_not_answer_it_under_its_line() {
        let leader = CertifierStatus {
            state: "up".into(),
            node_id: 1,
            role: "leader".into(),
            unreachable_peers: vec![2, 3],
            refusing_peers: vec![4],
            ..CertifierStatus::down("127.0.0.1:1", false)
        };
        let s = ClusterStatus {
            certifier: leader.clone(),
            certifier_nodes: vec![leader, CertifierStatus::down("127.0.0.1:2", false)],
            replicas: vec![],
            newest_checkpoint: None,
        };
        let out = s.render();
        let under: Vec<_> = out
            .lines()
            .skip_while(|l| !l.starts_with("node 1"))
            .skip(1)
            .take_while(|l| !l.starts_with("node "))
            .collect();
        assert_eq!(
            under,
            [
                "           (it gets no answer from node 2, node 3)",
                "           (it is refused by node 4)"
            ],
            "{out}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json["certifier_nodes"][0]["unreachable_peers"],
            serde_json::json!([2, 3])
        );
        assert!(json["certifier_nodes"][1]
            .get("unreachable_peers")
            .is_none());
    }
}
