//! `tashkent certifier`: run a certifier (or a node of a replicated one),
//! change a replicated certifier online: `add-node`, `remove-node`,
//! `transfer-leader` (asked of any node; the leader does it), or turn a
//! single certifier's log into a node's directory: `seed`.

use anyhow::{Context, Result};
use tashkent_certifier::raft::membership::{self, MembershipChange};
use tashkent_certifier::raft::seed::Earlier;
use tashkent_certifier::raft::transfer;
use tashkent_certifier::{CertifierArgs, ClientTls};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CertifierCmd {
    #[command(subcommand)]
    action: Option<NodeAction>,
    #[command(flatten)]
    args: CertifierArgs,
}

/// The running nodes an operator's call goes to.
#[derive(clap::Args)]
struct Nodes {
    /// The running nodes, a,b,c (any of them; the leader does it).
    #[arg(long, value_name = "LIST")]
    certifier: String,
    /// PEM certificate(s) to trust when the nodes serve TLS (the CA that
    /// signed their certificates); without it, plaintext.
    #[arg(long, value_name = "FILE")]
    certifier_tls_ca: Option<std::path::PathBuf>,
}

impl Nodes {
    fn tls(&self) -> Result<Option<ClientTls>> {
        self.certifier_tls_ca
            .as_deref()
            .map(ClientTls::from_ca_file)
            .transpose()
            .context("the nodes' CA certificate")
    }
}

#[derive(clap::Subcommand)]
enum NodeAction {
    /// Add node N (already started with --node-id N and --peers naming
    /// it): it catches up as a learner, then becomes a voter.
    AddNode {
        #[command(flatten)]
        nodes: Nodes,
        #[arg(long, value_name = "N")]
        node_id: u64,
        /// The new node's host:port (its public and raft port).
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
    },
    /// Remove node N from the voters (then stop it).
    RemoveNode {
        #[command(flatten)]
        nodes: Nodes,
        #[arg(long, value_name = "N")]
        node_id: u64,
    },
    /// Hand the leadership to node N (before stopping the leader's
    /// machine): certifications pause for a moment, then go on there.
    TransferLeader {
        #[command(flatten)]
        nodes: Nodes,
        /// The node to lead (a voter).
        #[arg(long, value_name = "N")]
        to: u64,
    },
    /// Turn the single certifier's log in --wal-dir, in place, into node
    /// --node-id's directory of the group --peers names, to go on with
    /// replicated certifier nodes (the single certifier stopped; the
    /// other nodes start with empty directories and copy what they lack
    /// from this one). Give the settings the node will run with.
    Seed {
        #[command(flatten)]
        args: Box<CertifierArgs>,
    },
}

pub fn run(cmd: CertifierCmd) -> Result<()> {
    let Some(action) = cmd.action else {
        let config = cmd.args.resolve().context("certifier")?;
        return tashkent_certifier::runtime::build(config.worker_threads)
            .context("starting the tokio runtime")?
            .block_on(tashkent_certifier::run(config))
            .context("certifier");
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let (nodes, change) = match action {
        NodeAction::AddNode {
            nodes,
            node_id,
            addr,
        } => (nodes, MembershipChange::Add { id: node_id, addr }),
        NodeAction::RemoveNode { nodes, node_id } => {
            (nodes, MembershipChange::Remove { id: node_id })
        }
        NodeAction::Seed { args } => return seed(*args),
        NodeAction::TransferLeader { nodes, to } => {
            let tls = nodes.tls()?;
            let started = std::time::Instant::now();
            let handed = runtime
                .block_on(transfer::request(&nodes.certifier, tls.as_ref(), to))
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
        .block_on(membership::change(
            &nodes.certifier,
            nodes.tls()?.as_ref(),
            change,
        ))
        .context("changing the certifier's membership")?;
    println!("voters: {voters:?}");
    Ok(())
}

fn seed(args: CertifierArgs) -> Result<()> {
    let config = args.resolve().context("the node's settings")?;
    let seeded = tashkent_certifier::raft::seed::seed(&config, Earlier::Refuse)
        .with_context(|| format!("seeding a node from {}", config.wal_dir.display()))?;
    println!(
        "{} is node {}'s directory now: versions {} to {} ({} in the conflict window); \
         start it with the same settings, and its peers with empty directories",
        config.wal_dir.display(),
        config.node_id.unwrap_or_default(),
        seeded.first,
        seeded.latest,
        seeded.window
    );
    Ok(())
}
