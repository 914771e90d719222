//! TLS between the certifier and its clients (the proxies, and the tools
//! that ask it for its status or report checkpoints): the server's
//! identity from `[certifier] tls_cert` and `tls_key`, and what a client
//! trusts ([`ClientTls`]). Between the nodes of a replicated certifier
//! the client shows a certificate too: a node's raft messages go out with
//! its own `tls_cert`, and a node accepts raft messages only from a
//! client whose certificate `peer_tls_ca` signed (`raft::service`).
//!
//! tonic's rustls transport with the ring provider, the provider of the
//! proxies' client-facing TLS too, so the build has one. A certifier with a
//! certificate speaks TLS only; a client with a [`ClientTls`] speaks TLS
//! only (its address may say `https://`, never `http://`). What is read
//! here is checked when it is read, so a bad file is an error at start
//! that names the file, not a failed handshake later.

use std::path::Path;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::error::CertifierError;

/// How long a TLS handshake may take, on either side: a peer that
/// connects and then says nothing (or speaks something else) must not
/// hold a connection, or a starting proxy, forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client trusts when it connects to the certifier over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM certificates to trust: the CA that signed the certifier's
    /// certificate, or (self-signed) that certificate itself.
    pub ca_pem: Vec<u8>,
    /// The name the certifier's certificate must be valid for; `None`:
    /// the host of the address it is reached at (a name, or an IP address,
    /// which the certificate must then list as an IP address).
    pub server_name: Option<String>,
    /// The certificate this client shows (a certifier node to its peers).
    pub identity: Option<ClientIdentity>,
}

/// A client certificate chain and its private key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.write_str("ClientIdentity(..)")
    }
}

impl ClientTls {
    /// Trusts the PEM certificates of `path` (at least one).
    pub fn from_ca_file(path: &Path) -> Result<ClientTls, CertifierError> {
        let pem = std::fs::read(path).map_err(|e| {
            CertifierError::Tls(format!(
                "reading the certifier's CA certificate {}: {e}",
                path.display()
            ))
        })?;
        certificates(&pem).map_err(|e| {
            CertifierError::Tls(format!(
                "the certifier's CA certificate {}: {e}",
                path.display()
            ))
        })?;
        Ok(ClientTls {
            ca_pem: pem,
            server_name: None,
            identity: None,
        })
    }

    /// Shows the certificate `cert` (PEM, leaf first) with the key `key`
    /// to the server, checked to be usable together.
    pub fn with_identity(self, cert: &Path, key: &Path) -> Result<ClientTls, CertifierError> {
        let (cert_pem, key_pem) = read_pair(cert, key)?;
        Ok(ClientTls {
            identity: Some(ClientIdentity { cert_pem, key_pem }),
            ..self
        })
    }

    /// Trusts the PEM certificates in `pem` (at least one).
    pub fn from_ca_pem(pem: Vec<u8>) -> Result<ClientTls, CertifierError> {
        certificates(&pem).map_err(CertifierError::Tls)?;
        Ok(ClientTls {
            ca_pem: pem,
            server_name: None,
            identity: None,
        })
    }

    /// Verifies the certifier's certificate for `name` rather than for the
    /// host of its address.
    pub fn with_server_name(self, name: impl Into<String>) -> ClientTls {
        ClientTls {
            server_name: Some(name.into()),
            ..self
        }
    }

    /// tonic's client configuration.
    pub(crate) fn tonic_config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(id) = &self.identity {
            config = config.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
        }
        match &self.server_name {
            Some(name) => config.domain_name(name.clone()),
            None => config,
        }
    }
}

/// The server's TLS: the certificate chain of `cert` (PEM, leaf first)
/// with the private key of `key`, checked to be usable together. With
/// `client_ca` (a certifier node: its peers' CA), a client may show a
/// certificate, which must be signed by one of `client_ca`'s; whether one
/// is needed is the service's call (raft messages need one, proxies and
/// tools show none).
pub(crate) fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerTlsConfig, CertifierError> {
    let (cert_pem, key_pem) = read_pair(cert, key)?;
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .timeout(HANDSHAKE_TIMEOUT);
    Ok(match client_ca {
        None => config,
        Some(ca) => {
            let pem = read(ca, "the peers' CA certificate")?;
            certificates(&pem)
                .map_err(|e| CertifierError::Tls(format!("{}: {e}", ca.display())))?;
            config
                .client_ca_root(Certificate::from_pem(pem))
                .client_auth_optional(true)
        }
    })
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, CertifierError> {
    std::fs::read(path)
        .map_err(|e| CertifierError::Tls(format!("reading {what} {}: {e}", path.display())))
}

/// The PEM texts of the certificate chain `cert` and its key `key`,
/// checked to be usable together.
fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), CertifierError> {
    let cert_pem = read(cert, "the certificate")?;
    let key_pem = read(key, "the private key")?;
    let chain = certificates(&cert_pem)
        .map_err(|e| CertifierError::Tls(format!("{}: {e}", cert.display())))?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        CertifierError::Tls(format!(
            "reading the private key from {}: {e}",
            key.display()
        ))
    })?;
    // The pairing is checked here (as rustls would when the first client
    // comes) so that a key of another certificate fails the start.
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
    .map_err(|e| {
        CertifierError::Tls(format!(
            "using {} with {}: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    Ok((cert_pem, key_pem))
}

/// The certificates of a PEM text; none is an error (said as a reason).
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("reading PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}
