//! A single certifier's log turned, in place, into the first node of a
//! replicated certifier: what a cluster that began with one certifier
//! needs to go on with 2f+1 nodes without losing a version.
//!
//! A node's directory is a single certifier's directory plus `raft/`: its
//! versions log *is* a single certifier's log (same format, LSN = version,
//! `versions.rs`) and its spool the same spool. So the log and the spool
//! stay where they are, and [`seed`] writes only `raft/`:
//!
//! - a snapshot at the log id a group's first entry has
//!   (`LogId::default()`, index 0: what `Raft::initialize` appends),
//!   holding the membership of the new group and the certifier's state as
//!   the single certifier rebuilds it at a restart (`server::recovery`:
//!   version counter, horizon, dedupe table, the window's writesets);
//! - `raft-meta` with that log id committed and purged, and no vote.
//!
//! The node then looks like one of a group just formed whose first entry
//! was folded into a snapshot. Its peers start empty: it is the only node
//! with a membership, so only it stands for election (empty nodes do not
//! campaign, `server::node`); elected, it sends them the snapshot, and
//! they copy the versions it covers from its versions log (`gap.rs`), as
//! a node whose disk was wiped does. Versions go on at the single
//! certifier's next one; a retried transaction id gets its first answer
//! for as long as the single certifier would have kept it.
//!
//! `raft/` is written as `raft.seed/` and renamed when complete, so a
//! crash leaves either no `raft/` (seed again) or a whole one. The log is
//! opened, which locks it: a certifier still running on it makes the seed
//! fail.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use openraft::{BasicNode, Membership, StoredMembership};
use tashkent_wal::Wal;

use super::meta::{self, Meta, META_FILE};
use super::parts::{Pending, PART_BYTES};
use super::snapshot::{self, SnapshotMeta, SnapshotState};
use super::snapshot_file::{self, NewSnapshot};
use super::state_machine::keys_only;
use super::types::{LogId, NodeId};
use crate::config::CertifierConfig;
use crate::error::CertifierError;
use crate::server::recovery::{self, spooled_parts};
use crate::server::spool::Spool;
use crate::server::tail::Tail;
use crate::writeset::Part;
use crate::{record, Version};

/// The raft directory inside a node's directory (`server::node`).
pub const RAFT_DIR: &str = "raft";
const SEEDING_DIR: &str = "raft.seed";

/// What [`seed`] made of a single certifier's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeded {
    /// The oldest version the log holds (0: none), and the newest.
    pub first: Version,
    pub latest: Version,
    /// The versions the new group's conflict window starts with.
    pub window: usize,
}

/// What to do with a `raft/` the directory holds already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Earlier {
    /// Refuse: it may be a node's (`tashkent certifier seed`).
    Refuse,
    /// Seed again over it: it can only be what a seed left that its
    /// caller did not go on with (`tashkent up`, whose nodes never run in
    /// a single certifier's directory), or what node 1 wrote before a
    /// start undid its seed (`tashkent up`, its nodes failed to start; no
    /// certification ran).
    SeedAgain,
}

