//! The openraft type configuration of the replicated certifier: what a log
//! entry carries ([`Command`]) and what applying it answers ([`Response`]).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::Version;

/// A certifier node's id in the raft group.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The replicated certifier's raft types.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = super::snapshot_file::SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A raft log entry of ours.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log position (term and index).
pub type LogId = openraft::LogId<NodeId>;
/// openraft's storage error, as our traits return it.
pub type StorageError = openraft::StorageError<NodeId>;
/// A node handle running our type configuration.
pub type Raft = openraft::Raft<TypeConfig>;

/// The application payload of a normal entry: the inputs of the certifier's
/// state, and nothing else, so applying the log in order rebuilds the state
/// (versions, window, dedupe table, horizon) identically on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Certify a writeset. `record` is a certifier WAL record
    /// (`record::encode`, not spooled) whose version field is still 0: the
    /// version is assigned when the entry is applied, so it is the same on
    /// every node and dense whatever happens to the log's tail.
    Certify { record: Bytes },
    /// Several `Certify`s in one entry, certified in this order (what the
    /// [`super::Proposer`] sends when certifications arrive together).
    CertifyBatch { records: Vec<Bytes> },
    /// A piece of a record too large for one entry (`parts.rs`): pieces
    /// with the same `tag` are concatenated in log order, and the one with
    /// `last` set completes the record and certifies it as `Certify`.
    Part { tag: u64, piece: Bytes, last: bool },
    /// A chunk of a writeset too large for one entry (`chunks.rs`): a
    /// protobuf `Writeset`, the first of a `tag` with the header. Applied,
    /// its rows go to the node's spool; the one with `last` set certifies
    /// the writeset. (What a leader proposes; `Part`s are only read from
    /// logs and snapshots of earlier builds.)
    Chunk { tag: u64, piece: Bytes, last: bool },
    /// A replica's progress: moves the horizon. Replicated because the
    /// horizon decides "snapshot too old" aborts and which versions the
    /// window (and a snapshot) still holds.
    Report {
        replica: u32,
        applied: Version,
        oldest_snapshot: Version,
    },
    /// Abort the writeset in `record` (as `Certify` carries it) for fair
    /// turns (`crate::turns`): another session has its turn on a row it
    /// writes, which version `last` wrote last (as the leader saw it; the
    /// abort says so, every node alike). The leader decides a refusal (turns
    /// depend on time, so apply cannot), and logs it so that it is decided
    /// in log order like any certification: a transaction id decided
    /// before gets that answer instead, so a resend of an attempt that
    /// committed is never told it aborted.
    Refuse { last: Version, record: Bytes },
    /// A leader deciding at proposal starts its proposal table here
    /// (`decider.rs`): applying it changes nothing; the node that proposed
    /// it builds the table from the state applied through it.
    Base,
    /// Certifications the leader of `term` decided as it proposed them
    /// (`decided.rs`) on a state whose latest version was `latest`,
    /// applied without certifying again. Only an entry of that same term,
    /// applied where the latest version is `latest`, carries decisions
    /// that hold: any other answers `Lost` for each and changes nothing.
    /// Shared: openraft clones an entry each time it reads it (to apply
    /// it, to send it to each follower), and the items are only read.
    Decided {
        term: u64,
        latest: crate::Version,
        items: std::sync::Arc<Vec<super::decided::Item>>,
    },
}

/// What applying one entry answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A blank (new leader) or membership entry.
    Applied,
    /// The writeset committed with this version (also the answer to a
    /// retried transaction id that committed before).
    Committed { version: Version },
    /// The writeset aborted; `code` is an [`crate::AbortCode`].
    Aborted {
        code: i32,
        reason: String,
        conflict_version: Version,
    },
    /// The entry could not be certified (invalid writeset, report out of
    /// range, outcome of a retry no longer known). Every node reaches the
    /// same answer, so this is an answer, not a storage failure.
    Rejected { reason: String },
    /// A report was applied; the horizon is now this.
    Horizon { horizon: Version },
    /// The last piece of a record in parts whose earlier pieces were
    /// dropped (`parts.rs`): nothing was certified; the client retries.
    Lost { reason: String },
    /// The answers of a `CertifyBatch`, in its order.
    Batch(Vec<Response>),
}
