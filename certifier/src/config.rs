//! Configuration: `CertifierConfig` (the `[certifier]` section of the
//! cluster's TOML file) and `CertifierArgs` (clap flags: `--config FILE`
//! plus one flag per setting, overriding the file). The root `tashkent`
//! binary flattens `CertifierArgs` into its `certifier` subcommand.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tashkent_wal::{Backend, WalOptions};

use crate::certifier::Limits;
use crate::error::CertifierError;
use crate::record::HEADER_LEN;
use crate::window::WindowLimits;

/// gRPC messages larger than this are refused (each way); Certify chunks
/// and Subscribe frames are cut to fit.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The most worker threads a serving process's runtime may be given.
pub const MAX_WORKER_THREADS: usize = 1024;

/// Which WAL I/O backend to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum WalBackend {
    /// io_uring if the kernel allows it, else portable; portable on a
    /// node of a replicated certifier (`node_id`).
    #[default]
    Auto,
    /// io_uring (linked write + fdatasync); fails to start if unavailable.
    #[value(name = "io_uring")]
    IoUring,
    /// pwrite + fdatasync.
    Portable,
}

/// The certifier's settings. Every field has a default; see `Default`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CertifierConfig {
    /// gRPC listen address; port 0 picks a free port (printed at start).
    pub listen: SocketAddr,
    /// WAL directory (created if absent).
    pub wal_dir: PathBuf,
    pub wal_backend: WalBackend,
    /// Preallocated size of each WAL segment.
    pub wal_segment_bytes: u64,
    /// Largest gRPC message, each way.
    pub max_message_bytes: usize,
    /// Largest writeset (sum of its Certify chunks); larger ones are refused
    /// with RESOURCE_EXHAUSTED. Also bounds a WAL record. At most ~4 GiB.
    pub max_writeset_bytes: u64,
    /// Conflict window bound: key entries.
    pub window_max_entries: usize,
    /// Conflict window bound: versions.
    pub window_max_versions: usize,
    /// Transaction ids remembered for idempotent retries.
    pub dedupe_max_entries: usize,
    /// Recent committed records kept in memory for subscribers, in bytes.
    pub tail_cache_bytes: usize,
    /// Log purge (see `purge`): a replica that has not reported its
    /// progress for this long is not waited for (it will be rebuilt from a
    /// checkpoint if it needs purged versions), and nothing is purged this
    /// soon after the certifier starts.
    pub purge_replica_timeout_ms: u64,
    /// An accepted connection whose peer acknowledges nothing for this
    /// long, or reads nothing at all while data waits for it, is dropped
    /// (`TCP_USER_TIMEOUT`, and TCP keepalive probes while it is idle): a
    /// subscriber or a peer node behind a link that went silent (a
    /// partition closes nothing) would otherwise keep its stream and what
    /// is queued for it until TCP gives up, about a quarter of an hour
    /// later (an idle one: never). A peer whose process runs reads its
    /// socket into HTTP/2's buffers however slowly its application
    /// consumes them, so only a silent link or a stopped process is
    /// dropped. 0: off (the kernel's defaults); else 2000 to 3600000.
    pub silent_peer_timeout_ms: u64,
    /// A write, fdatasync or directory sync of one of the certifier's logs
    /// that has not returned after this long fails the log, as an I/O error would (a
    /// hung disk: a dead device, a frozen filesystem, a stuck network
    /// volume). A raft node then leaves the group to the others instead of
    /// leading or voting on while its log cannot be written; a single
    /// certifier answers with the failure instead of waiting without end.
    /// Either needs a restart once the disk is back, as after any log
    /// failure. A raft node's vote and snapshot files are not timed (a
    /// node stuck on those stops answering its peers). 0: off (wait for
    /// the disk however long it takes); else 100 to 3600000.
    pub log_stall_timeout_ms: u64,
    /// Worker threads of the serving process's tokio runtime (`tashkent
    /// certifier`, `tashkent-certifier`; `tashkent up`, which runs every
    /// part in one process, on this and the proxies' together);
    /// 0: half the cores, at least one, or `TOKIO_WORKER_THREADS` when set
    /// (`runtime`). At most 1024.
    pub worker_threads: usize,
    /// Where Prometheus metrics are served (`GET /metrics`); none: off.
    /// Port 0 picks a free port (printed at start as "metrics on ADDR").
    pub metrics_listen: Option<SocketAddr>,
    /// PEM file of the certificate chain the gRPC server shows (leaf
    /// first). With `tls_key` the server speaks TLS only, and its clients
    /// need the CA to trust (`[proxy] certifier_tls_ca`); without, it
    /// speaks plaintext only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// This node's id in a replicated certifier (raft, `peers`); none: a
    /// single certifier, as before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    /// Every node of a replicated certifier, `1=host:port,2=host:port,...`:
    /// one address per node serving both the public API and the raft
    /// transport. This node listens on its own entry (`listen` is not
    /// used); the node with the smallest id initializes the membership
    /// from this list when its raft log is empty (see `server::node`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<String>,
    /// Where this node sends its raft messages for some peers, when that
    /// is not their address in `peers` (a tunnel, a NAT, or a test's relay
    /// that cuts one link): `2=host:port,3=host:port`. Clients are still
    /// pointed at the addresses in `peers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_routes: Option<String>,
    /// With `tls_cert`, a raft node speaks TLS to its peers too, trusting
    /// the PEM certificates of this file (the CA that signed the nodes'
    /// certificates). Default: `tls_cert` itself, which is right when
    /// every node shows the same certificate, or when that file holds the
    /// chain up to the CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_tls_ca: Option<PathBuf>,
    /// A raft node takes a snapshot after this many log entries (a restart
    /// replays the log after it). Its raft log is purged behind a snapshot
    /// once the versions log no longer needs what it covers (checkpoints);
    /// a follower that lags further, or lost its disk, is sent the
    /// snapshot.
    pub raft_snapshot_entries: u64,
    /// A raft node that leads when told to stop (SIGTERM, Ctrl-C) first
    /// hands the leadership to its most caught-up peer (as `tashkent
    /// certifier transfer-leader` does), for 2 s at most: commits pause
    /// for a moment instead of a failover's two seconds.
    pub hand_over_on_stop: bool,
}

