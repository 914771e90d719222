//! A local cluster that ran one certifier, started with certifier nodes
//! (`tashkent up --certifiers 3` over a state directory whose
//! `certifier-wal/` holds a log): that log becomes node 1's directory
//! (`tashkent_certifier::raft::seed`), and the other nodes start empty
//! and copy what they lack from it. The cluster goes on at the single
//! certifier's next version; there is no way back to one certifier.
//!
//! The steps, each safe to crash after: `raft/` is seeded inside
//! `certifier-wal/` (a seed that crashed leaves none or a whole one,
//! removed and done again: no node ever runs in `certifier-wal/`); the
//! nodes' ports are kept (the seed's membership names them); then
//! `certifier-wal/` is renamed `certifier-1/`, after which the state
//! directory holds nodes. A start whose nodes then fail to start (a port
//! taken) undoes its seed ([`LocalCluster::unseed`]) and seeds again on
//! other ports; once they started, the seed stays (a start that fails
//! later, or one after a crash, resumes the nodes on their ports).
//!
//! Until the other nodes have copied them, node 1 holds the only copy of
//! the single certifier's versions, so `up` waits for that copy
//! ([`LocalCluster::wait_for_the_copy`]) before it says the cluster is
//! up (the proxies serve meanwhile): node 1's disk lost a minute later
//! would otherwise lose them all.

use std::time::{Duration, Instant};

use tashkent_certifier::raft::seed;
use tashkent_certifier::CertifierConfig;

use super::{nodes, LocalCluster};
use crate::error::{Error, Result};
use crate::ops::certifier::CertifierTarget;
use crate::ops::state_dir::{Ports, SeededVersions, StateDir};
use crate::ops::status::{certifier_status, CertifierStatus};

/// How long a start waits for the other nodes to copy a seeded log
/// before it goes on with a warning (129 MB took 3 s from the start).
const COPY_WAIT: Duration = Duration::from_secs(60);

/// Whether a start with `certifiers` turns the single certifier's log in
/// `state` into node 1's directory: nodes are asked for, the single
/// certifier's log holds records (one without is emptied before this,
/// `forget_an_empty_single_log`), and no node's directory holds a log.
pub(super) fn seeds_nodes(certifiers: u32, state: &StateDir) -> bool {
    nodes::count(certifiers) > 0
        && tashkent_wal::holds_segments(&state.certifier_wal())
        && (1..=certifiers).all(|id| !tashkent_wal::holds_segments(&state.certifier_node_dir(id)))
}

impl LocalCluster {
    /// Seeds node 1 from the single certifier's log ([`seeds_nodes`]),
    /// keeping the nodes' ports beside the `kept` ones, and the seeded
    /// versions until every node holds them.
    pub(super) async fn seed_nodes_from_single_log(&mut self, kept: &Ports) -> Result<()> {
        let from = self.state.certifier_wal();
        let to = self.state.certifier_node_dir(1);
        let cfg = CertifierConfig {
            wal_dir: from.clone(),
            node_id: Some(1),
            peers: Some(self.peers()),
            ..self.config.certifier.clone()
        };
        let seeded =
            tokio::task::spawn_blocking(move || seed::seed(&cfg, seed::Earlier::SeedAgain))
                .await
                .map_err(|e| Error::Config(format!("seeding certifier node 1: {e}")))?
                .map_err(|source| Error::Certifier {
                    context: format!(
                        "turning the single certifier's log in {} into certifier node 1's",
                        from.display()
                    ),
                    source,
                })?;
        self.state.write_ports(&Ports {
            proxies: kept.proxies.clone(),
            proxy_metrics: kept.proxy_metrics.clone(),
            ..self.ports()
        })?;
        // Before the rename: from there on, a start that does not seed
        // must still wait for the copy.
        let versions = SeededVersions {
            first: seeded.first,
            latest: seeded.latest,
        };
        self.state.record_seeded(Some(&versions))?;
        if let Err(e) = std::fs::rename(&from, &to) {
            // Back to a single certifier's directory, which `certifiers =
            // 1` runs again; the next start with nodes seeds it again.
            let raft = from.join(seed::RAFT_DIR);
            if let Err(e) = std::fs::remove_dir_all(&raft) {
                tracing::warn!("removing {}: {e}", raft.display());
            }
            if let Err(e) = self.state.record_seeded(None) {
                tracing::warn!("{e}");
            }
            return Err(Error::Config(format!(
                "the single certifier's log in {} cannot become node 1's {}: {e} (a mount \
                 point, or {} not empty?). Nothing changed: it runs as before with \
                 `certifiers = 1`",
                from.display(),
                to.display(),
                to.display()
            )));
        }
        crate::ops::sync_dir(self.state.root())?;
        self.seeded = Some(versions);
        tracing::info!(
            "the single certifier's log (versions {} to {}) is certifier node 1's now, in {}; \
             the other {} nodes copy it as they join",
            seeded.first,
            seeded.latest,
            to.display(),
            self.node_listen.len() - 1
        );
        Ok(())
    }

