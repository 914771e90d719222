//! `tashkent up`: a whole local cluster until Ctrl-C.

use std::path::PathBuf;

use anyhow::{Context, Result};
use tashkent::ops::cluster::{DurabilityMode, LocalCluster};
use tashkent::ops::config::ConfigFile;

use super::{say, ShutdownSignal};

#[derive(clap::Args)]
pub struct UpArgs {
    /// The cluster file (see cluster.example.toml): `[cluster]` describes
    /// the cluster, `[proxy]` and `[certifier]` are the settings of every
    /// proxy and of the certifier, `[checkpoint]` automatic checkpoints;
    /// the flags below override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// State directory; kept, so a second `up` resumes the same cluster.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Number of PostgreSQL replicas (each with its proxy).
    #[arg(long)]
    replicas: Option<u32>,
    /// Where durability lives: `middleware` (Tashkent-MW: the certifier's
    /// log, replicas with fsync off), `database` (Base: every replica
    /// commit pays PostgreSQL's own fsync) or `database-grouped`
    /// (Tashkent-API: replicas fsync on, ordered commits asynchronous, a
    /// COMMIT acknowledged once one group flush covers it).
    #[arg(long, value_enum)]
    durability: Option<DurabilityMode>,
    /// Port of the first proxy, the others follow (default: free ports,
    /// kept in the state directory).
    #[arg(long)]
    proxy_port: Option<u16>,
    /// TLS between the proxies and the certifier ([cluster]
    /// certifier_tls); `--certifier-tls=false` overrides the file.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    certifier_tls: Option<bool>,
    /// Certifier nodes: 1 (default) the single certifier, 3 (2f+1) a
    /// replicated one on raft ([cluster] certifiers).
    #[arg(long, value_name = "N")]
    certifiers: Option<u32>,
}

pub fn run(args: UpArgs) -> Result<()> {
    let mut file = ConfigFile::load_or_default(args.config.as_deref())?;
    super::override_fields!(args => file.cluster; state_dir, replicas, durability, proxy_port, certifier_tls, certifiers);
    let cfg = file.cluster.clone();
    // Every part runs in this process: on the workers the proxies and the
    // certifier would each have had apart (on two cores, two: one worker
    // for all of them measured no faster, docs/performance-history.md).
    let workers = [file.proxy.worker_threads, file.certifier.worker_threads]
        .map(tashkent_certifier::runtime::worker_threads);
    let runtime = tashkent_certifier::runtime::build(
        (workers[0] + workers[1]).min(tashkent_certifier::config::MAX_WORKER_THREADS),
    )
    .context("starting the tokio runtime")?;
    runtime.block_on(async {
        // Signals are caught before anything starts, so a Ctrl-C during
        // startup still ends in an orderly stop.
        let mut shutdown = ShutdownSignal::install()?;
        let cluster = LocalCluster::start(&file)
            .await
            .context("starting the cluster")?;
        // A single certifier's log that became node 1's: up once every
        // node holds its versions (the proxies serve meanwhile).
        let copied = tokio::select! {
            () = cluster.wait_for_the_copy() => None,
            signal = shutdown.wait() => Some(signal),
        };
        if let Some(signal) = copied {
            eprintln!("{signal}: stopping");
            return cluster.shutdown().await.context("stopping the cluster");
        }
        let _checkpoints = cluster.periodic_checkpoints()?;
        let mut text = format!(
            "tashkent is up: {} replica(s), durability {} (state in {}).\n",
            cfg.replicas,
            clap::ValueEnum::to_possible_value(&cfg.durability)
                .map(|v| v.get_name().to_owned())
                .unwrap_or_default(),
            cluster.state_dir().display()
        )
        .to_lowercase();
        text.push_str(&format!(
            "connect: psql \"{}\"\n",
            cluster.proxy_conninfo(0)
        ));
        for i in 1..cfg.replicas as usize {
            text.push_str(&format!(
                "proxy {}: psql \"{}\"\n",
                i + 1,
                cluster.proxy_conninfo(i)
            ));
        }
        text.push_str(&format!(
            "failover: psql \"{}\"\n",
            cluster.multi_host_conninfo()
        ));
        if cfg.certifiers > 1 {
            text.push_str(&format!(
                "certifier: {} raft nodes at {}\n",
                cfg.certifiers,
                cluster.certifier_addrs().unwrap_or_default()
            ));
        }
        if let Some(p) = cluster.proxy_metrics_addrs() {
            let proxies: Vec<String> = p.iter().map(|a| format!("http://{a}/metrics")).collect();
            let certifier = match (
                cluster.certifier_metrics_addr(),
                cluster.certifier_node_metrics_addrs(),
            ) {
                (Some(c), _) => format!("http://{c}/metrics (certifier), "),
                (None, Some(nodes)) => {
                    let nodes: Vec<String> = nodes
                        .iter()
                        .map(|a| format!("http://{a}/metrics"))
                        .collect();
                    format!("{} (certifier nodes), ", nodes.join(", "))
                }
                (None, None) => String::new(),
            };
            text.push_str(&format!(
                "metrics: {certifier}{} (proxies)\n",
                proxies.join(", ")
            ));
        }
        text.push_str(&format!(
            "status: tashkent status --state-dir {}\n",
            cluster.state_dir().display()
        ));
        if let Some(cert) = cluster.tls_cert() {
            text.push_str(&format!(
                "TLS: add sslmode=require, or sslmode=verify-full sslrootcert={} \
                 (certificate of every proxy)\n",
                cert.display()
            ));
        }
        if let Some(ca) = cluster.certifier_tls_ca() {
            text.push_str(&format!(
                "certifier: TLS, its clients trust {}\n",
                ca.display()
            ));
        }
        text.push_str("Ctrl-C stops it.");
        say(&text);
        let signal = shutdown.wait().await;
        eprintln!("{signal}: stopping");
        cluster.shutdown().await.context("stopping the cluster")
    })
}