impl Default for CertifierConfig {
    fn default() -> Self {
        let limits = Limits::default();
        CertifierConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            wal_dir: PathBuf::from("certifier-wal"),
            wal_backend: WalBackend::Auto,
            wal_segment_bytes: 64 << 20,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_writeset_bytes: 256 << 20,
            window_max_entries: limits.window.max_entries,
            window_max_versions: limits.window.max_versions,
            dedupe_max_entries: limits.max_dedupe,
            tail_cache_bytes: 16 << 20,
            purge_replica_timeout_ms: 30_000,
            silent_peer_timeout_ms: 30_000,
            log_stall_timeout_ms: 10_000,
            worker_threads: 0,
            metrics_listen: None,
            tls_cert: None,
            tls_key: None,
            node_id: None,
            peers: None,
            peer_routes: None,
            peer_tls_ca: None,
            raft_snapshot_entries: 10_000,
            hand_over_on_stop: true,
        }
    }
}

/// `1=host:port,2=host:port,...`: the `peers` of nodes `1..` at `addrs`,
/// in order (what [`parse_peers`] reads).
pub fn format_peers<A: std::fmt::Display>(addrs: impl IntoIterator<Item = A>) -> String {
    let all: Vec<String> = addrs
        .into_iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect();
    all.join(",")
}

