//! How operating tools reach a certifier: its address and, when it serves
//! TLS, the certificate(s) to trust — given (`--certifier-tls-ca`) or found
//! in a local cluster's state directory, which records it while the
//! cluster's certifier serves TLS ([`StateDir::certifier_tls_ca`]).

use std::fmt;
use std::path::PathBuf;

use tashkent_certifier::{CertifierClient, ClientOptions, ClientTls};

use crate::error::{Error, Result};
use crate::ops::state_dir::StateDir;

/// A certifier to talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifierTarget {
    /// `host:port` (or `https://host:port` with `tls_ca`).
    pub addr: String,
    /// PEM certificate(s) to trust; `None`: plaintext.
    pub tls_ca: Option<PathBuf>,
}

impl CertifierTarget {
    pub fn new(addr: impl Into<String>, tls_ca: Option<PathBuf>) -> CertifierTarget {
        CertifierTarget {
            addr: addr.into(),
            tls_ca,
        }
    }

    /// The certifier of a local cluster that has started before: its
    /// address, and its CA when it serves TLS.
    pub fn of_state_dir(state: &StateDir) -> Result<CertifierTarget> {
        Ok(CertifierTarget {
            addr: state.certifier_addr()?,
            tls_ca: state.certifier_tls_ca_in_use(),
        })
    }

    /// What the command line says over what a state directory says: an
    /// address and a CA given override the found ones (a CA found stays
    /// when only the address is given, as the same cluster is meant).
    pub fn overridden(
        found: Option<CertifierTarget>,
        addr: Option<&str>,
        tls_ca: Option<PathBuf>,
    ) -> Option<CertifierTarget> {
        let (found_addr, found_ca) = match found {
            Some(t) => (Some(t.addr), t.tls_ca),
            None => (None, None),
        };
        let addr = addr.map(str::to_owned).or(found_addr)?;
        Some(CertifierTarget {
            addr,
            tls_ca: tls_ca.or(found_ca),
        })
    }

    /// Whether it is reached over TLS.
    pub fn tls(&self) -> bool {
        self.tls_ca.is_some()
    }

    /// The client's options (the CA read now).
    pub fn options(&self) -> Result<ClientOptions> {
        let tls = match &self.tls_ca {
            None => None,
            Some(ca) => Some(
                ClientTls::from_ca_file(ca).map_err(|source| Error::Certifier {
                    context: "the certifier's TLS".into(),
                    source,
                })?,
            ),
        };
        Ok(ClientOptions {
            tls,
            ..ClientOptions::default()
        })
    }

    /// A client of it.
    pub async fn connect(&self) -> Result<CertifierClient> {
        CertifierClient::connect_with(&self.addr, self.options()?)
            .await
            .map_err(|source| Error::Certifier {
                context: format!("connecting to the certifier at {self}"),
                source,
            })
    }
}

impl fmt::Display for CertifierTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)?;
        if self.tls() {
            f.write_str(" (TLS)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_over_the_state_directory() {
        let found = CertifierTarget::new("127.0.0.1:1", Some("/s/ca.crt".into()));
        let t = |found: Option<CertifierTarget>, addr: Option<&str>, ca: Option<&str>| {
            CertifierTarget::overridden(found, addr, ca.map(PathBuf::from))
        };
        assert_eq!(t(Some(found.clone()), None, None), Some(found.clone()));
        assert_eq!(
            t(Some(found.clone()), Some("h:2"), None),
            Some(CertifierTarget::new("h:2", Some("/s/ca.crt".into())))
        );
        assert_eq!(
            t(None, Some("h:2"), Some("/c.pem")),
            Some(CertifierTarget::new("h:2", Some("/c.pem".into())))
        );
        assert_eq!(t(None, None, Some("/c.pem")), None);
        assert_eq!(found.to_string(), "127.0.0.1:1 (TLS)");
    }
}
