//! `tashkent certifier`: run a certifier (or a node of a replicated one),
//! or change a replicated certifier's membership online: `add-node`,
//! `remove-node` (asked of any node; the leader applies it).

use anyhow::{Context, Result};
use tashkent_certifier::raft::membership::{self, MembershipChange};
use tashkent_certifier::CertifierArgs;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CertifierCmd {
    #[command(subcommand)]
    action: Option<NodeAction>,
    #[command(flatten)]
    args: CertifierArgs,
}

#[derive(clap::Subcommand)]
enum NodeAction {
    /// Add node N (already started with --node-id N and --peers naming
    /// it): it catches up as a learner, then becomes a voter.
    AddNode {
        /// The running nodes, a,b,c (any of them; the leader applies it).
        #[arg(long, value_name = "LIST")]
        certifier: String,
        #[arg(long, value_name = "N")]
        node_id: u64,
        /// The new node's host:port (its public and raft port).
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
    },
    /// Remove node N from the voters (then stop it).
    RemoveNode {
        #[arg(long, value_name = "LIST")]
        certifier: String,
        #[arg(long, value_name = "N")]
        node_id: u64,
    },
}

pub fn run(cmd: CertifierCmd) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let (certifier, change) = match cmd.action {
        None => {
            return runtime
                .block_on(tashkent_certifier::run(cmd.args))
                .context("certifier")
        }
        Some(NodeAction::AddNode {
            certifier,
            node_id,
            addr,
        }) => (certifier, MembershipChange::Add { id: node_id, addr }),
        Some(NodeAction::RemoveNode { certifier, node_id }) => {
            (certifier, MembershipChange::Remove { id: node_id })
        }
    };
    let voters = runtime
        .block_on(membership::change(&certifier, change))
        .context("changing the certifier's membership")?;
    println!("voters: {voters:?}");
    Ok(())
}
