//! The kubelet's own serving certificate.
//!
//! Like a kubelet started without `--tls-cert-file`, wasmlet makes a self-signed certificate
//! for its node name and addresses the first time it starts and reuses it afterwards, so the
//! port serves TLS from the first second. Certificates signed by the cluster replace it once a
//! `kubernetes.io/kubelet-serving` CSR is approved.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::{CertificateSpec, Error, KeyedCertificate, Result, self_signed};

/// Where the serving certificate and key live below a directory.
#[derive(Clone, Debug)]
pub struct ServingCertPaths {
    /// The certificate, PEM.
    pub cert: PathBuf,
    /// The private key, PEM.
    pub key: PathBuf,
}

impl ServingCertPaths {
    /// The self-signed pair's paths in `dir`.
    pub fn self_signed_in(dir: &Path) -> Self {
        Self {
            cert: dir.join("wasmlet.crt"),
            key: dir.join("wasmlet.key"),
        }
    }
}

/// Loads the self-signed serving certificate from `dir`, creating it for `host` and `ips`
/// when it is missing or unreadable. Files are written to a temporary name and renamed, so
/// a crash never leaves a half-written certificate that a later start would trust.
pub fn load_or_create_self_signed(
    dir: &Path,
    host: &str,
    ips: &[IpAddr],
) -> Result<KeyedCertificate> {
    let paths = ServingCertPaths::self_signed_in(dir);
    if let (Ok(cert_pem), Ok(key_pem)) = (
        std::fs::read_to_string(&paths.cert),
        std::fs::read_to_string(&paths.key),
    ) && crate::tls::parse_pair(&cert_pem, &key_pem).is_ok()
    {
        return Ok(KeyedCertificate { cert_pem, key_pem });
    }
    let spec = CertificateSpec::server(format!("{host}@wasmlet"), &[host], ips);
    let pair = self_signed(&spec)?;
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        action: "failed to create",
        path: dir.to_path_buf(),
        source,
    })?;
    write_atomically(&paths.key, &pair.key_pem)?;
    write_atomically(&paths.cert, &pair.cert_pem)?;
    Ok(pair)
}

fn write_atomically(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let io_err = |action, source| Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, contents).map_err(|e| io_err("failed to write", e))?;
    restrict_to_owner(&tmp).map_err(|e| io_err("failed to set permissions on", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err("failed to rename into", e))
}

fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_certificate_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let ips = ["127.0.0.1".parse().unwrap()];
        let first = load_or_create_self_signed(dir.path(), "edge-1", &ips).unwrap();
        let second = load_or_create_self_signed(dir.path(), "edge-1", &ips).unwrap();
        assert_eq!(first.cert_pem, second.cert_pem);
        assert_eq!(first.key_pem, second.key_pem);
    }

    #[test]
    fn corrupt_certificate_is_replaced_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let paths = ServingCertPaths::self_signed_in(dir.path());
        std::fs::write(&paths.cert, "").unwrap();
        std::fs::write(&paths.key, "garbage").unwrap();
        let pair = load_or_create_self_signed(dir.path(), "edge-1", &[]).unwrap();
        assert!(crate::tls::parse_pair(&pair.cert_pem, &pair.key_pem).is_ok());
        assert_eq!(std::fs::read_to_string(&paths.cert).unwrap(), pair.cert_pem);
    }
}
