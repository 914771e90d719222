//! Adding and removing certifier nodes online (`tashkent certifier
//! add-node` / `remove-node`): the leader adds a node as a learner, waits
//! until it has caught up (snapshot and log), then makes it a voter; a
//! removed node stops being a voter (and leaves the membership). Both are
//! openraft's joint-consensus `change_membership`, so the group keeps a
//! quorum throughout.

use std::collections::BTreeSet;

use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use tonic::transport::Endpoint;

use super::proto::raft_client::RaftClient;
use super::proto::RaftMessage;
use super::types::{NodeId, Raft};
use crate::error::CertifierError;

/// One change of the voters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Node `id`, reached at `addr` (`host:port`, its public and raft
    /// port), becomes a voter.
    Add { id: NodeId, addr: String },
    /// Node `id` stops being a member.
    Remove { id: NodeId },
}

/// Applies `change` on `raft`, which must lead; the voters afterwards, or
/// why not (a follower names the leader).
pub(crate) async fn apply(raft: &Raft, change: MembershipChange) -> Result<Vec<NodeId>, String> {
    let voters = || -> BTreeSet<NodeId> {
        raft.metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    };
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let target = match change {
        MembershipChange::Add { id, addr } => {
            raft.add_learner(id, BasicNode { addr }, true)
                .await
                .map_err(|e| err(&e))?;
            let mut v = voters();
            v.insert(id);
            v
        }
        MembershipChange::Remove { id } => {
            let mut v = voters();
            if !v.remove(&id) {
                return Err(format!("node {id} is not a voter"));
            }
            if v.is_empty() {
                return Err("the last voter cannot be removed".into());
            }
            v
        }
    };
    raft.change_membership(target, false)
        .await
        .map_err(|e| err(&e))?;
    Ok(voters().into_iter().collect())
}

/// Asks the nodes at `addrs` (`a,b,c`) in turn to apply `change`: the
/// leader does; returns the voters afterwards.
pub async fn change(addrs: &str, change: MembershipChange) -> Result<Vec<NodeId>, CertifierError> {
    let data = serde_json::to_vec(&change).map_err(|e| CertifierError::Protocol(e.to_string()))?;
    let mut last = CertifierError::Config("no certifier address".into());
    for addr in addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?;
        let mut client = match endpoint.connect().await {
            Ok(c) => RaftClient::new(c),
            Err(e) => {
                last = CertifierError::Connect {
                    addr: addr.to_owned(),
                    tls: false,
                    reason: crate::error::chain(&e),
                };
                continue;
            }
        };
        let answer = client
            .change_membership(RaftMessage {
                data: data.clone().into(),
                entries: Vec::new(),
            })
            .await?
            .into_inner();
        let r: Result<Vec<NodeId>, String> = serde_json::from_slice(&answer.data)
            .map_err(|e| CertifierError::Protocol(e.to_string()))?;
        match r {
            Ok(voters) => return Ok(voters),
            Err(e) => last = CertifierError::InvalidArgument(format!("node at {addr}: {e}")),
        }
    }
    Err(last)
}
