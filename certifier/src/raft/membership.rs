//! Adding and removing certifier nodes online (`tashkent certifier
//! add-node` / `remove-node`): the leader adds a node as a learner, waits
//! until it has caught up (snapshot and log), then makes it a voter; a
//! removed node stops being a voter (and leaves the membership). Both are
//! openraft's joint-consensus `change_membership`, so the group keeps a
//! quorum throughout.

use std::collections::BTreeSet;

use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use super::proto::raft_client::RaftClient;
use super::proto::RaftMessage;
use super::types::{NodeId, Raft};
use crate::error::CertifierError;
use crate::tls::ClientTls;

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
/// leader does; returns the voters afterwards. Over TLS with `tls`.
pub async fn change(
    addrs: &str,
    tls: Option<&ClientTls>,
    change: MembershipChange,
) -> Result<Vec<NodeId>, CertifierError> {
    ask(addrs, tls, &change, |mut client, msg| async move {
        Ok(client.change_membership(msg).await?.into_inner())
    })
    .await
}

/// Sends `request` (as JSON) by `call` to the nodes at `addrs` (`a,b,c`)
/// in turn, over TLS with `tls`, until one answers `Ok` (the leader, for
/// an operator's call): that answer, or every node's error.
pub(crate) async fn ask<Req, T, F, Fut>(
    addrs: &str,
    tls: Option<&ClientTls>,
    request: &Req,
    call: F,
) -> Result<T, CertifierError>
where
    Req: Serialize,
    T: DeserializeOwned,
    F: Fn(RaftClient<Channel>, RaftMessage) -> Fut,
    Fut: std::future::Future<Output = Result<RaftMessage, CertifierError>>,
{
    let data = serde_json::to_vec(request).map_err(|e| CertifierError::Protocol(e.to_string()))?;
    let mut errors = Vec::new();
    for addr in addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let mut endpoint = Endpoint::from_shared(crate::client::uri(addr, tls.is_some())?)?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls.tonic_config())?;
        }
        let client = match endpoint.connect().await {
            Ok(c) => RaftClient::new(c),
            Err(e) => {
                errors.push(format!("{addr}: {}", crate::error::chain(&e)));
                continue;
            }
        };
        let msg = RaftMessage {
            data: data.clone().into(),
            entries: Vec::new(),
        };
        let answer = match call(client, msg).await {
            Ok(answer) => answer,
            Err(e) => {
                errors.push(format!("{addr}: {e}"));
                continue;
            }
        };
        let r: Result<T, String> = serde_json::from_slice(&answer.data)
            .map_err(|e| CertifierError::Protocol(e.to_string()))?;
        match r {
            Ok(t) => return Ok(t),
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    Err(match errors.is_empty() {
        true => CertifierError::Config("no certifier address".into()),
        false => CertifierError::InvalidArgument(errors.join("; ")),
    })
}
