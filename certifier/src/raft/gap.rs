//! The gap a snapshot leaves in a node's versions log, and how it is
//! filled from the peers' versions logs.
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

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use super::gap_copy::VersionCopy;
use super::VersionsLog;
use crate::client::{CertifierClient, ClientOptions};
use crate::error::CertifierError;
use crate::server::spool::Spool;
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

/// A versions log's gap: where it is copied from, and how far it goes.
#[derive(Default)]
pub(crate) struct Gap {
    /// Where the versions are copied from; none: they are skipped.
    peers: Option<PeerVersions>,
    /// Where a large version copied goes (`gap_copy.rs`): the node's
    /// spool, given with the peers.
    spool: Option<Arc<Spool>>,
    /// The newest version of an installed snapshot the log does not reach
    /// yet: the versions up to it are being copied (`server::standing`
    /// watches whether there is one).
    pending: watch::Sender<Option<Version>>,
    /// Held while the gap is filled.
    filling: tokio::sync::Mutex<()>,
}

impl Gap {
    pub(crate) fn new(peers: PeerVersions, spool: Arc<Spool>) -> Gap {
        Gap {
            peers: Some(peers),
            spool: Some(spool),
            ..Gap::default()
        }
    }
}

fn gap_err(reason: String) -> CertifierError {
    CertifierError::RaftStorage {
        what: "copying versions from a peer".into(),
        reason,
    }
}

impl VersionsLog {
    /// A snapshot whose newest version is `latest` was installed (or a
    /// node restarts from it): when this log ends before it, the versions
    /// it lacks are copied from a peer in a task of its own (`gap.rs`);
    /// `VersionsLog::fill_gap` waits for that. Without peers it restarts
    /// after the snapshot ([`VersionsLog::restored`]).
    pub async fn installed(self: &Arc<Self>, latest: Version) -> Result<(), CertifierError> {
        if self.wal.last_lsn() >= latest {
            return Ok(());
        }
        if self.gap.peers.is_none() {
            return self.restored(latest).await;
        }
        self.gap
            .pending
            .send_modify(|g| *g = Some(g.map_or(latest, |g| g.max(latest))));
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.fill_gap().await {
                tracing::error!("copying the versions a snapshot skips failed: {e}");
            }
        });
        Ok(())
    }

    /// The gap an installed snapshot left and is being filled (the newest
    /// version it reaches), as it changes.
    pub(crate) fn gap_pending(&self) -> watch::Receiver<Option<Version>> {
        self.gap.pending.subscribe()
    }

    /// The newest version of the gap being filled now, if any.
    pub(crate) fn copying_through(&self) -> Option<Version> {
        *self.gap.pending.borrow()
    }

    /// Waits until the gap an installed snapshot left (if any) is filled:
    /// the versions up to the snapshot's copied from the peer whose log
    /// starts earliest, from its first version if that is later than this
    /// log's end (what is older was purged behind a checkpoint), and made
    /// durable; what no peer holds is skipped (the log restarts after it).
    /// Only a failure of this log is an error.
    pub(crate) async fn fill_gap(&self) -> Result<(), CertifierError> {
        if self.gap.pending.borrow().is_none() {
            return Ok(());
        }
        let _one = self.gap.filling.lock().await;
        let Some(latest) = *self.gap.pending.borrow() else {
            return Ok(());
        };
        if let (Some(peers), true) = (&self.gap.peers, self.wal.last_lsn() < latest) {
            self.copy_gap(peers, latest).await?;
        }
        self.restored(latest).await?;
        self.sync_through(latest).await?;
        // A later install may have widened it meanwhile.
        self.gap.pending.send_if_modified(|g| {
            let filled = *g == Some(latest);
            if filled {
                *g = None;
            }
            filled
        });
        Ok(())
    }

    /// Copies the versions after this log's end through `latest` from the
    /// first peer that holds them, asking again for [`GAP_PATIENCE`] while
    /// none reachable does. Versions below every holder's first are
    /// skipped only once every peer has answered, or patience ran out.
    /// Patience counts from the last progress: a long copy whose peer goes
    /// away is not skipped (which would drop what it copied, the log
    /// restarting after the snapshot) while another peer may take over.
    async fn copy_gap(&self, peers: &PeerVersions, latest: Version) -> Result<(), CertifierError> {
        let mut deadline = tokio::time::Instant::now() + GAP_PATIENCE;
        loop {
            let holders = peers.holding(latest).await;
            let late = tokio::time::Instant::now() >= deadline;
            let may_skip = late || peers.all_answered(&holders);
            let end = self.wal.last_lsn();
            for (peer, first) in &holders.found {
                if *first > self.wal.last_lsn() + 1 && !may_skip {
                    continue;
                }
                match self.copy_from(peer, *first, latest).await {
                    Ok(()) => return Ok(()),
                    Err(e @ CertifierError::Wal(_)) => return Err(e),
                    Err(e) => tracing::warn!(
                        peer = peer.addr(),
                        "copying versions up to {latest} from a peer failed: {e}"
                    ),
                }
            }
            if self.wal.last_lsn() > end {
                deadline = tokio::time::Instant::now() + GAP_PATIENCE;
                continue;
            }
            if peers.all_purged(&holders) || late {
                tracing::warn!(
                    from = self.wal.last_lsn() + 1,
                    to = latest,
                    "no peer holds these versions: they are not served here"
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Copies the versions after this log's end through `latest` from
    /// `peer`, whose log starts at `first`.
    async fn copy_from(
        &self,
        peer: &CertifierClient,
        first: Version,
        latest: Version,
    ) -> Result<(), CertifierError> {
        let end = self.wal.last_lsn();
        if first > end + 1 {
            tracing::info!(
                from = end + 1,
                to = first - 1,
                "versions no answering peer holds are not copied"
            );
            self.wal.restart_at(first).await?;
            self.submitted.notify_one();
        }
        let from = self.wal.last_lsn() + 1;
        let mut frames = peer.subscribe_frames(from).await?;
        let spool = self
            .gap
            .spool
            .as_deref()
            .ok_or_else(|| gap_err("no spool to copy large versions into".into()))?;
        let mut version = None;
        let mut next = from;
        while next <= latest {
            let frame = tokio::time::timeout(PEER_WAIT, frames.next())
                .await
                .map_err(|_| gap_err(format!("the peer sent nothing for {PEER_WAIT:?}")))?
                .ok_or_else(|| gap_err(format!("the peer's stream ended before {next}")))??;
            let copy = version.get_or_insert_with(|| VersionCopy::new(spool, next));
            copy.push(&frame.data)?;
            // A large version is copied at the pace of the spool's disk.
            spool.keep_up().await?;
            if frame.last {
                let copied = version
                    .take()
                    .expect("a version being copied")
                    .finish()
                    .await?;
                let appended = self.append(next, copied.record);
                if let Some(r) = copied.spooled {
                    VersionCopy::logged(spool, appended.as_ref().ok().map(|_| next), r);
                }
                appended?;
                next += 1;
            }
        }
        tracing::info!(from, to = latest, peer = peer.addr(), "versions copied");
        Ok(())
    }
}
