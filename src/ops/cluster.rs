//! A whole tashkent cluster on this machine: N PostgreSQL replicas the
//! harness initialises, the certifier, and one proxy per replica, all in
//! this process (the replicas are child processes).
//!
//! State lives in one directory, kept across runs so a second start
//! resumes the same cluster (its layout: `state_dir`). The cluster file's
//! `[proxy]` and `[certifier]` sections are the templates of every proxy
//! and of the certifier (their addresses are the cluster's own).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tashkent_certifier::{CertifierConfig, RunningCertifier};

use crate::error::{Error, Result};
use crate::ops::config::ConfigFile;
use crate::ops::pg::{Durability, PgConfig, PgServer};
use crate::ops::state_dir::StateDir;
use crate::ops::{checkpoint, recover};
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

impl ClusterConfig {
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

/// A running local cluster; `shutdown` (or drop) stops everything.
pub struct LocalCluster {
    pub replicas: Vec<PgServer>,
    proxies: Vec<RunningProxy>,
    certifier: Option<RunningCertifier>,
    state: StateDir,
    /// The configuration it was started with (recovery rebuilds replicas
    /// and proxies from it).
    config: ConfigFile,
}

impl LocalCluster {
    /// Starts (or resumes) the cluster `file` describes.
    pub async fn start(file: &ConfigFile) -> Result<LocalCluster> {
        let cfg = &file.cluster;
        cfg.validate()?;
        let root = std::path::absolute(&cfg.state_dir)
            .map_err(Error::io(format!("resolving {}", cfg.state_dir.display())))?;
        std::fs::create_dir_all(&root)
            .map_err(Error::io(format!("creating {}", root.display())))?;
        let state = StateDir::new(&root);
        let mut ports = state.ports()?;
        let mut replicas = Vec::new();
        for i in 1..=cfg.replicas {
            let base = state.replica_base(i);
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
            state: state.clone(),
            config: file.clone(),
        };
        let certifier = tashkent_certifier::start(CertifierConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], ports.certifier)),
            wal_dir: state.certifier_wal(),
            ..file.certifier.clone()
        })
        .await
        .map_err(|source| Error::Certifier {
            context: "starting the certifier".into(),
            source,
        })?;
        ports.certifier = certifier.local_addr().port();
        cluster.certifier = Some(certifier);
        for i in 0..cluster.replicas.len() {
            let port = ports
                .proxies
                .get(i)
                .copied()
                .unwrap_or(if cfg.proxy_port == 0 {
                    0
                } else {
                    cfg.proxy_port + i as u16
                });
            let listen = SocketAddr::from(([127, 0, 0, 1], port));
            let proxy = crate::proxy::start(cluster.proxy_config(i, listen)).await?;
            cluster.proxies.push(proxy);
        }
        ports.proxies = cluster
            .proxies
            .iter()
            .map(|p| p.local_addr().port())
            .collect();
        state.write_ports(&ports)?;
        Ok(cluster)
    }

    /// The settings of replica `i`'s proxy (0-based): the file's `[proxy]`
    /// section with the cluster's own addresses.
    fn proxy_config(&self, i: usize, listen: SocketAddr) -> ProxyConfig {
        let pg = &self.replicas[i];
        ProxyConfig {
            replica_id: i as u32 + 1,
            replicas: self.config.cluster.replicas,
            listen,
            pg_host: pg.host().to_string(),
            pg_port: pg.port(),
            database: self.config.cluster.database.clone(),
            certifier: self
                .certifier_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            ..self.config.proxy.clone()
        }
    }

    pub fn state_dir(&self) -> &Path {
        self.state.root()
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
            self.config.cluster.database
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
            self.config.cluster.database
        )
    }

    /// What a checkpoint of replica `i` (0-based) reads.
    pub fn checkpoint_source(&self, i: usize) -> checkpoint::Source {
        let pg = &self.replicas[i];
        checkpoint::Source {
            host: pg.host().to_string(),
            port: pg.port(),
            user: pg.user().to_string(),
            database: self.config.cluster.database.clone(),
            replica_id: i as u32 + 1,
            binaries: pg.binaries().clone(),
        }
    }

    /// Takes a checkpoint of replica `cfg.replica` into `cfg`'s directory
    /// (under the state directory), retires old ones and lets the
    /// certifier purge its log; returns the checkpoint and the log's first
    /// version afterwards.
    pub async fn checkpoint(
        &self,
        cfg: &checkpoint::CheckpointConfig,
    ) -> Result<(checkpoint::Checkpoint, Option<u64>)> {
        cfg.validate()?;
        let i = cfg.replica as usize - 1;
        if i >= self.replicas.len() {
            return Err(Error::Config(format!(
                "checkpoint.replica {} is not a replica of this cluster",
                cfg.replica
            )));
        }
        let cert = self.certifier_client().await?;
        checkpoint::checkpoint_and_purge(
            &self.checkpoint_source(i),
            cfg,
            &self.state.checkpoints(&cfg.dir),
            Some(&cert),
        )
        .await
    }

    /// Starts automatic checkpoints if the cluster file's `[checkpoint]`
    /// section sets `interval_secs`; they stop when the handle drops.
    pub fn periodic_checkpoints(&self) -> Result<Option<checkpoint::Periodic>> {
        let cfg = self.config.checkpoint.clone();
        if cfg.interval_secs == 0 {
            return Ok(None);
        }
        let i = cfg.replica as usize - 1;
        if i >= self.replicas.len() {
            return Err(Error::Config(format!(
                "checkpoint.replica {} is not a replica of this cluster",
                cfg.replica
            )));
        }
        let dir = self.state.checkpoints(&cfg.dir);
        Ok(Some(checkpoint::periodic(
            self.checkpoint_source(i),
            cfg,
            dir,
            self.certifier_addr().map(|a| a.to_string()),
        )))
    }

    /// A client of this cluster's certifier.
    pub async fn certifier_client(&self) -> Result<tashkent_certifier::CertifierClient> {
        let addr = self
            .certifier_addr()
            .ok_or_else(|| Error::Config("the certifier is not running".into()))?;
        tashkent_certifier::CertifierClient::connect(addr.to_string())
            .await
            .map_err(|source| Error::Certifier {
                context: format!("connecting to the certifier at {addr}"),
                source,
            })
    }

    /// Rebuilds replica `i` (0-based) while the others keep serving, as
    /// after the loss of its disk: its proxy stops, its server is killed
    /// and gets a new data directory, the newest usable checkpoint of
    /// `cfg`'s directory is restored into it, and its proxy starts again
    /// on the same port and replays the log from the checkpoint's version.
    pub async fn recover_replica(
        &mut self,
        i: usize,
        cfg: &checkpoint::CheckpointConfig,
    ) -> Result<recover::Restored> {
        let listen = self.proxies[i].local_addr();
        self.proxies.remove(i).shutdown().await;
        let first = self
            .certifier_client()
            .await?
            .status()
            .await
            .map_err(|source| Error::Certifier {
                context: "reading the certifier's status".into(),
                source,
            })?
            .first_version;
        let dir = self.state.checkpoints(&cfg.dir);
        let choice = checkpoint::newest_usable(&dir, first)?;
        let (base, port, durability) = {
            let old = &self.replicas[i];
            (old.base_dir().to_path_buf(), old.port(), old.durability())
        };
        let settings = self.config.cluster.pg_settings.clone();
        // While it is rebuilt the replica is not in the list (a failure
        // leaves the cluster without it).
        let mut old = self.replicas.remove(i);
        let server = tokio::task::spawn_blocking(move || {
            old.kill()?;
            drop(old);
            recover::rebuild(&base, Some(port), durability, settings)
        })
        .await
        .map_err(|e| Error::Recovery(format!("rebuilding replica {}: {e}", i + 1)))??;
        self.replicas.insert(i, server);
        let started = std::time::Instant::now();
        let version = recover::restore_checkpoint(
            &self.checkpoint_source(i),
            self.replicas.len() as u32,
            &choice.checkpoint,
            cfg.jobs,
        )
        .await?;
        let seconds = started.elapsed().as_secs_f64();
        let proxy = crate::proxy::start(self.proxy_config(i, listen)).await?;
        self.proxies.insert(i, proxy);
        Ok(recover::Restored {
            checkpoint: choice.checkpoint,
            refused: choice.refused,
            version,
            seconds,
        })
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
