//! Where a node finds the versions a snapshot it installs skips: in its
//! peers' versions logs.
//!
//! A node installs a snapshot only when it lags behind the raft log the
//! leader still holds (a wiped disk, a long outage). The snapshot brings
//! the certifier's state, not the versions it covers, yet replicas and
//! checkpoints may still need those (Subscribe, recovery). If the node
//! just restarted its versions log after the snapshot, it would drop them;
//! and a node that did so and later led could make the next lagging node
//! do the same, until, after several long outages, versions above the
//! oldest checkpoint were on no node. So before it goes on, the installing
//! node copies what it lacks from the peer whose versions log starts
//! earliest ([`VersionsLog::installed`](super::VersionsLog::installed)),
//! reading it as a replica does (Subscribe). Only what no reachable peer
//! holds any more (purged behind a checkpoint everywhere) is skipped.

use std::time::Duration;

use crate::client::{CertifierClient, ClientOptions};
use crate::error::CertifierError;
use crate::tls::ClientTls;
use crate::Version;

/// How long a peer may take to connect and answer Status, and to send the
/// next frame of what it streams, before the next peer is tried.
pub(crate) const PEER_WAIT: Duration = Duration::from_secs(5);

/// A node's peers, as its public service reaches them.
#[derive(Clone)]
pub struct PeerVersions {
    addrs: Vec<String>,
    opts: ClientOptions,
}

impl PeerVersions {
    /// The peers at `addrs` (this node's own address left out), over TLS
    /// when `tls` says whom to trust.
    pub fn new(addrs: Vec<String>, tls: Option<ClientTls>) -> PeerVersions {
        PeerVersions {
            addrs,
            opts: ClientOptions {
                tls,
                ..ClientOptions::default()
            },
        }
    }

    /// The peers that have applied version `to`, each with the first
    /// version its versions log holds, the earliest first. Peers that do
    /// not answer within [`PEER_WAIT`] are left out.
    pub(crate) async fn holding(&self, to: Version) -> Vec<(CertifierClient, Version)> {
        let mut found = Vec::new();
        for addr in &self.addrs {
            let asked = tokio::time::timeout(PEER_WAIT, async {
                let c = CertifierClient::connect_with(addr, self.opts.clone()).await?;
                let s = c.status().await?;
                Ok::<_, CertifierError>((c, s))
            })
            .await;
            match asked {
                Ok(Ok((c, s))) if s.committed_version >= to && s.first_version <= to => {
                    found.push((c, s.first_version.max(1)));
                }
                Ok(Ok((_, s))) => tracing::info!(
                    peer = %addr,
                    first = s.first_version,
                    applied = s.committed_version,
                    "peer does not hold version {to}"
                ),
                Ok(Err(e)) => tracing::info!(peer = %addr, "peer not asked for versions: {e}"),
                Err(_) => tracing::info!(peer = %addr, "peer did not answer within {PEER_WAIT:?}"),
            }
        }
        found.sort_by_key(|(_, first)| *first);
        found
    }
}
