//! The cluster file (see `cluster.example.toml`): every section read once,
//! into one value. Command-line flags override it (`cli`).
//!
//! | section | type | read by |
//! |---|---|---|
//! | `[cluster]` | [`ClusterConfig`] | `up`, `checkpoint`, `recover` |
//! | `[checkpoint]` | [`CheckpointConfig`] | `up`, `checkpoint`, `recover` |
//! | `[proxy]` | [`ProxyConfig`] | `proxy`; `up` (the template of every proxy) |
//! | `[certifier]` | [`CertifierConfig`] | `certifier`; `up` (its template) |
//!
//! An unknown section or field is an error, not silently ignored.

use std::path::Path;

use serde::Deserialize;
use tashkent_certifier::CertifierConfig;

use crate::error::{Error, Result};
use crate::ops::checkpoint::CheckpointConfig;
use crate::ops::cluster::ClusterConfig;
use crate::proxy::ProxyConfig;

/// Every section of a cluster file (defaults for the missing ones).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    pub cluster: ClusterConfig,
    pub checkpoint: CheckpointConfig,
    pub proxy: ProxyConfig,
    pub certifier: CertifierConfig,
}

impl ConfigFile {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        let file: ConfigFile =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        file.cluster.validate()?;
        file.checkpoint.validate()?;
        file.certifier
            .validate()
            .map_err(|e| Error::Config(format!("{}: [certifier]: {e}", path.display())))?;
        Ok(file)
    }

    /// `path`'s file, or the defaults without one.
    pub fn load_or_default(path: Option<&Path>) -> Result<ConfigFile> {
        path.map_or_else(|| Ok(ConfigFile::default()), ConfigFile::load)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_cluster_file_documents_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster.example.toml");
        let file = ConfigFile::load(&path).unwrap();
        assert_eq!(file.checkpoint, CheckpointConfig::default());
        assert_eq!(file.certifier, CertifierConfig::default());
        assert_eq!(file.proxy, ProxyConfig::default());
    }

    #[test]
    fn every_section_is_read_and_an_unknown_one_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("c.toml");
        std::fs::write(
            &p,
            "[cluster]\nreplicas = 2\n[checkpoint]\nkeep = 3\ninterval_secs = 60\n\
             [proxy]\nmax_apply_batch = 7\n[certifier]\ntail_cache_bytes = 1048576\n",
        )
        .unwrap();
        let c = ConfigFile::load(&p).unwrap();
        assert_eq!(c.cluster.replicas, 2);
        assert_eq!(
            (
                c.checkpoint.keep,
                c.checkpoint.interval_secs,
                c.checkpoint.jobs
            ),
            (3, 60, 2)
        );
        assert_eq!(c.proxy.max_apply_batch, 7);
        assert_eq!(c.certifier.tail_cache_bytes, 1 << 20);
        std::fs::write(&p, "[checkpoint]\nkeep = 0\n").unwrap();
        assert!(ConfigFile::load(&p).is_err());
        std::fs::write(&p, "[proxies]\nx = 1\n").unwrap();
        let err = ConfigFile::load(&p).unwrap_err().to_string();
        assert!(err.contains("proxies"), "{err}");
        assert!(ConfigFile::load_or_default(None).is_ok());
    }
}
