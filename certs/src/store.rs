//! The node's issued certificates on disk, under `<data-dir>/pki/`.
//!
//! Each kind keeps two files, named as the kubelet names them:
//! - `kubelet-{server,client}-current.pem`: the certificate chain followed by its key, in one
//!   file so that one rename replaces both and a reader never pairs a new certificate with
//!   an old key;
//! - `kubelet-{server,client}-pending.key`: the key of a request not yet answered, written
//!   before the request is sent, so a restart asks about the same key (and the same CSR name)
//!   instead of submitting a new one.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::KeyPair;
use tracing::{info, warn};

use crate::files::{remove_if_present, write_atomically};
use crate::x509::CertInfo;
use crate::{Error, Result};

/// A certificate and key read from (or written to) the store, with what they say.
#[derive(Clone, Debug)]
pub struct StoredCert {
    /// The certificate chain, PEM, leaf first.
    pub cert_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
    /// The leaf's facts.
    pub info: CertInfo,
}

impl StoredCert {
    /// Checks that `cert_pem` holds a certificate whose public key is `key_pem`'s.
    pub fn verify(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let info = CertInfo::from_pem(cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| Error::Pem {
            what: "private key".into(),
            reason: e.to_string(),
        })?;
        if info.public_key != crate::csr::public_key(&key) {
            return Err(Error::Pem {
                what: "certificate".into(),
                reason: "its public key is not the private key's".into(),
            });
        }
        // rustls must accept the pair too, or a handshake would fail later.
        crate::rotating::RotatingCert::new(cert_pem, key_pem)?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            info,
        })
    }

    /// The one-file form: chain, then key.
    fn combined(&self) -> String {
        let mut text = self.cert_pem.trim_end().to_string();
        text.push('\n');
        text.push_str(self.key_pem.trim_end());
        text.push('\n');
        text
    }
}

/// The files of one certificate kind in one directory.
#[derive(Clone, Debug)]
pub struct CertStore {
    dir: PathBuf,
    prefix: &'static str,
}

impl CertStore {
    /// The serving certificate's files in `pki_dir`.
    pub fn serving(pki_dir: &Path) -> Self {
        Self {
            dir: pki_dir.to_path_buf(),
            prefix: "kubelet-server",
        }
    }

    /// The client certificate's files in `pki_dir`.
    pub fn client(pki_dir: &Path) -> Self {
        Self {
            dir: pki_dir.to_path_buf(),
            prefix: "kubelet-client",
        }
    }

    /// The current certificate and key, one PEM file.
    pub fn current_path(&self) -> PathBuf {
        self.dir.join(format!("{}-current.pem", self.prefix))
    }

    /// The key of the request in flight.
    pub fn pending_key_path(&self) -> PathBuf {
        self.dir.join(format!("{}-pending.key", self.prefix))
    }

    /// The stored pair, if there is one that parses and whose key matches. Expiry is the
    /// caller's business (an expired certificate is still better than none to look at).
    pub fn load_current(&self) -> Option<StoredCert> {
        let path = self.current_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read the stored certificate; requesting a new one");
                return None;
            }
        };
        let (cert_pem, key_pem) = split_combined(&text);
        match StoredCert::verify(&cert_pem, &key_pem) {
            Ok(stored) => Some(stored),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "the stored certificate is not usable; requesting a new one");
                None
            }
        }
    }

    /// Stores an issued certificate for `key_pem`, after checking it, and forgets the
    /// pending key. Nothing is written unless the pair is valid.
    pub fn save_current(&self, cert_pem: &str, key_pem: &str) -> Result<StoredCert> {
        let stored = StoredCert::verify(cert_pem, key_pem)?;
        if stored.info.not_after <= SystemTime::now() {
            return Err(Error::Pem {
                what: "certificate".into(),
                reason: "it has already expired".into(),
            });
        }
        write_atomically(&self.current_path(), &stored.combined())?;
        remove_if_present(&self.pending_key_path())?;
        Ok(stored)
    }

    /// The key of the pending request: the one persisted by an earlier run, or a new one,
    /// persisted before it is used. A pending key that is the current certificate's is
    /// used up: a run that stopped between storing the certificate and removing its key
    /// left it, and a renewal must not ask for the same key again.
    pub fn pending_key(&self) -> Result<KeyPair> {
        let path = self.pending_key_path();
        if let Ok(pem) = std::fs::read_to_string(&path) {
            match KeyPair::from_pem(&pem) {
                Ok(key) if !self.is_current_key(&key) => return Ok(key),
                Ok(_) => {
                    info!(path = %path.display(), "the pending key is the current certificate's (a run stopped before removing it); making a new one");
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "the pending key is unreadable; making a new one")
                }
            }
        }
        let key = KeyPair::generate().map_err(|source| Error::Generate {
            what: format!("{} key", self.prefix),
            source,
        })?;
        write_atomically(&path, &key.serialize_pem())?;
        Ok(key)
    }

    /// Whether `key` is the current certificate's.
    fn is_current_key(&self, key: &KeyPair) -> bool {
        self.load_current()
            .is_some_and(|current| current.info.public_key == crate::csr::public_key(key))
    }

    /// Forgets the pending key (its request was refused): the next request uses a new one.
    pub fn discard_pending_key(&self) -> Result<()> {
        remove_if_present(&self.pending_key_path())
    }
}

