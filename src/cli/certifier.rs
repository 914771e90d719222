//! `tashkent certifier`: run a certifier (or a node of a replicated one),
//! or change a replicated certifier online: `add-node`, `remove-node`,
//! `transfer-leader` (asked of any node; the leader does it).

use anyhow::{Context, Result};
use tashkent_certifier::raft::membership::{self, MembershipChange};
use tashkent_certifier::raft::transfer;
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
    /// Hand the leadership to node N (before stopping the leader's
    /// machine): certifications pause for a moment, then go on there.
    TransferLeader {
        #[arg(long, value_name = "LIST")]
        certifier: String,
        /// The node to lead (a voter).
        #[arg(long, value_name = "N")]
        to: u64,
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
        Some(NodeAction::TransferLeader { certifier, to }) => {
            let started = std::time::Instant::now();
            let handed = runtime
                .block_on(transfer::request(&certifier, to))
                .with_context(|| format!("handing the leadership to node {to}"))?;
            println!(
                "node {} leads (term {}), handed over in {} ms",
                handed.leader,
                handed.term,
                started.elapsed().as_millis()
            );
            return Ok(());
        }
    };
    let voters = runtime
        .block_on(membership::change(&certifier, change))
        .context("changing the certifier's membership")?;
    println!("voters: {voters:?}");
    Ok(())
}
