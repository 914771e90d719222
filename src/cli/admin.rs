//! `tashkent admin`: what must be done alike on every replica and cannot
//! go through a proxy — roles (cluster-wide objects of each server).

use std::path::PathBuf;

use anyhow::Context as _;
use tashkent::ops::roles::{apply, RoleChange, RoleSpec};

#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    command: AdminCommand,
    /// State directory of a running local cluster (`tashkent up`).
    #[arg(long, value_name = "DIR", global = true)]
    state_dir: Option<PathBuf>,
    /// A proxy (host:port) of the cluster; give one per replica. Each names
    /// its replica, which admin connects to directly.
    #[arg(long = "proxy", value_name = "ADDR", global = true)]
    proxies: Vec<String>,
    /// The PostgreSQL superuser admin connects to the replicas as.
    #[arg(long, default_value = "postgres", global = true)]
    user: String,
}

#[derive(Debug, Clone, clap::Subcommand)]
enum AdminCommand {
    /// Create a role on every replica (all or none), with one SCRAM-SHA-256
    /// verifier of its password.
    CreateRole {
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
        /// The role cannot log in (a group role).
        #[arg(long)]
        nologin: bool,
        #[arg(long)]
        superuser: bool,
        #[arg(long)]
        createdb: bool,
        #[arg(long)]
        createrole: bool,
    },
    /// Set a role's password on every replica.
    SetPassword {
        name: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Drop a role on every replica (all or none).
    DropRole { name: String },
}

/// Where the password comes from (never the command line, which other
/// users can read in the process list).
#[derive(Debug, Clone, clap::Args)]
struct PasswordArgs {
    /// Read the password from the first line of standard input.
    #[arg(long, conflicts_with = "password_env")]
    password_stdin: bool,
    /// Read the password from this environment variable.
    #[arg(long, value_name = "VAR")]
    password_env: Option<String>,
}

impl PasswordArgs {
    fn read(&self) -> anyhow::Result<Option<String>> {
        if self.password_stdin {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from stdin")?;
            let p = line.trim_end_matches(['\r', '\n']).to_string();
            anyhow::ensure!(!p.is_empty(), "the password on stdin is empty");
            return Ok(Some(p));
        }
        if let Some(var) = &self.password_env {
            let p = std::env::var(var).with_context(|| format!("reading ${var}"))?;
            anyhow::ensure!(!p.is_empty(), "${var} is empty");
            return Ok(Some(p));
        }
        Ok(None)
    }
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let change = match &args.command {
        AdminCommand::CreateRole {
            name,
            password,
            nologin,
            superuser,
            createdb,
            createrole,
        } => RoleChange::Create(RoleSpec {
            name: name.clone(),
            password: password.read()?,
            login: !nologin,
            superuser: *superuser,
            createdb: *createdb,
            createrole: *createrole,
        }),
        AdminCommand::SetPassword { name, password } => RoleChange::SetPassword {
            name: name.clone(),
            password: password
                .read()?
                .context("say where the password comes from: --password-stdin or --password-env")?,
        },
        AdminCommand::DropRole { name } => RoleChange::Drop { name: name.clone() },
    };
    let targets = tashkent::ops::targets::replicas(
        args.state_dir.as_deref(),
        &args.proxies,
        &args.user,
        "postgres",
        "tashkent-admin",
    )
    .await
    .context("finding the replicas")?;
    let applied = apply(&targets, &change).await?;
    super::say(&format!("done on {}", applied.replicas.join(", ")));
    Ok(())
}