/// Splits a combined PEM file into its certificate blocks and the rest (the key).
fn split_combined(text: &str) -> (String, String) {
    let mut certs = String::new();
    let mut key = String::new();
    let mut in_cert = false;
    for line in text.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE-----") {
            in_cert = true;
        }
        let target = if in_cert { &mut certs } else { &mut key };
        target.push_str(line);
        target.push('\n');
        if line.starts_with("-----END CERTIFICATE-----") {
            in_cert = false;
        }
    }
    (certs, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Authority, CertificateSpec};

    fn issued(ca: &Authority) -> crate::KeyedCertificate {
        ca.issue(&CertificateSpec::client(
            "system:node:edge-1",
            &["system:nodes"],
        ))
        .unwrap()
    }

    #[test]
    fn saved_pair_is_loaded_back_as_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::client(dir.path());
        let ca = Authority::generate("ca").unwrap();
        let pair = issued(&ca);
        store.save_current(&pair.cert_pem, &pair.key_pem).unwrap();
        let loaded = store.load_current().unwrap();
        assert_eq!(loaded.info.common_name, "system:node:edge-1");
        assert_eq!(loaded.cert_pem.trim(), pair.cert_pem.trim());
        assert!(loaded.key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn an_empty_or_foreign_certificate_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::serving(dir.path());
        let ca = Authority::generate("ca").unwrap();
        let pair = issued(&ca);
        let other = issued(&ca);
        assert!(store.save_current("", &pair.key_pem).is_err());
        assert!(store.save_current(&other.cert_pem, &pair.key_pem).is_err());
        assert!(!store.current_path().exists());
    }

    #[test]
    fn pending_key_survives_until_discarded_or_used() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::serving(dir.path());
        let first = store.pending_key().unwrap();
        let again = store.pending_key().unwrap();
        assert_eq!(first.serialize_pem(), again.serialize_pem());
        store.discard_pending_key().unwrap();
        let fresh = store.pending_key().unwrap();
        assert_ne!(first.serialize_pem(), fresh.serialize_pem());
    }

    #[test]
    fn a_pending_key_left_after_its_certificate_was_stored_is_not_used_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::client(dir.path());
        let ca = Authority::generate("ca").unwrap();
        let pair = issued(&ca);
        store.save_current(&pair.cert_pem, &pair.key_pem).unwrap();
        // The run stopped between storing the certificate and removing its key.
        std::fs::write(store.pending_key_path(), &pair.key_pem).unwrap();
        let next = store.pending_key().unwrap();
        let used = KeyPair::from_pem(&pair.key_pem).unwrap();
        assert_ne!(
            crate::csr::public_key(&next),
            crate::csr::public_key(&used),
            "the renewal would ask for the current certificate's key again"
        );
        assert_eq!(
            std::fs::read_to_string(store.pending_key_path()).unwrap(),
            next.serialize_pem(),
            "the new key is persisted before it is used"
        );
    }

    #[test]
    fn a_corrupt_current_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::serving(dir.path());
        std::fs::write(store.current_path(), "garbage").unwrap();
        assert!(store.load_current().is_none());
    }
}
