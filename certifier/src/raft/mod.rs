//! # The replicated certifier, first increment: openraft on the WAL
//!
//! Issue 14 replaces the single certifier by 2f+1 nodes on openraft. This
//! module is the foundation: the raft log storage on `tashkent-wal`, the
//! certifier as a raft state machine, their conformance with openraft's
//! storage test suite, and a gRPC transport between nodes. It is served by
//! `server` when the certifier runs with `--node-id` and `--peers`
//! (`server::node` opens a node, `server::replicated` routes the calls
//! that differ); without them the certifier is the single node as before.
//!
//! ## How a node serves
//!
//! One port per node carries both the public `Certifier` service and the
//! raft transport. Certify on the leader goes through the [`Proposer`] and
//! is answered once the entry is committed (durable on a majority) and
//! applied; on a follower it is UNAVAILABLE with the leader's address in
//! the `tashkent-leader` metadata ([`crate::CertifierError::NotLeader`]).
//! Applying a committed certification appends the stamped record to the
//! node's versions log ([`VersionsLog`], today's format, version == LSN),
//! from which Subscribe, the tail cache, purge and status work unchanged
//! on every node. Reports are replicated (at most one entry per replica a
//! second). Status adds the node's id, role, term, leader and committed
//! version. Every entry a node proposes passes one gate ([`Writes`]),
//! which a leadership hand-over closes while the target catches up
//! ([`transfer`]).
//!
//! ## What maps to what
//!
//! - **Log.** Raft log index `i` is WAL record (LSN) `i + 1` in
//!   `<dir>/wal` (`entry.rs` has the record format); appends use the WAL's
//!   group commit unchanged. The vote, the committed and the purged log ids
//!   are in `<dir>/raft-meta`, a small versioned, checksummed file replaced
//!   atomically (`meta.rs`), because every LSN is taken by an entry; the
//!   committed id rides along with vote and purge writes (it may lag, which
//!   is safe), so a commit costs no extra fsync.
//! - **Entries.** A normal entry is a [`Command`]: `Certify` carries exactly
//!   today's certifier WAL record (`record.rs`, version field 0),
//!   `CertifyBatch` several of them (certified in order), `Chunk` a
//!   piece of a writeset too large for an entry ([`chunks`]; `Part`, a
//!   raw piece of a record, only from earlier builds, [`parts`]),
//!   `Report` a replica's progress. Blank entries (a new leader's first) and
//!   membership entries take indexes but no version.
//! - **Index ↔ version.** Versions are *not* indexes: a version is assigned
//!   when a committed `Certify` entry is applied and certifies as a commit
//!   (`state_machine/`), as `latest + 1`. So versions are dense and
//!   strictly increasing whatever raft does to an uncommitted tail: a
//!   deposed leader's entries that get truncated never had versions, and
//!   the next leader's entries get the next ones. The term is only raft's.
//! - **Idempotence.** The dedupe table (txn id → outcome) is state the log
//!   builds, so a retry proposed to a new leader is answered from it: if the
//!   first attempt committed, applying the retry returns the same version
//!   and assigns none.
//! - **Snapshots.** A snapshot is the certifier's image (latest version,
//!   horizon, dedupe table, replica progress) plus the writesets of the
//!   versions in the conflict window, and the applied log id and membership
//!   (`snapshot.rs`); it is written to `<dir>/snapshot`, and a node
//!   restarts from it plus the log after it. The log is purged behind a
//!   snapshot only once the versions log no longer needs what it covers
//!   (checkpoints, `versions.rs`), so a node that lagged replays the log
//!   rather than installing a snapshot, which would drop its versions.
//!   openraft purges through a snapshot it installs as soon as it hands it
//!   to the state machine; the purge waits until that snapshot is on disk
//!   however long the install takes, and is refused when the install fails
//!   or the node stops (`KeptSnapshot`), so a crash never leaves a log
//!   purged past the snapshot the node restarts from.
//!
//! ## Known gaps (next steps toward issue 14)
//!
//! - openraft 0.9 waits for each `append` to be flushed before its core
//!   takes the next command (`RaftCore::append_to_log`). On a follower
//!   that is needed (it answers after it); on the leader it cost one
//!   fdatasync per entry before the entry was replicated, so a leader's
//!   entries never shared a flush. The vendored openraft is patched
//!   (`vendor/README.md`): a leader's own appends are not awaited, their
//!   flush is reported to the core when it completes, and an entry still
//!   commits only once a majority has it durable; a leader that steps
//!   down waits for its last flush first, and the log store lowers a
//!   committed id past the log's end at start (a leader may save one
//!   before its own flush returns). 0.9 also has no batched
//!   `client_write`: [`Proposer`] batches one level up (certifications
//!   arriving while entries are in flight go into the next entry
//!   together, `CertifyBatch`, one answer each; one entry in flight
//!   unless a full one waits, which made entries about three times as
//!   large as four in flight did, and three nodes ~1.4x as fast). Measured (`cargo bench --bench certify --
//!   'end_to_end_4conn_x32|raft'`, this 2-core machine, all nodes and
//!   clients in one process, a noisy day): the single certifier
//!   21–47k/s, one raft node 21–23k/s before the patch and 33–35k/s with
//!   it, three nodes 0.28–0.34x the single certifier before it and
//!   0.36–0.40x with it (issue 14's goal is 0.7x). What binds most is
//!   the replication round: 0.9 keeps one AppendEntries in flight per
//!   follower, and a follower answers after its fdatasync and some 13
//!   task and thread hand-offs on the way (12 since the WAL's writer
//!   calls the flush callback itself, `Wal::submit_then`, which measured
//!   no faster: twenty-seventh session) (0.8–1.1 ms a round under
//!   load, ~0.2–0.3 ms of it the flush; the disk takes the nodes' flushes
//!   side by side). The CPU idles meanwhile (43–45 % idle), and more
//!   clients do not close the gap (docs/performance-history.md,
//!   eighth session). A second patch pipelines AppendEntries
//!   (a stream sends newer entries ahead while it waits, and the follower
//!   appends queued ones together): +12 %. With the raft
//!   logs' fdatasync patched out (an unsafe experiment) three nodes reach
//!   0.68–0.82x; with the followers' apply patched out instead, 0.54–0.62x
//!   (docs/performance-history.md). Each node still reads,
//!   certifies and logs every writeset twice (raft log, versions log);
//!   it reads the common shape from the record's bytes in place
//!   (`record_view.rs`), without decoding it whole.
//! - The log store keeps the last 8192 entries (64 MiB) in memory
//!   (`log_store.rs`): a WAL reader finds a record by walking its segment
//!   from the start, which made every apply slower as the segment grew.
//! - Each certification is checked once, by the leader as it proposes it
//!   (`decider.rs`, `decided.rs`, twenty-fifth session): the leader
//!   decides against its proposal table (the state applied through a
//!   base entry of its own, `Command::Base`, or through its last entry
//!   certified at apply, plus every entry it decided since), and the
//!   entry (`Command::Decided`) carries the decisions: a commit's
//!   version, record and the horizon after it, an abort's reason without
//!   its writeset, or the answer a retry gets. Every node, the leader
//!   too, applies them without checking or recording conflict keys; its
//!   certifier then stops being `tabled` and is rebuilt from its window's
//!   records only when an entry must be certified at apply (a chunked
//!   writeset's last chunk, entries of earlier builds). Sound because a
//!   decision depends only on the log before its entry, the same on every
//!   node holding it; an entry appended in a term other than the one it
//!   was decided in, or on another latest version, or whose versions are
//!   not the next, answers `Lost` on every node and changes nothing. A
//!   leader without a table certifies nothing until its base is applied
//!   (certifications wait for it); openraft's blank entry is not used as
//!   the base, because a node restarted as leader of its term appends
//!   none.
//!   Measured against certifying on every node (`cargo bench --bench
//!   certify`, alternating builds, docs/performance-history.md):
//!   three nodes' CPU per certification fell 4–6 %, and
//!   throughput rose ~4 % at 4 × 256; at 4 × 32 an entry's round trip,
//!   not the CPU, bounds three nodes, and their throughput did not move.
//!   Less than the ~0.82x the hack of followers that keep no state
//!   reached (twenty-second session): that hack also skipped the dedupe
//!   table, the window's records and the versions log, which a follower
//!   needs to lead and to serve. Gaps: turns read the proposal table's
//!   window, so while a leader has none (after an election, during a
//!   chunked writeset's last chunk) they see no last writer; a chunked
//!   writeset's last chunk makes every node rebuild its conflict keys
//!   from the window's records (about a second of versions).
//! - Fair turns (`turns`) live on the leader, which refuses before
//!   proposing (a turn depends on time, and every node certifies at apply
//!   as a deterministic state machine). A refusal is decided in log order
//!   like any certification (by the proposal table, in a decided entry;
//!   a `Command::Refuse` entry is still applied): a resend of an attempt
//!   that is already in the log (proposed by this leader or an earlier
//!   one) gets that attempt's answer, never a refusal. Each refusal costs a raft round. A
//!   leader that steps down forgets its turns; a planned hand-over
//!   carries them to the target with its `Elect` request ([`transfer`]),
//!   and a failover loses them. Only a leader's turns are live
//!   (`AwaitTurn` on a node that does not lead answers "not queued"). A
//!   transaction over one entry (1 MiB) takes no part.
//! - Fingerprints are seeded alike in every process (`rule.rs`), so
//!   apply-time decisions are identical on every node, a fingerprint
//!   collision included (the same spurious abort everywhere, ~2^-64 per
//!   key pair). Only nodes built against different foldhash versions
//!   could disagree, and only on such a collision (fingerprints are
//!   recomputed at start, never stored).
//! - Each committed writeset is written twice per node: in the raft log
//!   and in the versions log Subscribe reads. Serving Subscribe from the
//!   raft log would need a version → index map (kept by the state
//!   machine) or entries stamped with their version at apply.
//! - Purge of the versions log follows checkpoint reports, which a client
//!   given every node sends to each (not replicated); the raft log follows
//!   it. A node that lagged behind a purge (or lost its disk) installs a
//!   snapshot, and first copies the versions it lacks from the peer whose
//!   versions log starts earliest ([`gap`]), so the versions a checkpoint
//!   needs stay on every node that has caught up, however many outages
//!   follow one another. Only versions no reachable peer holds are
//!   skipped (then "purged: rebuild from a checkpoint" for them there).
//!   The peers are the node's `peers` (a node added later is not asked).
//! - A Certify call of several chunks goes to the group chunk by chunk as
//!   it streams in (`server::chunked`), and a whole writeset over 1 MiB
//!   is cut into chunks by the proposer; each is an entry of about 1 MiB
//!   at most (openraft 0.9 gives an AppendEntries 150 ms). Every node
//!   spools a chunk's items and statements as it applies it and keeps
//!   only its conflict keys and the writeset without rows ([`chunks`]);
//!   the last chunk certifies, and a commit's versions-log record points
//!   into the spool. So no node holds the rows of a large transaction,
//!   but its keys (the conflict window's share, as on the single
//!   certifier). A snapshot is a file (`snapshot_file.rs`), built, sent,
//!   received and installed as a stream: one taken while a writeset's
//!   chunks arrive copies them from the spool one by one (which keeps
//!   them until the snapshot is written), and a node installing it
//!   spools them again as it reads them. A large version a node copies
//!   from a peer to fill a snapshot's gap ([`gap`]) goes to its spool as
//!   the frames come (`gap_copy.rs`). Chunks arrive at the client's pace, so a
//!   stream slower than `parts::PENDING_MAX_AGE` entries between two of
//!   its chunks is dropped (and retried), and a raft node refuses a
//!   `max_writeset_bytes` over `parts::PENDING_MAX_BYTES` (1 GiB). Nodes
//!   of builds before chunks cannot read `Chunk` entries: upgrade every
//!   node before the first writeset over 1 MiB. A node's start reads its
//!   whole versions log for the spooled versions it references (as the
//!   single certifier's start reads its WAL). The proposer batches up to
//!   256 records or 1 MiB per entry.
//! - TLS between nodes trusts one file (`peer_tls_ca`, by default the
//!   node's own certificate), checks the peer's certificate for the host
//!   of its address, and is mutual: raft messages need a client
//!   certificate that file signed (`service.rs`). Membership changes do
//!   not (tools have no certificate).
//! - The snapshot keeps the window's writesets in memory (a second copy of
//!   what the log holds); it could read them from the log instead.
//! - The transport (`network.rs`, `service.rs`, `proto/raft.proto`) sends
//!   openraft's messages as JSON but log entries in their binary log
//!   encoding; AppendEntries go on one gRPC stream per target, kept open
//!   (a unary call each cost an HTTP/2 stream per message); snapshots go
//!   in openraft's chunks (3 MiB), one unary call each, the bytes beside
//!   the JSON (in it, as numbers, to a node of an earlier build). How
//!   each peer last answered is kept per peer (`reach.rs`): the log says
//!   once that a peer was lost, refuses, or answers again (openraft's
//!   per-try lines are at debug), and `status` names the peers a leader
//!   cannot reach.
//! - A node whose disk was wiped rejoins as the same member (openraft's
//!   `loosen-follower-log-revert`, else the leader panics on its emptied
//!   log): it gets the snapshot and the log after it. It has also
//!   forgotten its vote; so that it cannot vote twice in the term it was
//!   wiped in, a node that starts without raft state while a peer knows
//!   a leader, has committed a version or has had a leader (an entry past
//!   the first membership in its log) casts no vote for two election
//!   timeouts, and does not bootstrap a new group (`server::rejoin`).
//!   Before a group's first leader only its first node stands, so a
//!   second vote then goes to the same candidate. A wiped node none of
//!   whose peers answer is not caught; rejoining under a new id
//!   (`remove-node` the old, `add-node` the new; `membership.rs`) is the
//!   strictly safe way. Snapshots are taken every
//!   `raft_snapshot_entries` entries (`[certifier]`, default 10000).
//! - Followers redirect (the client follows), they do not forward.
//! - A leader cut off from the majority keeps its role until it hears a
//!   higher term (openraft 0.9 has no check-quorum step-down), but the
//!   service stops using it: `server::contact` watches the metrics'
//!   `millis_since_quorum_ack` against the leader lease.
//! - Membership (`membership.rs`, `tashkent certifier add-node` /
//!   `remove-node`): a node added later is not in the other nodes'
//!   `peers`, so their status and NotLeader answers name it only from the
//!   raft membership; `tashkent up` does not add or remove nodes.
//!
//! ## Tests
//!
//! `certifier/tests/raft_storage.rs`: openraft's storage suite against
//! [`LogStore`] and [`StateMachine`], reopening, purge past the end,
//! certification at apply, snapshot transfer, an older build that does
//! not replace an installed snapshot, a purge that waits for the snapshot
//! it follows and is refused when the install fails or the node stops.
//! `certifier/tests/raft_cluster.rs`: three nodes over gRPC on loopback
//! elect a leader, commit, lose it, and carry on with dense versions and no index reused; a wiped follower
//! rejoins from a snapshot and a restarted node from its disk, each then
//! answering (as leader) from the same certifier state; concurrent writers
//! get dense, distinct versions, one entry each or batched by a
//! [`Proposer`] (which puts what arrives together in one entry, and on a
//! follower answers who leads). `certifier/tests/raft_faults.rs`: a node
//! whose WAL fails (injected fdatasync error) stops for good, the two
//! others carry on, and the certification in flight keeps one version;
//! a leader counts its own copy of an entry only once its fdatasync
//! returns (the patched openraft, `vendor/README.md`).
//! `certifier/tests/raft_served.rs`: three served nodes certify on the
//! leader, a follower names the leader, every node serves Subscribe and
//! Status, and after the leader stops a new one answers retries with
//! their original versions and the old one catches up from its disk; a
//! 4 MiB writeset goes through in chunks and every node serves it byte
//! for byte, also when its client's stream goes again to the next leader;
//! nodes wiped one after the other rejoin from snapshots and copy the
//! versions they skip ([`gap`]), plaintext and over TLS.
//! `certifier/tests/raft_random.rs`: seeded clients and faults (stops, a
//! wipe, checkpoints while a node is down), large writesets whole or in
//! streams of chunks; every node holds every version above the
//! checkpoint, exactly as answered. Writesets in chunks and records in
//! parts across a snapshot and a restart, and a large version kept by its
//! keys, are in `raft_storage.rs`; raft messages without a peer
//! certificate refused, in `certifier/tests/tls.rs`.