/// Turns the single certifier's log in `config.wal_dir` into the
/// directory of node `config.node_id` of the group `config.peers` (the
/// settings the node runs with; its id the smallest). Refused when the
/// directory holds no log or one without a version (the nodes start
/// afresh), and, as `earlier` says, when it holds raft state already.
/// Blocking: reads the log.
pub fn seed(config: &CertifierConfig, earlier: Earlier) -> Result<Seeded, CertifierError> {
    let dir = &config.wal_dir;
    let (Some(id), Some(named)) = (config.node_id, config.peers.as_deref()) else {
        return Err(CertifierError::InvalidArgument(
            "a seed needs the node's id (--node-id) and the group's peers (--peers)".into(),
        ));
    };
    let peers = &crate::config::parse_peers(named)?;
    // The smallest id forms a group when its log is empty (`server::node`):
    // left empty, it would form one beside the seeded node's, from version 1.
    let Some(&forms) = peers.keys().next() else {
        return Err(CertifierError::InvalidArgument("no peers".into()));
    };
    if id != forms {
        return Err(CertifierError::InvalidArgument(format!(
            "node {id} is not the node with the smallest id in the peers {} (node {forms}): \
             seed that one, which would otherwise form a group of its own when it starts empty",
            named
        )));
    }
    if !tashkent_wal::holds_segments(dir) {
        return Err(CertifierError::InvalidArgument(format!(
            "{} holds no certifier log",
            dir.display()
        )));
    }
    let raft_dir = dir.join(RAFT_DIR);
    let seeding = dir.join(SEEDING_DIR);
    let wal = Wal::open(dir, config.wal_options())?;
    // Everything from here runs with the log open, so locked: no other
    // seed, single certifier or node works in `dir` meanwhile, and one
    // that opens it next finds `raft/` whole or not at all.
    let written = (|| {
        if wal.last_lsn() == 0 {
            return Err(CertifierError::InvalidArgument(format!(
                "{} holds a log without a version: start the nodes with empty directories",
                dir.display()
            )));
        }
        if raft_dir.exists() {
            if earlier == Earlier::Refuse {
                return Err(CertifierError::InvalidArgument(format!(
                    "{} holds raft state already: {} is a certifier node's directory, not a \
                     single certifier's log",
                    raft_dir.display(),
                    dir.display()
                )));
            }
            std::fs::remove_dir_all(&raft_dir).map_err(|e| io(&raft_dir, "removing", e))?;
        }
        if seeding.exists() {
            // What a seed that crashed left: never read by anything.
            std::fs::remove_dir_all(&seeding).map_err(|e| io(&seeding, "removing", e))?;
        }
        let spool = Spool::open(dir, config.spool_options())?;
        let built = state_of(config, &wal, &spool, peers);
        let spool_closed = futures::executor::block_on(spool.close());
        let (state, seeded) = built?;
        spool_closed?;
        write_raft_dir(&seeding, &state)?;
        std::fs::rename(&seeding, &raft_dir).map_err(|e| io(&raft_dir, "renaming into", e))?;
        snapshot_file::sync_dir(dir)?;
        Ok(seeded)
    })();
    let closed = futures::executor::block_on(wal.close());
    let seeded = written?;
    closed?;
    tracing::info!(
        first = seeded.first,
        latest = seeded.latest,
        window = seeded.window,
        "{}: the single certifier's log is node {id}'s now, of {}",
        dir.display(),
        named
    );
    Ok(seeded)
}

/// Refuses a raft node over `dir` whose versions log (`wal`, open) holds
/// versions while `raft_dir` holds no raft state: a single certifier's log
/// (not seeded, or copied), over which the node would form or join a
/// group from version 1, answering versions the log holds other
/// writesets for. A wiped node's directory is empty.
pub fn node_may_run_in(wal: &Wal, raft_dir: &Path) -> Result<(), CertifierError> {
    let stated =
        raft_dir.join(META_FILE).exists() || raft_dir.join(snapshot_file::SNAPSHOT_FILE).exists();
    if wal.last_lsn() > 0 && !stated {
        return Err(CertifierError::InvalidArgument(format!(
            "{} holds versions {} to {} but no raft state in {}: a single certifier's log? \
             Turn it into the first node's with `tashkent certifier seed` (or `tashkent up \
             --certifiers N`), or start this node with an empty directory to copy the group's",
            raft_dir.parent().unwrap_or(raft_dir).display(),
            wal.first_lsn(),
            wal.last_lsn(),
            raft_dir.display()
        )));
    }
    Ok(())
}

