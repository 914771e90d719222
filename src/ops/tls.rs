//! The self-signed certificate a local cluster's proxies show their
//! clients when the cluster file names none: generated once (rcgen) into
//! the state directory and kept, so clients that pin it
//! (`sslrootcert=<state>/tls/server.crt`) go on trusting it after a
//! restart.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Names the certificate is valid for: a local cluster's proxies listen
/// on the loopback address.
const NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Makes sure `cert` and `key` exist: generates a self-signed pair when
/// either is missing; true when it generated one.
pub fn ensure_self_signed(cert: &Path, key: &Path) -> Result<bool> {
    if cert.exists() && key.exists() {
        return Ok(false);
    }
    let fail = |reason: rcgen::Error| Error::Tls {
        context: "generating a self-signed certificate".into(),
        reason: reason.to_string(),
    };
    let pair = rcgen::KeyPair::generate().map_err(fail)?;
    let mut params =
        rcgen::CertificateParams::new(NAMES.map(String::from).to_vec()).map_err(fail)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tashkent proxy (self-signed)");
    let certificate = params.self_signed(&pair).map_err(fail)?;
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    // The key first and readable by its owner only; the certificate last,
    // so a pair is complete once both names exist.
    write_new(key, pair.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert, certificate.pem().as_bytes(), 0o644)?;
    Ok(true)
}

/// Writes `path` through a temporary file renamed over it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(Error::io(format!("creating {}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(Error::io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(Error::io(format!("renaming {}", tmp.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (
            dir.path().join("tls/server.crt"),
            dir.path().join("tls/server.key"),
        );
        assert!(ensure_self_signed(&cert, &key).unwrap());
        let first = std::fs::read(&cert).unwrap();
        assert!(String::from_utf8_lossy(&first).starts_with("-----BEGIN CERTIFICATE-----"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is private: {mode:o}");
        assert!(!ensure_self_signed(&cert, &key).unwrap());
        assert_eq!(std::fs::read(&cert).unwrap(), first, "kept across starts");
        // The proxy can use the pair.
        crate::proxy::tls_acceptor(&cert, &key).unwrap();
        // A missing half makes a new pair.
        std::fs::remove_file(&key).unwrap();
        assert!(ensure_self_signed(&cert, &key).unwrap());
        assert_ne!(std::fs::read(&cert).unwrap(), first);
    }
}
