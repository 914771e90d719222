//! Opening a node of the replicated certifier (`--node-id`, `--peers`).
//!
//! Layout of `wal_dir`: the versions log is the WAL in `wal_dir` itself
//! (today's format, version == LSN; see `raft::versions`), the spool in
//! `wal_dir/spool` as today, and raft's own state in `wal_dir/raft`: its
//! log (`raft/wal`), `raft/raft-meta` and `raft/snapshot`.
//!
//! Bootstrap: the node with the smallest id in `peers` initializes the
//! membership (every peer a voter) when its own raft log is empty. Doing it
//! again is harmless: openraft refuses `initialize` on a node that has a
//! log or a vote, and a node whose disk was wiped proposes the same
//! membership at the same log id (0) the others already hold, so it joins
//! them (their higher term wins) instead of splitting the group. The other
//! nodes wait to be contacted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use tashkent_wal::{Durability, Wal, WalOptions};
use tokio::sync::Notify;

use super::contact::Contact;
use super::rejoin;
use super::replicated::Node;
use super::service::{CertifierService, Parts, ServiceLimits};
use super::spool::Spool;
use super::standing;
use super::tail::Tail;
use super::TAIL_MAX_RECORDS;
use crate::config::{parse_peers, CertifierConfig};
use crate::error::CertifierError;
use crate::raft::decider::{Decider, TableSlot};
use crate::raft::transfer::HandOver;
use crate::raft::{
    LogStore, Network, NodeId, PeerVersions, Proposer, Raft, SnapshotWrites, StateMachine,
    VersionsLog, Writes,
};
use crate::tls::ClientTls;
use crate::turns::Turns;

/// Certifications per raft entry at most (see [`Proposer`]).
const MAX_BATCH: usize = 256;

/// A raft node opened and its service built.
pub(super) struct Opened {
    pub(super) wal: Wal,
    pub(super) spool: Arc<Spool>,
    pub(super) service: CertifierService,
    pub(super) raft: Raft,
    /// This node's entry in `peers`: where it listens.
    pub(super) listen: SocketAddr,
    /// Until when it refuses vote requests (`rejoin`).
    pub(super) votes_held: Option<tokio::time::Instant>,
    /// What a leadership hand-over needs (`raft::transfer`).
    pub(super) hand_over: HandOver,
    /// Whether this node may stand for election now (`standing`).
    pub(super) may_stand: tokio::sync::watch::Receiver<bool>,
    /// What outlives `raft.shutdown()` and must be stopped after it.
    pub(super) leftovers: Leftovers,
}

/// The parts of a raft node that its core's shutdown leaves running:
/// openraft builds snapshots in a task of its own, and the raft log's WAL
/// is shared. Stopped after the core, so that nothing writes in the
/// node's directory once it has shut down (a test wipes it then, a new
/// run reopens it).
pub(super) struct Leftovers {
    snapshot_writes: SnapshotWrites,
    raft_wal: Wal,
}

impl Leftovers {
    /// Once the node stops: a purge its core waits in for a snapshot
    /// being installed ends, refused, rather than hold up the shutdown
    /// (`raft::KeptSnapshot`), and the raft calls waiting on the core
    /// with it. Called before the server's graceful drain.
    pub(super) fn purge_waits(&self) -> SnapshotWrites {
        self.snapshot_writes.clone()
    }

    pub(super) async fn stop(self) -> Result<(), CertifierError> {
        let writes = self.snapshot_writes;
        // Waits for a snapshot file being written.
        let stopped = tokio::task::spawn_blocking(move || writes.stop()).await;
        let closed = self.raft_wal.close().await;
        stopped.map_err(|e| CertifierError::Io(std::io::Error::other(e)))?;
        Ok(closed?)
    }
}

fn raft_error(e: impl std::fmt::Display) -> CertifierError {
    CertifierError::RaftStorage {
        what: "raft".into(),
        reason: e.to_string(),
    }
}

/// Longest a version applied here stays out of this node's versions log's
/// fdatasync (it is durable in the raft logs of a majority already).
/// Snapshots, subscribers reading the log and checkpoint reports sync it
/// at once when they need it.
const VERSIONS_SYNC_DELAY: Duration = Duration::from_millis(50);

/// How many of the longest election timeouts outlast any election that
/// was running when a node stopped or lost its state (a candidate whose
/// term timed out ignores answers for it): a node that led before its
/// restart waits this long before it may stand (see `open`), and a
/// rejoining node casts no vote for as long (`rejoin.rs`).
pub(super) const ELECTIONS_TO_OUTLAST: u32 = 2;