/// Parses `1=host:port,2=host:port` (spaces around items allowed).
pub fn parse_peers(s: &str) -> Result<std::collections::BTreeMap<u64, String>, CertifierError> {
    let mut peers = std::collections::BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = || CertifierError::Config(format!("peers: `{item}` is not ID=HOST:PORT"));
        let (id, addr) = item.split_once('=').ok_or_else(bad)?;
        let id: u64 = id.trim().parse().map_err(|_| bad())?;
        let addr = addr.trim();
        if id == 0 || !addr.contains(':') {
            return Err(bad());
        }
        if peers.insert(id, addr.to_owned()).is_some() {
            return Err(CertifierError::Config(format!("peers: node {id} twice")));
        }
    }
    Ok(peers)
}

/// A TOML file may hold other sections (the whole cluster's config).
#[derive(Deserialize)]
struct File {
    #[serde(default)]
    certifier: CertifierConfig,
}

impl CertifierConfig {
    /// The `[certifier]` section of a TOML document (defaults if absent).
    pub fn from_toml_str(s: &str) -> Result<CertifierConfig, CertifierError> {
        let f: File = toml::from_str(s).map_err(|e| CertifierError::Config(e.to_string()))?;
        Ok(f.certifier)
    }

    pub fn load(path: &Path) -> Result<CertifierConfig, CertifierError> {
        let s = std::fs::read_to_string(path)
            .map_err(|e| CertifierError::Config(format!("{}: {e}", path.display())))?;
        CertifierConfig::from_toml_str(&s)
            .map_err(|e| CertifierError::Config(format!("{}: {e}", path.display())))
    }

    pub fn validate(&self) -> Result<(), CertifierError> {
        let bad = |m: &str| Err(CertifierError::Config(m.to_owned()));
        if self.max_message_bytes < 4096 {
            return bad("max_message_bytes must be at least 4096");
        }
        if self.max_writeset_bytes == 0
            || self.max_writeset_bytes > u64::from(u32::MAX) - 2 * HEADER_LEN as u64
        {
            return bad("max_writeset_bytes must be between 1 and 4 GiB");
        }
        if self.window_max_entries == 0 || self.window_max_versions == 0 {
            return bad("window_max_entries and window_max_versions must be positive");
        }
        if self.wal_segment_bytes < 4096 {
            return bad("wal_segment_bytes must be at least 4096");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert and tls_key must be set together");
        }
        if self.raft_snapshot_entries == 0 {
            return bad("raft_snapshot_entries must be positive");
        }
        // Keepalive starts after half of it, in whole seconds, and the
        // kernel takes at most 32767 s.
        if self.silent_peer_timeout_ms != 0
            && !(2_000..=3_600_000).contains(&self.silent_peer_timeout_ms)
        {
            return bad("silent_peer_timeout_ms must be 0 (off) or between 2000 and 3600000");
        }
        if self.log_stall_timeout_ms != 0 && !(100..=3_600_000).contains(&self.log_stall_timeout_ms)
        {
            return bad("log_stall_timeout_ms must be 0 (off) or between 100 and 3600000");
        }
        if self.worker_threads > MAX_WORKER_THREADS {
            return bad(&format!(
                "worker_threads must be at most {MAX_WORKER_THREADS} (0: half the cores)"
            ));
        }
        match (self.node_id, &self.peers) {
            (None, None) => {}
            (Some(id), Some(peers)) => {
                if !parse_peers(peers)?.contains_key(&id) {
                    return bad("node_id must be one of the peers");
                }
                if self.max_writeset_bytes > crate::raft::parts::PENDING_MAX_BYTES as u64 {
                    // Its chunks would be dropped as too many in progress
                    // before its last one came (`raft::chunks`).
                    return bad("a raft node takes max_writeset_bytes up to 1 GiB");
                }
            }
            _ => return bad("node_id and peers must be set together"),
        }
        if self.peer_tls_ca.is_some() && (self.node_id.is_none() || self.tls_cert.is_none()) {
            return bad("peer_tls_ca needs node_id, peers and tls_cert");
        }
        if let Some(routes) = &self.peer_routes {
            if self.node_id.is_none() {
                return bad("peer_routes needs node_id and peers");
            }
            parse_peers(routes)?;
        }
        Ok(())
    }

