//! The state directory of a local cluster (`tashkent up`): the one owner
//! of its layout. Everything that finds a replica, the certifier's log, a
//! checkpoint or a port of a local cluster asks this type.
//!
//! ```text
//! <state>/replica-<i>/      harness base directory of replica i (1-based)
//!         replica-<i>/data  its PostgreSQL data directory
//! <state>/certifier-wal/    the certifier's log (and spool/ inside it)
//! <state>/certifier-<n>/    node n's directory of a replicated certifier
//!                           (`[cluster] certifiers` > 1): its versions log,
//!                           spool/ and raft/ (see tashkent-certifier's
//!                           server/node.rs)
//! <state>/certifier-<n>.toml  settings of node n when it runs as a process
//! <state>/checkpoints/      checkpoints (`[checkpoint] dir`, relative to <state>)
//! <state>/ports.json        ports chosen at the first start, kept for the next
//! <state>/seeded.json       present while node 1 may hold the only copy of the
//!                           versions a single certifier's log seeded it with:
//!                           `{"first": <version>, "latest": <version>}`
//!                           ([`StateDir::record_seeded`])
//! <state>/proxy-<i>.toml    settings of proxy i when it runs as a process
//! <state>/certifier.toml    settings of the certifier when it runs as a process
//! <state>/tls/server.crt    the proxies' self-signed certificate (PEM), generated
//!                           at the first start unless the cluster file names one;
//!                           with `[cluster] certifier_tls` the certifier's too
//! <state>/tls/server.key    its private key (PEM, mode 0600)
//! <state>/tls/certifier-ca.crt  present exactly while the cluster's certifier
//!                           serves TLS: the certificate(s) its clients trust (PEM;
//!                           a copy of server.crt, or of `[proxy] certifier_tls_ca`),
//!                           written at every start, removed by a start without TLS;
//!                           tools given `--state-dir` use it
//! ```
//!
//! `ports.json` is a JSON object `{"certifier": <port>, "proxies": [<port>, ...],
//! "certifier_metrics": <port>, "proxy_metrics": [<port>, ...],
//! "certifier_nodes": [<port>, ...], "certifier_node_metrics": [<port>, ...]}`
//! (one proxy per replica, replica 1 first; the metrics ports are absent in
//! a state directory from before metrics; `certifier_nodes` and their
//! metrics ports, node 1 first, only with a replicated certifier, whose
//! nodes then replace `certifier`), written by
//! [`StateDir::write_ports`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The versions of a single certifier's log that became node 1's
/// (`cluster/seed.rs`), which the other nodes copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeededVersions {
    pub first: u64,
    pub latest: u64,
}

/// Ports a local cluster chose at its first start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    pub certifier: u16,
    pub proxies: Vec<u16>,
    /// Where the certifier serves metrics (0: not chosen yet).
    #[serde(default)]
    pub certifier_metrics: u16,
    /// Where each proxy serves metrics, replica 1 first.
    #[serde(default)]
    pub proxy_metrics: Vec<u16>,
    /// A replicated certifier: where each node listens, node 1 first
    /// (empty: a single certifier on `certifier`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certifier_nodes: Vec<u16>,
    /// Where each node of a replicated certifier serves metrics, node 1
    /// first (absent: not chosen yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certifier_node_metrics: Vec<u16>,
}

/// What a certifier node's directory is named by, before its id.
const NODE_DIR_PREFIX: &str = "certifier-";

/// The certifier whose log a state directory holds
/// ([`StateDir::certifier_held`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertifierHeld {
    /// Neither yet: a first start.
    None,
    /// `certifier-wal/`: a single certifier.
    Single,
    /// `certifier-1/` … `certifier-<n>/`: a replicated certifier.
    Nodes(u32),
    /// Both (a directory started both ways before starts were checked).
    Both(u32),
}

