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
//! reading it as a replica does (Subscribe). Only what no peer holds any
//! more (purged behind a checkpoint everywhere), or what none reachable
//! holds within `GAP_PATIENCE`, is skipped.
//!
//! The copy does not run inside openraft's snapshot install: the raft
//! core waits for an install before it answers anything else, so a long
//! copy there would silence the node (no heartbeats answered, and a group
//! that needs its vote stalled). The install only notes the gap; the copy
//! runs at once in a task of its own, and the state machine waits for it
//! before it applies the next entry or keeps a snapshot (which openraft's
//! core does not wait for). Meanwhile the node does not stand for
//! election (`server::standing`): as leader it would answer nothing until
//! the copy ends. It still votes, and answers the leader.

use std::time::Duration;

use crate::client::{CertifierClient, ClientOptions};
use crate::tls::ClientTls;
use crate::Version;

/// How long a peer may take to connect and answer Status, and to send the
/// next frame of what it streams, before the next peer is tried.
pub(crate) const PEER_WAIT: Duration = Duration::from_secs(5);

/// How long a gap is retried while no reachable peer holds it (peers
/// restarting with this one, or still catching up), or while a peer that
/// may hold versions older than every answering peer's does not answer,
/// before they are skipped. A node filling a gap applies nothing, so this
/// is as long as a restarting peer takes, not longer.
pub(crate) const GAP_PATIENCE: Duration = Duration::from_secs(10);

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

    /// Asks every peer at once what its versions log holds (each within
    /// [`PEER_WAIT`]): the peers that hold version `to`, each with the
    /// first version it holds, the earliest first.
    pub(crate) async fn holding(&self, to: Version) -> Holders {
        let asks = self.addrs.iter().map(|addr| async move {
            let asked = CertifierClient::status_within(addr, self.opts.clone(), PEER_WAIT).await;
            (addr, asked)
        });
        let mut h = Holders::default();
        for (addr, asked) in futures::future::join_all(asks).await {
            h.answered += usize::from(asked.is_ok());
            match asked {
                // `durable_version`: what its versions log holds (a node
                // that is itself filling a gap has applied more).
                Ok((c, s)) if s.durable_version >= to && s.first_version <= to => {
                    h.found.push((c, s.first_version.max(1)));
                }
                Ok((_, s)) => {
                    h.purged += usize::from(s.first_version > to);
                    tracing::info!(
                        peer = %addr,
                        first = s.first_version,
                        durable = s.durable_version,
                        "peer does not hold version {to}"
                    );
                }
                Err(e) => tracing::info!(peer = %addr, "peer not asked for versions: {e}"),
            }
        }
        h.found.sort_by_key(|(_, first)| *first);
        h
    }

    /// True when every peer answered that it purged version `to`, which
    /// asking again cannot change.
    pub(crate) fn all_purged(&self, h: &Holders) -> bool {
        h.purged == self.addrs.len()
    }

    /// True when every peer said what it holds: only then may the versions
    /// below the earliest holder's first be skipped (one that did not
    /// answer may hold them).
    pub(crate) fn all_answered(&self, h: &Holders) -> bool {
        h.answered == self.addrs.len()
    }
}

/// What [`PeerVersions::holding`] found.
#[derive(Default)]
pub(crate) struct Holders {
    /// The peers that hold the version, with their first version, the
    /// earliest first.
    pub(crate) found: Vec<(CertifierClient, Version)>,
    /// Peers whose log starts after it (purged there).
    purged: usize,
    /// Peers that answered.
    answered: usize,
}
