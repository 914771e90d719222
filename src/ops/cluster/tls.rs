//! The certificates a local cluster uses: the proxies' for their clients,
//! and the certifier's for the proxies, either named by the cluster file
//! or the state directory's self-signed pair (generated once, kept).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ops::config::ConfigFile;
use crate::ops::state_dir::StateDir;

/// Fills the `[proxy]` template's certificate: the cluster file's own
/// (as an absolute path, so proxy processes find it wherever they run),
/// else with `[cluster] tls` the state directory's self-signed one,
/// generated at the first start.
pub(super) fn tls_certificate(file: &mut ConfigFile, state: &StateDir) -> Result<()> {
    let proxy = &mut file.proxy;
    match (&proxy.tls_cert, &proxy.tls_key) {
        (Some(cert), Some(key)) => {
            let (cert, key) = (absolute(cert)?, absolute(key)?);
            proxy.tls_cert = Some(cert);
            proxy.tls_key = Some(key);
        }
        (None, None) if file.cluster.tls => {
            let (cert, key) = self_signed(state)?;
            proxy.tls_cert = Some(cert);
            proxy.tls_key = Some(key);
        }
        // Neither (no TLS), or half a pair: the proxy's validation says so.
        _ => {}
    }
    Ok(())
}

/// Fills in TLS between the proxies and the certifier and records it in
/// the state directory (or that there is none). The certifier serves
/// `[certifier] tls_cert`/`tls_key` (made absolute), else with `[cluster]
/// certifier_tls` the state directory's self-signed pair; the proxies
/// trust `[proxy] certifier_tls_ca`, which may be left out only for the
/// generated certificate. Proxies and tools then all read the state
/// directory's copy of what is trusted.
pub(super) fn certifier_tls(file: &mut ConfigFile, state: &StateDir) -> Result<()> {
    let certifier = &mut file.certifier;
    let generated = match (&certifier.tls_cert, &certifier.tls_key) {
        (Some(cert), Some(key)) => {
            let (cert, key) = (absolute(cert)?, absolute(key)?);
            certifier.tls_cert = Some(cert);
            certifier.tls_key = Some(key);
            None
        }
        (None, None) if file.cluster.certifier_tls => {
            let (cert, key) = self_signed(state)?;
            certifier.tls_cert = Some(cert.clone());
            certifier.tls_key = Some(key);
            Some(cert)
        }
        // Neither (plaintext), or half a pair: the certifier's validation
        // says so.
        _ => None,
    };
    let serves_tls = certifier.tls_cert.is_some();
    let trusted = match (&file.proxy.certifier_tls_ca, serves_tls) {
        (Some(ca), true) => Some(absolute(ca)?),
        (None, true) => Some(generated.ok_or_else(|| {
            Error::Config(
                "[certifier] tls_cert is set: [proxy] certifier_tls_ca must name the \
                 certificate (or CA) the proxies trust"
                    .into(),
            )
        })?),
        (Some(_), false) => {
            return Err(Error::Config(
                "[proxy] certifier_tls_ca is set but the certifier has no certificate: set \
                 [cluster] certifier_tls = true, or [certifier] tls_cert and tls_key"
                    .into(),
            ))
        }
        (None, false) => None,
    };
    state.record_certifier_tls(trusted.as_deref())?;
    file.proxy.certifier_tls_ca = trusted.map(|_| state.certifier_tls_ca());
    Ok(())
}

/// `p` made absolute, so processes find it wherever they run.
fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(Error::io(format!("resolving {}", p.display())))
}

/// The state directory's self-signed certificate and key, generated at
/// the first start that needs them.
fn self_signed(state: &StateDir) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (state.tls_cert(), state.tls_key());
    if crate::ops::tls::ensure_self_signed(&cert, &key)? {
        tracing::info!("generated a self-signed certificate: {}", cert.display());
    }
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certifier_tls_is_filled_in_recorded_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let file = |edit: &dyn Fn(&mut ConfigFile)| {
            let mut f = ConfigFile::default();
            edit(&mut f);
            f
        };
        // On: the generated pair, trusted through the recorded copy.
        let mut on = file(&|f| f.cluster.certifier_tls = true);
        certifier_tls(&mut on, &state).unwrap();
        assert_eq!(on.certifier.tls_cert, Some(state.tls_cert()));
        assert_eq!(on.certifier.tls_key, Some(state.tls_key()));
        assert_eq!(on.proxy.certifier_tls_ca, Some(state.certifier_tls_ca()));
        assert_eq!(
            std::fs::read(state.certifier_tls_ca()).unwrap(),
            std::fs::read(state.tls_cert()).unwrap()
        );
        // Off again: plaintext, and the record is gone.
        let mut off = file(&|_| {});
        certifier_tls(&mut off, &state).unwrap();
        assert_eq!(off.certifier.tls_cert, None);
        assert_eq!(off.proxy.certifier_tls_ca, None);
        assert_eq!(state.certifier_tls_ca_in_use(), None);
        // A certificate of one's own needs the CA to trust; a CA needs a
        // certifier that serves TLS.
        let mut own = file(&|f| {
            f.certifier.tls_cert = Some("c.pem".into());
            f.certifier.tls_key = Some("k.pem".into());
        });
        let err = certifier_tls(&mut own, &state).unwrap_err().to_string();
        assert!(err.contains("certifier_tls_ca"), "{err}");
        let mut ca_only = file(&|f| f.proxy.certifier_tls_ca = Some("ca.pem".into()));
        let err = certifier_tls(&mut ca_only, &state).unwrap_err().to_string();
        assert!(err.contains("no certificate"), "{err}");
        // Both given: used as they are (absolute), the CA copied.
        let ca = dir.path().join("own-ca.crt");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let mut both = file(&|f| {
            f.certifier.tls_cert = Some("c.pem".into());
            f.certifier.tls_key = Some("k.pem".into());
            f.proxy.certifier_tls_ca = Some(ca.clone());
        });
        certifier_tls(&mut both, &state).unwrap();
        assert!(both.certifier.tls_cert.unwrap().is_absolute());
        assert_eq!(
            std::fs::read(state.certifier_tls_ca()).unwrap(),
            std::fs::read(&ca).unwrap()
        );
    }
}