    /// Undoes the seed this start made once its nodes failed to start,
    /// stopped: node 1's directory becomes the single certifier's log
    /// again and the others go, so that the next try (or start) seeds
    /// afresh on ports chosen anew. No proxy ran, so no node holds a
    /// version the single certifier's log lacks: whatever node 1 wrote as
    /// a node (a vote, a blank entry, a membership) is in its `raft/`,
    /// which goes. In this order, a crash at any step leaves what a
    /// start with nodes seeds again or resumes: the other nodes' copies
    /// go before node 1's directory moves (a node left beside a single
    /// certifier's log would form a group of its own), its `raft/` goes
    /// after (a single certifier's log holding one is seeded over).
    pub(super) fn unseed(&self) -> Result<()> {
        self.remove_node_dirs(2)?;
        let node = self.state.certifier_node_dir(1);
        let single = self.state.certifier_wal();
        std::fs::rename(&node, &single).map_err(Error::io(format!(
            "moving certifier node 1's {} back to the single certifier's {}",
            node.display(),
            single.display()
        )))?;
        let raft = single.join(seed::RAFT_DIR);
        std::fs::remove_dir_all(&raft)
            .map_err(Error::io(format!("removing {}", raft.display())))?;
        crate::ops::sync_dir(&single)?;
        let ports = self.state.ports()?;
        self.state.write_ports(&Ports {
            certifier_nodes: Vec::new(),
            certifier_node_metrics: Vec::new(),
            ..ports
        })?;
        // Also makes the rename and `ports.json` durable (one directory).
        self.state.record_seeded(None)?;
        tracing::warn!(
            "certifier node 1's directory is the single certifier's log again, in {}",
            single.display()
        );
        Ok(())
    }

