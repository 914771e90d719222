//! The proxy's settings: TOML section `[proxy]` and command-line flags
//! (flags override the file).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tashkent_certifier::{ClientOptions, ClientTls};

use crate::error::{Error, Result};
use crate::proxy::wire::DEFAULT_MAX_MESSAGE_LEN;

/// Everything one proxy needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// This replica's id, 1..=replicas (also its sequences' residue).
    pub replica_id: u32,
    /// Number of replicas in the cluster (the sequences' stride).
    pub replicas: u32,
    /// Where clients connect (port 0: any free port).
    pub listen: SocketAddr,
    /// The replica's PostgreSQL: a host name or address, or (starting
    /// with `/`, as in libpq) the directory of its Unix socket.
    pub pg_host: String,
    pub pg_port: u16,
    /// The replicated database; clients asking for another are refused.
    pub database: String,
    /// Superuser the proxy itself uses (capture install, applier).
    pub admin_user: String,
    /// The certifier's gRPC address (`host:port`, or `https://host:port`
    /// with `certifier_tls_ca`); a replicated certifier's nodes as a list,
    /// `a,b,c` (certifications follow the leader, see
    /// `tashkent_certifier::client`).
    pub certifier: String,
    /// PEM file of the certificate(s) to trust for the certifier's TLS:
    /// its CA, or its self-signed certificate. Set: the proxy reaches the
    /// certifier over TLS only (the certifier has `tls_cert`); unset:
    /// plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certifier_tls_ca: Option<PathBuf>,
    /// The name the certifier's certificate must be valid for; unset: the
    /// host of `certifier` (an IP address must then be in the
    /// certificate as an IP address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certifier_tls_name: Option<String>,
    /// Largest protocol message accepted from a client.
    pub max_message_bytes: usize,
    /// How long startup waits for the certifier.
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    /// Most versions the applier commits in one replica transaction when
    /// several are waiting (catching up); 1 commits each on its own.
    pub max_apply_batch: usize,
    /// Largest writeset (captured changes of one transaction) accepted;
    /// larger transactions fail with 54000 before certification. Must not
    /// exceed the certifier's `max_writeset_bytes`.
    pub max_writeset_bytes: u64,
    /// Where Prometheus metrics are served (`GET /metrics`); none: off.
    /// Port 0 picks a free port (printed at start as "metrics on ADDR").
    pub metrics_listen: Option<SocketAddr>,
    /// PEM file of the certificate chain clients are shown (leaf first).
    /// With `tls_key`, an SSLRequest is answered `S` and the connection
    /// continues over TLS; without, it is answered `N`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Refuse a StartupMessage that did not come over TLS (`28000`), as a
    /// `hostssl`-only pg_hba.conf does. CancelRequests stay accepted in
    /// plaintext: libpq before PostgreSQL 17 always sends them so.
    pub tls_required: bool,
    /// How long a client may take from connecting to being authenticated
    /// (startup packet, TLS handshake, authentication exchange), as
    /// PostgreSQL's `authentication_timeout`; then the connection closes.
    #[serde(with = "secs")]
    pub authentication_timeout: Duration,
    /// Whether clients may log in as `admin_user`. With password
    /// authentication on the replicas, the admin user is trusted on the
    /// replica's socket (the proxy's own connections need that), and client
    /// sessions are relayed over the same socket: false closes that door
    /// (28000).
    pub allow_admin_login: bool,
    /// The consistency level sessions start with (`tashkent.consistency`:
    /// eventual, causal, strong; see `proxy::consistency`).
    pub consistency: crate::proxy::consistency::Level,
    /// Longest a transaction waits for its replica to apply what its
    /// level asks for (`tashkent.consistency_timeout`); then 57014.
    #[serde(with = "secs")]
    pub consistency_timeout: Duration,
    /// After a transaction lost (40001), the session's next one waits
    /// until the replica has applied the version it lost to, so that a
    /// replica whose apply trails does not lose every race on a hot row
    /// (best effort under `eventual`: at most 2 s); and a session that
    /// keeps losing on a row takes part in the certifier's fair turns on
    /// it (see tashkent-certifier's `turns`): it is queued, and its retry
    /// waits for its turn.
    pub fair_retries: bool,
    /// Whether rows a transaction locks `FOR UPDATE` / `FOR NO KEY
    /// UPDATE` are conflict keys of it, like rows it writes, so a lock
    /// excludes concurrent lockers and writers on every replica (the
    /// sessions' default of `tashkent.lock_conflicts`).
    pub lock_conflicts: bool,
    /// Acknowledge a COMMIT only once the replica's WAL is flushed past
    /// its commit record (Tashkent-API, `durability = "database-grouped"`:
    /// the replica commits with `synchronous_commit = off`, and one flush
    /// of the proxy's own covers every commit waiting; `proxy::flush`).
    pub ack_after_flush: bool,
    /// Worker threads of the `tashkent proxy` process's tokio runtime (`up`
    /// runs on this and the certifier's together); 0:
    /// half the cores, at least one, or `TOKIO_WORKER_THREADS` when set
    /// (`tashkent_certifier::runtime`). At most 1024.
    pub worker_threads: usize,
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        f64::deserialize(d).map(Duration::from_secs_f64)
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            replica_id: 1,
            replicas: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 6432)),
            pg_host: "127.0.0.1".into(),
            pg_port: 5432,
            database: "postgres".into(),
            admin_user: "postgres".into(),
            certifier: "127.0.0.1:7700".into(),
            certifier_tls_ca: None,
            certifier_tls_name: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_LEN,
            connect_timeout: Duration::from_secs(10),
            max_apply_batch: 500,
            max_writeset_bytes: crate::proxy::capture::DEFAULT_MAX_WRITESET_BYTES,
            metrics_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
            authentication_timeout: Duration::from_secs(60),
            allow_admin_login: true,
            consistency: crate::proxy::consistency::Level::Eventual,
            consistency_timeout: Duration::from_secs(10),
            fair_retries: true,
            lock_conflicts: true,
            ack_after_flush: false,
            worker_threads: 0,
        }
    }
}

