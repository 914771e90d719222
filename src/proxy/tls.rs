//! TLS on the client side of the proxy: the server configuration built
//! once at start from the PEM files `[proxy] tls_cert` and `tls_key`.
//!
//! The proxy answers a client's SSLRequest with `S` when it has one and
//! then runs the TLS handshake (rustls, with the ring provider) before the
//! startup continues (`session::startup`). Its link to the replica stays
//! as it is (the Unix socket under `tashkent up`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::error::{Error, Result};

/// The acceptor for `cert` (a PEM chain, leaf first) and `key`.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let fail = |context: String| {
        move |e: &dyn std::fmt::Display| Error::Tls {
            context,
            reason: e.to_string(),
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| fail(format!("reading certificates from {}", cert.display()))(&e))?;
    if chain.is_empty() {
        return Err(Error::Tls {
            context: format!("reading certificates from {}", cert.display()),
            reason: "no PEM certificate in the file".into(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| fail(format!("reading the private key from {}", key.display()))(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("choosing protocol versions".into())(&e))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| fail(format!("using {} with {}", cert.display(), key.display()))(&e))?;
    // PostgreSQL 17's ALPN name: its clients offer it, and a server that
    // names none would still do; one that names it refuses clients that
    // offer only other protocols (a browser, an HTTP client) early.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