    pub fn limits(&self) -> Limits {
        Limits {
            window: WindowLimits {
                max_entries: self.window_max_entries,
                max_versions: self.window_max_versions,
            },
            max_dedupe: self.dedupe_max_entries,
        }
    }

    /// Largest WAL record: a maximal writeset plus the record header (the
    /// encoding of the assembled writeset is never larger than its chunks).
    pub fn max_record_bytes(&self) -> u64 {
        self.max_writeset_bytes + HEADER_LEN as u64
    }

    /// What a node with TLS trusts of its peers, as their server and as
    /// their client: `peer_tls_ca`, else its own `tls_cert` file. `None`
    /// without TLS.
    pub fn peers_ca(&self) -> Option<&Path> {
        let cert = self.tls_cert.as_deref()?;
        Some(self.peer_tls_ca.as_deref().unwrap_or(cert))
    }

    /// The spool log's options: chunks are at most one message.
    pub fn spool_options(&self) -> WalOptions {
        WalOptions {
            max_record_size: self.max_message_bytes as u64 + 8,
            ..self.wal_options()
        }
    }

    pub fn wal_options(&self) -> WalOptions {
        WalOptions {
            backend: match self.wal_backend {
                // A raft node runs two logs (raft, versions) beside two
                // others on the same cores: pwrite + fdatasync in each
                // log's writer thread costs less CPU than io_uring, whose
                // fdatasync runs on a kernel worker thread of its own.
                // Measured (docs/performance-history.md): MW
                // with three nodes 15 % faster under pgbench, while one
                // certifier is ~10 % faster on io_uring.
                WalBackend::Auto if self.node_id.is_some() => Backend::Portable,
                WalBackend::Auto => Backend::Auto,
                WalBackend::IoUring => Backend::IoUring,
                WalBackend::Portable => Backend::Portable,
            },
            segment_size: self.wal_segment_bytes,
            max_record_size: self.max_record_bytes(),
            stall_timeout: (self.log_stall_timeout_ms != 0)
                .then(|| std::time::Duration::from_millis(self.log_stall_timeout_ms)),
            ..WalOptions::default()
        }
    }
}

/// Command-line flags of the certifier; each overrides the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CertifierArgs {
    /// TOML file whose `[certifier]` section holds the settings.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// gRPC listen address (port 0: any free port; the bound address is
    /// printed as "listening on ADDR").
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// WAL directory.
    #[arg(long, value_name = "DIR")]
    pub wal_dir: Option<PathBuf>,
    /// WAL I/O backend.
    #[arg(long, value_enum)]
    pub wal_backend: Option<WalBackend>,
    /// Preallocated size of each WAL segment (default 64 MiB).
    #[arg(long, value_name = "BYTES")]
    pub wal_segment_bytes: Option<u64>,
    /// Largest gRPC message, each way (default 16 MiB).
    #[arg(long, value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Largest writeset, summed over its chunks (default 256 MiB).
    #[arg(long, value_name = "BYTES")]
    pub max_writeset_bytes: Option<u64>,
    /// Conflict window bound in key entries (default 4M).
    #[arg(long, value_name = "N")]
    pub window_max_entries: Option<usize>,
    /// Conflict window bound in versions (default 1M).
    #[arg(long, value_name = "N")]
    pub window_max_versions: Option<usize>,
    /// Transaction ids remembered for idempotent retries (default 100k;
    /// an older retry is looked up in the WAL).
    #[arg(long, value_name = "N")]
    pub dedupe_max_entries: Option<usize>,
    /// Recent committed records cached for subscribers (default 16 MiB).
    #[arg(long, value_name = "BYTES")]
    pub tail_cache_bytes: Option<usize>,
    /// Log purge does not wait for a replica silent this long, and does
    /// nothing this soon after start (default 30000).
    #[arg(long, value_name = "MS")]
    pub purge_replica_timeout_ms: Option<u64>,
    /// Drop an accepted connection whose peer acknowledges nothing this
    /// long (default 30000; 0: off).
    #[arg(long, value_name = "MS")]
    pub silent_peer_timeout_ms: Option<u64>,
    /// Fail a log whose write, fdatasync or directory sync has not
    /// returned this long, as an I/O error would (a hung disk; default
    /// 10000; 0: off).
    #[arg(long, value_name = "MS")]
    pub log_stall_timeout_ms: Option<u64>,
    /// Worker threads of the process's runtime (default 0: half the
    /// cores, at least one, or TOKIO_WORKER_THREADS when set).
    #[arg(long, value_name = "N")]
    pub worker_threads: Option<usize>,
    /// Serve Prometheus metrics on ADDR (`GET /metrics`; default: off).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// PEM certificate chain: serve gRPC over TLS only (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Run as node N of a replicated certifier (with --peers).
    #[arg(long, value_name = "N")]
    pub node_id: Option<u64>,
    /// Every node of the replicated certifier: 1=HOST:PORT,2=HOST:PORT,...
    /// (this node listens on its own entry).
    #[arg(long, value_name = "LIST")]
    pub peers: Option<String>,
    /// Send raft messages for these peers to these addresses instead of
    /// their --peers entry: 2=HOST:PORT,3=HOST:PORT.
    #[arg(long, value_name = "LIST")]
    pub peer_routes: Option<String>,
    /// PEM certificates a raft node trusts when it connects to its peers
    /// over TLS (default: --tls-cert itself).
    #[arg(long, value_name = "FILE")]
    pub peer_tls_ca: Option<PathBuf>,
}