impl ProxyConfig {
    pub fn validate(&self) -> Result<()> {
        if self.replicas == 0 || self.replica_id == 0 || self.replica_id > self.replicas {
            return Err(Error::Config(format!(
                "replica_id must be in 1..={} (replicas), got {}",
                self.replicas, self.replica_id
            )));
        }
        if self.max_apply_batch == 0 {
            return Err(Error::Config("max_apply_batch must be at least 1".into()));
        }
        if self.max_writeset_bytes < 4096 {
            return Err(Error::Config(
                "max_writeset_bytes must be at least 4096".into(),
            ));
        }
        if self.max_message_bytes < 1024 {
            return Err(Error::Config(
                "max_message_bytes must be at least 1024".into(),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(Error::Config(
                "tls_cert and tls_key must be set together".into(),
            ));
        }
        if self.tls_required && self.tls_cert.is_none() {
            return Err(Error::Config(
                "tls_required needs a certificate (tls_cert and tls_key)".into(),
            ));
        }
        if self.certifier_tls_name.is_some() && self.certifier_tls_ca.is_none() {
            return Err(Error::Config(
                "certifier_tls_name needs certifier_tls_ca (the certificate to trust)".into(),
            ));
        }
        if self.worker_threads > tashkent_certifier::config::MAX_WORKER_THREADS {
            return Err(Error::Config(format!(
                "worker_threads must be at most {} (0: half the cores)",
                tashkent_certifier::config::MAX_WORKER_THREADS
            )));
        }
        // PostgreSQL's own bounds for authentication_timeout.
        let timeout = self.authentication_timeout;
        if timeout < Duration::from_secs(1) || timeout > Duration::from_secs(600) {
            return Err(Error::Config(format!(
                "authentication_timeout must be between 1 and 600 seconds, got {}",
                timeout.as_secs_f64()
            )));
        }
        Ok(())
    }

    /// How the proxy reaches the certifier: TLS trusting
    /// `certifier_tls_ca` when it is set (read now: a missing or empty
    /// file fails the proxy's start).
    pub fn certifier_options(&self) -> Result<ClientOptions> {
        let tls = match &self.certifier_tls_ca {
            None => None,
            Some(ca) => {
                let tls = ClientTls::from_ca_file(ca).map_err(|source| Error::Certifier {
                    context: "certifier_tls_ca".into(),
                    source,
                })?;
                Some(match &self.certifier_tls_name {
                    Some(name) => tls.with_server_name(name),
                    None => tls,
                })
            }
        };
        Ok(ClientOptions {
            tls,
            // With several certifier nodes: how long a commit looks for
            // the leader before the client gets 08007.
            failover_timeout: self.connect_timeout,
            ..ClientOptions::default()
        })
    }

    /// libpq-style connection string for the proxy's own sessions.
    pub fn admin_conninfo(&self) -> String {
        format!(
            "host={} port={} user={} dbname={} application_name=tashkent-proxy",
            self.pg_host, self.pg_port, self.admin_user, self.database
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_checked() {
        let ok = ProxyConfig {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            tls_required: true,
            ..ProxyConfig::default()
        };
        ok.validate().unwrap();
        let half = ProxyConfig {
            tls_key: None,
            ..ok.clone()
        };
        assert!(half
            .validate()
            .unwrap_err()
            .to_string()
            .contains("together"));
        let no_cert = ProxyConfig {
            tls_required: true,
            ..ProxyConfig::default()
        };
        assert!(no_cert
            .validate()
            .unwrap_err()
            .to_string()
            .contains("tls_required"));
        for secs in [0.5, 601.0] {
            let c = ProxyConfig {
                authentication_timeout: Duration::from_secs_f64(secs),
                ..ProxyConfig::default()
            };
            assert!(c.validate().is_err(), "{secs}");
        }
    }

    #[test]
    fn certifier_tls_reads_the_ca_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        let plain = ProxyConfig::default();
        assert!(plain.certifier_options().unwrap().tls.is_none());
        let with_ca = ProxyConfig {
            certifier_tls_ca: Some(ca.clone()),
            ..ProxyConfig::default()
        };
        with_ca.validate().unwrap();
        // Missing, then not a certificate: errors that name the file.
        let err = with_ca.certifier_options().unwrap_err().to_string();
        assert!(err.contains("ca.crt"), "{err}");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let err = with_ca.certifier_options().unwrap_err().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        crate::ops::tls::ensure_self_signed(&ca, &dir.path().join("ca.key")).unwrap();
        let tls = with_ca.certifier_options().unwrap().tls.unwrap();
        assert_eq!(tls.server_name, None);
        let named = ProxyConfig {
            certifier_tls_name: Some("certifier.internal".into()),
            ..with_ca.clone()
        };
        let tls = named.certifier_options().unwrap().tls.unwrap();
        assert_eq!(tls.server_name.as_deref(), Some("certifier.internal"));
        // A name without a CA says nothing to anyone: refused.
        let name_only = ProxyConfig {
            certifier_tls_ca: None,
            ..named.clone()
        };
        assert!(name_only.validate().is_err());
        let text = toml::to_string(&named).unwrap();
        assert_eq!(toml::from_str::<ProxyConfig>(&text).unwrap(), named);
    }

    #[test]
    fn tls_settings_round_trip_through_toml() {
        let c = ProxyConfig {
            tls_cert: Some("/etc/t/c.pem".into()),
            tls_key: Some("/etc/t/k.pem".into()),
            tls_required: true,
            authentication_timeout: Duration::from_secs(5),
            ..ProxyConfig::default()
        };
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<ProxyConfig>(&text).unwrap(), c);
        // Without a certificate nothing is written for it.
        let text = toml::to_string(&ProxyConfig::default()).unwrap();
        assert!(!text.contains("tls_cert"), "{text}");
        assert_eq!(
            toml::from_str::<ProxyConfig>(&text).unwrap(),
            ProxyConfig::default()
        );
    }
}
