//! When checkpoints are taken: the `[checkpoint]` settings, one checkpoint
//! with its report to the certifier, and automatic ones.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::store::{remove_partial, retire};
use super::take::{take, Source};
use super::Checkpoint;
use crate::error::{Error, Result};
use crate::ops::certifier::CertifierTarget;

/// Checkpoint settings: TOML section `[checkpoint]` of the cluster file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Where checkpoints are kept (relative: under the cluster's state
    /// directory).
    pub dir: PathBuf,
    /// How many valid checkpoints to keep (at least 1).
    pub keep: usize,
    /// Seconds between automatic checkpoints (0: only on demand).
    pub interval_secs: u64,
    /// The replica automatic checkpoints are taken from (1-based).
    pub replica: u32,
    /// Parallel `pg_dump` / `pg_restore` jobs.
    pub jobs: u32,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            dir: PathBuf::from("checkpoints"),
            keep: 2,
            interval_secs: 0,
            replica: 1,
            jobs: 2,
        }
    }
}

impl CheckpointConfig {
    pub fn validate(&self) -> Result<()> {
        if self.keep == 0 {
            return Err(Error::Config("checkpoint.keep must be at least 1".into()));
        }
        if self.jobs == 0 {
            return Err(Error::Config("checkpoint.jobs must be at least 1".into()));
        }
        if self.replica == 0 {
            return Err(Error::Config(
                "checkpoint.replica is 1-based and must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Takes a checkpoint, retires old ones and, with a certifier, reports the
/// oldest kept checkpoint's version so that the log can be purged. Returns
/// the new checkpoint and the certifier's first retained version (if
/// reported).
pub async fn checkpoint_and_purge(
    src: &Source,
    cfg: &CheckpointConfig,
    dir: &Path,
    certifier: Option<&tashkent_certifier::CertifierClient>,
) -> Result<(Checkpoint, Option<u64>)> {
    let taken = take(src, dir, cfg.jobs).await?;
    let kept = retire(dir, cfg.keep)?;
    let mut first = None;
    if let (Some(cert), Some(oldest)) = (certifier, kept.last()) {
        let r = cert
            .report_checkpoint(oldest.manifest.version)
            .await
            .map_err(|source| Error::Certifier {
                context: "reporting the checkpoint to the certifier".into(),
                source,
            })?;
        first = Some(r.first_version);
        tracing::info!(
            checkpoint = oldest.manifest.version,
            purge_below = r.purge_below,
            first_version = r.first_version,
            "oldest kept checkpoint reported to the certifier"
        );
    }
    Ok((taken, first))
}

/// Automatic checkpoints every `cfg.interval_secs`; stops when dropped.
pub struct Periodic {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Periodic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts taking a checkpoint of `src` every `cfg.interval_secs` seconds
/// (the first one after one interval) into `dir`; failures are logged and
/// retried at the next tick.
pub fn periodic(
    src: Source,
    cfg: CheckpointConfig,
    dir: PathBuf,
    certifier: Option<CertifierTarget>,
) -> Periodic {
    let every = Duration::from_secs(cfg.interval_secs.max(1));
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let _ = remove_partial(&dir);
        loop {
            tick.tick().await;
            let cert = match &certifier {
                Some(target) => match target.connect().await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!("checkpoint: {e}");
                        None
                    }
                },
                None => None,
            };
            if let Err(e) = checkpoint_and_purge(&src, &cfg, &dir, cert.as_ref()).await {
                tracing::error!("automatic checkpoint failed: {e}");
            }
        }
    });
    Periodic { task }
}