/// Refuses a single certifier over `dir` (its log open, so locked) once
/// `dir` is a node's: it would commit versions the group does not know.
pub fn single_may_run_in(dir: &Path) -> Result<(), CertifierError> {
    if dir.join(RAFT_DIR).exists() {
        return Err(CertifierError::InvalidArgument(format!(
            "{} is a certifier node's directory (it holds {RAFT_DIR}/): start it as a node \
             (--node-id and --peers, or `tashkent up --certifiers N`); a single certifier there \
             would commit versions its \
             group does not know",
            dir.display()
        )));
    }
    Ok(())
}

/// The snapshot of the group's first entry: the single certifier's state
/// as it rebuilds it from `wal` at a restart.
fn state_of(
    config: &CertifierConfig,
    wal: &Wal,
    spool: &Spool,
    peers: &BTreeMap<NodeId, String>,
) -> Result<(SnapshotState, Seeded), CertifierError> {
    // The tail cache is the serving node's; nothing reads this one.
    let mut tail = Tail::new(0, 0);
    let certifier = recovery::recover(wal, spool, config.limits(), &mut tail)?;
    let image = certifier.image();
    let mut window = Vec::new();
    if image.latest > image.horizon {
        for r in wal.read_from(image.horizon + 1)? {
            let (version, rec) = r?;
            window.push((version, windowed(spool, version, rec)?));
        }
    }
    let members: BTreeMap<NodeId, BasicNode> = peers
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect();
    let first = LogId::default();
    let seeded = Seeded {
        first: wal.first_lsn(),
        latest: image.latest,
        window: window.len(),
    };
    let meta = SnapshotMeta {
        last_log_id: Some(first),
        last_membership: StoredMembership::new(Some(first), Membership::from(members)),
        snapshot_id: format!("seed-{}", image.latest),
    };
    let state = SnapshotState {
        meta,
        image,
        window,
        pending: Pending::default(),
    };
    Ok((state, seeded))
}

/// What a node's window keeps of version `version`'s record `rec`: the
/// record, or, for a large one, its conflict keys without its rows
/// (`state_machine::keep_version`); a spooled one's are read back from
/// the spool.
fn windowed(spool: &Spool, version: Version, rec: Bytes) -> Result<Bytes, CertifierError> {
    let spooled = record::is_spooled(&rec);
    if !spooled && rec.len() <= PART_BYTES {
        // Stamped, as a node keeps it (`record::decode_kept`).
        return Ok(rec);
    }
    let mut ws = record::decode(version, &rec)?;
    if let Some(r) = ws.spool.take().filter(|_| spooled) {
        spooled_parts(spool, &r, version, |part| match part {
            Part::Header(_) => {}
            // Its rows dropped as they come: a spooled writeset may be
            // a gigabyte.
            Part::Item(mut i) => {
                i.row = Bytes::new();
                ws.items.push(i);
            }
            Part::Ddl(d) => ws.ddl.push(d),
        })?;
    }
    Ok(keys_only(ws))
}

/// Writes `raft/`'s content into `dir` (new) and makes it durable.
fn write_raft_dir(dir: &Path, state: &SnapshotState) -> Result<(), CertifierError> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, "creating", e))?;
    let (file, new) = NewSnapshot::create(dir).map_err(|e| io(dir, "creating a snapshot in", e))?;
    let mut w = std::io::BufWriter::new(file);
    snapshot::write(&mut w, state, Vec::new())?;
    w.flush()
        .map_err(|e| io(dir, "writing the snapshot in", e))?;
    let file = w
        .into_inner()
        .map_err(|e| io(dir, "writing the snapshot in", e.into_error()))?;
    snapshot_file::durable(&file)?;
    new.rename()?;
    let first = state.meta.last_log_id;
    meta::store(
        &dir.join(META_FILE),
        &Meta {
            vote: None,
            committed: first,
            purged: first,
        },
    )?;
    snapshot_file::sync_dir(dir)
}

fn io(path: &Path, what: &str, e: std::io::Error) -> CertifierError {
    CertifierError::Io(std::io::Error::new(
        e.kind(),
        format!("{what} {}: {e}", path.display()),
    ))
}