impl CertifierArgs {
    /// The file's settings (or the defaults) with the flags applied, validated.
    pub fn resolve(&self) -> Result<CertifierConfig, CertifierError> {
        let mut c = match &self.config {
            Some(p) => CertifierConfig::load(p)?,
            None => CertifierConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => {$( if let Some(v) = self.$f.clone() { c.$f = v; } )*};
        }
        set!(
            listen,
            wal_dir,
            wal_backend,
            wal_segment_bytes,
            max_message_bytes,
            max_writeset_bytes,
            window_max_entries,
            window_max_versions,
            dedupe_max_entries,
            tail_cache_bytes,
            purge_replica_timeout_ms,
            silent_peer_timeout_ms,
            log_stall_timeout_ms,
            worker_threads
        );
        if self.metrics_listen.is_some() {
            c.metrics_listen = self.metrics_listen;
        }
        if self.tls_cert.is_some() {
            c.tls_cert = self.tls_cert.clone();
        }
        if self.tls_key.is_some() {
            c.tls_key = self.tls_key.clone();
        }
        if self.node_id.is_some() {
            c.node_id = self.node_id;
        }
        if self.peers.is_some() {
            c.peers = self.peers.clone();
        }
        if self.peer_routes.is_some() {
            c.peer_routes = self.peer_routes.clone();
        }
        if self.peer_tls_ca.is_some() {
            c.peer_tls_ca = self.peer_tls_ca.clone();
        }
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: CertifierArgs,
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        std::fs::write(
            &path,
            "[proxy]\nx = 1\n[certifier]\nlisten = \"0.0.0.0:9000\"\nwal_dir = \"/w\"\n\
             wal_backend = \"portable\"\nwindow_max_versions = 10\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "x",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--max-writeset-bytes",
            "1000000",
        ]);
        let c = cli.args.resolve().unwrap();
        assert_eq!(c.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.wal_dir, PathBuf::from("/w"));
        assert_eq!(c.wal_backend, WalBackend::Portable);
        assert_eq!(c.window_max_versions, 10);
        assert_eq!(c.max_writeset_bytes, 1_000_000);
        assert_eq!(c.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
    }