    /// Waits, about a minute at most, until every node holds durable the
    /// versions of the single certifier's log node 1 was seeded with
    /// (`seeded.json`; none: returns at once), or no node is copying any
    /// more and one gave up copying some; says which nodes do not hold
    /// them when it ends, else forgets them. The cluster runs meanwhile.
    /// `up` waits for this before it says the cluster is up, at every
    /// start until the copy is known complete.
    pub async fn wait_for_the_copy(&self) {
        let Some(seeded) = &self.seeded else {
            return;
        };
        tracing::info!(
            "waiting until every certifier node holds versions {} to {} (at most {COPY_WAIT:?})",
            seeded.first,
            seeded.latest
        );
        let started = Instant::now();
        let tls_ca = self.state.certifier_tls_ca_in_use();
        let targets: Vec<CertifierTarget> = self
            .node_listen
            .iter()
            .map(|a| CertifierTarget::new(a.to_string(), tls_ca.clone()))
            .collect();
        loop {
            let asked = targets
                .iter()
                .map(|t| certifier_status(t, Duration::from_secs(2)));
            let nodes = futures::future::join_all(asked).await;
            // Versions purged meanwhile (checkpoints) are no node's to copy.
            let floor = match nodes.first() {
                Some(n) if n.state == "up" => seeded.first.max(n.first_version),
                _ => seeded.first,
            };
            let copies: Vec<Copy> = nodes.iter().map(|n| copy_of(n, floor, seeded)).collect();
            let waiting = copies.contains(&Copy::Under);
            if !waiting && !copies.contains(&Copy::Skipped) {
                tracing::info!(
                    "every certifier node holds versions {} to {} ({:.1} s)",
                    seeded.first,
                    seeded.latest,
                    started.elapsed().as_secs_f64()
                );
                if let Err(e) = self.state.record_seeded(None) {
                    tracing::warn!("{e}");
                }
                return;
            }
            if waiting && started.elapsed() < COPY_WAIT {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let lacking: Vec<String> = nodes
                .iter()
                .zip(&copies)
                .enumerate()
                .filter(|(_, (_, c))| **c != Copy::Held)
                .map(|(i, (n, c))| lacking(i + 1, n, *c))
                .collect();
            tracing::warn!(
                "not every certifier node holds the single certifier's versions {} to {}: \
                 {}. Node 1 may hold the only copy of what they lack; `tashkent status` \
                 shows each node's versions",
                seeded.first,
                seeded.latest,
                lacking.join("; ")
            );
            return;
        }
    }
}

/// Where a node stands in copying the seeded versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copy {
    /// Every one from `floor` on, durable.
    Held,
    /// Not yet (down, not joined, copying, or not yet durable).
    Under,
    /// Its versions log restarted after a gap it could not copy (no peer
    /// answered in time, `raft::gap`): those it will never hold.
    Skipped,
}

fn copy_of(s: &CertifierStatus, floor: u64, seeded: &SeededVersions) -> Copy {
    if s.state != "up" || s.copying_through != 0 {
        Copy::Under
    } else if s.first_version > floor {
        Copy::Skipped
    } else if s.durable_version >= seeded.latest {
        Copy::Held
    } else {
        Copy::Under
    }
}

/// What node `id` lacks, for the warning.
fn lacking(id: usize, s: &CertifierStatus, copy: Copy) -> String {
    match (copy, &s.error) {
        (_, Some(e)) if s.state == "poisoned" => format!("node {id}'s log failed ({e})"),
        (_, Some(e)) => format!("node {id} did not answer ({e})"),
        (Copy::Skipped, None) => format!(
            "node {id} skipped the versions before {} (it could not copy them)",
            s.first_version
        ),
        _ => format!(
            "node {id} is still copying after {COPY_WAIT:?} (durable through {}{})",
            s.durable_version,
            match s.copying_through {
                0 => String::new(),
                c => format!(", filling through {c}"),
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(first: u64, durable: u64, copying: u64) -> CertifierStatus {
        let mut s = CertifierStatus::down("127.0.0.1:1", false);
        s.state = "up".into();
        (s.first_version, s.durable_version, s.copying_through) = (first, durable, copying);
        s
    }

    #[test]
    fn a_node_holds_the_seeded_versions_only_once_durable_and_not_copying() {
        let seeded = SeededVersions {
            first: 1,
            latest: 100,
        };
        assert_eq!(copy_of(&node(1, 100, 0), 1, &seeded), Copy::Held);
        assert_eq!(copy_of(&node(1, 120, 0), 1, &seeded), Copy::Held);
        // An empty node (not joined yet), one filling its log, one whose
        // copy is not durable yet.
        assert_eq!(copy_of(&node(1, 0, 0), 1, &seeded), Copy::Under);
        assert_eq!(copy_of(&node(1, 0, 100), 1, &seeded), Copy::Under);
        assert_eq!(copy_of(&node(1, 99, 0), 1, &seeded), Copy::Under);
        assert_eq!(
            copy_of(&CertifierStatus::down("127.0.0.1:1", false), 1, &seeded),
            Copy::Under
        );
        // Restarted after a gap it could not copy.
        assert_eq!(copy_of(&node(101, 130, 0), 1, &seeded), Copy::Skipped);
        // Versions purged meanwhile on every node are no gap.
        assert_eq!(copy_of(&node(40, 130, 0), 40, &seeded), Copy::Held);
        assert_eq!(copy_of(&node(40, 130, 0), 1, &seeded), Copy::Skipped);
    }
}
