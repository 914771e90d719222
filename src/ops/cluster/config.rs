//! The `[cluster]` section of a cluster file: how many replicas and
//! certifier nodes, where durability lives, where state is kept.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ops::pg::Durability;

/// Where durability lives (ARCHITECTURE.md, "Modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityMode {
    /// Tashkent-MW: the certifier's group-committed log; replicas fsync off.
    #[default]
    Middleware,
    /// Base: each replica's serial commits pay PostgreSQL's own fsync.
    Database,
    /// Tashkent-API: replicas keep fsync on but commit in order with
    /// `synchronous_commit = off`; a commit is acknowledged once the
    /// replica's WAL is flushed past it, one flush per group.
    #[serde(rename = "database-grouped")]
    #[value(name = "database-grouped")]
    DatabaseGrouped,
}

impl DurabilityMode {
    pub fn replica_durability(self) -> Durability {
        match self {
            DurabilityMode::Middleware => Durability::Off,
            DurabilityMode::Database => Durability::On,
            DurabilityMode::DatabaseGrouped => Durability::Grouped,
        }
    }

    /// Whether the proxies acknowledge a commit only once their replica's
    /// WAL is flushed past it (`[proxy] ack_after_flush`).
    pub fn ack_after_flush(self) -> bool {
        self == DurabilityMode::DatabaseGrouped
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
    /// Whether the certifier and every proxy serve Prometheus metrics (on
    /// 127.0.0.1, ports chosen at the first start and kept).
    pub metrics: bool,
    /// TLS for the proxies' clients: when `[proxy]` names no certificate,
    /// a self-signed one is generated in the state directory (once, kept)
    /// and every proxy shows it. false: only a certificate `[proxy]`
    /// names is used.
    pub tls: bool,
    /// TLS between the proxies and the certifier: when `[certifier]`
    /// names no certificate, the certifier serves the state directory's
    /// self-signed one (the proxies' client certificate, generated if
    /// need be) and every proxy trusts it. Off by default: on loopback it
    /// protects nothing and costs every certification a TLS record layer.
    pub certifier_tls: bool,
    /// Certifier nodes: 1 is the single certifier; 3 (or any 2f+1) a
    /// replicated one on raft, each node with its own directory and port
    /// (`nodes.rs`), the proxies given every node.
    pub certifiers: u32,
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
            metrics: true,
            tls: true,
            certifier_tls: false,
            certifiers: 1,
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
        if !(1..=9).contains(&self.certifiers) {
            return Err(Error::Config(format!(
                "certifiers must be between 1 and 9, got {}",
                self.certifiers
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_modes_keep_their_spellings() {
        use clap::ValueEnum;
        for (text, mode) in [
            ("middleware", DurabilityMode::Middleware),
            ("database", DurabilityMode::Database),
            ("database-grouped", DurabilityMode::DatabaseGrouped),
        ] {
            let toml_text = format!("replicas = 1\ndurability = \"{text}\"\n");
            let cfg: ClusterConfig = toml::from_str(&toml_text).unwrap();
            assert_eq!(cfg.durability, mode, "{text}");
            assert_eq!(DurabilityMode::from_str(text, false), Ok(mode), "{text}");
        }
        assert!(DurabilityMode::DatabaseGrouped.ack_after_flush());
        assert!(!DurabilityMode::Database.ack_after_flush());
        assert_eq!(
            DurabilityMode::DatabaseGrouped.replica_durability(),
            Durability::Grouped
        );
    }
}