    #[test]
    fn the_silent_peer_timeout_is_off_or_within_what_the_kernel_takes() {
        let cli = Cli::parse_from(["x", "--silent-peer-timeout-ms", "5000"]);
        assert_eq!(cli.args.resolve().unwrap().silent_peer_timeout_ms, 5000);
        for ms in [0, 2_000, 30_000, 3_600_000] {
            let c = CertifierConfig {
                silent_peer_timeout_ms: ms,
                ..CertifierConfig::default()
            };
            assert!(c.validate().is_ok(), "{ms}");
        }
        for ms in [1, 1_999, 3_600_001] {
            let c = CertifierConfig {
                silent_peer_timeout_ms: ms,
                ..CertifierConfig::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("silent_peer_timeout_ms"), "{ms}: {e}");
        }
    }

    #[test]
    fn worker_threads_come_from_the_flag_or_file_and_are_bounded() {
        let cli = Cli::parse_from(["x", "--worker-threads", "3"]);
        assert_eq!(cli.args.resolve().unwrap().worker_threads, 3);
        let file = CertifierConfig::from_toml_str("[certifier]\nworker_threads = 2\n").unwrap();
        assert_eq!(file.worker_threads, 2);
        assert_eq!(
            CertifierConfig::default().worker_threads,
            0,
            "half the cores"
        );
        let many = CertifierConfig {
            worker_threads: MAX_WORKER_THREADS + 1,
            ..CertifierConfig::default()
        };
        let e = many.validate().unwrap_err().to_string();
        assert!(e.contains("worker_threads"), "{e}");
    }

    #[test]
    fn the_log_stall_timeout_is_off_or_bounded_and_reaches_every_log() {
        let cli = Cli::parse_from(["x", "--log-stall-timeout-ms", "2500"]);
        let c = cli.args.resolve().unwrap();
        assert_eq!(c.log_stall_timeout_ms, 2500);
        assert_eq!(
            c.spool_options().stall_timeout,
            Some(std::time::Duration::from_millis(2500))
        );
        let off = CertifierConfig {
            log_stall_timeout_ms: 0,
            ..CertifierConfig::default()
        };
        assert_eq!(off.wal_options().stall_timeout, None);
        for ms in [0, 100, 10_000, 3_600_000] {
            let c = CertifierConfig {
                log_stall_timeout_ms: ms,
                ..CertifierConfig::default()
            };
            assert!(c.validate().is_ok(), "{ms}");
        }
        for ms in [1, 99, 3_600_001] {
            let c = CertifierConfig {
                log_stall_timeout_ms: ms,
                ..CertifierConfig::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("log_stall_timeout_ms"), "{ms}: {e}");
        }
    }