/// Timing for a LAN or loopback: a heartbeat every 150 ms, elections after
/// 0.6–1.2 s of silence (a loaded 2-core machine must not miss heartbeats
/// for that long). openraft 0.9 gives an AppendEntries the heartbeat
/// interval to be answered, the follower's fdatasync included, so a
/// message carries few entries (a bulk load's entries are megabytes
/// each: with openraft's default of 300 per message they timed out over
/// and over). A snapshot every `snapshot_entries` entries (10k by
/// default) keeps the raft log short.
fn raft_config(snapshot_entries: u64) -> Result<Arc<Config>, CertifierError> {
    let c = Config {
        cluster_name: "tashkent-certifier".into(),
        heartbeat_interval: 150,
        election_timeout_min: 600,
        election_timeout_max: 1200,
        max_payload_entries: 8,
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_entries),
        // Purged as the versions log is (`raft::versions`), not by openraft.
        max_in_snapshot_log_to_keep: u64::MAX,
        ..Config::default()
    };
    Ok(Arc::new(c.validate().map_err(raft_error)?))
}

/// What a node trusts when it connects to its peers: with a certificate
/// of its own it speaks TLS to them, trusting `peer_tls_ca`, else its own
/// certificate's file, and shows them its certificate (they accept raft
/// messages only from a certificate their CA signed).
fn peer_tls(config: &CertifierConfig) -> Result<Option<ClientTls>, CertifierError> {
    let (Some(ca), Some(cert), Some(key)) = (config.peers_ca(), &config.tls_cert, &config.tls_key)
    else {
        return Ok(None);
    };
    ClientTls::from_ca_file(ca)?
        .with_identity(cert, key)
        .map(Some)
}

