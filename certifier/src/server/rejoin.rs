//! A raft node that starts with no raft state while its group runs: its
//! disk was wiped (or replaced), and it rejoins from the others (the
//! leader sends it a snapshot and the log after it).
//!
//! Two things it must not do. It must not bootstrap a new group (the
//! first node of `peers` initializes the membership when it finds no
//! state). And it must not vote at once: it may have voted in the current
//! term (or a later one) before it lost its state, and a second vote in
//! one term can elect two leaders. So for a few election timeouts
//! (`ELECTIONS_TO_OUTLAST`, `node.rs`) it refuses vote requests and does
//! not stand for election (which would be a vote for itself); by then any
//! election that was running when it lost its state has ended (a
//! candidate whose term timed out ignores answers for it).
//!
//! Whether the group runs is asked of the peers' Status (where their raft
//! messages go: `peer_routes`, else `peers`): one that knows a leader, has
//! committed a version, or has an entry in its raft log past the group's
//! first membership (every leader appends one when elected) says so; an
//! election after the first leader's failure, before any version was
//! committed, is therefore caught too. A group whose nodes all start
//! afresh has had no leader yet, so a first start is not held up (a node
//! started after a leader was elected is held, harmlessly). Before its
//! first leader only the first node, which holds the group's membership,
//! stands for election, so a second vote of a wiped node then goes to the
//! candidate it voted for already: it cannot elect two leaders. Not caught:
//! a wiped node none of whose peers answer within [`ASK_TIMEOUT`] (then
//! the first node bootstraps alone, and follows the group's leader once it
//! reaches it: its lone group cannot elect anyone). Rejoining under a new
//! node id (`remove-node`, `add-node`) is the strictly safe way.

use std::time::Duration;

use crate::client::{CertifierClient, ClientOptions};
use crate::raft::{NodeId, Raft};
use crate::tls::ClientTls;

/// Holds the votes of node `id` (`raft`, whose longest election timeout
/// is `election_timeout`): it stands for no election until the hold ends
/// (its core's own elections are switched off here, and on again by
/// `standing::guard` then); the caller refuses vote requests until the
/// instant returned (`RaftService::votes_held_until`).
pub(super) fn hold_votes(
    id: NodeId,
    raft: &Raft,
    election_timeout: Duration,
) -> tokio::time::Instant {
    let hold = super::node::ELECTIONS_TO_OUTLAST * election_timeout;
    tracing::warn!(
        node = id,
        "this node's raft state is new but its group runs: it rejoins, and casts no vote for \
         {hold:?}"
    );
    raft.runtime_config().elect(false);
    tokio::time::Instant::now() + hold
}

/// How long one peer may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_millis(800);

/// Whether any of the other nodes (`others`: where their raft messages
/// go) says the group runs (see the module docs); nodes that do not
/// answer say nothing.
pub(super) async fn group_runs(others: &[String], tls: Option<ClientTls>) -> bool {
    let asks = others.iter().map(|addr| {
        let opts = ClientOptions {
            tls: tls.clone(),
            ..ClientOptions::default()
        };
        async move {
            match CertifierClient::status_within(addr, opts, ASK_TIMEOUT).await {
                Ok((_, s)) => s.leader_id != 0 || s.committed_version > 0 || s.last_log_index > 0,
                Err(_) => false,
            }
        }
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .any(|runs| runs)
}