    #[test]
    fn tls_needs_certificate_and_key_together() {
        let c = CertifierConfig::from_toml_str(
            "[certifier]\ntls_cert = \"/t/c.pem\"\ntls_key = \"/t/k.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.tls_cert, Some(PathBuf::from("/t/c.pem")));
        assert_eq!(c.tls_key, Some(PathBuf::from("/t/k.pem")));
        c.validate().unwrap();
        // A certificate without its key (or the other way round) is refused,
        // from the file and from the flags.
        let half =
            CertifierConfig::from_toml_str("[certifier]\ntls_cert = \"/t/c.pem\"\n").unwrap();
        let err = half.validate().unwrap_err().to_string();
        assert!(err.contains("tls_cert and tls_key"), "{err}");
        let half = CertifierConfig {
            tls_cert: None,
            ..c.clone()
        };
        assert!(half.validate().is_err());
        assert!(Cli::try_parse_from(["x", "--tls-cert", "c.pem"]).is_err());
        let cli = Cli::parse_from(["x", "--tls-cert", "c.pem", "--tls-key", "k.pem"]);
        let c = cli.args.resolve().unwrap();
        assert_eq!(
            (c.tls_cert, c.tls_key),
            (Some("c.pem".into()), Some("k.pem".into()))
        );
        // Round trip through the file a certifier process is started with;
        // without TLS nothing is written for it.
        let c = CertifierConfig {
            tls_cert: Some("/t/c.pem".into()),
            tls_key: Some("/t/k.pem".into()),
            ..CertifierConfig::default()
        };
        let text = format!("[certifier]\n{}", toml::to_string(&c).unwrap());
        assert_eq!(CertifierConfig::from_toml_str(&text).unwrap(), c);
        let text = toml::to_string(&CertifierConfig::default()).unwrap();
        assert!(!text.contains("tls_"), "{text}");
    }

    #[test]
    fn auto_means_portable_on_a_raft_node_and_a_choice_stands() {
        let single = CertifierConfig::default();
        assert_eq!(single.wal_options().backend, Backend::Auto);
        let node = CertifierConfig {
            node_id: Some(1),
            ..CertifierConfig::default()
        };
        assert_eq!(node.wal_options().backend, Backend::Portable);
        assert_eq!(node.spool_options().backend, Backend::Portable);
        let chosen = CertifierConfig {
            wal_backend: WalBackend::IoUring,
            ..node
        };
        assert_eq!(chosen.wal_options().backend, Backend::IoUring);
    }

    #[test]
    fn a_raft_node_needs_its_id_among_the_peers() {
        let cli = Cli::parse_from([
            "x",
            "--node-id",
            "2",
            "--peers",
            "1=127.0.0.1:7401, 2=127.0.0.1:7402,3=h:7403",
        ]);
        let c = cli.args.resolve().unwrap();
        assert_eq!(c.node_id, Some(2));
        let peers = parse_peers(c.peers.as_deref().unwrap()).unwrap();
        assert_eq!(peers[&2], "127.0.0.1:7402");
        assert_eq!(peers.len(), 3);
        let c =
            CertifierConfig::from_toml_str("[certifier]\nnode_id = 4\npeers = \"1=a:1,2=b:2\"\n")
                .unwrap();
        assert!(c.validate().is_err());
        assert!(Cli::parse_from(["x", "--node-id", "1"])
            .args
            .resolve()
            .is_err());
        let formatted = format_peers(["a:1", "b:2"]);
        assert_eq!(formatted, "1=a:1,2=b:2");
        assert_eq!(parse_peers(&formatted).unwrap()[&2], "b:2");
        assert!(parse_peers("1=a:1,1=b:2").is_err());
        assert!(parse_peers("x=a:1").is_err());
        assert!(parse_peers("1=nohost").is_err());
    }

    #[test]
    fn peer_routes_belong_to_a_raft_node_and_parse_like_peers() {
        let peers = "1=a:1,2=b:2,3=c:3";
        let c = Cli::parse_from([
            "x",
            "--node-id",
            "1",
            "--peers",
            peers,
            "--peer-routes",
            "2=relay:9002,3=relay:9003",
        ])
        .args
        .resolve()
        .unwrap();
        assert_eq!(
            parse_peers(c.peer_routes.as_deref().unwrap()).unwrap()[&3],
            "relay:9003"
        );
        assert!(Cli::parse_from(["x", "--peer-routes", "2=relay:9002"])
            .args
            .resolve()
            .is_err());
        let node = format!("[certifier]\nnode_id = 1\npeers = \"{peers}\"\n");
        // TLS to the peers needs a certificate of one's own.
        let ca_alone = format!("{node}peer_tls_ca = \"ca.pem\"\n");
        assert!(CertifierConfig::from_toml_str(&ca_alone)
            .unwrap()
            .validate()
            .is_err());
        let with_cert = format!("{ca_alone}tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n");
        CertifierConfig::from_toml_str(&with_cert)
            .unwrap()
            .validate()
            .unwrap();
        let bad = format!("{node}peer_routes = \"2\"\n");
        assert!(CertifierConfig::from_toml_str(&bad)
            .unwrap()
            .validate()
            .is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(CertifierConfig::from_toml_str("[certifier]\nlisten_addr = \"x\"\n").is_err());
        let c = CertifierConfig {
            max_message_bytes: 10,
            ..CertifierConfig::default()
        };
        assert!(c.validate().is_err());
        assert_eq!(
            CertifierConfig::from_toml_str("").unwrap(),
            CertifierConfig::default()
        );
    }
}