pub mod chunks;
pub mod decided;
pub mod decider;
pub mod entry;
pub mod gap;
mod gap_copy;
pub mod log_store;
pub mod membership;
pub mod meta;
pub mod network;
pub mod parts;
pub mod proposer;
pub mod reach;
pub mod seed;
pub mod service;
pub mod snapshot;
pub mod snapshot_file;
pub mod state_machine;
pub mod transfer;
pub mod types;
pub mod versions;
pub mod writes;

/// Generated from `proto/raft.proto`: the transport between certifier
/// nodes.
#[allow(clippy::all)]
pub mod proto {
    tonic::include_proto!("tashkent.raft.v1");
}

/// Largest message between nodes, each way. An AppendEntries carries at
/// most `max_payload_entries` entries (see `server::node`), each at most
/// twice the largest certifier record; the default limit of tonic (4 MiB)
/// refused the batches of a bulk load.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

pub use gap::PeerVersions;
pub use log_store::{LogReader, LogStore, RaftLogFailure};
pub use network::Network;
pub use proposer::Proposer;
pub use service::RaftService;
pub use state_machine::{KeptSnapshot, SnapshotBuilder, SnapshotWrites, StateMachine};
pub use types::{Command, NodeId, Raft, Response, TypeConfig};
pub use versions::VersionsLog;
pub use writes::Writes;
