//! A whole tashkent cluster on this machine: N PostgreSQL replicas the
//! harness initialises, the certifier, and one proxy per replica, all in
//! this process (the replicas are child processes).
//!
//! State lives in one directory, kept across runs so a second start
//! resumes the same cluster:
//!
//! ```text
//! <state>/replica-<i>/      harness base directory of replica i (data, log)
//! <state>/certifier-wal/    the certifier's log
//! <state>/ports.json        ports chosen at first start (reused later)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tashkent_certifier::{CertifierConfig, RunningCertifier};

use crate::error::{Error, Result};
use crate::pg::{Durability, PgConfig, PgServer};
use crate::proxy::{ProxyConfig, RunningProxy};

/// Where durability lives (DESIGN.md, "Modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// Tashkent-MW: the certifier's group-committed log; replicas fsync off.
    #[default]
    Middleware,
    /// Base: each replica's serial commits pay PostgreSQL's own fsync.
    Database,
}

impl DurabilityMode {
    pub fn replica_durability(self) -> Durability {
        match self {
            DurabilityMode::Middleware => Durability::Off,
            DurabilityMode::Database => Durability::On,
        }
    }
}

/// One cluster's description: TOML section `[cluster]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub state_dir: PathBuf,
    pub replicas: u32,
    pub durability: DurabilityMode,
    /// Port of the first proxy; the others follow (0: free ports, chosen
    /// at first start and kept in the state directory).
    pub proxy_port: u16,
    /// The replicated database.
    pub database: String,
    /// Extra `postgresql.conf` settings for every replica.
    pub pg_settings: Vec<(String, String)>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            state_dir: PathBuf::from("tashkent-state"),
            replicas: 3,
            durability: DurabilityMode::Middleware,
            proxy_port: 0,
            database: "postgres".into(),
            pg_settings: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
struct File {
    cluster: Option<ClusterConfig>,
}

impl ClusterConfig {
    /// Reads the `[cluster]` section of a TOML file.
    pub fn load(path: &Path) -> Result<ClusterConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        let file: File =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Ok(file.cluster.unwrap_or_default())
    }

    pub fn validate(&self) -> Result<()> {
        if !(1..=16).contains(&self.replicas) {
            return Err(Error::Config(format!(
                "replicas must be between 1 and 16, got {}",
                self.replicas
            )));
        }
        Ok(())
    }
}

/// Ports chosen at the first start.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Ports {
    certifier: u16,
    proxies: Vec<u16>,
}

/// A running local cluster; `shutdown` (or drop) stops everything.
pub struct LocalCluster {
    pub replicas: Vec<PgServer>,
    proxies: Vec<RunningProxy>,
    certifier: Option<RunningCertifier>,
    state_dir: PathBuf,
    database: String,
}

impl LocalCluster {
    /// Starts (or resumes) the cluster described by `cfg`.
    pub async fn start(cfg: &ClusterConfig) -> Result<LocalCluster> {
        cfg.validate()?;
        let state = std::path::absolute(&cfg.state_dir)
            .map_err(Error::io(format!("resolving {}", cfg.state_dir.display())))?;
        std::fs::create_dir_all(&state)
            .map_err(Error::io(format!("creating {}", state.display())))?;
        let ports_path = state.join("ports.json");
        let mut ports: Ports = match std::fs::read(&ports_path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Config(format!("{}: {e}", ports_path.display())))?,
            Err(_) => Ports::default(),
        };
        let mut replicas = Vec::new();
        for i in 1..=cfg.replicas {
            let base = state.join(format!("replica-{i}"));
            let settings = cfg.pg_settings.clone();
            let durability = cfg.durability.replica_durability();
            let server = tokio::task::spawn_blocking(move || {
                PgServer::start(PgConfig {
                    base_dir: Some(base),
                    durability,
                    settings,
                    ..PgConfig::default()
                })
            })
            .await
            .map_err(|e| Error::Config(format!("starting replica {i}: {e}")))??;
            replicas.push(server);
        }
        let mut cluster = LocalCluster {
            replicas,
            proxies: Vec::new(),
            certifier: None,
            state_dir: state.clone(),
            database: cfg.database.clone(),
        };
        let certifier = tashkent_certifier::start(CertifierConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], ports.certifier)),
            wal_dir: state.join("certifier-wal"),
            ..CertifierConfig::default()
        })
        .await
        .map_err(|source| Error::Certifier {
            context: "starting the certifier".into(),
            source,
        })?;
        ports.certifier = certifier.local_addr().port();
        let certifier_addr = certifier.local_addr().to_string();
        cluster.certifier = Some(certifier);
        for (i, pg) in cluster.replicas.iter().enumerate() {
            let port = ports
                .proxies
                .get(i)
                .copied()
                .unwrap_or(if cfg.proxy_port == 0 {
                    0
                } else {
                    cfg.proxy_port + i as u16
                });
            let proxy = crate::proxy::start(ProxyConfig {
                replica_id: i as u32 + 1,
                replicas: cfg.replicas,
                listen: SocketAddr::from(([127, 0, 0, 1], port)),
                pg_host: pg.host().to_string(),
                pg_port: pg.port(),
                database: cfg.database.clone(),
                certifier: certifier_addr.clone(),
                ..ProxyConfig::default()
            })
            .await?;
            cluster.proxies.push(proxy);
        }
        ports.proxies = cluster
            .proxies
            .iter()
            .map(|p| p.local_addr().port())
            .collect();
        let json = serde_json::to_vec_pretty(&ports).expect("ports serialise");
        std::fs::write(&ports_path, json)
            .map_err(Error::io(format!("writing {}", ports_path.display())))?;
        Ok(cluster)
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn proxy_addrs(&self) -> Vec<SocketAddr> {
        self.proxies.iter().map(|p| p.local_addr()).collect()
    }

    pub fn certifier_addr(&self) -> Option<SocketAddr> {
        self.certifier.as_ref().map(|c| c.local_addr())
    }

    /// libpq connection string of proxy `i` (0-based).
    pub fn proxy_conninfo(&self, i: usize) -> String {
        let a = self.proxies[i].local_addr();
        format!(
            "host={} port={} user=postgres dbname={}",
            a.ip(),
            a.port(),
            self.database
        )
    }

    /// One libpq string listing every proxy, for client-side failover.
    pub fn multi_host_conninfo(&self) -> String {
        let addrs = self.proxy_addrs();
        let hosts: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
        let ports: Vec<String> = addrs.iter().map(|a| a.port().to_string()).collect();
        format!(
            "host={} port={} user=postgres dbname={}",
            hosts.join(","),
            ports.join(","),
            self.database
        )
    }

    /// Stops the proxies, the certifier and the replicas, in that order.
    pub async fn shutdown(mut self) -> Result<()> {
        for p in self.proxies.drain(..) {
            p.shutdown().await;
        }
        if let Some(c) = self.certifier.take() {
            c.shutdown().await.map_err(|source| Error::Certifier {
                context: "stopping the certifier".into(),
                source,
            })?;
        }
        let replicas = std::mem::take(&mut self.replicas);
        tokio::task::spawn_blocking(move || {
            for mut r in replicas {
                r.stop()?;
            }
            Ok::<(), Error>(())
        })
        .await
        .map_err(|e| Error::Config(format!("stopping replicas: {e}")))??;
        Ok(())
    }
}
