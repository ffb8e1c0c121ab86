//! The kubelet's own serving certificate.
//!
//! Like a kubelet started without `--tls-cert-file`, wasmlet makes a self-signed certificate
//! for its node name and addresses the first time it starts and reuses it afterwards, so the
//! port serves TLS from the first second. [`serving_certificate`] then asks the cluster for a
//! signed one (a `kubernetes.io/kubelet-serving` CSR) and swaps it in once it is approved, as
//! a kubelet with `--rotate-server-certificates` does; a signed certificate stored by an
//! earlier run is served from the start.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tracing::info;

use crate::csr::NodeCertificate;
use crate::files::write_atomically;
use crate::manager::CertificateManager;
use crate::rotating::RotatingCert;
use crate::store::CertStore;
use crate::{CertificateSpec, Error, KeyedCertificate, Result, self_signed};

/// What the kubelet API presents, and (when the cluster is asked for a certificate) the
/// manager to run that obtains and renews it.
pub struct ServingCertificate {
    /// The resolver for the API's TLS configuration.
    pub certificates: Arc<RotatingCert>,
    /// `None` when only the self-signed certificate is served.
    pub manager: Option<CertificateManager>,
}

/// Sets up the serving certificate for `node_name` at `hostname` and `ips`. The stored
/// cluster-signed certificate is presented if it is still valid and names this host;
/// otherwise the self-signed one is, until the cluster answers. With `request` false, the
/// self-signed certificate is all there is.
pub fn serving_certificate(
    client: kube::Client,
    pki_dir: &Path,
    node_name: &str,
    hostname: &str,
    ips: &[IpAddr],
    request: bool,
) -> Result<ServingCertificate> {
    let fallback = load_or_create_self_signed(pki_dir, hostname, ips)?;
    if !request {
        return Ok(ServingCertificate {
            certificates: Arc::new(RotatingCert::new(&fallback.cert_pem, &fallback.key_pem)?),
            manager: None,
        });
    }
    let cert = NodeCertificate::serving(node_name, &[hostname.to_string()], ips);
    let store = CertStore::serving(pki_dir);
    let stored = store.load_current().filter(|stored| {
        let usable =
            stored.info.is_valid_at(SystemTime::now()) && cert.is_satisfied_by(&stored.info);
        if !usable {
            info!(
                path = %store.current_path().display(),
                "the stored serving certificate has expired or does not name this node's                  addresses; serving the self-signed one until a new one is issued"
            );
        }
        usable
    });
    let certificates = Arc::new(match &stored {
        Some(stored) => RotatingCert::new(&stored.cert_pem, &stored.key_pem)?,
        None => RotatingCert::new(&fallback.cert_pem, &fallback.key_pem)?,
    });
    let manager = CertificateManager::new(client, cert, store, certificates.clone(), stored);
    Ok(ServingCertificate {
        certificates,
        manager: Some(manager),
    })
}

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
