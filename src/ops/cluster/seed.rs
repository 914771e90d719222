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
//! directory holds nodes.
//!
//! Until the other nodes have copied them, node 1 holds the only copy of
//! the single certifier's versions, so the start waits for that copy
//! ([`LocalCluster::wait_for_the_copy`]) before it says the cluster is
//! up (the proxies serve meanwhile): its disk lost a minute later would
//! otherwise lose them all.

use std::time::{Duration, Instant};

use tashkent_certifier::raft::seed;
use tashkent_certifier::CertifierConfig;

use super::{nodes, LocalCluster};
use crate::error::{Error, Result};
use crate::ops::certifier::CertifierTarget;
use crate::ops::state_dir::{Ports, StateDir};
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
    /// keeping the nodes' ports beside the `kept` ones.
    pub(super) async fn seed_nodes_from_single_log(&self, kept: &Ports) -> Result<seed::Seeded> {
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
        if let Err(e) = std::fs::rename(&from, &to) {
            // Back to a single certifier's directory, which `certifiers =
            // 1` runs again; the next start with nodes seeds it again.
            let raft = from.join(seed::RAFT_DIR);
            if let Err(e) = std::fs::remove_dir_all(&raft) {
                tracing::warn!("removing {}: {e}", raft.display());
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
        tracing::info!(
            "the single certifier's log (versions {} to {}) is certifier node 1's now, in {}; \
             the other {} nodes copy it as they join",
            seeded.first,
            seeded.latest,
            to.display(),
            self.node_listen.len() - 1
        );
        Ok(seeded)
    }

    /// Waits, at most [`COPY_WAIT`], until every node holds durable the
    /// versions `seeded` names; says which do not when the wait ends
    /// first (the cluster runs meanwhile: they go on copying).
    pub(super) async fn wait_for_the_copy(&self, seeded: &seed::Seeded) {
        let started = Instant::now();
        let tls_ca = self.state.certifier_tls_ca_in_use();
        let targets: Vec<CertifierTarget> = self
            .node_listen
            .iter()
            .map(|a| CertifierTarget::new(a.to_string(), tls_ca.clone()))
            .collect();
        loop {
            let mut lacking = Vec::new();
            for (i, t) in targets.iter().enumerate() {
                let s = certifier_status(t, Duration::from_secs(2)).await;
                if !holds(&s, seeded) {
                    lacking.push((i + 1, s));
                }
            }
            if lacking.is_empty() {
                tracing::info!(
                    "every certifier node holds versions {} to {} ({:.1} s)",
                    seeded.first,
                    seeded.latest,
                    started.elapsed().as_secs_f64()
                );
                return;
            }
            if started.elapsed() >= COPY_WAIT {
                let which: Vec<String> = lacking
                    .iter()
                    .map(|(id, s)| match &s.error {
                        Some(e) => format!("node {id} ({e})"),
                        None => format!(
                            "node {id} (from version {}, durable through {}{})",
                            s.first_version,
                            s.durable_version,
                            match s.copying_through {
                                0 => String::new(),
                                c => format!(", copying through {c}"),
                            }
                        ),
                    })
                    .collect();
                tracing::warn!(
                    "after {COPY_WAIT:?}, not every certifier node holds the single \
                     certifier's versions {} to {}: {}. Until they do, node 1 may hold the \
                     only copy; `tashkent status` shows the copy",
                    seeded.first,
                    seeded.latest,
                    which.join(", ")
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether a node's status shows every version of `seeded` durable.
fn holds(s: &CertifierStatus, seeded: &seed::Seeded) -> bool {
    s.state == "up"
        && s.copying_through == 0
        && s.first_version <= seeded.first.max(1)
        && s.durable_version >= seeded.latest
}