/// Opens node `config.node_id`'s logs and state, starts its raft core and
/// bootstraps the membership if it is the first node and new.
pub(super) async fn open(
    config: &CertifierConfig,
    limits: ServiceLimits,
) -> Result<Opened, CertifierError> {
    let id: NodeId = config
        .node_id
        .ok_or_else(|| CertifierError::Config("a raft node needs node_id".into()))?;
    let peers = parse_peers(config.peers.as_deref().unwrap_or_default())?;
    let routes = parse_peers(config.peer_routes.as_deref().unwrap_or_default())?;
    let own = peers
        .get(&id)
        .ok_or_else(|| CertifierError::Config(format!("node {id} is not in peers")))?;
    let listen = tokio::net::lookup_host(own.as_str())
        .await?
        .next()
        .ok_or_else(|| CertifierError::Config(format!("{own}: no address")))?;
    let tail = Arc::new(Mutex::new(Tail::new(
        config.tail_cache_bytes,
        TAIL_MAX_RECORDS,
    )));
    let submitted = Arc::new(Notify::new());
    let tls = peer_tls(config)?;
    // The other nodes, by the route raft uses to reach them: asked whether
    // the group runs (`rejoin`), and where an installed snapshot's missing
    // versions are copied from.
    let others: Vec<String> = peers
        .iter()
        .filter(|(peer, _)| **peer != id)
        .map(|(peer, addr)| routes.get(peer).unwrap_or(addr).clone())
        .collect();
    let peer_versions = PeerVersions::new(others.clone(), tls.clone());
    // The leader's proposal tables, built by the state machine (`decider`).
    let table_slot = Arc::new(TableSlot::default());
    let peers_n = peers.len();
    let (wal, spool, log, sm, versions, readable, led) = {
        let (config, tail, submitted) = (config.clone(), tail.clone(), submitted.clone());
        let table_slot = table_slot.clone();
        tokio::task::spawn_blocking(move || -> Result<_, CertifierError> {
            // The versions log is a copy of what the raft log holds
            // durable: syncing it per group would halve the disk's flushes
            // for the raft log (`raft::versions` says when it must be).
            let versions_opts = WalOptions {
                durability: Durability::Deferred {
                    max_delay: VERSIONS_SYNC_DELAY,
                },
                ..config.wal_options()
            };
            let wal = Wal::open(&config.wal_dir, versions_opts)?;
            let raft_dir = config.wal_dir.join(crate::raft::seed::RAFT_DIR);
            crate::raft::seed::node_may_run_in(&wal, &raft_dir)?;
            // The rows of chunked writesets (`raft::chunks`), which the
            // versions log's spooled records reference.
            let spool_opts = WalOptions {
                max_record_size: (crate::raft::chunks::SPOOL_PART_MAX as u64 + 8)
                    .max(config.spool_options().max_record_size),
                ..config.spool_options()
            };
            let spool = Arc::new(Spool::open(&config.wal_dir, spool_opts)?);
            spool.retain_spooled(&wal, wal.last_lsn() + 1)?;
            let readable = Arc::new(tokio::sync::watch::channel(wal.durable_lsn()).0);
            let versions = Arc::new(
                VersionsLog::new(wal.clone(), tail, submitted, readable.clone())
                    .with_peers(peer_versions, spool.clone()),
            );
            // An entry may batch several records.
            let opts = WalOptions {
                max_record_size: (config.max_record_bytes() * 2).min(u64::from(u32::MAX)),
                ..config.wal_options()
            };
            let mut log = LogStore::open(&raft_dir, opts)?;
            let led = peers_n > 1 && log.start_as_follower(id);
            let sm = StateMachine::open_serving(
                &raft_dir,
                config.limits(),
                Some(versions.clone()),
                spool.clone(),
            )?
            .deciding_for(id, table_slot.clone());
            log.purge_behind(sm.snapshot_writes().kept());
            Ok((wal, spool, log, sm, versions, readable, led))
        })
        .await
        .map_err(|e| CertifierError::Io(std::io::Error::other(e)))??
    };
    let latest = sm.certifier().latest();
    // A snapshot kept before the versions it skipped were copied.
    versions.installed(latest).await?;
    let state = sm.shared_certifier();
    let snapshot_writes = sm.snapshot_writes();
    let raft_wal = log.wal().clone();
    let raft_log = log.failure();
    let raft_config = raft_config(config.raft_snapshot_entries)?;
    let lease = Duration::from_millis(raft_config.election_timeout_max);
    let network = Network::new(id, routes.clone(), tls.clone());
    let peers_reached = network.peers();
    let raft = Raft::new(id, raft_config, network.clone(), log, sm)
        .await
        .map_err(raft_error)?;
    let leftovers = Leftovers {
        snapshot_writes,
        raft_wal: raft_wal.clone(),
    };
    let initialized = match raft.is_initialized().await {
        Ok(initialized) => initialized,
        Err(e) => {
            // Its core is gone: what outlives it must not keep the logs.
            if let Err(e) = leftovers.stop().await {
                tracing::warn!("raft log close: {e}");
            }
            return Err(raft_error(e));
        }
    };
    let mut votes_held = None;
    if !initialized {
        if rejoin::group_runs(&others, tls).await {
            // This node lost its raft state (its disk was wiped) while the
            // others went on: it catches up from the leader, and must not
            // vote again in a term it may have voted in (`rejoin`).
            votes_held = Some(rejoin::hold_votes(id, &raft, lease));
        } else if Some(&id) == peers.keys().next() {
            let members: BTreeMap<NodeId, BasicNode> = peers
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            if let Err(e) = raft.initialize(members).await {
                tracing::info!("raft membership not initialized here: {e}");
            }
        }
    }
    // A node that led stands for no election until the group's leader has
    // had time to reach it: its restored vote is uncommitted
    // (`LogStore::start_as_follower`), so it would campaign at its first
    // election timeout and could depose a leader elected while it was
    // down. It still votes, and stands when a leader hands over to it.
    let quiet = led.then(|| tokio::time::Instant::now() + ELECTIONS_TO_OUTLAST * lease);
    let (may_stand_tx, may_stand) = tokio::sync::watch::channel(false);
    tokio::spawn(standing::guard(
        raft.clone(),
        versions.gap_pending(),
        votes_held,
        quiet,
        may_stand_tx,
    ));
    let writes = Writes::from(raft.clone()).deciding(Arc::new(Decider::new(table_slot)));
    let node = Node::new(
        id,
        writes.clone(),
        Proposer::new(writes.clone(), MAX_BATCH),
        peers,
        Contact::watch(raft.clone(), lease, peers_reached),
        raft_log,
        versions,
    )
    .streaming(config.max_writeset_bytes);
    let turns = Arc::new(Mutex::new(Turns::default()));
    tokio::spawn(forget_turns_when_deposed(
        raft.server_metrics(),
        turns.clone(),
    ));
    let parts = Parts {
        state,
        tail,
        submitted,
        readable,
        turns: turns.clone(),
    };
    let service = CertifierService::new_replicated(
        wal.clone(),
        spool.clone(),
        parts,
        limits,
        config.max_record_bytes(),
        node,
    );
    tracing::info!(node = id, %listen, "certifier raft node started");
    Ok(Opened {
        wal,
        spool,
        service,
        raft,
        listen,
        votes_held,
        hand_over: HandOver {
            writes,
            network,
            turns,
        },
        may_stand,
        leftovers,
    })
}

/// Forgets the fair turns whenever this node stops leading (see `turns`):
/// a follower decides no certification, and a session waiting for its turn
/// here is told it is not queued, so its proxy goes on to the next leader
/// rather than wait for a turn nobody passes on. Not the turns of a newer
/// leader handing back, should they come before this task sees the
/// step-down.
/// It ends with the raft core, which holds the sender of `role`.
async fn forget_turns_when_deposed(
    mut role: tokio::sync::watch::Receiver<openraft::metrics::RaftServerMetrics<NodeId, BasicNode>>,
    turns: Arc<Mutex<Turns>>,
) {
    loop {
        let led = role
            .wait_for(|m| m.state == ServerState::Leader)
            .await
            .is_ok();
        let adopted = turns.lock().adoptions();
        let deposed = led
            && role
                .wait_for(|m| m.state != ServerState::Leader)
                .await
                .is_ok();
        let mut turns = turns.lock();
        if turns.adoptions() == adopted {
            turns.forget();
        }
        if !deposed {
            return;
        }
    }
}