/// A local cluster's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: &Path) -> StateDir {
        StateDir {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The harness base directory of replica `id` (1-based).
    pub fn replica_base(&self, id: u32) -> PathBuf {
        self.root.join(format!("replica-{id}"))
    }

    /// The certifier's WAL directory.
    pub fn certifier_wal(&self) -> PathBuf {
        self.root.join("certifier-wal")
    }

    /// Where checkpoints go: `dir` under the state directory (an absolute
    /// `dir` stays as it is).
    pub fn checkpoints(&self, dir: &Path) -> PathBuf {
        self.root.join(dir)
    }

    /// The `[proxy]` file a proxy process of replica `id` is started with.
    pub fn proxy_config_file(&self, id: u32) -> PathBuf {
        self.root.join(format!("proxy-{id}.toml"))
    }

    /// The `[certifier]` file a certifier process is started with.
    pub fn certifier_config_file(&self) -> PathBuf {
        self.root.join("certifier.toml")
    }

    /// Node `id`'s directory of a replicated certifier (1-based).
    pub fn certifier_node_dir(&self, id: u32) -> PathBuf {
        self.root.join(format!("{NODE_DIR_PREFIX}{id}"))
    }

    /// Which certifier this state directory holds the log of: a single
    /// certifier's (`certifier-wal/` holds a log), or a replicated one's
    /// of N nodes, N as `ports.json` keeps their ports (the group's
    /// membership), else the highest `certifier-<n>/` that holds a log (a
    /// wiped node's may be missing), or neither yet. A directory that
    /// holds no log yet (made for a mount before a first start) counts
    /// for nothing.
    pub fn certifier_held(&self) -> Result<CertifierHeld> {
        let kept = self.ports()?.certifier_nodes.len() as u32;
        let highest = std::fs::read_dir(&self.root)
            .map_err(Error::io(format!("reading {}", self.root.display())))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                name.to_str()?
                    .strip_prefix(NODE_DIR_PREFIX)?
                    .parse::<u32>()
                    .ok()
            })
            .filter(|id| tashkent_wal::holds_segments(&self.certifier_node_dir(*id)))
            .max()
            .unwrap_or(0);
        let nodes = if kept > 0 { kept } else { highest };
        let single = tashkent_wal::holds_segments(&self.certifier_wal());
        Ok(match (single, nodes) {
            (false, 0) => CertifierHeld::None,
            (true, 0) => CertifierHeld::Single,
            (false, n) => CertifierHeld::Nodes(n),
            (true, n) => CertifierHeld::Both(n),
        })
    }

    /// Settings of node `id` when it runs as a process.
    pub fn certifier_node_config_file(&self, id: u32) -> PathBuf {
        self.root.join(format!("certifier-{id}.toml"))
    }

    /// The proxies' self-signed certificate (PEM).
    pub fn tls_cert(&self) -> PathBuf {
        self.root.join("tls").join("server.crt")
    }

    /// The private key of [`StateDir::tls_cert`] (PEM).
    pub fn tls_key(&self) -> PathBuf {
        self.root.join("tls").join("server.key")
    }

    /// What the certifier's clients trust while it serves TLS (PEM); see
    /// [`StateDir::certifier_tls_ca_in_use`].
    pub fn certifier_tls_ca(&self) -> PathBuf {
        self.root.join("tls").join("certifier-ca.crt")
    }

    /// [`StateDir::certifier_tls_ca`] when the cluster's certifier serves
    /// TLS (the file is there), `None` when it speaks plaintext.
    pub fn certifier_tls_ca_in_use(&self) -> Option<PathBuf> {
        let ca = self.certifier_tls_ca();
        ca.exists().then_some(ca)
    }

    /// Records that the certifier serves TLS, its clients trusting the
    /// PEM `ca` (copied), or (`None`) that it speaks plaintext.
    pub fn record_certifier_tls(&self, ca: Option<&Path>) -> Result<()> {
        let record = self.certifier_tls_ca();
        match ca {
            Some(ca) => {
                let pem =
                    std::fs::read(ca).map_err(Error::io(format!("reading {}", ca.display())))?;
                let dir = self.root.join("tls");
                std::fs::create_dir_all(&dir)
                    .map_err(Error::io(format!("creating {}", dir.display())))?;
                // Through a rename: a tool never reads half a file.
                let tmp = record.with_extension("tmp");
                std::fs::write(&tmp, pem)
                    .and_then(|()| std::fs::rename(&tmp, &record))
                    .map_err(Error::io(format!("writing {}", record.display())))
            }
            None => match std::fs::remove_file(&record) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
                    context: format!("removing {}", record.display()),
                    source: e,
                }),
                _ => Ok(()),
            },
        }
    }

    fn ports_file(&self) -> PathBuf {
        self.root.join("ports.json")
    }

    /// The ports of the first start (none yet: all 0).
    pub fn ports(&self) -> Result<Ports> {
        match std::fs::read(self.ports_file()) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Config(format!("{}: {e}", self.ports_file().display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ports::default()),
            Err(e) => Err(Error::Io {
                context: format!("reading {}", self.ports_file().display()),
                source: e,
            }),
        }
    }

    /// Keeps `ports`, whole or not at all after a crash (a node's
    /// membership names them, so a torn file would stop every later start).
    pub fn write_ports(&self, ports: &Ports) -> Result<()> {
        let json = serde_json::to_vec_pretty(ports).expect("ports serialise");
        crate::ops::write_atomically(&self.ports_file(), &json)
    }

    fn seeded_file(&self) -> PathBuf {
        self.root.join("seeded.json")
    }

    /// The versions node 1 was seeded with, while not every node is known
    /// to hold them.
    pub fn seeded(&self) -> Result<Option<SeededVersions>> {
        let file = self.seeded_file();
        match std::fs::read(&file) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Config(format!("{}: {e}", file.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io {
                context: format!("reading {}", file.display()),
                source: e,
            }),
        }
    }

    /// Records `seeded` durably (written aside and renamed), or with
    /// `None` forgets it.
    pub fn record_seeded(&self, seeded: Option<&SeededVersions>) -> Result<()> {
        let file = self.seeded_file();
        let Some(v) = seeded else {
            return match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
                    context: format!("removing {}", file.display()),
                    source: e,
                }),
                _ => crate::ops::sync_dir(&self.root),
            };
        };
        let json = serde_json::to_vec(v).expect("versions serialise");
        crate::ops::write_atomically(&file, &json)
    }

    /// The ports of a cluster that has started before.
    fn started_ports(&self) -> Result<Ports> {
        let ports = self.ports()?;
        if ports.proxies.is_empty() {
            return Err(Error::Config(format!(
                "{} has no ports.json: has the cluster ever started?",
                self.root.display()
            )));
        }
        Ok(ports)
    }

    /// The certifier's address; a replicated certifier's as a list,
    /// `a,b,c` (what clients and `--certifier` take).
    pub fn certifier_addr(&self) -> Result<String> {
        let ports = self.started_ports()?;
        if !ports.certifier_nodes.is_empty() {
            let nodes: Vec<String> = ports
                .certifier_nodes
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect();
            return Ok(nodes.join(","));
        }
        Ok(format!("127.0.0.1:{}", ports.certifier))
    }

    /// How many replicas the cluster has.
    pub fn replicas(&self) -> Result<u32> {
        Ok(self.started_ports()?.proxies.len() as u32)
    }

    /// The port of replica `id`'s running server (from its
    /// `postmaster.pid`).
    pub fn running_port(&self, id: u32) -> Result<u16> {
        let data = self.replica_base(id).join("data");
        let not_running = || {
            Error::Recovery(format!(
                "replica {id} is not running (no live postmaster in {})",
                data.display()
            ))
        };
        if crate::ops::recover::running_postmaster(&data).is_none() {
            return Err(not_running());
        }
        let text =
            std::fs::read_to_string(data.join("postmaster.pid")).map_err(|_| not_running())?;
        // Line 4 of postmaster.pid is the port.
        text.lines()
            .nth(3)
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(not_running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_round_trip_and_a_new_directory_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::new(dir.path());
        assert_eq!(s.ports().unwrap(), Ports::default());
        assert!(s.replicas().is_err());
        let ports = Ports {
            certifier: 7400,
            proxies: vec![6432, 6433],
            certifier_metrics: 9400,
            proxy_metrics: vec![9401, 9402],
            certifier_nodes: vec![],
            certifier_node_metrics: vec![],
        };
        s.write_ports(&ports).unwrap();
        assert_eq!(s.ports().unwrap(), ports);
        assert_eq!(s.replicas().unwrap(), 2);
        assert_eq!(s.certifier_addr().unwrap(), "127.0.0.1:7400");
        // A replicated certifier: every node, as a list.
        let nodes = Ports {
            certifier_nodes: vec![7401, 7402, 7403],
            certifier_node_metrics: vec![9401, 9402, 9403],
            ..ports.clone()
        };
        s.write_ports(&nodes).unwrap();
        assert_eq!(
            s.certifier_addr().unwrap(),
            "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403"
        );
        s.write_ports(&ports).unwrap();
        // A state directory from before metrics still reads.
        std::fs::write(
            dir.path().join("ports.json"),
            r#"{"certifier": 7400, "proxies": [6432]}"#,
        )
        .unwrap();
        assert_eq!(s.ports().unwrap().proxy_metrics, Vec::<u16>::new());
        s.write_ports(&ports).unwrap();
        assert_eq!(s.certifier_addr().unwrap(), "127.0.0.1:7400");
        assert_eq!(s.replica_base(2), dir.path().join("replica-2"));
        assert_eq!(s.checkpoints(Path::new("/abs")), Path::new("/abs"));
    }

    #[test]
    fn certifier_tls_is_recorded_while_on_and_gone_when_off() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::new(&dir.path().join("state"));
        assert_eq!(s.certifier_tls_ca_in_use(), None);
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        s.record_certifier_tls(Some(&ca)).unwrap();
        let recorded = s.certifier_tls_ca_in_use().expect("recorded");
        assert_eq!(
            std::fs::read(recorded).unwrap(),
            std::fs::read(&ca).unwrap()
        );
        s.record_certifier_tls(None).unwrap();
        assert_eq!(s.certifier_tls_ca_in_use(), None);
        // Off twice is still off.
        s.record_certifier_tls(None).unwrap();
    }

    #[test]
    fn seeded_versions_are_kept_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::new(dir.path());
        assert_eq!(s.seeded().unwrap(), None);
        let v = SeededVersions {
            first: 3,
            latest: 20_505,
        };
        s.record_seeded(Some(&v)).unwrap();
        assert_eq!(s.seeded().unwrap(), Some(v));
        assert!(!dir.path().join("seeded.tmp").exists());
        s.record_seeded(None).unwrap();
        assert_eq!(s.seeded().unwrap(), None);
        s.record_seeded(None).unwrap();
        std::fs::write(dir.path().join("seeded.json"), b"{").unwrap();
        assert!(
            s.seeded().is_err(),
            "a damaged record is an error, not forgotten"
        );
    }
}
